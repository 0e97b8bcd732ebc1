"""codelm's CPU kernel core (codelm/model/kernels_core.h, kernels_linear.h, kernels_block.h) on
every instruction set it is written for, without torch: tests/kernels_check.cpp compares each
kernel with a scalar reference.

The torch ops themselves are tested in test_model.py on this machine's ISA (and again with the
AVX2 build on an AVX-512 CPU). Here the same loops are checked for each branch of the vector
type: native (-march=native), AVX2 (-mno-avx512f, on an AVX-512 CPU), and NEON, cross-compiled
for aarch64 and run under qemu on an x86 host, since CI has no ARM machine. The NEON check
skips, naming what is missing, without `aarch64-linux-gnu-g++` or qemu (`.ci/run` installs
both: Debian's g++-aarch64-linux-gnu and qemu-user).

Also: where native.py builds the kernels and where it says why it does not.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from codelm import cbuild, hardware
from codelm.model import native

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "tests" / "kernels_check.cpp"
CXX = shutil.which(cbuild.compiler())
CROSS = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
KERNELS = ("vexp_nonpositive", "int8_linear", "bf16_linear", "fp32_linear", "attend_one")
KERNELS += ("rmsnorm", "layernorm", "swiglu", "gelu_tanh", "rope", "bf16_round", "add_into")  # a block's


def _build(compiler: str, flags: list[str], out: Path) -> Path:
    cmd = [compiler, "-O2", "-std=c++17", *flags, f"-I{native.SOURCE.parent}", str(CHECK), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _run(cmd: list[str], branch: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    # 77 (no vector branch for the target) fails too: each test runs only where its branch exists.
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert f"kernels_core.h: {branch} branch" in done.stdout, done.stdout[:500]
    assert "FAIL" not in done.stdout and "all passed" in done.stdout
    for kernel in KERNELS:  # each branch checks every kernel of the header
        assert f"ok   {kernel} " in done.stdout, kernel


@pytest.mark.skipif(CXX is None, reason=f"no C++ compiler ({cbuild.compiler()})")
@pytest.mark.skipif(hardware.detect().isa is None, reason="no vector ISA the kernels are written for")
def test_this_cpus_kernels_match_a_scalar_reference(tmp_path):
    # The branch -march=native picks: the real CPU's ISA (CODELM_CPU fakes are not compiled here).
    branch = hardware.detect().isa
    _run([str(_build(cbuild.compiler(), ["-march=native"], tmp_path / "check"))], branch)


@pytest.mark.skipif(
    hardware.detect().isa != "avx512" or CXX is None,
    reason="not an AVX-512 CPU with a compiler: the AVX2 branch is the native one, or none runs here",
)
def test_the_avx2_kernels_match_a_scalar_reference(tmp_path):
    _run([str(_build(cbuild.compiler(), ["-march=native", "-mno-avx512f"], tmp_path / "check"))], "avx2")


@pytest.mark.skipif(
    CROSS is None or QEMU is None,
    reason="no aarch64-linux-gnu-g++ or qemu-aarch64 to check the NEON kernels "
    "(Debian's g++-aarch64-linux-gnu and qemu-user, which .ci/run installs)",
)
def test_the_neon_kernels_match_a_scalar_reference_under_qemu(tmp_path):
    exe = _build(CROSS, ["-static", "-march=armv8-a"], tmp_path / "check-aarch64")
    _run([QEMU, str(exe)], "neon")


def test_off_linux_the_kernels_fall_back_to_aten_saying_why(monkeypatch):
    monkeypatch.delenv("CODELM_NATIVE", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    try:
        native.available.cache_clear()
        assert not native.available()
        why = native.reason()
        assert "darwin/arm64" in why and "aten" in why and "aarch64" in why and "\n" not in why
    finally:
        monkeypatch.undo()
        native.available.cache_clear()


@pytest.mark.parametrize("which", range(len(native.HEADERS)))
def test_editing_a_kernel_header_rebuilds(monkeypatch, tmp_path, which):
    """The build's cache key holds each header's text, not only kernels.cpp's."""
    before = native._library()
    header = native.HEADERS[which]
    edited = tmp_path / header.name
    edited.write_text(header.read_text() + "\n// edited\n")
    headers = list(native.HEADERS)
    headers[which] = edited
    monkeypatch.setattr(native, "HEADERS", tuple(headers))
    assert native._library() != before
