"""The test writer: the filter chain on hand-written candidates, its static checks, the
sandboxed runner, bad input, and one end-to-end run with a tiny trained model."""

from __future__ import annotations

import ast
import json
import textwrap

import pytest

from codelm.cli import main
from codelm.testgen import TestgenConfig, write_tests
from codelm.testgen.chain import Candidate, check_static
from codelm.testgen.runner import Job, Runner
from codelm.testgen.static import asserts_on_target, attribute, calls_target, parse_test, split_candidates
from codelm.testgen.targets import find_targets, load_module, source_window
from tests.conftest import TINY_MODEL

CALC = '''\
"""A small module under test."""


def clamp(x, lo, hi):
    """Clamp x into [lo, hi]."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


class Stack:
    def __init__(self):
        self.items = []

    def push(self, x):
        self.items.append(x)

    def pop(self):
        return self.items.pop()


def _private(x):
    return x
'''

FAST = TestgenConfig(test_timeout_s=2.0, max_mutants=12)


@pytest.fixture
def calc(tmp_path):
    pkg = tmp_path / "proj" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "calc.py").write_text(CALC)
    return pkg / "calc.py"


def _candidates(tmp_path, victim) -> str:
    # One of each kind the chain must drop, and one good test. The flaky one shares state
    # with the good one: it passes only when it runs first, as the file order has it.
    text = f"""\
        import os
        import random

        from pkg.calc import Stack, clamp

        SEEN = []


        def test_clamp_flaky():
            SEEN.append(random.random())
            assert clamp(len(SEEN), 0, 5) == 1


        def test_clamp_good():
            SEEN.append(random.random())
            assert clamp(5, 0, 3) == 3
            assert clamp(-1, 0, 3) == 0


        def test_clamp_good_again():
            SEEN.append(random.random())
            assert clamp(5, 0, 3) == 3
            assert clamp(-1, 0, 3) == 0


        def test_clamp_fails():
            assert clamp(5, 0, 3) == 4


        def test_clamp_no_assert():
            clamp(1, 0, 3)


        def test_never_calls_the_target():
            assert Stack().items == []


        def test_clamp_not_none():
            assert clamp(2, 0, 3) is not None


        def test_clamp_loops_forever():
            while True:
                clamp(1, 0, 2)
            assert clamp(1, 0, 2) == 1


        def test_clamp_deletes_outside():
            os.remove({str(victim)!r})
            assert clamp(1, 0, 2) == 1
    """
    path = tmp_path / "candidates.py"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_the_chain_keeps_only_the_good_test_and_says_why_it_drops_each_other(calc, tmp_path):
    victim = tmp_path / "keep_me.txt"
    victim.write_text("precious")
    out = tmp_path / "out" / "test_calc_generated.py"
    report = tmp_path / "report.json"
    done = write_tests(
        str(calc), candidates=_candidates(tmp_path, victim), out=str(out), json_path=str(report), cfg=FAST
    )
    fates = {c.name: (c.fate, c.detail) for c in done.candidates}
    assert {name: fate for name, (fate, _) in fates.items()} == {
        "test_clamp_flaky": "flaky",
        "test_clamp_good": "kept",
        "test_clamp_good_again": "duplicate",
        "test_clamp_fails": "fails",
        "test_clamp_no_assert": "no_assert",
        "test_never_calls_the_target": "no_call",
        "test_clamp_not_none": "no_kill",
        "test_clamp_loops_forever": "fails",
        "test_clamp_deletes_outside": "fails",
    }
    assert "ran too long" in fates["test_clamp_loops_forever"][1]
    assert victim.read_text() == "precious"  # the host is untouched
    text = out.read_text()
    tree = ast.parse(text)
    assert [n.name for n in tree.body if isinstance(n, ast.FunctionDef)] == ["test_clamp_good"]
    assert "Kept 1 of 9" in text and "Mutation score" in text
    assert "import random\n\nfrom pkg.calc import clamp\n" in text  # os and Stack: unused
    data = json.loads(report.read_text())
    assert data["summary"]["kept"] == 1 and data["summary"]["candidates"] == 9
    assert sum(data["summary"]["dropped"].values()) + 1 == 9
    good = next(c for c in data["candidates"] if c["name"] == "test_clamp_good")
    assert good["mutants_killed"] > 0 and good["lines"]
    # Written atomically, never over an existing file without --force.
    with pytest.raises(Exception, match="exists"):
        write_tests(str(calc), candidates=_candidates(tmp_path, victim), out=str(out), cfg=FAST)


def test_a_test_of_the_in_range_branch_is_kept(calc, tmp_path):
    path = tmp_path / "c.py"
    path.write_text("from pkg.calc import clamp\n\n\ndef test_a():\n    assert clamp(1, 0, 2) == 1\n")
    done = write_tests(str(calc), candidates=str(path), out=str(tmp_path / "o.py"), cfg=FAST)
    assert [c.fate for c in done.candidates] == ["kept"]  # clamp(1, 0, 2): the in-range branch


