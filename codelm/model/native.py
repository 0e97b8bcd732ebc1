"""codelm's own CPU kernels (kernels.cpp): built with the system's C++ compiler on first use.

`available()` compiles kernels.cpp (with the loops it includes from HEADERS) once
per machine, source and torch version into ~/.cache/codelm (or $XDG_CACHE_HOME/codelm;
about 10 s; see `codelm.cbuild`), loads it, and registers `torch.ops.codelm.int8_linear`,
`bf16_linear`, `attend_one` and `decode_block`, every transformer block of a decode step (T
new tokens per row) in one call (`codelm.generate.quantize.FusedStep` calls it as `Transformer.fast_step`). It
builds on Linux, on x86-64 (AVX-512, or AVX2 with FMA) and on aarch64 (NEON, which every
aarch64 CPU has). It returns False, with the reason in `reason()`, where that cannot work:
another OS or architecture (macOS among them: the build line assumes g++ with OpenMP and
Linux's shared libraries, and it has not been tried there), an x86 CPU without AVX2, no
compiler, a failed build, or CODELM_NATIVE=0 in the environment. Callers then use aten's kernels.

The library is built with -march=native for the CPU it runs on, so the cache key
includes the CPU's flags (x86's `flags`, aarch64's `Features`): a home directory shared
by different machines gets one build per kind of CPU. The key includes the headers' text
too, so that editing any of the files rebuilds.

`pack_int8` puts int8 weights in the kernel's tile order (see kernels.cpp); bf16_linear
reads a plain (N, K) bf16 weight whose K is a multiple of BF16_COLUMNS.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path

import torch

from codelm import cbuild, hardware

SOURCE = Path(__file__).with_name("kernels.cpp")
HEADERS = tuple(  # what kernels.cpp includes
    Path(__file__).with_name(h)
    for h in ("kernels_core.h", "kernels_linear.h", "kernels_block.h", "kernels_step.h")
)
# -ffp-contract=off: no fused multiply-adds but the loops' own. GCC's default (fast) fused the
# int8 kernel's `sum * scale + bias` in some code paths and not others, so a row's output
# changed in its last bit with the number of rows in the call (decode_block's T > 1).
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
TILE = 4  # rows per tile: R in kernels_linear.h
BF16_COLUMNS = 32  # bf16_linear's weights per row step: a 64-byte line

_reason = ""


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86 | aarch64
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def isa() -> str | None:
    """The vector instructions the kernels use on this CPU: "avx512", "avx2" (with FMA),
    "neon" (aarch64) or None, as the precision policy says (`codelm.hardware.kernel_isa`):
    CODELM_CPU=avx2 picks AVX2 on an AVX-512 CPU (to test that path)."""
    found = hardware.kernel_isa()
    return found if found in ("avx512", "avx2", "neon") else None


def _command(out: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    lib = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [cbuild.compiler(), *FLAGS]
    if isa() == "avx2":
        cmd.append("-mno-avx512f")  # kernels.cpp then takes its AVX2 branch
    cmd += [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"] + [f"-I{p}" for p in include_paths()]
    return cmd + [str(SOURCE), "-o", str(out), f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]


def _key() -> tuple[str, ...]:
    """What the build depends on besides its source: the headers it includes, and the CPU
    (-march=native makes the build the CPU's)."""
    headers = (h.read_text() for h in HEADERS)
    return (*headers, *FLAGS, torch.__version__, sys.version, _cpu_flags(), str(isa()))


def _library() -> Path:
    """Where this source, torch, Python and CPU's build lives."""
    return cbuild.library_path(SOURCE, _key())


@functools.cache
def available() -> bool:
    """Whether codelm's kernels are loaded (built first if needed); see `reason()` if not."""
    global _reason
    if os.environ.get("CODELM_NATIVE", "1") == "0":
        _reason = "CODELM_NATIVE=0"
    elif sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        _reason = (
            "codelm's kernels build on Linux (x86-64 with AVX-512 or AVX2, or aarch64); "
            f"this is {sys.platform}/{platform.machine()}: using aten's kernels"
        )
    elif isa() is None:
        cpu = hardware.cpu()
        if cpu.faked:
            _reason = f"CODELM_CPU={cpu.name}: no kernels that this CPU runs"
        else:
            _reason = "this CPU has neither AVX-512 nor AVX2 with FMA"
    else:
        try:
            what = "CPU kernels (about 10 s)"
            cbuild.build_and_load(SOURCE, _key(), _command, what, lambda p: torch.ops.load_library(str(p)))
        except RuntimeError as e:
            _reason = str(e)
            return False
        if hasattr(torch.ops.codelm, "attend_one"):
            return True
        _reason = "kernels.cpp was compiled without AVX-512, AVX2 or NEON"
    return False


def reason() -> str:
    """Why `available()` is False ("" when it is True or was not asked)."""
    return _reason


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 -> the int8 kernel's tiles (N/4, K/16, 4, 16)."""
    N, K = q.shape
    return q.view(N // TILE, TILE, K // 16, 16).transpose(1, 2).contiguous()


def unpack_int8(tiles: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int8`."""
    B, KB, _, _ = tiles.shape
    return tiles.transpose(1, 2).reshape(B * TILE, KB * 16)
