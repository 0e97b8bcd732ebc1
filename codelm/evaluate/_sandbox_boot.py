"""The first code that runs inside the sandbox, before the untrusted program.

codelm never imports this module. `sandbox.py` reads its source and runs it with
`python -I -c`, so it may use the standard library only. It reads a JSON header
line and the program from stdin, then:

1. in "namespaces" mode (it is user-namespace root in fresh user, mount, pid and
   network namespaces): remounts every mount read-only, puts small private
   tmpfs mounts on /tmp and /dev/shm, and drops every capability for good;
2. sets no_new_privs, so no setuid binary can raise privileges again;
3. sets the rlimits, blocks sockets in "rlimits" mode (no network namespace);
4. prints the start marker, forks, and runs the program in the child, so the
   parent the program sees is this supervisor and never the evaluator;
5. prints the done marker only after the program ran to its end.

Any failure before the start marker exits with status 86, which the evaluator
reports as a sandbox error rather than as a failing program.
"""

import contextlib
import ctypes
import json
import os
import resource
import sys
import traceback

SETUP_FAILED = 86
# Mount and prctl constants from <linux/mount.h> and <linux/prctl.h>.
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_RELATIME = 0x20, 0x400, 0x800, 0x1000, 0x200000
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
CAPABILITY_VERSION_3 = 0x20080522
# statvfs flags of a mount that a remount must keep, or the kernel refuses it
# (locked flags of a mount inherited from a more privileged namespace).
KEEP_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)

libc = ctypes.CDLL(None, use_errno=True)


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unescape_octal(raw):
    """mountinfo writes space, tab, newline and backslash in paths as \\ooo (octal)."""
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def mountpoints():
    """Every mount point, as bytes: paths need not be valid UTF-8."""
    with open("/proc/self/mountinfo", "rb") as f:
        return [unescape_octal(line.split()[4]) for line in f]


def lock_filesystem(tmp_mb):
    for point in mountpoints():
        try:
            flags = os.statvfs(point).f_flag
        except (PermissionError, FileNotFoundError):
            continue  # out of our sight, hence out of our reach too
        ms = MS_REMOUNT | MS_BIND | MS_RDONLY
        for st_flag, ms_flag in KEEP_FLAGS:
            if flags & st_flag:
                ms |= ms_flag
        check(libc.mount(None, point, None, ms, None), f"remount {point!r} read-only")
    for point in ("/tmp", "/dev/shm"):
        if os.path.isdir(point):
            opts = f"size={tmp_mb}m,mode=1777".encode()
            check(
                libc.mount(b"tmpfs", point.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts), f"tmpfs {point}"
            )


def drop_capabilities():
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        check(libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0), "drop bounding capability")
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: all empty
    check(libc.capset(header, data), "capset")


def my_task_count():
    """Tasks (processes and threads) of our real uid that we can see: RLIMIT_NPROC counts them."""
    uid, total = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


def set_limits(limits):
    mb = 1024 * 1024
    cpu = limits["cpu_s"]
    # Soft CPU limit sends SIGXCPU; the hard one a second later is SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # RLIMIT_NPROC counts every task of the uid. In a user namespace that is
    # the sandbox alone; without one it includes the uid's other processes.
    nproc = my_task_count() + limits["max_processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def block_sockets():
    """Refuse network sockets from Python. Code that reaches the OS another way is not stopped."""
    import _socket
    import socket

    def guard(family, fileno):
        # A family of -1 means the default, AF_INET; an existing fileno was opened before us.
        if fileno is None and family != socket.AF_UNIX:
            raise PermissionError(13, "network access is disabled in the codelm sandbox")

    class GuardedSocket(_socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            guard(family, fileno)
            super().__init__(family, type, proto, fileno)

    original_init = socket.socket.__init__

    def guarded_init(self, family=-1, type=-1, proto=-1, fileno=None):
        guard(family, fileno)
        original_init(self, family, type, proto, fileno)

    socket.socket.__init__ = guarded_init
    _socket.socket = _socket.SocketType = GuardedSocket


def run_program(code, done_marker):
    """Child: run the program as __main__; the done marker is printed only if it returns."""
    sys.argv = ["program.py"]
    scope = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
    status = 0
    try:
        exec(compile(code, "program.py", "exec"), scope)
    except SystemExit as exc:
        sys.stderr.write(f"sandbox: the program exited ({exc.code!r}) before its tests finished\n")
        status = exc.code if isinstance(exc.code, int) and exc.code != 0 else 1
    except BaseException:
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    if status == 0:
        os.write(1, done_marker)
    os._exit(status)


def supervise(child):
    """Parent: reap everything (as pid 1 orphans come to us) until the program's own process ends."""
    while True:
        pid, wstatus = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(wstatus)
            os._exit(code if code >= 0 else 128 - code)


def setup(header, code):
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the program reads EOF, never our pipe
    os.close(devnull)
    if header["mode"] == "namespaces":
        lock_filesystem(header["tmp_mb"])
        drop_capabilities()
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.chdir(header["workdir"])
    with open("program.py", "w", encoding="utf-8") as f:
        f.write(code)
    set_limits(header["limits"])
    if header["mode"] == "rlimits":
        block_sockets()


def main():
    try:
        header = json.loads(sys.stdin.buffer.readline())
        code = sys.stdin.buffer.read().decode("utf-8")
        setup(header, code)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
    start, done = header.pop("start").encode(), header.pop("done").encode()
    os.write(1, start)
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        run_program(code, done)
    del done
    supervise(child)


main()
