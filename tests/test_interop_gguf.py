"""GGUF export: tensors, metadata and tokenizer as llama.cpp reads them, read back with gguf-py.

llama.cpp cannot run here, so its rope is a NumPy reference below, and its pre-tokenizers
are emulated with HF `tokenizers` (`llama_cpp_tokenizer`; docs/gguf.md checks that
emulation against llama.cpp itself).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from gguf.quants import dequantize, quantize  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from codelm.errors import CodelmError  # noqa: E402
from codelm.interop.gguf import CODELM_PRE, export_gguf, llama_cpp_tokenizer, pre_tokenizer_name  # noqa: E402
from codelm.model import ModelConfig, Transformer  # noqa: E402
from codelm.model.io import load_model, save_weights  # noqa: E402
from codelm.model.transformer import apply_rope, rope_tables  # noqa: E402
from codelm.tokenizer import CodeTokenizer, train_tokenizer  # noqa: E402

Q = gguf.GGMLQuantizationType
T = gguf.TokenType
CODE = "import os\n\nclass Point:\n    def norm(self, x_1):\n        return self.x ** 2 + 1234  # ok\n"
QWEN2 = (  # Qwen2's tokenizer.json spelling
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
QWEN2_PRE = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2}, "behavior": "Isolated", "invert": False},
        {**BYTE_LEVEL, "use_regex": False},
    ],
}
STARCODER_PRE = {
    "type": "Sequence",
    "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL],
}


@pytest.fixture(scope="module")
def spec() -> dict:
    """A tiny codelm tokenizer.json (parsed), trained on this file's own lines."""
    lines = Path(textwrap.__file__).read_text().splitlines()[:400] + CODE.splitlines()
    return json.loads(train_tokenizer(lines, vocab_size=300).tok.to_str())


