"""What this machine computes natively: the one precision policy every stage asks.

Training's autocast, Muon's Newton-Schulz iterations and codelm's CPU kernels
decide nothing for themselves; they ask this module:
- `cpu()`: the CPU's vector ISA for codelm's kernels ("avx512", "avx2", "neon" or
  None) and whether it computes bf16 matmuls natively (AVX512_BF16 or AMX on x86,
  the BF16 extension on ARM);
- `bf16_native(device)`: the same question for any torch device (CUDA asks torch);
- `compute_dtype(device)`: bf16 where it is native, else fp32. On a CPU with AVX2
  only, a bf16 GEMM runs several times slower than an fp32 one (there is no bf16
  arithmetic, so every product is converted first): a training step whose Muon
  iterations ran in bf16 there was 7.8x slower than the same step in fp32
  (`bench/train.py --preset tiny --vocab 4096 --batch 8 --seq 256 --dtype fp32
  --optimizer muon`, 434 against 3,366 tokens/s, AMD EPYC with AVX2, 2 cores).

`CODELM_CPU` fakes a CPU for tests and benches: avx2 | avx512 | avx512_bf16 | amx |
neon | neon_bf16 | none. It changes codelm's choices only; torch's own kernels keep
the real CPU's (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS
steer those). Kernels are built for a faked ISA only where the real CPU runs it
(`kernel_isa`): AVX2 on an AVX-512 machine, never AVX-512 on an AVX2 one.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from codelm.errors import CodelmError


@dataclass(frozen=True)
class CPU:
    name: str  # one of FAKES' keys, the closest to this CPU
    isa: str | None  # vector ISA codelm's kernels are written for: avx512 | avx2 | neon | None
    bf16: bool  # bf16 matmuls in hardware: AVX512_BF16 or AMX on x86, BF16 on ARM
    faked: bool = False  # set by CODELM_CPU

    def describe(self) -> str:
        """One line for benches and start-up messages, e.g. 'avx2 (bf16 emulated)'."""
        isa = self.isa or "no vector ISA for codelm's kernels"
        amx = " + AMX" if self.name == "amx" else ""
        fake = ", faked by CODELM_CPU" if self.faked else ""
        return f"{isa}{amx} (bf16 {'native' if self.bf16 else 'emulated'}{fake})"


FAKES = {
    "none": CPU("none", None, False),
    "avx2": CPU("avx2", "avx2", False),
    "avx512": CPU("avx512", "avx512", False),
    "avx512_bf16": CPU("avx512_bf16", "avx512", True),
    "amx": CPU("amx", "avx512", True),
    "neon": CPU("neon", "neon", False),
    "neon_bf16": CPU("neon_bf16", "neon", True),
}
# Which kernel ISAs a real CPU of each ISA can run.
RUNS = {"avx512": ("avx512", "avx2"), "avx2": ("avx2",), "neon": ("neon",), None: ()}


def _linux_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86 | aarch64
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def detect() -> CPU:
    """The real CPU, whatever CODELM_CPU says."""
    machine = platform.machine().lower()
    flags = _linux_flags() if sys.platform == "linux" else set()
    if machine in ("arm64", "aarch64"):
        # Every aarch64 CPU has NEON (ASIMD). macOS has no /proc: Apple's M2 and later
        # have BF16, but torch does not use it for matmuls there, so it counts as absent.
        return FAKES["neon_bf16" if "bf16" in flags else "neon"]
    if machine not in ("x86_64", "amd64"):
        return FAKES["none"]
    if not flags:  # not Linux: torch knows the vector width, and bf16 support on x86
        cap = torch.backends.cpu.get_cpu_capability()
        bf16 = torch.cpu._is_avx512_bf16_supported()
        return FAKES[("avx512_bf16" if bf16 else "avx512") if "AVX512" in cap else "avx2" if cap else "none"]
    if "avx512f" in flags:
        if "amx_bf16" in flags:
            return FAKES["amx"]
        return FAKES["avx512_bf16" if "avx512_bf16" in flags else "avx512"]
    return FAKES["avx2" if {"avx2", "fma"} <= flags else "none"]


def cpu() -> CPU:
    """This CPU as codelm's choices see it: CODELM_CPU's fake where set, else the real one."""
    name = os.environ.get("CODELM_CPU", "").strip().lower()
    if not name:
        return detect()
    if name not in FAKES:
        raise CodelmError(f"CODELM_CPU={name!r} is not one of {', '.join(FAKES)}")
    fake = FAKES[name]
    return CPU(fake.name, fake.isa, fake.bf16, faked=True)


def kernel_isa() -> str | None:
    """The ISA to build codelm's kernels for: this CPU's as `cpu()` says, where the real
    CPU runs it (None otherwise: the kernels then stay off, and aten's run)."""
    isa = cpu().isa
    return isa if isa in RUNS[detect().isa] else None


def bf16_native(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 matmuls in hardware."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu().bf16
    return False


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """The fastest dtype that is accurate enough for training's matmuls on `device`:
    bf16 where it is native, else fp32."""
    return torch.bfloat16 if bf16_native(device) else torch.float32
