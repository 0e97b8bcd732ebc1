"""Benchmark problems in HumanEval's format: the one `Problem` type and its one loader.

A problems file is JSON Lines (optionally gzipped), one problem per line:
`task_id`, `prompt` (the signature and docstring a model continues),
`entry_point` (the function under test), `test` (defines `check(candidate)`)
and optionally `canonical_solution`. Two stages read such files:

- evaluation runs them, so `load_problems(path)` insists on every field
  being there and sound, and on unique task ids (scores are keyed by them);
- the data build only looks for their text in the corpus, so
  `load_problems(path, runnable=False)` needs just a prompt or a solution and
  also takes other benchmarks' spellings (`id` or `name` for the id,
  `solution` for the solution); a problem with no id is named `FILE:LINE`.

A file that passes the strict reading gives the same problems either way.
This module does not run problems (evaluate/passk.py) or match them against
code (decontaminate.py).
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from pathlib import Path

from codelm.data.jsonl import read_jsonl, string_field
from codelm.errors import CodelmError

REQUIRED_FIELDS = ("task_id", "prompt", "entry_point", "test")  # for a problem that is run
ID_FIELDS = ("task_id", "id", "name")  # what other benchmarks call the id, in order of preference
SOLUTION_FIELDS = ("canonical_solution", "solution")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem. Loaded with `runnable=False` only `task_id` and a part are sure."""

    task_id: str
    prompt: str = ""  # the signature and docstring the model continues
    entry_point: str = ""  # the function `check` is called with
    test: str = ""  # defines `def check(candidate):`
    canonical_solution: str | None = None  # a reference body, for validating the problem itself

    @property
    def parts(self) -> tuple[str, ...]:
        """The texts a leak into the corpus would copy: the prompt and the solution, if not blank."""
        return tuple(p for p in (self.prompt, self.canonical_solution) if p and p.strip())


def _runnable(row: dict, where: str) -> Problem:
    fields = {name: string_field(row, name, where) for name in REQUIRED_FIELDS}
    solution = string_field(row, "canonical_solution", where, required=False)
    entry = fields["entry_point"]
    if not entry.isidentifier() or keyword.iskeyword(entry):
        raise CodelmError(f"{where}: entry_point {entry!r} is not a Python identifier")
    if "def check(" not in fields["test"]:
        raise CodelmError(f"{where}: test must define check(candidate)")
    return Problem(**fields, canonical_solution=solution)


def _text_only(row: dict, where: str, fallback_id: str) -> Problem:
    def text(name: str) -> str:
        return row[name] if isinstance(row.get(name), str) else ""

    task_id = next((str(row[f]) for f in ID_FIELDS if row.get(f) is not None), fallback_id)
    solution = next((row[f] for f in SOLUTION_FIELDS if isinstance(row.get(f), str)), None)
    problem = Problem(task_id, text("prompt"), text("entry_point"), text("test"), solution)
    if not problem.parts:
        raise CodelmError(f"{where}: has no 'prompt' or 'canonical_solution'")
    return problem


def load_problems(path: str | Path, *, runnable: bool = True, what: str = "problems") -> list[Problem]:
    """The problems of one file, in file order; any defect is a one-line CodelmError naming the line.

    `runnable=False` reads leniently, for decontamination (see the module docstring).
    `what` names the file in messages ("benchmark file not found: ...").
    """
    path = Path(path)
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, row in read_jsonl(path, what):
        where = f"{path}:{lineno}"
        if not runnable:
            problems.append(_text_only(row, where, f"{path.name}:{lineno}"))
            continue
        problem = _runnable(row, where)
        if problem.task_id in seen:
            raise CodelmError(f"{where}: duplicate task_id {problem.task_id!r}")
        seen.add(problem.task_id)
        problems.append(problem)
    if not problems:
        raise CodelmError(f"{what} file has no problems: {path}")
    return problems
