"""The notebook benchmark: its file format, every shipped problem against its own
solution, and the sandbox's reading of a problem's live context."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("pandas", reason="the notebook extra (pandas) is not installed")

from codelm.errors import CodelmError  # noqa: E402
from codelm.evaluate.passk import default_problems_path, find_problems  # noqa: E402
from codelm.evaluate.sandbox import site_dirs  # noqa: E402
from codelm.notebook.bench import sandbox_sees_pandas  # noqa: E402
from codelm.notebook.context import describe  # noqa: E402
from codelm.notebook.problems import (  # noqa: E402
    NotebookProblem,
    is_notebook_file,
    load_notebook_problems,
    program,
)

SHIPPED = find_problems("notebook_basic")

# Runs our own solutions (not a model's) with this interpreter, each program in a fresh
# namespace of one process: pandas is imported once, not 100 times.
DRIVER = """
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
out = []
for text in json.load(sys.stdin):
    plt.close("all")
    try:
        exec(compile(text, "<program>", "exec"), {"__name__": "__main__"})
        out.append("passed")
    except BaseException as e:
        out.append(f"{type(e).__name__}: {e}".splitlines()[0])
print(json.dumps(out))
"""


def test_the_shipped_benchmark_is_found_by_name_and_is_a_notebook_file():
    assert SHIPPED.name == "notebook_basic.jsonl" and SHIPPED.parent == default_problems_path().parent
    assert is_notebook_file(SHIPPED)
    assert not is_notebook_file(default_problems_path())
    assert len(load_notebook_problems(SHIPPED)) >= 40


def test_every_problem_passes_its_solution_and_fails_an_empty_cell():
    problems = load_notebook_problems(SHIPPED)
    cells = [(p, p.canonical_solution) for p in problems] + [(p, "None") for p in problems]
    texts = [program(p, cell, site_dirs()) for p, cell in cells]
    done = subprocess.run(
        [sys.executable, "-c", DRIVER], input=json.dumps(texts), capture_output=True, text=True, timeout=300
    )
    outcomes = json.loads(done.stdout)
    n = len(problems)
    bad = [f"{p.task_id}: {o}" for p, o in zip(problems, outcomes[:n], strict=True) if o != "passed"]
    assert not bad, bad
    empty = [p.task_id for p, o in zip(problems, outcomes[n:], strict=True) if o == "passed"]
    assert not empty, f"an empty cell passes: {empty}"


def test_program_runs_the_cell_as_a_notebook_does():
    p = NotebookProblem("t", "x = 2\n", "double x", "def check(ns, result):\n    assert result == 4\n")
    texts = [program(p, cell, []) for cell in ("x * 2", "y = x * 2", "y = x * 2\ny", "x * 3", "x *")]
    done = subprocess.run(
        [sys.executable, "-c", DRIVER], input=json.dumps(texts), capture_output=True, text=True, timeout=60
    )
    assert json.loads(done.stdout)[:3] == ["passed"] * 3  # the last value, or the last name assigned
    assert json.loads(done.stdout)[3].startswith("AssertionError")
    assert json.loads(done.stdout)[4].startswith("SyntaxError")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"task_id": "a", "setup": "", "instruction": "x", "test": "x = 1"}, "must define check"),
        ({"task_id": "a", "setup": "", "instruction": " ", "test": "def check(ns, r): pass"}, "empty"),
        ({"task_id": "a", "setup": "", "test": "def check(ns, r): pass"}, "instruction"),
    ],
)
def test_bad_problem_rows_are_one_line_errors_naming_the_line(tmp_path, row, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(CodelmError, match=message) as e:
        load_notebook_problems(path)
    assert f"{path}:1" in str(e.value)


def test_duplicate_task_ids_are_refused(tmp_path):
    row = {"task_id": "a", "setup": "", "instruction": "x", "test": "def check(ns, r): pass"}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(CodelmError, match=r"p.jsonl:2: duplicate task_id 'a'"):
        load_notebook_problems(path)


@pytest.mark.skipif(not sandbox_sees_pandas(), reason="the sandbox cannot see this venv's site-packages")
def test_the_sandbox_reads_the_same_context_as_the_kernel_would():
    from codelm.notebook.bench import describe_problems, stand_in

    problems = load_notebook_problems(SHIPPED)[:3]
    remote = describe_problems(problems, workers=2)
    for p, ctx in zip(problems, remote, strict=True):
        ns: dict = {}
        exec(textwrap.dedent(p.setup), ns)  # our benchmark's own setup code, not a model's
        local = describe({k: v for k, v in ns.items() if k != "__builtins__"})
        assert ctx == local
        frames = stand_in(ctx)
        assert all(list(frames[f.name].columns) == [c[0] for c in f.columns] for f in ctx.frames)
