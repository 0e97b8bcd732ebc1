"""The precision policy (codelm.hardware) under faked CPUs: what each stage is told to
compute in, and which kernels are built. Choices only: no timing is asserted here."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest
import torch

from codelm import hardware
from codelm.errors import CodelmError
from codelm.model import ModelConfig, Transformer, native
from codelm.train.config import TrainConfig
from codelm.train.loop import autocast_dtype, make_optimizer
from tests.conftest import TINY_MODEL

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "fake, isa, bf16",
    [("avx2", "avx2", False), ("avx512", "avx512", False), ("avx512_bf16", "avx512", True),
     ("amx", "avx512", True), ("neon", "neon", False), ("neon_bf16", "neon", True), ("none", None, False)],
)  # fmt: skip
def test_a_faked_cpu_decides_training_precision(monkeypatch, fake, isa, bf16):
    monkeypatch.setenv("CODELM_CPU", fake)
    cpu = hardware.cpu()
    assert (cpu.isa, cpu.bf16, cpu.faked) == (isa, bf16, True)
    want = torch.bfloat16 if bf16 else torch.float32
    assert hardware.compute_dtype(CPU) == want
    assert autocast_dtype(CPU, "auto") == (want if bf16 else None)
    assert autocast_dtype(CPU, "fp32") is None and autocast_dtype(CPU, "bf16") == torch.bfloat16
    model = Transformer(ModelConfig(vocab_size=64, **TINY_MODEL))
    opt = make_optimizer(model, TrainConfig(optimizer="muon"), CPU)
    assert opt.ns_dtype == want  # Muon's Newton-Schulz asks the same policy
    assert "faked by CODELM_CPU" in cpu.describe()


@pytest.mark.parametrize(
    "fake, minutes, decay",
    [("avx2", 5, 0.3), ("neon", 6, 0.3), ("avx2", 30, 1.0), ("avx512_bf16", 5, 1.0), ("amx", 1, 1.0)],
)
def test_the_demo_holds_its_peak_rate_longer_when_its_budget_gives_few_steps(
    monkeypatch, fake, minutes, decay
):
    """fp32 on a CPU runs a third of bf16's steps: a short budget there decays over its last 30%."""
    from codelm.demo import DemoConfig, demo_train_config

    monkeypatch.setenv("CODELM_CPU", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the demo on this CPU
    assert demo_train_config(DemoConfig(max_minutes=minutes)).decay == decay


def test_kernels_are_built_only_for_an_isa_the_real_cpu_runs(monkeypatch):
    real = hardware.detect().isa
    monkeypatch.setenv("CODELM_CPU", "avx2")
    assert hardware.kernel_isa() == ("avx2" if real in ("avx512", "avx2") else None)
    assert native.isa() == hardware.kernel_isa()
    monkeypatch.setenv("CODELM_CPU", "neon")
    assert hardware.kernel_isa() == ("neon" if real == "neon" else None)
    monkeypatch.setenv("CODELM_CPU", "avx512")
    assert hardware.kernel_isa() == ("avx512" if real == "avx512" else None)


def test_an_unknown_fake_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("CODELM_CPU", "avx1024")
    with pytest.raises(CodelmError, match="CODELM_CPU='avx1024' is not one of none, avx2"):
        hardware.cpu()


def test_without_a_fake_the_real_cpu_is_used(monkeypatch):
    monkeypatch.delenv("CODELM_CPU", raising=False)
    assert hardware.cpu() == hardware.detect() and not hardware.cpu().faked


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64", reason="x86-64 Linux only")
def test_detected_bf16_agrees_with_torch():
    """Two independent readings of the CPU: /proc/cpuinfo's flags and torch's cpuinfo."""
    amx = "amx_bf16" in Path("/proc/cpuinfo").read_text()
    assert hardware.detect().bf16 == (torch.cpu._is_avx512_bf16_supported() or amx)
