"""pass@k, HumanEval- and MBPP-format files, scoring completions, and our own benchmark."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
from fractions import Fraction
from pathlib import Path

import pytest

from codelm.data.problems import Problem, load_problems
from codelm.errors import CodelmError
from codelm.evaluate.passk import (
    build_program,
    default_problems_path,
    load_completions,
    pass_at_k,
    results_path_for,
    score_completions,
    score_file,
)
from codelm.evaluate.sandbox import run_many

WRONG_BODY = "    return None\n"


def test_pass_at_k_known_values():
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 5, 6) == 1.0  # n - c < k: every draw of 6 holds a correct one
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 0)
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)


def test_pass_at_k_matches_counting_every_draw():
    for n in range(1, 8):
        for c, k in itertools.product(range(n + 1), range(1, n + 1)):
            samples = [True] * c + [False] * (n - c)
            draws = list(itertools.combinations(samples, k))
            assert pass_at_k(n, c, k) == pytest.approx(sum(any(d) for d in draws) / len(draws), abs=1e-12)


def test_pass_at_k_matches_exact_binomials_for_large_n():
    for n, c, k in [(200, 13, 10), (200, 1, 100), (1000, 3, 100), (1000, 990, 5)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-12)


def test_our_benchmark_is_well_formed():
    problems = load_problems(default_problems_path())
    assert len(problems) >= 60
    assert len({p.entry_point for p in problems}) == len(problems)
    for p in problems:
        assert f"def {p.entry_point}(" in p.prompt and ">>>" in p.prompt, p.task_id
        assert p.prompt.rstrip().endswith('"""'), p.task_id  # the model continues with the body
        assert p.canonical_solution and p.test.count("assert") >= 3, p.task_id


def test_every_canonical_solution_passes_and_wrong_ones_fail():
    problems = load_problems(default_problems_path())
    others = problems[1:] + problems[:1]  # each problem paired with its neighbour's solution
    programs = [build_program(p, p.canonical_solution) for p in problems]
    programs += [build_program(p, WRONG_BODY) for p in problems]
    programs += [build_program(p, q.canonical_solution) for p, q in zip(problems, others, strict=True)]
    results = run_many(programs, workers=os.cpu_count())
    n = len(problems)
    broken = [
        (p.task_id, r.status, r.error) for p, r in zip(problems, results[:n], strict=True) if not r.passed
    ]
    assert not broken, broken
    lenient = [p.task_id for p, r in zip(problems * 2, results[n:], strict=True) if r.passed]
    assert not lenient, f"tests accept a wrong solution: {lenient}"


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {
    "task_id": "t/0",
    "prompt": "def f(x):\n",
    "entry_point": "f",
    "test": "def check(c):\n    assert c(1) == 2\n",
}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([GOOD, "{not json"], r":2: not valid JSON"),
        ([GOOD, "[1, 2]"], r":2: expected a JSON object, got list"),
        ([{k: v for k, v in GOOD.items() if k != "test"}], r":1: missing field 'test'"),
        ([{**GOOD, "prompt": 3}], r":1: field 'prompt' must be a string, got int"),
        ([{**GOOD, "entry_point": "not valid"}], r"entry_point 'not valid' is not a Python identifier"),
        ([{**GOOD, "test": "assert True"}], r"test must define check\(candidate\)"),
        ([GOOD, GOOD], r":2: duplicate task_id 't/0'"),
        (["", "  "], r"has no problems"),
    ],
)
def test_bad_problem_files_give_one_line_errors(tmp_path, rows, message):
    path = _write(tmp_path / "problems.jsonl", rows)
    with pytest.raises(CodelmError, match=message) as err:
        load_problems(path)
    assert "\n" not in str(err.value)


