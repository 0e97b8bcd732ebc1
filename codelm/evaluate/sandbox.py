"""Run an untrusted Python program in a separate, locked-down process.

A generated program never runs in our process. `run_program` starts a fresh
interpreter through a small bootstrap (`_sandbox_boot.py`), waits for it under
a wall clock, and reports what happened. Each run gets:

- a scrubbed environment (PATH, HOME, TMPDIR, LANG only: no inherited secrets);
- a fresh working directory, which is also its HOME and TMPDIR;
- rlimits on CPU time, address space, file size, open files and processes;
- a wall-clock timeout, after which its whole process group is killed;
- a supervisor as its parent, so "kill my parent" hits the sandbox, not us;
- a pass only when the done marker appears: a random nonce, made per run and
  never part of the program's text, that the bootstrap prints after the
  program (tests included) ran to its end. `sys.exit(0)` or `os._exit(0)`
  before the tests therefore fail.

Two isolation modes; `SandboxResult.isolation` says which one was used:

- "namespaces" (where `unshare` can make a user namespace, as on these
  machines): the program runs as an unprivileged uid (nobody when we are
  root) mapped to root in fresh user, mount, pid and network namespaces, with
  every capability dropped and no_new_privs set. The whole filesystem is
  read-only; /tmp and /dev/shm are private tmpfs of `tmp_mb` each, which is
  where the program works. The network namespace has only a loopback that is
  down, so even 127.0.0.1 is unreachable. The pid namespace hides and protects
  every host process, and when the sandbox's first process dies, the kernel
  kills the rest. RLIMIT_NPROC counts only the sandbox's own tasks (user
  namespaces count per namespace), which is what bounds a fork bomb: root
  itself ignores RLIMIT_NPROC, hence the unprivileged uid. Inside, the
  program sees itself as uid 0, a root without any capability. `setpriv
  --pdeathsig` ties the sandbox to the thread that started it: if we are
  killed, the sandbox dies with us. If any step fails
  (no user namespaces, a mount that will not turn read-only), the sandbox
  refuses to start in this mode and "auto" falls back to rlimits.
- "rlimits" (the fallback): the same rlimits and scrubbed environment, a host
  temporary directory, the unprivileged uid only when we are root, and Python's
  `socket` refusing network sockets.

The program runs under the base interpreter of ours (never our venv), or the
system's python3 where the unprivileged uid cannot reach that one (pyenv under
/root): it gets the standard library only. `resolve` says which.

What the sandbox does NOT isolate:

- Memory is limited per process (address space), not per sandbox: a program
  may use up to `max_processes * memory_mb`. There is no cgroup. Likewise CPU
  time is per process; only the wall clock bounds the sandbox as a whole.
- In namespaces mode /tmp and /dev/shm are RAM-backed: up to `2 * tmp_mb` per
  run. In rlimits mode files go to the host disk; only their size is limited,
  not their number.
- Reading: the program can read every file the unprivileged uid can read,
  i.e. everything world-readable on the host. Keep secrets out of
  world-readable files.
- It shares our kernel, with no seccomp filter: a kernel exploit escapes.
  This is containment for buggy or careless generated code, not a boundary
  against a determined attacker.
- The done marker lives in the program's own interpreter (the tests must run
  there), so code that deliberately searches its interpreter's memory can
  forge a pass. It stops early exits, not forgery.
- UNIX sockets reachable by a filesystem path are governed only by their
  file permissions.
- In rlimits mode: no network namespace (ctypes or a subprocess such as curl
  still reaches the network); sandboxes share the uid, so they can signal one
  another; children that start their own session escape the group kill, and
  the program's descendants may outlive an evaluator that is killed; when
  we are not root the program runs as our user, with our files and processes
  within its reach.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from codelm.errors import CodelmError

ISOLATIONS = ("auto", "namespaces", "rlimits")
SETUP_FAILED = 86  # the bootstrap's exit status when the sandbox could not be set up
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 10.0  # wall clock for one program, start-up included; then the group is killed
    cpu_s: int = 10  # RLIMIT_CPU per process, in CPU seconds: a busy loop dies even if the clock is long
    memory_mb: int = 1024  # RLIMIT_AS per process: an 8 GB allocation fails with MemoryError
    file_size_mb: int = 16  # RLIMIT_FSIZE: a larger write fails with EFBIG
    tmp_mb: int = 64  # size of each private tmpfs (/tmp, /dev/shm) in namespaces mode
    max_processes: int = 32  # RLIMIT_NPROC headroom: tasks (processes and threads) the program may add
    max_open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 16_384  # how much of the end of stdout and of stderr is kept
    isolation: str = "auto"  # "auto" (namespaces if they work here, else rlimits), "namespaces", "rlimits"
    uid: int = 65534  # unprivileged uid and gid to run as when we are root (nobody)
    gid: int = 65534
    python: str = ""  # interpreter for the program; "" picks one the sandbox can run (see _candidate_pythons)

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise CodelmError(
                f"sandbox isolation must be one of {', '.join(ISOLATIONS)}, got {self.isolation!r}"
            )
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "tmp_mb", "max_processes"):
            if getattr(self, name) <= 0:
                raise CodelmError(f"sandbox {name} must be positive, got {getattr(self, name)}")
        if self.max_open_files < 16 or self.output_bytes < 256:
            raise CodelmError("sandbox max_open_files must be >= 16 and output_bytes >= 256")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # the done marker appeared and the program exited with status 0
    status: str  # "passed", "failed", "timeout" (wall clock or CPU limit) or "error" (sandbox failed)
    returncode: int | None  # of the sandbox's outermost process; negative: killed by that signal
    stdout: str  # the last output_bytes of stdout, markers removed
    stderr: str  # the last output_bytes of stderr
    isolation: str  # "namespaces" or "rlimits"
    duration_s: float

    @property
    def error(self) -> str:
        """The last non-empty line of stderr, e.g. 'AssertionError' or 'MemoryError'; for a
        silent death by a signal, which one (a program that kills its runner ends so)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
        if self.returncode is not None and self.returncode < 0 and not self.passed:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:  # a real-time signal has no name
                return f"killed by signal {-self.returncode}"
        return ""

    def to_dict(self) -> dict:
        return asdict(self)


