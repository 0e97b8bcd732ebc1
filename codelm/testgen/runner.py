"""Runs candidate tests under pytest inside codelm's sandbox, never in this process.

A `Job` is one pytest session: the module (or a mutant of it), the shared test
header, and some test functions in a given order. `run_jobs` runs jobs as
separate sandboxed programs, `workers` at a time (`evaluate/sandbox.py`: its own
processes, rlimits, a read-only filesystem where namespaces work, no network),
and returns each test's outcome. The sandbox gets codelm's site-packages on
`sys.path` read-only: pytest, coverage.py and whatever the module imports. Where
the sandbox cannot see them (a virtualenv under /tmp, which the sandbox replaces
with its own), pytest and coverage.py are copied into its directory instead, and
the module may import the standard library only.

A test that ends its process or hangs past the sandbox's clock is blamed alone:
the driver reports each test's start as it happens, so the runner marks the test
that was running as failed and runs the tests after it again in a new sandbox.

What it does not stop: a test runs in the same interpreter as the driver, so one
written to deceive can forge the driver's reports (as a program can forge the
sandbox's done marker). The chain guards against careless and broken tests, and the
sandbox keeps every test away from the host; neither proves a test honest.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass, replace
from pathlib import Path

from codelm.errors import CodelmError
from codelm.evaluate.sandbox import SandboxConfig, SandboxResult, run_many, site_dirs
from codelm.testgen.targets import Module

PREFIX = "@@codelm-testgen@@ "
TEST_FILE = "test_codelm_candidates.py"


@dataclass(frozen=True)
class Outcome:
    passed: bool
    error: str = ""  # the first line of why it failed


@dataclass(frozen=True)
class Job:
    tests: tuple[tuple[str, str], ...]  # (name, source) in the order pytest runs them
    module_source: str | None = None  # a mutant's text; None: the module as it is
    coverage: bool = False


@dataclass
class Result:
    outcomes: dict[str, Outcome]
    coverage: dict | None = None  # the driver's coverage event: statements, branches, per-test lines/arcs
    hash_value: int | None = None  # hash("codelm") in that interpreter: differs between hash seeds
    error: str = ""  # why pytest could not collect the test file (e.g. an import failed)
    module_ours: bool = True  # the tests imported the sandbox's copy (mutants reach them)


@functools.cache
def _driver_source() -> str:
    return Path(__file__).with_name("_pytest_driver.py").read_text(encoding="utf-8")


# What a session needs of site-packages when the sandbox cannot see them: a venv under
# /tmp is hidden behind the sandbox's private /tmp. Pure Python all (coverage.py runs its
# Python tracer without its C one).
SESSION_PACKAGES = ("pytest", "_pytest", "py", "pluggy", "iniconfig", "packaging", "coverage")
COPIED_SITE = "_codelm_site"  # where they go in the sandbox's directory


@functools.cache
def _site_visible(sandbox: SandboxConfig) -> bool:
    probe = f"import sys\nsys.path += {site_dirs()!r}\nimport pytest, coverage\n"
    return run_many([probe], replace(sandbox, timeout_s=60))[0].passed


@functools.cache
def _session_files() -> dict[str, str]:
    files = {}
    for name in SESSION_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise CodelmError(f"codelm testgen needs {name}: pip install pytest coverage")
        origin = Path(spec.origin)
        top = origin.parent if origin.name == "__init__.py" else origin  # a package or one file
        for f in sorted(top.rglob("*.py")) if top.is_dir() else [top]:
            files[f"{COPIED_SITE}/{f.relative_to(top.parent).as_posix()}"] = f.read_text(encoding="utf-8")
    return files


@dataclass(frozen=True)
class Runner:
    module: Module
    header: str  # imports and helpers shared by every test
    sandbox: SandboxConfig = SandboxConfig(timeout_s=120, cpu_s=120, memory_mb=2048, output_bytes=4 << 20)
    test_timeout_s: float = 5.0  # one test's clock; a loop that runs past it fails
    workers: int = 0  # sandboxes at a time; 0: one per core

    def program(self, job: Job) -> str:
        files, site = dict(self.module.files), site_dirs()
        if not _site_visible(self.sandbox):  # copied in; the module's own imports stay out
            files.update(_session_files())
            site = [COPIED_SITE, *site]
        if job.module_source is not None:
            files[self.module.relpath] = job.module_source
        tests = "\n\n".join(src.rstrip() for _, src in job.tests)
        files[TEST_FILE] = f"{self.header.rstrip()}\n\n\n{tests}\n"
        payload = {
            "files": files,
            "site": site,
            "module": self.module.name,
            "test_file": TEST_FILE,
            "tests": [name for name, _ in job.tests],
            "coverage": self.module.relpath if job.coverage else None,
            "test_timeout_s": self.test_timeout_s,
        }
        return _driver_source() + f"\n\nmain(json.loads({json.dumps(payload)!r}))\n"

    def _config(self, tests: int) -> SandboxConfig:
        # Each test has its own clock; the sandbox's covers them all, plus start-up.
        clock = min(self.sandbox.timeout_s, 20 + tests * (self.test_timeout_s + 1))
        return replace(self.sandbox, timeout_s=clock)

    def run_jobs(self, jobs: list[Job]) -> list[Result]:
        """Each job's outcomes; a test that took its sandbox down fails alone, the rest re-run."""
        if not jobs:
            return []
        results = [Result({}) for _ in jobs]
        pending, todo, cut = list(range(len(jobs))), list(jobs), set()
        while pending:
            sandboxed = run_many(
                [self.program(todo[i]) for i in pending],
                self._config(max(len(todo[i].tests) for i in pending)),
                workers=self.workers or None,
            )
            again = []
            for i, res in zip(pending, sandboxed, strict=True):
                left = _merge(results[i], todo[i], res)
                if left:
                    todo[i] = replace(todo[i], tests=left)
                    again.append(i)
                    cut.add(i)
            pending = again
        # A session that was cut short never reported its coverage: measure the tests that
        # passed again, in one session.
        redo = {i: tuple(t for t in jobs[i].tests if results[i].outcomes[t[0]].passed) for i in sorted(cut)}
        redo = {i: tests for i, tests in redo.items() if tests and jobs[i].coverage}
        again = self.run_jobs([Job(tests, jobs[i].module_source, True) for i, tests in redo.items()])
        for i, res in zip(redo, again, strict=True):
            results[i].coverage = res.coverage
        return results