def test_the_kept_file_passes_under_pytest_where_the_user_puts_it(calc, tmp_path):
    import subprocess
    import sys

    path = tmp_path / "c.py"
    path.write_text(
        "from pkg.calc import Stack, clamp\n\n\n"
        "def test_pop():\n    s = Stack()\n    s.push(3)\n    assert s.pop() == 3\n\n\n"
        "def test_clamp():\n    assert clamp(9, 0, 3) == 3\n"
    )
    done = write_tests(str(calc), candidates=str(path), cfg=FAST)
    assert done.out == calc.parent.parent / "test_calc_generated.py"
    assert sorted(c.target.qualname for c in done.candidates if c.fate == "kept") == ["Stack.pop", "clamp"]
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(done.out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2 passed" in ran.stdout


def _fn(src: str) -> ast.FunctionDef:
    node = parse_test(textwrap.dedent(src)).node
    assert node is not None
    return node


def test_static_checks_follow_the_target_s_result(calc):
    targets = {t.qualname: t for t in find_targets(load_module(calc))}
    clamp, push, pop = targets["clamp"], targets["Stack.push"], targets["Stack.pop"]
    assert "_private" not in targets and "Stack.__init__" not in targets
    derived = _fn("def test_a():\n    y = clamp(1, 0, 2)\n    z = [y]\n    assert z == [1]\n")
    assert calls_target(derived, clamp) and asserts_on_target(derived, clamp)
    raises = _fn("def test_b():\n    with pytest.raises(TypeError):\n        clamp(None, 0, 1)\n")
    assert asserts_on_target(raises, clamp)
    unrelated = _fn("def test_c():\n    clamp(1, 0, 2)\n    x = 3\n    assert x == 3\n")
    assert calls_target(unrelated, clamp) and not asserts_on_target(unrelated, clamp)
    method = _fn("def test_d():\n    s = Stack()\n    s.push(1)\n    assert s.items == [1]\n")
    assert asserts_on_target(method, push) and not calls_target(method, pop)
    both = _fn("def test_e():\n    s = Stack()\n    s.push(1)\n    assert s.pop() == 1\n")
    assert attribute(both, [clamp, push, pop]) == pop
    assert not calls_target(_fn("def test_f():\n    assert push == 1\n"), push)
    assert parse_test("def helper():\n    pass\n").node is None
    assert parse_test("def test_x(:\n").error.startswith("does not parse")
    cands = [Candidate(clamp, "def test_x(:\n", "plain"), Candidate(clamp, "x = 1\n", "plain")]
    check_static(cands, set())
    assert [c.fate for c in cands] == ["parse", "parse"]


def test_split_candidates_keeps_the_header_and_decorated_tests():
    header, tests = split_candidates(
        "import pytest\n\nX = 1\n\n\n@pytest.mark.parametrize('a', [1])\ndef test_a(a):\n    assert a\n\n\n"
        "def helper():\n    return 2\n\n\ndef test_b():\n    assert helper() == 2\n"
    )
    assert "import pytest" in header and "def helper" in header and "test_" not in header
    assert [t.splitlines()[0] for t in tests] == ["@pytest.mark.parametrize('a', [1])", "def test_b():"]


def test_the_source_window_keeps_the_target_whole(calc):
    module = load_module(calc)
    pop = next(t for t in find_targets(module) if t.qualname == "Stack.pop")
    window = source_window(module, pop, 4)
    assert "class Stack:" in window and "def pop(self):" in window and "return self.items.pop()" in window
    assert source_window(module, pop, 1000) == module.source


def test_a_test_that_kills_its_sandbox_is_blamed_alone_and_coverage_is_per_test(calc):
    module = load_module(calc)
    runner = Runner(module, "import os\n\nfrom pkg.calc import clamp\n", test_timeout_s=2.0)
    tests = (
        ("test_low", "def test_low():\n    assert clamp(-1, 0, 3) == 0\n"),
        ("test_exit", "def test_exit():\n    os._exit(3)\n"),
        ("test_high", "def test_high():\n    assert clamp(5, 0, 3) == 3\n"),
    )
    (res,) = runner.run_jobs([Job(tests, coverage=True)])
    assert res.outcomes["test_low"].passed and res.outcomes["test_high"].passed
    assert not res.outcomes["test_exit"].passed and "ended" in res.outcomes["test_exit"].error
    lines = {name: set(got["lines"]) for name, got in res.coverage["tests"].items()}
    assert 7 in lines["test_low"] and 7 not in lines["test_high"]  # `return lo`
    assert 9 in lines["test_high"] and 9 not in lines["test_low"]  # `return hi`


def _cli_error(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_is_a_one_line_error(calc, tmp_path, capsys):
    assert "no such file" in _cli_error(
        capsys, ["testgen", str(tmp_path / "nope.py"), "--candidates", "x.py"]
    )
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    assert "does not parse" in _cli_error(capsys, ["testgen", str(bad), "--candidates", "x.py"])
    private = tmp_path / "private.py"
    private.write_text("def _f():\n    return 1\n")
    assert "no public functions" in _cli_error(capsys, ["testgen", str(private), "--candidates", "x.py"])
    missing = tmp_path / "needs.py"
    missing.write_text("import not_a_module_codelm\n\n\ndef f():\n    return 1\n")
    cands = tmp_path / "c.py"
    cands.write_text("from needs import f\n\n\ndef test_f():\n    assert f() == 1\n")
    err = _cli_error(
        capsys, ["testgen", str(missing), "--candidates", str(cands), "--out", str(tmp_path / "o.py")]
    )
    assert "cannot be imported in the sandbox" in err and "not_a_module_codelm" in err
    exits = tmp_path / "exits.py"  # pytest calls a SystemExit at import its internal error
    exits.write_text("import sys\n\n\ndef f():\n    return 1\n\n\nsys.exit(3)\n")
    cands.write_text("from exits import f\n\n\ndef test_f():\n    assert f() == 1\n")
    err = _cli_error(
        capsys, ["testgen", str(exits), "--candidates", str(cands), "--out", str(tmp_path / "o.py")]
    )
    assert "cannot be imported in the sandbox: SystemExit: 3" in err
    frozen = tmp_path / "ntpath.py"  # frozen into Python 3.11: a copy never shadows it
    frozen.write_text("def splitext(p):\n    return p\n")
    cands.write_text("from ntpath import splitext\n\n\ndef test_f():\n    assert splitext('a.b')\n")
    err = _cli_error(
        capsys, ["testgen", str(frozen), "--candidates", str(cands), "--out", str(tmp_path / "o.py")]
    )
    assert "frozen or built into the interpreter" in err
    existing = tmp_path / "exists.py"
    existing.write_text("")
    err = _cli_error(capsys, ["testgen", str(calc), "--candidates", str(cands), "--out", str(existing)])
    assert "exists" in err and "--force" in err
    assert "not both" in _cli_error(capsys, ["testgen", str(calc)])
    assert "does not parse" in _cli_error(capsys, ["testgen", str(calc), "--candidates", str(bad)])
    assert "no function or method named nope" in _cli_error(
        capsys, ["testgen", str(calc), "--candidates", str(cands), "--function", "nope"]
    )


def test_end_to_end_with_a_tiny_trained_model(calc, tmp_path, corpus_dir, tokenizer, capsys):
    from codelm.data.build import build_dataset
    from codelm.train.config import TrainConfig
    from codelm.train.loop import train

    data = tmp_path / "data"
    build_dataset([str(corpus_dir)], data)
    tokenizer.save(tmp_path / "tok.json")
    cfg = TrainConfig(max_steps=4, epochs=0, batch_size=4, evals=1, dtype="fp32", fim_rate=0.0)
    model = dict(TINY_MODEL, block_size=256)
    train(data, tmp_path / "run", cfg, tokenizer=tmp_path / "tok.json", model_overrides=model)
    out, report = tmp_path / "gen.py", tmp_path / "gen.json"
    args = ["testgen", str(calc), "--run", str(tmp_path / "run"), "--n", "3", "--function", "clamp"]
    args += ["--out", str(out), "--json", str(report), "--max-mutants", "4", "--test-timeout", "2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "clamp: 3 candidates written" in captured.err and "-> " + str(out) in captured.out
    ast.parse(out.read_text())  # a valid file, whatever was kept
    summary = json.loads(report.read_text())["summary"]
    assert summary["candidates"] == 3
    assert summary["kept"] + sum(summary["dropped"].values()) == 3


def test_pytest_and_coverage_are_copied_in_where_the_sandbox_cannot_see_site_packages(calc, monkeypatch):
    from codelm.testgen import runner

    monkeypatch.setattr(runner, "_site_visible", lambda sandbox: False)  # as for a venv under /tmp
    program = Runner(load_module(calc), "").program(Job(()))
    assert "_codelm_site/_pytest/" in program and "_codelm_site/coverage/" in program
    job = Job((("test_high", "def test_high():\n    assert clamp(5, 0, 3) == 3\n"),), coverage=True)
    (res,) = Runner(load_module(calc), "from pkg.calc import clamp\n").run_jobs([job])
    assert res.outcomes["test_high"].passed
    assert 9 in res.coverage["tests"]["test_high"]["lines"]  # `return hi`


def test_the_sandbox_gets_the_package_without_its_tests_or_conftest(calc):
    (calc.parent / "conftest.py").write_text("raise SystemExit('loaded')\n")
    (calc.parent / "test_calc.py").write_text("def test_x():\n    pass\n")
    (calc.parent / "util.py").write_text("X = 1\n")
    module = load_module(calc)
    assert (module.name, set(module.files)) == ("pkg.calc", {"pkg/__init__.py", "pkg/calc.py", "pkg/util.py"})


def test_the_file_keeps_imports_that_the_header_s_helpers_use():
    from codelm.testgen.report import _used_header

    header = (
        "import os\nimport re\nfrom x import (\n    a,\n)\n\nfrom pkg import f, g\n\n\n"
        "def helper():\n    return os.sep\n"
    )
    kept = _used_header(header, "def test_a():\n    assert f(helper())\n")
    assert "import os\n" in kept and "import re" not in kept and "from pkg import f\n" in kept
    assert "from x import (\n    a,\n)" in kept  # a multi-line import stays whole
    compile(kept, "header", "exec")