def site_dirs() -> list[str]:
    """Where this interpreter finds its installed packages (pytest, pandas, ...). A program
    that needs them adds these to its `sys.path`: the sandbox's interpreter has none."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(p for p in (paths["purelib"], paths["platlib"]) if Path(p).is_dir()))


@functools.cache
def _boot_source() -> str:
    return Path(__file__).with_name("_sandbox_boot.py").read_text(encoding="utf-8")


def _drop_privileges(cfg: SandboxConfig) -> dict:
    if os.geteuid() != 0:
        return {}
    return {"user": cfg.uid, "group": cfg.gid, "extra_groups": []}


def _argv(mode: str, cfg: SandboxConfig) -> list[str]:
    argv = [cfg.python, "-I", "-X", "utf8", "-c", _boot_source()]
    if mode == "namespaces":
        # --kill-child: if unshare dies (our group kill), the pid namespace dies.
        ns = [
            "--user",
            "--map-root-user",
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--mount-proc",
        ]
        argv = [shutil.which("unshare") or "unshare", *ns, "--", *argv]
    setpriv = shutil.which("setpriv")
    if setpriv:
        # If the thread that started it dies (we were killed), so does the sandbox.
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    return argv


class _Stream:
    """Keeps the tail of a pipe and notices markers, even when split across reads."""

    def __init__(self, keep: int, markers: Sequence[bytes]) -> None:
        self.keep, self.markers = keep, tuple(markers)
        self.seen: set[bytes] = set()
        self._tail = bytearray()
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        window = self._carry + chunk
        self.seen.update(m for m in self.markers if m in window)
        self._carry = window[-max(len(m) for m in self.markers) :]
        self._tail += chunk
        if len(self._tail) > 2 * self.keep:
            del self._tail[: -self.keep]

    def text(self) -> str:
        data = bytes(self._tail[-self.keep :])
        for marker in self.markers:
            data = data.replace(marker, b"")
        return data.decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the process ended, without reaping it: its pid (our group id) stays reserved."""
    info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _feed(pipe, payload: bytes) -> None:
    # In a thread: a program bigger than the pipe buffer must not block the clock.
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.write(payload)
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.close()  # it died at start-up; its stderr says why


def _supervise(proc: subprocess.Popen, payload: bytes, cfg: SandboxConfig, streams: tuple) -> bool:
    """Feed stdin, collect output until the program ends or the clock runs out. True if timed out."""
    deadline = time.monotonic() + cfg.timeout_s
    threading.Thread(target=_feed, args=(proc.stdin, payload), daemon=True).start()
    sel = selectors.DefaultSelector()
    for pipe, stream in zip((proc.stdout, proc.stderr), streams, strict=True):
        sel.register(pipe, selectors.EVENT_READ, stream)
    # A pidfd becomes readable when the process ends: no polling where Linux has it.
    pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ, None)
    exited_at = None
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and _exited(proc):
                exited_at = now
                _kill_group(proc.pid)  # stragglers it left behind, which may hold our pipes
                if pidfd is not None:
                    sel.unregister(pidfd)
            if exited_at is not None and (len(sel.get_map()) == 0 or now - exited_at > 1.0):
                return False
            if exited_at is None and now >= deadline:
                _kill_group(proc.pid)
                return True
            # Once it ended, a short grace to drain the pipes; before, wait for output,
            # its end (pidfd) or the clock, polling only where there is no pidfd.
            polling = 1.0 if pidfd is not None else 0.02
            wait = 0.05 if exited_at is not None else min(deadline - now, polling)
            if not sel.get_map():
                time.sleep(wait)  # both pipes closed, no pidfd: poll for the end
                continue
            for key, _ in sel.select(timeout=wait):
                if key.data is None:
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.feed(chunk)
                else:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        _kill_group(proc.pid)  # not reaped yet, so the group id cannot have been reused
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _classify(returncode: int, timed_out: bool, started: bool, done: bool) -> str:
    if timed_out:
        return "timeout"
    if not started:
        return "error"
    if done and returncode == 0:
        return "passed"
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timeout"  # the CPU-time limit
    return "failed"


