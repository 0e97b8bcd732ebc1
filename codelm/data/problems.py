"""Benchmark problems in HumanEval's or MBPP's format: the one `Problem` type and its one loader.

A problems file is JSON Lines (optionally gzipped), one problem per line:
`task_id`, `prompt` (the signature and docstring a model continues),
`entry_point` (the function under test), `test` (defines `check(candidate)`)
and optionally `canonical_solution` and `instruction` (then the model is asked in
instruction mode, the prompt being the start of its code, possibly empty). A line
in MBPP's format (`task_id`, `text` or `prompt`, `test_list` of asserts, optionally
`code`, `test_setup_code`, `test_imports`) is such a problem: the instruction is the
text and its asserts, as MBPP's paper asks ("Your code should pass these tests:"),
the entry point the function the first assert calls, and `check` runs the setup and
the asserts. Two stages read such files:

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

import ast
import builtins
import keyword
import textwrap
from dataclasses import dataclass
from pathlib import Path

from codelm.data.jsonl import read_jsonl, string_field
from codelm.errors import CodelmError

REQUIRED_FIELDS = ("task_id", "prompt", "entry_point", "test")  # for a problem that is run
ID_FIELDS = ("task_id", "id", "name")  # what other benchmarks call the id, in order of preference
SOLUTION_FIELDS = ("canonical_solution", "solution", "code")  # "code": MBPP's
MBPP_TESTS = "test_list"  # a line with this field is in MBPP's format


@dataclass(frozen=True)
class Problem:
    """One benchmark problem. Loaded with `runnable=False` only `task_id` and a part are sure."""

    task_id: str
    prompt: str = ""  # the signature and docstring the model continues
    entry_point: str = ""  # the function `check` is called with
    test: str = ""  # defines `def check(candidate):`
    canonical_solution: str | None = None  # a reference body, for validating the problem itself
    instruction: str = ""  # set: the model writes code for it, `prompt` being the code's start

    @property
    def parts(self) -> tuple[str, ...]:
        """The texts a leak into the corpus would copy: the prompt and the solution, if not blank."""
        return tuple(p for p in (self.prompt, self.canonical_solution) if p and p.strip())


def _called(test: str) -> str | None:
    """The name of the first function an assert calls: `assert f(1) == 2` -> "f"."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return None
    calls = (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name))
    return next((c.func.id for c in calls if c.func.id not in dir(builtins)), None)


def _mbpp(row: dict, where: str) -> Problem:
    tests = row.get(MBPP_TESTS)
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise CodelmError(f"{where}: field {MBPP_TESTS!r} must be a non-empty list of asserts")
    text = string_field(row, "text", where, required=False) or string_field(row, "prompt", where)
    setup = [string_field(row, "test_setup_code", where, required=False) or ""]
    imports = row.get("test_imports") or []
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise CodelmError(f"{where}: field 'test_imports' must be a list of strings")
    entry = _called(tests[0])
    if entry is None:
        raise CodelmError(f"{where}: the first test calls no function but builtins: {tests[0][:60]!r}")
    body = "\n".join(part.strip("\n") for part in (*imports, *setup, *tests) if part.strip())
    asks = "\n".join(tests)
    return Problem(
        task_id=str(row.get("task_id", where)),
        entry_point=entry,
        test="def check(candidate):\n" + textwrap.indent(body, "    ") + "\n",
        canonical_solution=string_field(row, "code", where, required=False),
        instruction=f"{text.strip()}\nYour code should pass these tests:\n\n{asks}",
    )


def _runnable(row: dict, where: str) -> Problem:
    if MBPP_TESTS in row:
        return _mbpp(row, where)
    fields = {name: string_field(row, name, where) for name in REQUIRED_FIELDS}
    solution = string_field(row, "canonical_solution", where, required=False)
    instruction = string_field(row, "instruction", where, required=False) or ""
    entry = fields["entry_point"]
    if not entry.isidentifier() or keyword.iskeyword(entry):
        raise CodelmError(f"{where}: entry_point {entry!r} is not a Python identifier")
    if "def check(" not in fields["test"]:
        raise CodelmError(f"{where}: test must define check(candidate)")
    return Problem(**fields, canonical_solution=solution, instruction=instruction.strip())


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
