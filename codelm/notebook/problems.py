"""Notebook problems: a request, the setup that builds its DataFrames, a check on the cell's result.

A notebook problems file is JSON Lines, one problem per line:
- `task_id`;
- `setup`: code run first, as the cells above would have run it (imports, frames);
- `instruction`: what the user types under `%%codelm`;
- `test`: defines `check(ns, result)`: `ns` is the namespace after the cell ran,
  `result` the cell's value as Jupyter shows it (its last expression's value), or,
  when the cell ends in an assignment, the value of the last name it assigned;
- `canonical_solution`: a cell that passes, to validate the problem itself.

`program` writes the script the sandbox runs for one candidate cell: the setup,
the cell run as IPython would (all but the last expression executed, the last
evaluated), then `check`. The cell is a string literal in the script, never
spliced in as code, so a cell that does not parse fails in `compile`, as it would
in a notebook. Plots use matplotlib's Agg backend. This module runs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from codelm.data.jsonl import read_jsonl, string_field
from codelm.errors import CodelmError

FIELDS = ("task_id", "setup", "instruction", "test")


@dataclass(frozen=True)
class NotebookProblem:
    task_id: str
    setup: str  # imports and DataFrames, as earlier cells made them
    instruction: str  # the request in natural language
    test: str  # defines check(ns, result)
    canonical_solution: str | None = None


def is_notebook_file(path: str | Path) -> bool:
    """Whether a problems file holds notebook problems (its first row has `setup` and `instruction`)."""
    for _, row in read_jsonl(path, "problems"):
        return isinstance(row, dict) and "setup" in row and "instruction" in row
    return False


def load_notebook_problems(path: str | Path) -> list[NotebookProblem]:
    """The problems of one file, in order; a defect is a one-line CodelmError naming the line."""
    problems, seen = [], set()
    for lineno, row in read_jsonl(path, "problems"):
        where = f"{path}:{lineno}"
        fields = {name: string_field(row, name, where) for name in FIELDS}
        solution = string_field(row, "canonical_solution", where, required=False)
        if "def check(" not in fields["test"]:
            raise CodelmError(f"{where}: test must define check(ns, result)")
        if not fields["instruction"].strip():
            raise CodelmError(f"{where}: empty instruction")
        if fields["task_id"] in seen:
            raise CodelmError(f"{where}: duplicate task_id {fields['task_id']!r}")
        seen.add(fields["task_id"])
        problems.append(NotebookProblem(**fields, canonical_solution=solution))
    if not problems:
        raise CodelmError(f"problems file has no problems: {path}")
    return problems


# Runs inside the sandbox after the setup. Names start with `_codelm_` so that a cell
# cannot clash with them by accident. The fallback result is the last name the cell
# assigned at its top level: `avg = df.mean()` is what a user then looks at.
_RUN_CELL = """
import ast as _codelm_ast
_codelm_tree = _codelm_ast.parse(_codelm_cell, "<cell>")
_codelm_last = _codelm_tree.body.pop() if _codelm_tree.body and isinstance(
    _codelm_tree.body[-1], _codelm_ast.Expr) else None
exec(compile(_codelm_tree, "<cell>", "exec"), globals())
if _codelm_last is not None:
    _codelm_result = eval(compile(_codelm_ast.Expression(_codelm_last.value), "<cell>", "eval"), globals())
else:
    _codelm_result = None
    for _codelm_node in reversed(_codelm_tree.body):
        _codelm_targets = getattr(_codelm_node, "targets", None) or [getattr(_codelm_node, "target", None)]
        if isinstance(_codelm_targets[-1], _codelm_ast.Name):
            _codelm_result = globals()[_codelm_targets[-1].id]
            break
"""


def program(problem: NotebookProblem, cell: str, site: list[str]) -> str:
    """The sandbox script that judges `cell` on `problem`; `site` holds pandas and matplotlib."""
    head = (
        "import os, sys\n"
        "os.environ['MPLBACKEND'] = 'Agg'\n"
        "os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # one thread: the sandbox bounds them\n"
        f"sys.path += {site!r}\n"
    )
    return (
        f"{head}\n{problem.setup}\n\n_codelm_cell = {cell!r}\n{_RUN_CELL}\n"
        f"{problem.test}\n\ncheck(globals(), _codelm_result)\n"
    )