def _execute(code: str, cfg: SandboxConfig, mode: str) -> SandboxResult:
    start_marker = f"\n<<codelm-sandbox-start:{secrets.token_hex(16)}>>\n".encode()
    done_marker = f"\n<<codelm-sandbox-done:{secrets.token_hex(16)}>>\n".encode()
    hostdir = None
    if mode == "namespaces":
        workdir = "/tmp"  # the private tmpfs, inside the mount namespace; nothing on the host
    else:
        hostdir = workdir = tempfile.mkdtemp(prefix="codelm-sandbox-")
        if os.geteuid() == 0:
            os.chown(hostdir, cfg.uid, cfg.gid)
    limits = {
        k: getattr(cfg, k) for k in ("cpu_s", "memory_mb", "file_size_mb", "max_processes", "max_open_files")
    }
    header = {"mode": mode, "workdir": workdir, "tmp_mb": cfg.tmp_mb, "limits": limits}
    header.update(start=start_marker.decode(), done=done_marker.decode())
    payload = json.dumps(header).encode() + b"\n" + code.encode("utf-8", errors="surrogatepass")
    env = {"PATH": SAFE_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    streams = (
        _Stream(cfg.output_bytes, [start_marker, done_marker]),
        _Stream(cfg.output_bytes, [start_marker]),
    )
    began = time.monotonic()
    try:
        proc = subprocess.Popen(
            _argv(mode, cfg),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=hostdir or "/",
            env=env,
            start_new_session=True,  # its own process group, killed as one
            **_drop_privileges(cfg),
        )
        timed_out = _supervise(proc, payload, cfg, streams)
    except OSError as exc:
        return SandboxResult(False, "error", None, "", f"sandbox: {exc}", mode, time.monotonic() - began)
    finally:
        if hostdir is not None:
            shutil.rmtree(hostdir, ignore_errors=True)
    out, err = streams
    status = _classify(proc.returncode, timed_out, start_marker in out.seen, done_marker in out.seen)
    return SandboxResult(
        passed=status == "passed",
        status=status,
        returncode=proc.returncode,
        stdout=out.text(),
        stderr=err.text(),
        isolation=mode,
        duration_s=round(time.monotonic() - began, 4),
    )


def _candidate_pythons(cfg: SandboxConfig) -> list[str]:
    if cfg.python:
        return [cfg.python]
    # The base interpreter first (not the venv's: the program gets the standard
    # library and nothing of ours). It may sit where the unprivileged uid cannot
    # reach it (under /root), so the system's python3 is the second choice.
    found = [getattr(sys, "_base_executable", "") or sys.executable, shutil.which("python3", path=SAFE_PATH)]
    return list(dict.fromkeys(p for p in found if p))


@functools.cache
def _resolve(isolation: str, python: str, uid: int, gid: int) -> tuple[str, str]:
    """The (mode, interpreter) that runs a trivial program here; probed once per process."""
    cfg = SandboxConfig(isolation=isolation, python=python, uid=uid, gid=gid)
    modes = ["namespaces", "rlimits"] if isolation == "auto" else [isolation]
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        modes = [m for m in modes if m != "namespaces"]
    reasons = []
    for mode in modes:
        for candidate in _candidate_pythons(cfg):
            probe = _execute("print('ok')", replace(cfg, python=candidate), mode)
            if probe.passed:
                return mode, candidate
            reasons.append(f"{mode} with {candidate}: {probe.error or probe.status}")
    raise CodelmError("the sandbox cannot run a program here: " + ("; ".join(reasons) or "unshare not found"))


def resolve(cfg: SandboxConfig | None = None) -> tuple[str, str]:
    """(isolation mode, interpreter) that `run_program` uses with this config: the mode is
    'namespaces' where they work here (when `cfg.isolation` is 'auto'), else 'rlimits'."""
    cfg = cfg or SandboxConfig()
    return _resolve(cfg.isolation, cfg.python, cfg.uid, cfg.gid)


def run_program(code: str, cfg: SandboxConfig | None = None) -> SandboxResult:
    """Run `code` as a program in the sandbox; it passes only if it runs to its end."""
    cfg = cfg or SandboxConfig()
    mode, python = resolve(cfg)
    return _execute(code, replace(cfg, python=python), mode)


def run_many(
    programs: Sequence[str],
    cfg: SandboxConfig | None = None,
    workers: int | None = None,
    on_done: Callable[[int, SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """Run many programs, `workers` at a time (default: the number of cores); results in input order.

    Each program is its own sandboxed process; the threads only wait on them.
    `on_done(index, result)` is called as each finishes (e.g. to advance a progress bar).
    """
    cfg = cfg or SandboxConfig()
    mode, python = resolve(cfg)  # probe once, before the threads start
    cfg = replace(cfg, python=python)
    workers = max(1, workers or os.cpu_count() or 1)

    def one(index: int) -> SandboxResult:
        result = _execute(programs[index], cfg, mode)
        if on_done is not None:
            on_done(index, result)
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(programs))))
