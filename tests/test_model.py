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
from codelm.model.transformer import apply_rope, causal_attention, one_token_attention, rope_tables


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
@pytest.mark.parametrize(
    "B,H,Hkv,S,D",
    [(1, 12, 12, 600, 64), (3, 2, 2, 1, 16), (2, 4, 4, 33, 32), (1, 2, 2, 17, 48)]
    # grouped-query and multi-query attention; 160 wide takes the kernel's generic loops
    + [(1, 12, 2, 600, 64), (2, 4, 1, 33, 32), (3, 6, 3, 17, 48), (1, 4, 1, 70, 160)],
)
def test_native_one_token_attention_matches_sdpa(B, H, Hkv, S, D, dtype):
    torch.manual_seed(0)
    k_cache, v_cache = (torch.randn(2, B, Hkv, 700, D) * 3).to(dtype)  # sliced, as from a KVCache
    k, v = k_cache[:, :, :S], v_cache[:, :, :S]
    kf, vf = k.float(), v.float()  # the same values: a bf16 cache is read exactly
    q = torch.randn(B, H, 1, D) * 3  # large scores: the softmax's exp is exercised far from 0
    gqa = Hkv != H
    got = torch.ops.codelm.attend_one(q, k, v)
    want = F.scaled_dot_product_attention(q, kf, vf, enable_gqa=gqa)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(one_token_attention(q, k, v), got)  # the model takes the kernel here
    lens = torch.randint(1, S + 1, (B,))  # the server's rows: each sees its own first lens[b]
    got = torch.ops.codelm.attend_one(q, k, v, lens)
    for b, n in enumerate(lens.tolist()):
        want = F.scaled_dot_product_attention(q[b], kf[b, :, :n], vf[b, :, :n], enable_gqa=gqa)
        torch.testing.assert_close(got[b], want, atol=1e-5, rtol=1e-5)
    threads = torch.get_num_threads()
    try:  # one thread: a task per group of query heads; B * H: a task per head. The same floats.
        for n in (1, B * H):
            torch.set_num_threads(n)
            assert torch.equal(torch.ops.codelm.attend_one(q, k, v, lens), got)
    finally:
        torch.set_num_threads(threads)


# The tests that run the kernels: on an AVX-512 CPU they run again with the AVX2 build.
KERNEL_TESTS = [
    "tests/test_model.py::test_native_one_token_attention_matches_sdpa",
    "tests/test_model.py::test_kv_cache_decoding_equals_full_recomputation",
    "tests/test_model.py::test_grouped_query_decoding_equals_full_recomputation",
    "tests/test_generate.py::test_int8_and_bf16_weights_stay_close_to_fp32",
    "tests/test_fused.py::test_fused_step_equals_the_python_blocks",  # every variant, Qwen3's included
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


@pytest.mark.parametrize("where", [0.5, 0.99])
def test_a_bit_flipped_in_the_weights_is_a_one_line_error(tmp_path, tiny_model, capsys, where):
    from codelm import cli

    atomic_write_json(tmp_path / "config.json", {"model": tiny_model.cfg.to_dict()})
    save_weights(tiny_model, tmp_path / "model.safetensors")
    load_model(tmp_path)  # whole, it loads
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[int(len(data) * where)] ^= 0x10  # inside the tensors, past the header
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CodelmError, match="checksum mismatch"):
        load_model(tmp_path)
    assert cli.main(["generate", str(tmp_path), "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codelm: error: corrupt weights") and err.count("\n") == 1


# --- the variants of pretrained code models ----------------------------------------------------

GQA = dict(vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64)


# The keys of a config.json written before the pretrained models' variants were fields.
OLD_KEYS = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "pos", "rope_theta", "norm", "mlp")
OLD_KEYS += ("tie_embeddings", "dropout")


