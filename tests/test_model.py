"""Model invariants: causality, KV-cache equivalence, config checks, save/load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_json
from codelm.model import ModelConfig, Transformer, native
from codelm.model.io import load_model, save_weights
from codelm.model.transformer import causal_attention, one_token_attention


@pytest.mark.parametrize("pos,norm,mlp", [("rope", "rmsnorm", "swiglu"), ("learned", "layernorm", "gelu")])
def test_changing_a_later_token_never_changes_earlier_logits(pos, norm, mlp):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50, n_layer=2, n_head=2, n_embd=32, block_size=32, pos=pos, norm=norm, mlp=mlp
    )
    model = Transformer(cfg).eval()
    x = torch.randint(0, 50, (2, 20))
    base = model(x)
    for t in (0, 7, 18):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] + 1) % 50
        out = model(y)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])  # the change itself is seen


def test_explicit_bf16_training_attention_matches_the_flash_kernel():
    """causal_attention's explicit CPU path (bf16, grad enabled) against SDPA in float."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 3, 40, 16)
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    out = causal_attention(qb, kb, vb)
    (out.float() * g).sum().backward()
    got = [out.float()] + [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = F.scaled_dot_product_attention(qb.float(), kb.float(), vb.float(), is_causal=True)
    (ref * g).sum().backward()
    for a, b in zip(got, [ref] + [t.grad for t in (q, k, v)], strict=True):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)  # bf16 scores: ~3 significant digits
    later = qb.detach().clone()
    later[:, :, 30:] += 1  # a later query, key or value never reaches an earlier row
    out2 = causal_attention(later, kb.detach().clone().index_fill_(2, torch.tensor([35]), 9), vb.detach())
    assert torch.equal(out2[:, :, :30], out.detach()[:, :, :30])


@pytest.mark.parametrize("kv", [None, torch.bfloat16])
def test_kv_cache_decoding_equals_full_recomputation(tiny_model, kv):
    tiny_model.kv_dtype = kv  # bf16: generation's cache on CPU (quantize.py)
    x = torch.randint(0, 97, (2, 40))
    full = tiny_model(x)
    cache = tiny_model.new_cache(2)
    assert cache.k.dtype == (kv or torch.float32)
    parts = [tiny_model(x[:, :13], cache), tiny_model(x[:, 13:21], cache)]
    parts += [tiny_model(x[:, t : t + 1], cache) for t in range(21, 40)]
    tol = 1e-5 if kv is None else 2e-2  # keys and values rounded to bf16's 8 bits
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=tol, rtol=tol)


needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.reason()}")


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,H,S,D", [(1, 12, 600, 64), (3, 2, 1, 16), (2, 4, 33, 32), (1, 2, 17, 48)])
def test_native_one_token_attention_matches_sdpa(B, H, S, D, dtype):
    torch.manual_seed(0)
    k_cache, v_cache = (torch.randn(2, B, H, 700, D) * 3).to(dtype)  # sliced, as from a KVCache
    k, v = k_cache[:, :, :S], v_cache[:, :, :S]
    kf, vf = k.float(), v.float()  # the same values: a bf16 cache is read exactly
    q = torch.randn(B, H, 1, D) * 3  # large scores: the softmax's exp is exercised far from 0
    got = torch.ops.codelm.attend_one(q, k, v)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, kf, vf), atol=1e-5, rtol=1e-5)
    assert torch.equal(one_token_attention(q, k, v), got)  # the model takes the kernel here
    lens = torch.randint(1, S + 1, (B,))  # the server's rows: each sees its own first lens[b]
    got = torch.ops.codelm.attend_one(q, k, v, lens)
    for b, n in enumerate(lens.tolist()):
        want = F.scaled_dot_product_attention(q[b], kf[b, :, :n], vf[b, :, :n])
        torch.testing.assert_close(got[b], want, atol=1e-5, rtol=1e-5)


# The tests that run the kernels: on an AVX-512 CPU they run again with the AVX2 build.
KERNEL_TESTS = [
    "tests/test_model.py::test_native_one_token_attention_matches_sdpa",
    "tests/test_model.py::test_kv_cache_decoding_equals_full_recomputation",
    "tests/test_generate.py::test_int8_and_bf16_weights_stay_close_to_fp32",
]


@pytest.mark.skipif(
    native.isa() != "avx512" or not native.available(),
    reason="no AVX-512 kernels: the tests above ran the AVX2 ones, or none",
)
def test_the_avx2_kernels_pass_the_same_tests(monkeypatch):
    env = {**os.environ, "CODELM_CPU": "avx2"}  # one build per process: a new process
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *KERNEL_TESTS]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-3000:]
    monkeypatch.setenv("CODELM_CPU", "avx2")
    assert native.isa() == "avx2" and native._library().exists()  # the AVX2 build is what ran


def test_native_kernels_can_be_turned_off_or_fail_to_build(monkeypatch, tmp_path):
    """Either way `available()` says no, with a reason, and the model still decodes (via aten)."""
    try:
        monkeypatch.setenv("CODELM_NATIVE", "0")
        native.available.cache_clear()
        assert not native.available() and native.reason() == "CODELM_NATIVE=0"
        monkeypatch.delenv("CODELM_NATIVE")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cached build: compile afresh
        monkeypatch.setenv("CXX", "false")  # a compiler that always fails
        native.available.cache_clear()
        if native.isa() is not None:
            assert not native.available() and "compiling kernels.cpp failed" in native.reason()
            assert not list(tmp_path.rglob("*.so"))  # nothing half-written is left to load
            damaged = native._library()  # where the build would be
            damaged.parent.mkdir(parents=True, exist_ok=True)
            damaged.write_bytes(b"not a shared library")
            native.available.cache_clear()
            assert not native.available() and "loading" in native.reason()
            assert not damaged.exists()  # removed, so the next run compiles afresh
        q, k, v = torch.randn(3, 2, 2, 5, 16)
        q = q[:, :, :1]
        torch.testing.assert_close(one_token_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
        got = one_token_attention(q, k, v, torch.tensor([5, 2]))
        torch.testing.assert_close(got[1], F.scaled_dot_product_attention(q[1], k[1, :, :2], v[1, :, :2]))
    finally:
        native.available.cache_clear()


def test_head_is_tied_and_presets_have_expected_sizes():
    m = Transformer(ModelConfig.from_preset("tiny", vocab_size=1000))
    assert m.head.weight is m.wte.weight
    assert ModelConfig.from_preset("small").n_layer == 6 and ModelConfig.from_preset("small").n_embd == 384
    assert ModelConfig.from_preset("base").n_embd == 768


def test_bad_configs_are_user_errors():
    with pytest.raises(CodelmError):
        ModelConfig(n_embd=30, n_head=4)
    with pytest.raises(CodelmError):
        ModelConfig.from_preset("huge")


def test_save_and_load_round_trip(tmp_path, tiny_model):
    atomic_write_json(tmp_path / "config.json", {"model": tiny_model.cfg.to_dict()})
    save_weights(tiny_model, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    x = torch.randint(0, 97, (1, 10))
    assert torch.equal(loaded(x), tiny_model(x))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CodelmError, match="corrupt weights"):
        load_model(tmp_path)