def test_missing_or_unreadable_files_give_one_line_errors(tmp_path):
    with pytest.raises(CodelmError, match="problems file not found"):
        load_problems(tmp_path / "nope.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CodelmError, match="cannot read problems file"):
        load_problems(tmp_path / "bin.jsonl")
    with pytest.raises(CodelmError, match="completions file not found"):
        load_completions(tmp_path / "nope.jsonl")


def test_gzipped_problems_and_completions_load(tmp_path):
    path = tmp_path / "problems.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({**GOOD, "canonical_solution": "    return x + 1\n"}) + "\n")
    [problem] = load_problems(path)
    assert problem == Problem("t/0", GOOD["prompt"], "f", GOOD["test"], "    return x + 1\n")
    assert results_path_for(tmp_path / "done.jsonl.gz") == tmp_path / "done_results.jsonl"


def test_bad_completion_files_give_one_line_errors(tmp_path):
    path = _write(
        tmp_path / "done.jsonl",
        [{"task_id": "t/0", "completion": "x"}, {"task_id": "t/9", "completion": "y"}],
    )
    with pytest.raises(CodelmError, match=r":2: task_id 't/9' is not in the problems file"):
        load_completions(path, {"t/0"})
    assert load_completions(path) == {"t/0": ["x"], "t/9": ["y"]}
    _write(path, [{"task_id": "t/0"}])
    with pytest.raises(CodelmError, match=r":1: missing field 'completion'"):
        load_completions(path)
    _write(path, [])
    with pytest.raises(CodelmError, match="has no completions"):
        load_completions(path)


def test_build_program_calls_check_on_the_entry_point():
    problem = Problem(**GOOD)
    program = build_program(problem, "    return x + 1\n")
    assert program.startswith(GOOD["prompt"] + "    return x + 1\n")
    assert program.rstrip().endswith("check(f)")
    assert "codelm-sandbox" not in program  # the marker never lives in the program's text


def test_score_completions_counts_each_sample():
    problems = load_problems(default_problems_path())[:3]
    a, b, c = problems
    completions = {
        a.task_id: [a.canonical_solution, WRONG_BODY, a.canonical_solution, "    import sys; sys.exit(0)\n"],
        b.task_id: [WRONG_BODY] * 4,
        # c has no completions: it is left out, not counted as a failure
    }
    rows, summary = score_completions(problems, completions, workers=2, ks=(1, 2, 10))
    assert [row["task_id"] for row in rows] == [a.task_id, b.task_id]
    assert (rows[0]["n"], rows[0]["c"], rows[1]["c"]) == (4, 2, 0)
    assert [s["passed"] for s in rows[0]["samples"]] == [True, False, True, False]
    assert rows[0]["samples"][1]["status"] == "failed" and rows[0]["samples"][1]["error"]
    assert rows[0]["pass@1"] == pytest.approx(0.5) and rows[0]["pass@2"] == pytest.approx(pass_at_k(4, 2, 2))
    assert "pass@10" not in rows[0] and "pass@10" not in summary  # n < 10
    assert summary == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(pass_at_k(4, 2, 2) / 2)}


def test_score_file_writes_results_and_report(tmp_path):
    problems = load_problems(default_problems_path())
    first, second = problems[0], problems[1]
    done = _write(
        tmp_path / "done.jsonl",
        [
            {"task_id": first.task_id, "completion": first.canonical_solution},
            {"task_id": second.task_id, "completion": WRONG_BODY},
        ],
    )
    report = score_file(None, done, json_out=tmp_path / "report.json", workers=2)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert (report["problems"], report["samples"], report["passed"]) == (2, 2, 1)
    assert report["pass@1"] == pytest.approx(0.5) and "pass@10" not in report
    assert report["statuses"] == {"failed": 1, "passed": 1}
    assert len(report["problems_missing"]) == len(problems) - 2
    assert report["sandbox"]["isolation"] in ("namespaces", "rlimits")
    rows = [json.loads(line) for line in (tmp_path / "done_results.jsonl").read_text().splitlines()]
    assert report["results_file"] == str(tmp_path / "done_results.jsonl")
    assert [(r["task_id"], r["c"]) for r in rows] == [(first.task_id, 1), (second.task_id, 0)]
    with pytest.raises(CodelmError, match="not in the problems file"):
        score_file(None, _write(tmp_path / "other.jsonl", [{"task_id": "HumanEval/0", "completion": ""}]))


# ---------------------------------------------------------------- MBPP's format: instruction problems