def test_runs_saved_before_the_new_fields_load_unchanged(tmp_path, tiny_model):
    old = {k: v for k, v in tiny_model.cfg.to_dict().items() if k in OLD_KEYS}
    atomic_write_json(tmp_path / "config.json", {"model": old})
    save_weights(tiny_model, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    assert loaded.cfg == tiny_model.cfg
    x = torch.randint(0, 97, (1, 10))
    assert torch.equal(loaded(x), tiny_model(x))
    C = tiny_model.cfg.n_embd  # the same names and shapes as ever: no biases, qkv 3C wide
    names = {"wte.weight", "head.weight", "norm_f.weight"}
    for i in range(tiny_model.cfg.n_layer):
        names |= {
            f"blocks.{i}.{n}.weight"
            for n in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.up", "mlp.down")
        }
    assert set(tiny_model.state_dict()) == names
    assert tiny_model.blocks[0].attn.qkv.weight.shape == (3 * C, C)
    with pytest.raises(CodelmError, match="unknown model config key"):
        ModelConfig.from_dict({**old, "n_kv_heads": 2})


def test_grouped_query_attention_shapes():
    cfg = ModelConfig(**GQA)
    assert (cfg.kv_heads, ModelConfig(n_head=4).kv_heads) == (2, 4)
    assert ModelConfig(n_embd=96).mlp_hidden == 256 and ModelConfig(mlp_hidden_size=100).mlp_hidden == 100
    model = Transformer(cfg)
    assert model.blocks[0].attn.qkv.weight.shape == ((4 + 2 * 2) * 16, 64)  # q heads, then k, then v
    assert model.new_cache(3).k.shape == (2, 3, 2, 64, 16)  # the cache holds the kv heads only


@pytest.mark.parametrize(
    "bad",
    [dict(n_kv_head=3), dict(n_kv_head=0), dict(n_kv_head=8), dict(rope_layout="neox"), dict(norm_eps=0.0)]
    + [dict(mlp_hidden_size=0), dict(rope_scaling="yarn"), dict(rope_factor=0.0)]
    + [dict(rope_low_freq_factor=4.0, rope_high_freq_factor=4.0), dict(rope_original_context=0)],
)
def test_bad_variant_configs_are_one_line_user_errors(bad):
    with pytest.raises(CodelmError) as e:
        ModelConfig(n_head=4, n_embd=64, **bad)
    assert "\n" not in str(e.value)


def test_half_rope_layout_is_the_interleaved_one_with_channels_permuted():
    """RoPE's half layout pairs channel i with i + D/2: moving channels 2i, 2i+1 of the
    interleaved layout there turns one rotation into the other."""
    x = torch.randn(2, 3, 10, 16)
    perm = torch.arange(16).view(8, 2).t().flatten()  # half layout's channel j is interleaved's perm[j]
    got = {}
    for layout in ("interleaved", "half"):
        cos, sin = rope_tables(ModelConfig(n_head=4, n_embd=64, block_size=10, rope_layout=layout))
        got[layout] = apply_rope(x[..., perm] if layout == "half" else x, cos, sin, layout)
    torch.testing.assert_close(got["half"], got["interleaved"][..., perm], atol=1e-6, rtol=1e-6)


def _from_hf(hf, cfg: ModelConfig) -> Transformer:
    """codelm's Transformer with the weights of a transformers Llama, Qwen2 or StarCoder2 model,
    mapped by codelm.interop.hf (what `codelm import` does with the files of one)."""
    from codelm.interop.hf import check_plan, hf_plan, to_codelm

    sd, plan = hf.state_dict(), hf_plan(cfg)
    check_plan(plan, {n: tuple(t.shape) for n, t in sd.items()}, skip=["lm_head.weight"])  # every HF key used
    model = Transformer(cfg).eval()
    missing, unexpected = model.load_state_dict(dict(to_codelm(plan, sd.__getitem__)), strict=False)
    assert not unexpected and missing == (["head.weight"] if cfg.tie_embeddings else [])
    return model


def _randomize(hf) -> None:
    """Weights far from init's (norms at 1, biases at 0), so that every one of them matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))


HF_MODELS = {  # transformers' class and config, and the same model as codelm's config
    "llama": (  # SmolLM2, CodeLlama, DeepSeek-Coder: GQA, untied head, own MLP width, rotate-half
        "LlamaForCausalLM",
        dict(num_key_value_heads=2, intermediate_size=96, rms_norm_eps=1e-5, tie_word_embeddings=False),
        dict(n_kv_head=2, mlp_hidden_size=96, norm_eps=1e-5, tie_embeddings=False, rope_theta=5e5),
    ),
    "qwen2": (  # Qwen2.5-Coder: q/k/v biases, multi-query here, tied head
        "Qwen2ForCausalLM",
        dict(num_key_value_heads=1, intermediate_size=80, rms_norm_eps=1e-6, tie_word_embeddings=True),
        dict(n_kv_head=1, mlp_hidden_size=80, qkv_bias=True, rope_theta=5e5),
    ),
    "starcoder2": (  # biases everywhere, LayerNorm, GELU MLP
        "Starcoder2ForCausalLM",
        dict(num_key_value_heads=2, intermediate_size=128, norm_epsilon=1e-5, tie_word_embeddings=True),
        dict(n_kv_head=2, mlp_hidden_size=128, bias=True, norm="layernorm", mlp="gelu", rope_theta=5e5),
    ),
}


@pytest.mark.parametrize("arch", list(HF_MODELS))
def test_logits_match_transformers_on_its_architectures(arch):
    transformers = pytest.importorskip("transformers")
    cls, theirs, ours = HF_MODELS[arch]
    config_cls = getattr(transformers, cls.replace("ForCausalLM", "Config"))
    hf_cfg = config_cls(
        vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
        rope_parameters=dict(rope_type="default", rope_theta=5e5), attn_implementation="eager",
        bos_token_id=None, eos_token_id=None, pad_token_id=None, **theirs,
    )  # fmt: skip
    hf = getattr(transformers, cls)(hf_cfg).eval()
    _randomize(hf)
    cfg = ModelConfig(
        vocab_size=97, n_layer=2, n_head=4, n_embd=64, block_size=64, rope_layout="half", **ours
    )
    model = _from_hf(hf, cfg)
    x = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        want = hf(x).logits
        torch.testing.assert_close(model(x), want, atol=1e-4, rtol=1e-4)
        cache = model.new_cache(2)
        steps = [model(x[:, :30], cache)] + [model(x[:, t : t + 1], cache) for t in range(30, 40)]
        torch.testing.assert_close(torch.cat(steps, 1), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=needs_native), False])
@pytest.mark.parametrize("kv", [None, torch.bfloat16])
def test_grouped_query_decoding_equals_full_recomputation(kernel, kv, monkeypatch):
    if not kernel:
        monkeypatch.setattr(native, "available", lambda: False)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**GQA, rope_layout="half", qkv_bias=True)).eval()
    for p in model.parameters():  # biases start at 0: give them values
        p.data += 0.02 * torch.randn_like(p)
    model.kv_dtype = kv
    tol = 1e-5 if kv is None else 2e-2  # keys and values rounded to bf16's 8 bits
    x = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2)
        parts = [model(x[:, :13], cache), model(x[:, 13:21], cache)]
        parts += [model(x[:, t : t + 1], cache) for t in range(21, 40)]
        torch.testing.assert_close(torch.cat(parts, 1), full, atol=tol, rtol=tol)
        # Rows at different lengths: row 1 forgets its last 6 tokens, then both go on.
        cache = model.new_cache(2)
        model(x[:, :16], cache)
        cache.set_length(1, 10)
        new = torch.randint(0, 97, (2, 5))
        steps = [model(new[:, :3], cache)] + [model(new[:, t : t + 1], cache) for t in (3, 4)]
        got = torch.cat(steps, 1)
        for row, n in enumerate((16, 10)):
            want = model(torch.cat([x[row : row + 1, :n], new[row : row + 1]], 1))[:, n:]
            torch.testing.assert_close(got[row : row + 1], want, atol=tol, rtol=tol)


def test_grouped_query_bf16_training_attention_matches_the_flash_kernel():
    """causal_attention's explicit CPU path shares each kv head among its group of query heads."""
    torch.manual_seed(0)
    q = torch.randn(2, 6, 40, 16, requires_grad=True)
    k, v = (torch.randn(2, 2, 40, 16, requires_grad=True) for _ in range(2))
    g = torch.randn(2, 6, 40, 16)
    out = causal_attention(*(t.to(torch.bfloat16) for t in (q, k, v)))
    (out.float() * g).sum().backward()
    got = [out.float()] + [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = F.scaled_dot_product_attention(
        *(t.to(torch.bfloat16).float() for t in (q, k, v)), is_causal=True, enable_gqa=True
    )
    (ref * g).sum().backward()
    for a, b in zip(got, [ref] + [t.grad for t in (q, k, v)], strict=True):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def test_untied_head_and_biases_save_and_load(tmp_path):
    cfg = ModelConfig(**GQA, tie_embeddings=False, bias=True, norm="layernorm", mlp_hidden_size=72)
    model = Transformer(cfg).eval()
    for p in model.parameters():
        p.data += 0.02 * torch.randn_like(p)
    assert model.head.weight is not model.wte.weight
    atomic_write_json(tmp_path / "config.json", {"model": cfg.to_dict()})
    save_weights(model, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    assert loaded.cfg == cfg and not torch.equal(loaded.head.weight, loaded.wte.weight)
    x = torch.randint(0, 97, (1, 10))
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_heads_of_their_own_size_with_qk_norm_decode_as_they_recompute(weights):
    """Qwen3's shape: 4 heads of 32 channels on a width of 64, QK-norm: the layers decode
    through the KV cache as the full pass computes (tests/test_fused.py checks the fused step
    against them)."""
    from codelm.generate.quantize import prepare_model

    torch.manual_seed(0)
    model = Transformer(ModelConfig(**GQA, head_size=32, qk_norm=True, rope_layout="half")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.normal_(1.0, 0.5)  # they start at 1, where a missing norm weight would not show
    assert model.blocks[0].attn.qkv.weight.shape == ((4 + 2 * 2) * 32, 64)
    assert model.blocks[0].attn.proj.weight.shape == (64, 4 * 32)
    fast = prepare_model(model, weights)
    fast.fast_step = None  # the per-layer path
    tol = 1e-5 if weights == "fp32" else 3e-2  # int8 weights, a bf16 cache
    x = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        full = fast(x)
        cache = fast.new_cache(2)
        parts = [fast(x[:, :11], cache)] + [fast(x[:, t : t + 1], cache) for t in range(11, 30)]
        torch.testing.assert_close(torch.cat(parts, 1), full, atol=tol, rtol=tol)
        unnormed = Transformer(ModelConfig(**GQA, head_size=32, rope_layout="half")).eval()
        unnormed.load_state_dict({k: v for k, v in model.state_dict().items() if "_norm." not in k})
        assert (unnormed(x) - model(x)).abs().max() > 0.01  # the norms change what it computes


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_generation_weights_keep_the_biases(weights):
    from codelm.generate.quantize import prepare_model

    torch.manual_seed(0)
    model = Transformer(ModelConfig(**GQA, qkv_bias=True, bias=True, norm="layernorm")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 1.0)  # large next to the outputs' 0.02-ish: dropping them would show
    fast = prepare_model(model, weights)
    assert fast.blocks[0].attn.qkv.bias is not None and type(fast.blocks[0].attn.qkv) is not torch.nn.Linear
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=0.05, rtol=0.05)
        h = torch.randn(40, 64)  # 40 rows: the dequantizing path; 1 and 5: the kernels
        for rows in (h[:1], h[:5], h):
            want = model.blocks[0].attn.qkv(rows)
            got = fast.blocks[0].attn.qkv(rows)
            assert (got - want).abs().max() < 0.02 * want.abs().max()


# --- LoRA adapters (model/lora.py) ------------------------------------------------------------


def _adapted(targets=("qkv", "proj", "mlp"), rank=4):
    from codelm.model.lora import LoraConfig, add_adapters

    torch.manual_seed(0)
    model = Transformer(ModelConfig(**GQA, qkv_bias=True)).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_adapters(model, LoraConfig(rank=rank, alpha=2.0 * rank, targets=targets))
    return model, base


def test_lora_starts_equal_to_the_base_and_merges_into_a_plain_model():
    from codelm.model.lora import LoraLinear, merge

    model, base = _adapted()
    plain = Transformer(model.cfg).eval()
    plain.load_state_dict(base)
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))  # B = 0: the adapters add exact zeros
        for name, p in model.named_parameters():
            if name.endswith(".lora_b"):
                p.normal_(0, 0.1)
        adapted = model(x)
        assert (adapted - plain(x)).abs().max() > 1e-3  # the adapters now matter
        merged = merge(model)(x)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert model.state_dict().keys() == base.keys()


def test_lora_targets_and_rank_are_checked():
    from codelm.model.lora import LoraConfig, is_adapter

    model, _ = _adapted(targets=("proj",))
    adapted = sorted({n.rsplit(".", 2)[-2] for n, _ in model.named_parameters() if is_adapter(n)})
    assert adapted == ["proj"]
    for bad in (dict(targets=("qkv", "attn")), dict(targets=()), dict(rank=0), dict(alpha=0.0)):
        with pytest.raises(CodelmError):
            LoraConfig(**{"rank": 4, "alpha": 8.0, **bad})
    with pytest.raises(CodelmError, match="exceeds the width"):
        _adapted(rank=65)  # the model is 64 wide


def test_lora_layer_equals_peft_for_the_same_adapters():
    peft = pytest.importorskip("peft")

    model, base = _adapted()
    theirs = Transformer(model.cfg).eval()
    theirs.load_state_dict(base)
    targets = ["qkv", "proj", "up", "down"]
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets), theirs)
    ours, copied = dict(model.named_parameters()), set()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if ".lora_" in name:  # blocks.0.attn.qkv.lora_A.default.weight -> blocks.0.attn.qkv.lora_a
                layer, which = name.split(".lora_")
                mine = f"{layer}.lora_{which[0].lower()}"
                p.copy_(ours[mine].normal_(0, 0.1))
                copied.add(mine)
        assert copied == {n for n in ours if ".lora_" in n}
        x = torch.randint(0, 97, (2, 12))
        torch.testing.assert_close(model(x), theirs(x), atol=1e-5, rtol=1e-5)