def events(res: SandboxResult) -> list[dict]:
    """The driver's reports in a sandbox run's output: start, outcome, coverage, exit."""
    out = []
    for line in res.stdout.splitlines():
        if line.startswith(PREFIX):
            out.append(json.loads(line[len(PREFIX) :]))
    return out


def _merge(result: Result, job: Job, res: SandboxResult) -> tuple[tuple[str, str], ...]:
    """Fold one sandbox run into `result`; the tests still to run, if the run was cut short."""
    if res.status == "error":
        raise CodelmError(f"the sandbox failed: {res.error or 'no reason given'}")
    names = [name for name, _ in job.tests]
    started, exited = None, False
    for ev in events(res):
        kind = ev.pop("event")
        if kind == "start":
            started = ev["test"]
        elif kind == "outcome":
            result.outcomes[ev["test"]] = Outcome(ev["outcome"] == "passed", ev["error"])
            started = None
        elif kind == "collect_error":
            result.error = result.error or ev["error"]
            for name in names:
                result.outcomes.setdefault(name, Outcome(False, f"collection failed: {ev['error']}"))
        elif kind == "coverage":
            result.coverage = ev
        elif kind == "module":
            result.module_ours = ev["ours"]
        elif kind == "hash":
            result.hash_value = ev["value"]
        elif kind == "exit":
            exited = True
    if exited:
        for name in names:  # pytest ended without running it (e.g. an error at collection)
            result.outcomes.setdefault(name, Outcome(False, "not run"))
        return ()
    why = "the sandbox's clock ran out"
    if res.status != "timeout":
        why = f"the process ended (status {res.returncode})"
    if started is None:  # it died outside any test: nothing to blame but the session
        for name in names:
            result.outcomes.setdefault(name, Outcome(False, f"the session died: {why}"))
        return ()
    result.outcomes[started] = Outcome(False, why)
    return tuple((n, s) for n, s in job.tests if n not in result.outcomes)