# Two problems of our own in MBPP's layout: `text`, asserts that name the function, a reference.
MBPP = [
    {
        "task_id": 1,
        "text": "Write a function to count the vowels in a string.",
        "code": "def count_vowels(s):\n    return sum(ch in 'aeiou' for ch in s.lower())\n",
        "test_list": ["assert count_vowels('Banana') == 3", "assert count_vowels('xyz') == 0"],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {  # the sanitized layout (`prompt`, `test_imports`), and setup code with a blank line in a string
        "task_id": 2,
        "prompt": "Write a function that returns the hypotenuse of a right triangle.",
        "code": "import math\ndef hypotenuse(a, b):\n    return math.sqrt(a * a + b * b)\n",
        "test_imports": ["import math"],
        "test_setup_code": 'NOTE = """a\n\nb"""\nassert NOTE.count("\\n") == 2',
        "test_list": ["assert math.isclose(hypotenuse(3, 4), 5.0)"],
    },
]


def test_mbpp_lines_are_instruction_problems_checked_by_their_asserts(tmp_path):
    path = _write(tmp_path / "mbpp.jsonl", MBPP)
    first, second = load_problems(path)
    assert (first.task_id, first.entry_point, first.prompt) == ("1", "count_vowels", "")
    assert first.instruction == (
        "Write a function to count the vowels in a string.\nYour code should pass these tests:\n\n"
        "assert count_vowels('Banana') == 3\nassert count_vowels('xyz') == 0"
    )
    assert second.entry_point == "hypotenuse"  # math.isclose is an attribute call, not the function
    assert second.test == (
        'def check(candidate):\n    import math\n    NOTE = """a\n\n    b"""\n'
        '    assert NOTE.count("\\n") == 2\n'
        "    assert math.isclose(hypotenuse(3, 4), 5.0)\n"
    )  # the setup's blank line kept: its assert holds when the reference passes below
    # decontamination (the lenient reading) looks for MBPP's reference, its `code` (and for the
    # sanitized layout's `prompt`, its text)
    lenient = [p.parts for p in load_problems(path, runnable=False)]
    assert lenient == [(MBPP[0]["code"],), (MBPP[1]["prompt"], MBPP[1]["code"])]
    wrong = "def count_vowels(s):\n    return len(s)\n"
    done = _write(
        tmp_path / "done.jsonl",
        [{"task_id": str(p["task_id"]), "completion": p["code"]} for p in MBPP]
        + [{"task_id": "1", "completion": wrong}, {"task_id": "2", "completion": "def hypotenuse(a, b):\n"}],
    )
    report = score_file(path, done, workers=2)
    assert (report["samples"], report["passed"]) == (4, 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"test_list": []}, r":1: field 'test_list' must be a non-empty list of asserts"),
        ({"test_list": "assert f(1)"}, r"must be a non-empty list"),
        ({"test_list": ["assert len('ab') == 2"]}, r"the first test calls no function"),
        ({"test_imports": "import math"}, r"'test_imports' must be a list of strings"),
        ({"text": None}, r":1: missing field 'prompt'"),
    ],
)
def test_bad_mbpp_lines_give_one_line_errors(tmp_path, change, message):
    row = {k: v for k, v in {**MBPP[0], **change}.items() if v is not None}
    with pytest.raises(CodelmError, match=message):
        load_problems(_write(tmp_path / "mbpp.jsonl", [row]))


def test_an_instruction_problem_is_asked_in_instruction_mode(tmp_path, monkeypatch):
    from codelm.evaluate import report as report_mod
    from codelm.evaluate.report import EvalConfig, pass_at_k_report

    asked = []

    def fake_batch(model, tok, prompts, cfg, n):
        asked.extend(prompts)
        return [[type("C", (), {"text": MBPP[len(asked) - 1]["code"]})()] * n]

    monkeypatch.setattr(report_mod, "generate_batch", fake_batch)
    path = _write(tmp_path / "mbpp.jsonl", MBPP)
    quiet = type("Quiet", (), {"print": lambda *a, **k: None})()
    summary = pass_at_k_report(None, None, path, EvalConfig(samples=2, workers=2), None, quiet)
    assert [(p.mode, p.text, p.instruction) for p in asked] == [
        ("instruction", "", problem.instruction) for problem in load_problems(path)
    ]
    assert summary["pass@1"] == 1.0