@needs_native
@pytest.mark.parametrize("N,K", [(48, 64), (37, 32), (3, 96), (1, 768), (770, 768)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_native_bf16_linear_is_the_fp32_product_with_the_bf16_weights(N, K, with_bias):
    """Any N (a last tile of fewer than 4 rows), 1 to KERNEL_MAX_ROWS rows, with or without a
    bias: F.linear on fp32 x and the widened weights, to fp32 rounding (1e-5 of the sum of the
    terms' sizes; x rounded to bf16 is off by 2e-4 to 2e-3 of it); the same floats on any number
    of threads (each output is one task's sum, in one order)."""
    from codelm.generate.quantize import KERNEL_MAX_ROWS

    torch.manual_seed(0)
    w = (torch.randn(N, K) * 0.05).bfloat16()
    bias = torch.randn(N) if with_bias else None
    x = torch.randn(KERNEL_MAX_ROWS, K)
    for m in range(1, KERNEL_MAX_ROWS + 1):
        got = torch.ops.codelm.bf16_linear(x[:m], w, bias)
        want = F.linear(x[:m], w.float(), bias)
        size = x[:m].abs() @ w.float().abs().t() + (0 if bias is None else bias.abs())
        assert got.shape == (m, N) and ((got - want).abs() <= 1e-5 * size).all()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(torch.ops.codelm.bf16_linear(x, w, bias), got)
    finally:
        torch.set_num_threads(threads)


@needs_native
def test_native_bf16_linear_rejects_what_it_cannot_read():
    x, w = torch.randn(2, 64), torch.randn(8, 64).bfloat16()
    for bad in ((x[:, :48], w[:, :48]), (x, w.float()), (x.double(), w), (x, w.t().contiguous().t())):
        with pytest.raises(RuntimeError):  # K not a multiple of 32; not bf16; not float; strided
            torch.ops.codelm.bf16_linear(*bad)
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.codelm.bf16_linear(x, w, torch.zeros(7))


# The AVX2 build runs these too (test_the_avx2_kernels_pass_the_same_tests reads the list).
KERNEL_TESTS += [
    "tests/test_model.py::test_native_bf16_linear_is_the_fp32_product_with_the_bf16_weights",
    "tests/test_generate.py::test_bf16_weights_decode_through_the_kernel_as_fp32_on_the_same_weights",
    "tests/test_fused.py::test_fused_step_equals_the_python_blocks",
    "tests/test_fused.py::test_fused_step_with_rows_at_different_positions",
    "tests/test_fused.py::test_decode_block_rejects_what_it_cannot_read",
    "tests/test_fused.py::test_tokens_at_once_equal_one_at_a_time",
    "tests/test_generate_speculate.py::test_speculation_through_the_fused_kernels_is_exact",
]
