"""The program the test writer runs inside the sandbox: one pytest session, reported line by line.

codelm never imports this module. `runner.py` reads its source and sends it to
`evaluate/sandbox.py` with a JSON payload appended as `main(PAYLOAD)`. Inside the
sandbox it writes the module's files and the test file into its working
directory, puts that directory and codelm's site-packages (for pytest, coverage
and the module's own imports) on `sys.path`, and runs pytest in this process.

Each test's start and outcome go out as soon as they happen, one JSON line each
behind a prefix, on a duplicate of stdout that pytest's capture does not touch.
So when a test kills the process (`os._exit`, a crash) or hangs past the
sandbox's clock, the runner still knows which test it was. A test that runs past
`test_timeout_s` is interrupted by SIGALRM and fails. With `coverage` set, each
test's executed lines and arcs in that file are reported (coverage.py, one
dynamic context per test; under "" all of them together), and the file's statements
and possible branches.
"""

import json
import os
import re
import signal
import sys

PREFIX = "@@codelm-testgen@@ "


class TestTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimeout("the test ran too long")


class Reporter:
    """A pytest plugin: per-test start/outcome lines, a clock per test, coverage contexts."""

    def __init__(self, out, timeout, cov):
        self.out, self.timeout, self.cov = out, timeout, cov
        self.failed = {}

    def emit(self, **event):
        # On a line of its own: pytest's own output shares the pipe.
        self.out.write("\n" + PREFIX + json.dumps(event) + "\n")
        self.out.flush()

    def pytest_runtest_logstart(self, nodeid, location):
        self.emit(event="start", test=nodeid.split("::")[-1])

    def pytest_runtest_call(self, item):
        if self.cov is not None:
            self.cov.switch_context(item.name)
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)

    def pytest_runtest_teardown(self, item):
        signal.setitimer(signal.ITIMER_REAL, 0)
        if self.cov is not None:
            self.cov.switch_context("")

    def pytest_runtest_logreport(self, report):
        name = report.nodeid.split("::")[-1]
        if report.failed and name not in self.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            self.failed[name] = crash.message.splitlines()[0] if crash and crash.message else report.when
        if report.when == "teardown":
            outcome = "failed" if name in self.failed else "passed"
            error = self.failed.get(name, "")
            self.emit(event="outcome", test=name, id=report.nodeid, outcome=outcome, error=error)

    def pytest_collectreport(self, report):
        if report.failed:
            self.emit(event="collect_error", error=str(report.longrepr).strip().splitlines()[-1])

    def pytest_internalerror(self, excrepr, excinfo):
        # pytest reports a SystemExit raised while importing a test file (a module that
        # calls `sys.exit()` when imported) as its own internal error, not a collection error.
        self.emit(event="collect_error", error=f"{excinfo.typename}: {excinfo.value}")


def _coverage_of(cov, path, names):
    cov.stop()
    data = cov.get_data()
    report = os.path.join(os.getcwd(), "_coverage.json")
    try:
        cov.json_report(outfile=report)  # the file's statements and branches, for totals
    except Exception:  # coverage.py's NoDataError: the file never ran (it was not imported)
        return {"statements": [], "branches": [], "tests": {}}
    with open(report, encoding="utf-8") as f:
        files = json.load(f)["files"]
    summary = next(iter(files.values()), {})
    statements = summary.get("executed_lines", []) + summary.get("missing_lines", [])
    branches = summary.get("executed_branches", []) + summary.get("missing_branches", [])
    data.set_query_contexts(None)
    per_test = {"": {"lines": sorted(data.lines(path) or []), "arcs": sorted(data.arcs(path) or [])}}
    for name in names:
        data.set_query_contexts(["^" + re.escape(name) + "$"])
        per_test[name] = {"lines": sorted(data.lines(path) or []), "arcs": sorted(data.arcs(path) or [])}
    return {"statements": sorted(statements), "branches": sorted(branches), "tests": per_test}


def main(payload):
    workdir = os.getcwd()
    for rel, text in payload["files"].items():
        path = os.path.join(workdir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    sys.path[:0] = [workdir]
    sys.path += [os.path.join(workdir, p) for p in payload["site"]]  # relative: copied in
    sys.dont_write_bytecode = True
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the venv's plugins stay out
    out = os.fdopen(os.dup(1), "w", buffering=1)
    reporter = Reporter(out, payload["test_timeout_s"], None)
    reporter.emit(event="hash", value=hash("codelm"))  # differs per run: a fresh hash seed
    import pytest

    cov = None
    if payload["coverage"]:
        import coverage

        target = os.path.join(workdir, payload["coverage"])
        cov = coverage.Coverage(data_file=None, branch=True, include=[target], config_file=False)
        cov.start()
        reporter.cov = cov
    # The module under test is ours, even if pytest or coverage loaded one of that name
    # (a standard-library module such as textwrap): imported again, now, from the copy.
    for name in list(sys.modules):
        if name == payload["module"] or name.startswith(payload["module"] + "."):
            del sys.modules[name]
    args = [payload["test_file"], "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir", workdir]
    code = pytest.main(args, plugins=[reporter])
    loaded = sys.modules.get(payload["module"])
    origin = getattr(getattr(loaded, "__spec__", None), "origin", None) or ""
    # A frozen or built-in module (ntpath, os) is imported before any copy on sys.path.
    reporter.emit(event="module", ours=loaded is None or origin.startswith(workdir))
    if cov is not None:
        reporter.emit(event="coverage", **_coverage_of(cov, target, payload["tests"]))
    reporter.emit(event="exit", code=int(code))
