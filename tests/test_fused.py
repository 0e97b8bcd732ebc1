"""The fused decode step (native.py's decode_block, `Transformer.fast_step`): every block of a
step in one call of codelm's kernels gives the logits, and writes the cache, that the blocks in
Python give, for each weight format, architecture variant and cache of generation."""

from __future__ import annotations

import pytest
import torch

from codelm.generate.quantize import fused_step, prepare_model
from codelm.model import ModelConfig, Transformer, native
from codelm.model.kv_cache import Where
from codelm.model.transformer import FUSED_MAX_ROWS

needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.reason()}")

SHAPE = dict(vocab_size=96, n_layer=2, n_head=4, n_embd=64, block_size=64)
VARIANTS = {  # the architectures codelm runs: its own, and the pretrained models' it imports
    "codelm": dict(),  # RMSNorm, SwiGLU, interleaved RoPE
    "llama": dict(n_kv_head=2, rope_layout="half", mlp_hidden_size=96, norm_eps=1e-5),
    "qwen2": dict(n_kv_head=1, rope_layout="half", qkv_bias=True),  # multi-query, q/k/v biases
    "starcoder2": dict(n_kv_head=2, norm="layernorm", mlp="gelu", bias=True, rope_layout="half"),
    # QK-norm, and 4 heads of 32 channels on a width of 64: the attention is 128 wide
    "qwen3": dict(n_kv_head=2, rope_layout="half", head_size=32, qk_norm=True),
    "gpt2": dict(pos="learned", norm="layernorm", mlp="gelu", bias=True),  # no RoPE
}


def _model(variant: str, **overrides) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**SHAPE, **VARIANTS[variant], **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # biases and norms off their init: each one matters
            p.add_(torch.randn_like(p) * (0.5 if name.endswith("bias") else 0.05))
    return model


def _decode(
    model: Transformer, prompts: torch.Tensor, steps: torch.Tensor, lens: list[int] | None = None, T: int = 1
):
    """Logits of each step, T tokens a forward, after a prefill of `prompts` (B, P), rows cut to
    `lens` first (rows of different lengths: per-row positions), and the cache they leave."""
    cache = model.new_cache(prompts.size(0))
    with torch.inference_mode():
        model(prompts, cache)
        if lens is not None:
            cache.set_lengths(lens)
        logits = [model(steps[:, t : t + T], cache) for t in range(0, steps.size(1), T)]
    return torch.cat(logits, 1), cache


def _fused_and_python(model: Transformer, lens: list[int] | None = None, rows: int = 2, T: int = 1):
    """The same decode through the fused step (checked to run) and through the Python blocks."""
    torch.manual_seed(1)
    prompts, steps = torch.randint(0, 96, (rows, 12)), torch.randint(0, 96, (rows, 6))
    fast, calls = model.fast_step, []
    assert fast is not None
    model.fast_step = lambda *a: calls.append(1) or fast(*a)
    try:
        got = _decode(model, prompts, steps, lens, T)
    finally:
        model.fast_step = fast
    assert len(calls) == steps.size(1) // T  # every step, and only the steps, took the kernels
    model.fast_step = None
    try:
        want = _decode(model, prompts, steps, lens, T)
    finally:
        model.fast_step = fast
    return got, want


def _assert_same(got, want, kv: torch.dtype) -> None:
    (logits, cache), (want_logits, want_cache) = got, want
    # fp32 rounding apart (sums in another order). A bf16 cache may round a key the other way,
    # by a unit in its last place (up to 2^-7 of it), which later layers see a little of.
    tol = 1e-5 if kv == torch.float32 else 1e-3
    torch.testing.assert_close(logits, want_logits, atol=tol, rtol=tol)
    assert (cache.lens == want_cache.lens).all()
    ulp = 1e-5 if kv == torch.float32 else 2**-7
    for mine, theirs in ((cache.k, want_cache.k), (cache.v, want_cache.v)):
        torch.testing.assert_close(mine.float(), theirs.float(), atol=tol, rtol=ulp)


@needs_native
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
def test_fused_step_equals_the_python_blocks(variant, weights):
    model = prepare_model(_model(variant), weights)
    kv = model.new_cache(1).k.dtype  # generation's: bf16 for bf16 and int8 weights, else fp32
    _assert_same(*_fused_and_python(model), kv)


@needs_native
@pytest.mark.parametrize("variant", ["codelm", "starcoder2"])
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("kv", [torch.float32, torch.bfloat16])
def test_fused_step_with_rows_at_different_positions(variant, weights, kv):
    """Rows of one cache at their own lengths: each row's RoPE rows, cache slot and keys seen
    are its own (per-row positions), in a float and a bf16 cache."""
    model = prepare_model(_model(variant), weights)
    model.kv_dtype = kv
    _assert_same(*_fused_and_python(model, lens=[12, 5, 9], rows=3), kv)