def make_run(root: Path, spec: dict, **shape) -> Path:
    """A run with random weights (large enough that rounding shows) and the tokenizer `spec`."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=shape.pop("vocab_size", 300), n_layer=2, n_head=4, n_embd=64, block_size=64, **shape
    )
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    root.mkdir(parents=True)
    save_weights(model, root / "model.safetensors")
    (root / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    (root / "tokenizer.json").write_text(json.dumps(spec))
    return root


def read(path: Path) -> tuple[dict, dict]:
    """(field name -> value, tensor name -> ReaderTensor) of a GGUF file."""
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items()}, {t.name: t for t in r.tensors}


def expected_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """What the file must hold, mapped here by hand, q and k still in the run's own layout."""
    cfg, sd = model.cfg, {k: v.numpy() for k, v in model.state_dict().items()}
    hd = cfg.head_dim
    out = {"token_embd.weight": sd["wte.weight"], "output_norm.weight": sd["norm_f.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["head.weight"]
    for kind in ("weight", "bias"):
        if f"norm_f.{kind}" in sd:
            out[f"output_norm.{kind}"] = sd[f"norm_f.{kind}"]
        for i in range(cfg.n_layer):
            b, p = f"blk.{i}.", f"blocks.{i}."
            pairs = {
                "attn_norm": "norm1",
                "attn_output": "attn.proj",
                "ffn_norm": "norm2",
                "ffn_down": "mlp.down",
                "attn_q_norm": "attn.q_norm",
                "attn_k_norm": "attn.k_norm",
            }
            out |= {
                f"{b}{g}.{kind}": sd[f"{p}{c}.{kind}"] for g, c in pairs.items() if f"{p}{c}.{kind}" in sd
            }
            if f"{p}attn.qkv.{kind}" in sd:
                qkv = sd[f"{p}attn.qkv.{kind}"]
                q, k = cfg.n_head * hd, cfg.kv_heads * hd
                out |= {
                    f"{b}attn_q.{kind}": qkv[:q],
                    f"{b}attn_k.{kind}": qkv[q : q + k],
                    f"{b}attn_v.{kind}": qkv[q + k :],
                }
            if f"{p}mlp.up.{kind}" in sd:
                up = sd[f"{p}mlp.up.{kind}"]
                h = cfg.mlp_hidden
                out |= (
                    {f"{b}ffn_gate.{kind}": up[:h], f"{b}ffn_up.{kind}": up[h:]}
                    if cfg.mlp == "swiglu"
                    else {}
                )
                out |= {} if cfg.mlp == "swiglu" else {f"{b}ffn_up.{kind}": up}
    return out


def layout_rows(heads: int, d: int, src: str, dst: str) -> np.ndarray:
    """Row order taking a q/k projection from rope layout src to dst, spelled out per channel pair."""
    if src == dst:
        return np.arange(heads * d)
    half = [[i, i + d // 2] for i in range(d // 2)]  # pair i in "half"; "interleaved" has [2i, 2i + 1]
    order = (
        [c for pair in half for c in pair]
        if src == "half"
        else [2 * i + j for j in (0, 1) for i in range(d // 2)]
    )
    return np.concatenate([h * d + np.array(order) for h in range(heads)])


def check_tensors(path: Path, model: Transformer, arch_layout: str, quant: str) -> dict:
    fields, tensors = read(path)
    cfg = model.cfg
    want = expected_tensors(model)
    assert set(tensors) == set(want)
    for name, w in want.items():
        if name.split(".")[-2] in ("attn_q", "attn_k", "attn_q_norm", "attn_k_norm"):
            heads = 1 if "norm" in name else cfg.n_head if "attn_q" in name else cfg.kv_heads
            w = w[layout_rows(heads, cfg.head_dim, cfg.rope_layout, arch_layout)]
        t = tensors[name]
        assert list(t.shape) == list(reversed(w.shape)), name  # ggml lists the row length first
        data = np.asarray(t.data)
        if w.ndim == 1 or quant == "f32":
            assert t.tensor_type == Q.F32 and np.array_equal(data.reshape(w.shape), w), name
        elif quant == "bf16":
            assert t.tensor_type == Q.BF16
            assert np.array_equal(data.view(np.uint8), quantize(w, Q.BF16).view(np.uint8)), name
            assert np.array_equal(dequantize(data, Q.BF16), torch.from_numpy(w).bfloat16().float().numpy())
        elif w.shape[-1] % 32:  # no Q8_0 blocks fit a row: f16, as llama.cpp's converter falls back
            assert t.tensor_type == Q.F16 and np.array_equal(data.reshape(w.shape), w.astype(np.float16)), (
                name
            )
        else:
            assert t.tensor_type == Q.Q8_0
            assert np.array_equal(data, quantize(w, Q.Q8_0)), name
            blocks = np.abs(w).reshape(-1, 32).max(axis=1).repeat(32).reshape(w.shape)
            assert np.all(np.abs(dequantize(data, Q.Q8_0) - w) <= blocks / 127 * 0.5 + 1e-3), name
    return fields


@pytest.mark.parametrize("quant", ["bf16", "q8_0", "f32"])
def test_a_codelm_trained_run_is_a_llama_gguf(tmp_path, spec, quant):
    run = make_run(tmp_path / "run", spec)
    export_gguf(run, tmp_path / "m.gguf", quant)
    model = load_model(run)
    f = check_tensors(tmp_path / "m.gguf", model, "interleaved", quant)  # llama's rope: no permutation
    ftype = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "f32": 0}
    assert f["general.architecture"] == "llama" and f["general.name"] == "run"
    assert f["general.file_type"] == ftype[quant]
    assert (f["llama.context_length"], f["llama.embedding_length"], f["llama.block_count"]) == (64, 64, 2)
    assert (f["llama.feed_forward_length"], f["llama.attention.head_count"]) == (model.cfg.mlp_hidden, 4)
    assert (f["llama.attention.head_count_kv"], f["llama.rope.dimension_count"]) == (4, 16)
    assert f["llama.rope.freq_base"] == 10000.0
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    tok = CodeTokenizer.load(run / "tokenizer.json")
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == CODELM_PRE == "gpt-2"
    assert f["tokenizer.ggml.tokens"] == [t for t, _ in vocab]
    assert f["tokenizer.ggml.merges"] == [" ".join(m) for m in spec["model"]["merges"]]
    types = f["tokenizer.ggml.token_type"]
    assert types[:7] == [T.CONTROL] * 7 and set(types[7:]) == {T.NORMAL}
    assert f["tokenizer.ggml.bos_token_id"] == f["tokenizer.ggml.eos_token_id"] == tok.eot_id == 0
    assert (f["tokenizer.ggml.eot_token_id"], f["tokenizer.ggml.padding_token_id"]) == (0, tok.pad_id)
    assert f["tokenizer.ggml.add_bos_token"] is True  # codelm's prompts start with bos_id (= EOT here)
    fim = [f[f"tokenizer.ggml.fim_{k}_token_id"] for k in ("pre", "suf", "mid")]
    assert fim == [tok.special[r] for r in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")]
    assert "tokenizer.ggml.unknown_token_id" not in f
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "run"]  # the temporary name is gone


@pytest.mark.parametrize("quant", ["bf16", "q8_0"])
def test_a_qwen2_shaped_run_keeps_biases_gqa_and_its_head(tmp_path, spec, quant):
    qwen = {**spec, "pre_tokenizer": QWEN2_PRE}
    shape = dict(n_kv_head=2, qkv_bias=True, tie_embeddings=False, rope_layout="half", rope_theta=1e6)
    run = make_run(tmp_path / "run", qwen, mlp_hidden_size=40, vocab_size=320, **shape)  # rows of 40: f16
    export_gguf(run, tmp_path / "m.gguf", quant)
    model = load_model(run)
    f = check_tensors(tmp_path / "m.gguf", model, "half", quant)  # qwen2's NEOX rope: no permutation
    assert f["general.architecture"] == "qwen2" and f["qwen2.attention.head_count_kv"] == 2
    assert f["qwen2.rope.freq_base"] == 1e6 and f["qwen2.feed_forward_length"] == 40
    assert f["tokenizer.ggml.pre"] == "qwen2"
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert len(tokens) == 320 and tokens[300:] == [f"[PAD{i}]" for i in range(300, 320)]  # one per row
    assert set(types[300:]) == {T.UNUSED}


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_a_qwen3_shaped_run_keeps_qk_norm_and_its_heads_size(tmp_path, spec, layout):
    """Heads of 32 channels on a width of 64, QK-norm: llama.cpp's qwen3, its key and value
    lengths the heads' size, the norms' channels in its NEOX rope's order like q and k's."""
    shape = dict(n_kv_head=2, head_size=32, qk_norm=True, rope_layout=layout)
    run = make_run(tmp_path / "run", {**spec, "pre_tokenizer": QWEN2_PRE}, **shape)
    export_gguf(run, tmp_path / "m.gguf", "f32")
    f = check_tensors(tmp_path / "m.gguf", load_model(run), "half", "f32")
    assert f["general.architecture"] == "qwen3" and f["qwen3.rope.dimension_count"] == 32
    assert (f["qwen3.attention.key_length"], f["qwen3.attention.value_length"]) == (32, 32)


def test_a_starcoder2_shaped_run_uses_layernorm_and_biases(tmp_path, spec):
    star = {**spec, "pre_tokenizer": STARCODER_PRE}
    run = make_run(tmp_path / "run", star, norm="layernorm", mlp="gelu", bias=True, norm_eps=1e-3)
    export_gguf(run, tmp_path / "m.gguf", "f32")
    f = check_tensors(tmp_path / "m.gguf", load_model(run), "half", "f32")  # NEOX: interleaved -> half
    assert f["general.architecture"] == "starcoder2" and f["tokenizer.ggml.pre"] == "smollm"
    assert f["starcoder2.attention.layer_norm_epsilon"] == pytest.approx(1e-3)
    assert "starcoder2.attention.layer_norm_rms_epsilon" not in f


def rope_ggml(x: np.ndarray, theta: float, neox: bool) -> np.ndarray:
    """llama.cpp's rope on x (T, heads, D) at positions 0..T-1: NORM rotates channels (2i, 2i+1),
    NEOX (i, i + D/2); pair i turns by pos * theta^(-2i/D) (ggml's rope_f32)."""
    t, _, d = x.shape
    out = x.copy()
    for i in range(d // 2):
        a, b = (i, i + d // 2) if neox else (2 * i, 2 * i + 1)
        angle = np.arange(t)[:, None] * theta ** (-2 * i / d)
        out[..., a] = x[..., a] * np.cos(angle) - x[..., b] * np.sin(angle)
        out[..., b] = x[..., a] * np.sin(angle) + x[..., b] * np.cos(angle)
    return out


@pytest.mark.parametrize(
    "shape,neox",
    [({}, False), ({"rope_layout": "half", "n_kv_head": 2}, False), ({"qkv_bias": True}, True)],
)
def test_llama_cpp_rope_on_the_written_q_and_k_gives_codelm_attention_scores(tmp_path, spec, shape, neox):
    run = make_run(tmp_path / "run", spec, **shape)
    export_gguf(run, tmp_path / "m.gguf", "f32")
    _, tensors = read(tmp_path / "m.gguf")
    model = load_model(run)
    cfg, attn = model.cfg, model.blocks[0].attn
    x = torch.randn(10, cfg.n_embd)
    with torch.no_grad():  # codelm: fused projection, its own rope, scores per head
        q, k, _ = (
            attn.qkv(x).view(10, -1, cfg.head_dim).split([cfg.n_head, cfg.kv_heads, cfg.kv_heads], dim=1)
        )
        cos, sin = rope_tables(cfg)
        q, k = (apply_rope(t.transpose(0, 1), cos[:10], sin[:10], cfg.rope_layout) for t in (q, k))
        k = k.repeat_interleave(cfg.n_head // cfg.kv_heads, dim=0)
        want = (q @ k.transpose(1, 2)).numpy()

    def project(name: str) -> np.ndarray:  # llama.cpp: x @ W^T (+ b), then heads
        w, b = (tensors.get(f"blk.0.attn_{name}.{kind}") for kind in ("weight", "bias"))
        y = x.numpy() @ np.asarray(w.data).T + (0 if b is None else np.asarray(b.data))
        return y.reshape(10, -1, cfg.head_dim)

    gq, gk = (rope_ggml(project(n), cfg.rope_theta, neox).transpose(1, 0, 2) for n in "qk")
    gk = gk.repeat(cfg.n_head // cfg.kv_heads, axis=0)
    np.testing.assert_allclose(gq @ gk.transpose(0, 2, 1), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "shape,message",
    [
        (dict(pos="learned"), "no GGUF architecture for pos=learned"),
        (dict(norm="layernorm", mlp="gelu"), "no GGUF architecture"),
        (dict(mlp="gelu"), "no GGUF architecture"),
        (dict(qk_norm=True, qkv_bias=True), "no GGUF architecture .* qk_norm"),
    ],
)
def test_a_shape_llama_cpp_cannot_run_is_a_one_line_error(tmp_path, spec, shape, message):
    run = make_run(tmp_path / "run", spec, **shape)
    with pytest.raises(CodelmError, match=message) as e:
        export_gguf(run, tmp_path / "m.gguf")
    assert "\n" not in str(e.value) and not (tmp_path / "m.gguf").exists()


def test_bad_quant_and_a_too_large_tokenizer_are_errors(tmp_path, spec):
    run = make_run(tmp_path / "run", spec, vocab_size=299)
    with pytest.raises(CodelmError, match="unknown GGUF quantization 'q4_0'"):
        export_gguf(run, tmp_path / "m.gguf", "q4_0")
    with pytest.raises(CodelmError, match="ids up to 299 but the model only 299 embeddings"):
        export_gguf(run, tmp_path / "m.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary file left behind


def test_pre_tokenizer_names_follow_the_regexes(spec):
    name = lambda pre: pre_tokenizer_name({"pre_tokenizer": pre})  # noqa: E731
    assert name(spec["pre_tokenizer"]) == CODELM_PRE
    assert name(QWEN2_PRE) == "qwen2" and name(STARCODER_PRE) == "smollm" and name(BYTE_LEVEL) == "gpt-2"
    llama3 = QWEN2.replace(r"\p{N}|", r"\p{N}{1,3}|")
    assert name(
        {**QWEN2_PRE, "pretokenizers": [{**QWEN2_PRE["pretokenizers"][0], "pattern": {"Regex": llama3}}]}
    )
    for unknown in ({"type": "Whitespace"}, {**BYTE_LEVEL, "use_regex": False}, {"type": "Metaspace"}):
        with pytest.raises(CodelmError, match="llama.cpp implements none of this tokenizer's pre-tokenizer"):
            name(unknown)


@pytest.mark.parametrize("pre,name", [(QWEN2_PRE, "qwen2"), (STARCODER_PRE, "smollm"), (BYTE_LEVEL, "gpt-2")])
def test_llama_cpp_cuts_imported_tokenizers_as_they_do(spec, pre, name):
    imported = {**spec, "pre_tokenizer": pre}
    tok = CodeTokenizer(Tokenizer.from_str(json.dumps(imported)))
    assert llama_cpp_tokenizer(imported, name).encode(CODE).ids == tok.encode(CODE)


def test_codelm_tokens_differ_where_no_llama_cpp_pre_tokenizer_cuts_like_codelm(spec):
    tok = CodeTokenizer(Tokenizer.from_str(json.dumps(spec)))
    cpp = llama_cpp_tokenizer(spec, CODELM_PRE)
    assert cpp.encode("x = y + 1").ids == tok.encode("x = y + 1")
    assert cpp.decode(cpp.encode(CODE).ids) == CODE and cpp.encode(CODE).ids != tok.encode(CODE)


def sentencepiece_spec() -> dict:
    """A SentencePiece-style tokenizer.json (Llama's layout): <unk> <s> </s>, byte tokens, pieces."""
    pieces = ["▁", "d", "e", "f", "x", "▁d", "ef", "▁def", "▁x", "ee", "eee", "▁e"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    vocab |= {p: 259 + i for i, p in enumerate(pieces)}
    merges = [["▁", "d"], ["e", "f"], ["▁d", "ef"], ["▁", "x"], ["e", "e"], ["ee", "e"], ["▁", "e"]]
    special = [{"id": i, "content": t, "special": True} for t, i in list(vocab.items())[:3]]
    return {
        "version": "1.0",
        "added_tokens": [
            {**t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
            for t in special
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "ByteFallback"},
        "model": {
            "type": "BPE",
            "vocab": vocab,
            "merges": merges,
            "unk_token": "<unk>",
            "byte_fallback": True,
        },
    }


def spm_encode(text: str, tokens: list[str], scores: list[float]) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm, no dummy prefix): join the adjacent
    pair whose joint token scores highest (leftmost on ties); unknown characters become bytes."""
    ids = {t: i for i, t in enumerate(tokens)}
    syms = list(text.replace(" ", "▁"))
    while True:
        pairs = [
            (scores[ids[a + b]], -i)
            for i, (a, b) in enumerate(zip(syms[:-1], syms[1:], strict=True))
            if a + b in ids
        ]
        if not pairs:
            break
        i = -max(pairs)[1]
        syms[i : i + 2] = [syms[i] + syms[i + 1]]
    return [j for s in syms for j in ([ids[s]] if s in ids else [ids[f"<0x{b:02X}>"] for b in s.encode()])]


def test_a_sentencepiece_tokenizer_is_written_with_scores_that_merge_as_hf_does(tmp_path):
    spm = sentencepiece_spec()
    run = make_run(tmp_path / "run", spm, vocab_size=272)
    export_gguf(run, tmp_path / "m.gguf", "f32")
    f, _ = read(tmp_path / "m.gguf")
    assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.add_space_prefix"] is False
    types = f["tokenizer.ggml.token_type"]
    assert types[:3] == [T.UNKNOWN, T.CONTROL, T.CONTROL] and set(types[3:259]) == {T.BYTE}
    assert set(types[259:271]) == {T.NORMAL} and types[271] == T.UNUSED
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert f["tokenizer.ggml.unknown_token_id"] == 0 and f["tokenizer.ggml.add_bos_token"] is True
    tok = CodeTokenizer.load(run / "tokenizer.json")
    for text in ("def eeee x", " def", "deefxé e", "eee"):
        assert spm_encode(text, f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"]) == tok.encode(text)


def test_rope_scaling_is_written_as_llama_cpp_reads_it(tmp_path, spec):
    """Linear as the scaling type and factor; llama3 as `rope_freqs`, each pair's divisor,
    checked against transformers' own llama3 frequencies."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    export_gguf(
        make_run(tmp_path / "linear", spec, rope_scaling="linear", rope_factor=4.0), tmp_path / "l.gguf"
    )
    f, t = read(tmp_path / "l.gguf")
    assert (f["llama.rope.scaling.type"], f["llama.rope.scaling.factor"]) == ("linear", 4.0)
    assert "rope_freqs.weight" not in t
    shape = dict(rope_scaling="llama3", rope_factor=8.0, rope_original_context=64, rope_theta=5e5)
    export_gguf(make_run(tmp_path / "llama3", spec, **shape), tmp_path / "3.gguf")
    f, t = read(tmp_path / "3.gguf")
    rope = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=64, rope_theta=5e5)  # fmt: skip
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](
        LlamaConfig(hidden_size=64, num_attention_heads=4, rope_parameters=rope), "cpu"
    )
    plain = 1 / 5e5 ** (torch.arange(0, 16, 2).double() / 16)
    divisors = (plain / theirs.double()).numpy()  # 1 (kept), blended, 8 (divided): every band
    assert "llama.rope.scaling.type" not in f and len(set(np.round(divisors, 4))) == 3
    np.testing.assert_allclose(t["rope_freqs.weight"].data, divisors, rtol=1e-5)