@needs_native
@pytest.mark.parametrize("variant", list(VARIANTS))  # GQA, both RoPE layouts, learned positions
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("kv", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lens", [None, [12, 5]], ids=["shared", "per-row"])
def test_tokens_at_once_equal_one_at_a_time(variant, weights, kv, lens):
    """T tokens per row in one fused step (speculation's drafts to verify) give the blocks'
    outputs, the cache and the logits of feeding them one at a time, bit for bit: each token's
    row takes the same operations whatever the call's rows. So speculative greedy decoding is
    plain greedy decoding. (Heads: int8's kernel is exact per row at any row count up to 32,
    bf16's up to 8, above which aten's bf16 matmul rounds x to bf16; aten's fp32 GEMM is not,
    so fp32 logits agree to float rounding.)"""
    model = prepare_model(_model(variant), weights)
    model.kv_dtype = kv
    torch.manual_seed(1)
    prompts, steps = torch.randint(0, 96, (2, 12)), torch.randint(0, 96, (2, 6))
    fast, got = model.fast_step, {}
    for T in (1, 3, 6):
        blocks = []
        model.fast_step = lambda *a, out=blocks: out.append(fast(*a)) or out[-1]
        logits, cache = _decode(model, prompts, steps, lens, T)
        got[T] = logits, torch.cat(blocks, 1), cache.k, cache.v
    model.fast_step = fast
    for T in (3, 6):
        for mine, theirs in zip(got[T][1:], got[1][1:], strict=True):
            assert torch.equal(mine, theirs)
        if weights == "int8" or weights == "bf16" and T * 2 <= 8:
            assert torch.equal(got[T][0], got[1][0])
        elif weights == "fp32":  # aten's GEMM sums in another order for another row count
            torch.testing.assert_close(got[T][0], got[1][0], atol=1e-6, rtol=1e-6)
    _assert_same(*_fused_and_python(model, lens, T=3), kv)  # and the Python blocks' numbers


@needs_native
def test_fused_step_runs_only_where_it_can():
    model = prepare_model(_model("codelm"), "int8")
    assert fused_step(model) is not None
    assert prepare_model(_model("codelm", n_head=8), "int8").fast_step is None  # heads of 8: no kernel
    bf16 = prepare_model(_model("codelm", n_embd=48, n_head=3), "bf16")  # 48 wide: aten's bf16 matmul
    assert bf16.fast_step is None
    fp32 = _model("codelm")
    assert prepare_model(fp32, "fp32") is fp32 and fp32.fast_step is not None
    int8 = prepare_model(fp32, "int8")  # a copy: its own step, over its own int8 layers
    assert int8.fast_step.blocks[0][2] is int8.blocks[0].attn.qkv.q
    fp32.double()  # converted: the fused step held the old tensors
    assert fp32.fast_step is None
    fp32.float()
    called = []
    fp32.fast_step = lambda x, *a: called.append(1) or x
    cache = fp32.new_cache(1)
    fp32(torch.tensor([[1, 2]]), cache)  # a prefill: the Python blocks
    fp32(torch.tensor([[3]]), cache)  # grad enabled (training): the Python blocks, which have a backward
    with torch.no_grad():
        fp32(torch.tensor([[4]]), cache, hidden=[])  # the logit lens reads every block's output
        fp32(torch.tensor([[5, 6]]), fp32.new_cache(1))  # a fresh prompt: one causal pass
        fp32(torch.zeros(1, FUSED_MAX_ROWS + 1, dtype=torch.long), cache)  # a long chunk: the GEMMs
        assert not called
        fp32(torch.tensor([[7, 8, 9]]), cache)  # a few tokens after cached ones (speculation)
    assert called


def test_without_native_kernels_there_is_no_fused_step(monkeypatch):
    """CODELM_NATIVE=0, or no kernels for this CPU: the blocks run in Python, as before."""
    monkeypatch.setattr(native, "available", lambda: False)
    for weights in ("fp32", "bf16", "int8"):
        assert prepare_model(_model("codelm"), weights).fast_step is None
    model = prepare_model(_model("codelm"), "fp32")
    x = torch.randint(0, 96, (2, 9))
    with torch.inference_mode():
        cache = model.new_cache(2)
        steps = [model(x[:, :5], cache)] + [model(x[:, t : t + 1], cache) for t in range(5, 9)]
        torch.testing.assert_close(torch.cat(steps, 1), model(x), atol=1e-5, rtol=1e-5)


@needs_native
def test_decode_block_rejects_what_it_cannot_read():
    model = prepare_model(_model("codelm"), "int8")
    step, cache = model.fast_step, model.new_cache(2)
    x = torch.randn(2, 1, 64)
    where = cache.plan(1)
    assert step(x, cache, where).shape == x.shape
    bad = [  # a position past the cache, a cache of other rows, an fp64 x; then an fp16 cache
        (x, cache, Where.shared(torch.tensor([64]), 64)),
        (x, model.new_cache(2).rows(0, 1), where),
        (x.double(), cache, where),
    ]
    half = model.new_cache(2)
    half.k, half.v = half.k.half(), half.v.half()
    bad.append((x, half, where))
    for args in bad:
        with pytest.raises(RuntimeError, match="decode_block"):
            step(*args)
