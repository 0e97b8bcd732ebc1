"""codelm runs -> GGUF files for llama.cpp: `export_gguf(RUN, OUT, quant)`.

The architecture follows the config: RMSNorm + SwiGLU without biases is llama.cpp's
"llama" (codelm-trained runs, imported Llama and Mistral), the same with q/k/v biases
"qwen2", with QK-norm "qwen3" (its heads' own size as the key and value lengths), LayerNorm +
GELU with biases "starcoder2". llama.cpp rotates channels 2i and
2i+1 together for "llama" (its NORM rope) and i with i + D/2 for the others (NEOX),
so the q and k rows (and biases) of each head are reordered from the run's `rope_layout`
to the one its architecture's rope expects; then llama.cpp computes codelm's attention.
Tensors get llama.cpp's names; `attn.qkv` is cut into q, k, v and SwiGLU's `mlp.up`
into gate and up (gate first, as `MLP.forward` chunks it). A tied head writes no
`output.weight`: llama.cpp's loaders for all four fall back to `token_embd`.

Quantization, as llama.cpp's convert_hf_to_gguf.py does it: 1-D tensors (norms, biases)
stay f32; matrices, the token embedding included, become bf16, q8_0 or f32. A matrix
whose rows are not a multiple of Q8_0's 32-weight blocks is written f16 instead.

The tokenizer goes in as `tokenizer.ggml.*`. A byte-level BPE is model "gpt2" (byte-level
tokens, merges); llama.cpp does not read a pre-tokenizer regex from the file but
implements each by name, so `tokenizer.ggml.pre` names the one whose regexes equal the
file's (`PRE_TOKENIZERS`), else export fails rather than write a file that quietly
tokenizes differently. codelm's own code pre-tokenizer has no llama.cpp counterpart:
its files name the closest one, CODELM_PRE, which cuts some text differently
(docs/gguf.md measures how much). A SentencePiece-style BPE (byte fallback; CodeLlama,
Mistral) is model "llama", with scores that order merges as the file's merge ranks do.
Both start a prompt with `bos_id` (for codelm's tokenizers `<|endoftext|>`, so
`add_bos_token` is true there too) and add no dummy space, as codelm's prompts do.

An imported instruct model's chat template goes in as `tokenizer.chat_template`. RoPE scaling
goes in as llama.cpp's converter writes it: linear as `rope.scaling.type` and its factor, llama3
as the `rope_freqs` tensor of each pair's divisor (for "llama" only, the graph that reads it).

What it does not do: learned positions, other norms or activations, other RoPE scalings, other
quantizations (llama.cpp's llama-quantize makes those from a bf16 file).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from gguf import (
    GGML_QUANT_VERSION,
    GGMLQuantizationType,
    GGUFWriter,
    Keys,
    LlamaFileType,
    RopeScalingType,
    TokenType,
)
from gguf.quants import QuantError, quantize
from tokenizers import Regex, Tokenizer, pre_tokenizers

from codelm.errors import CodelmError
from codelm.fsutil import make_dirs
from codelm.model.config import ModelConfig
from codelm.model.io import load_model
from codelm.model.transformer import Transformer, rope_frequencies
from codelm.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, CodeTokenizer
from codelm.tokenizer.pretokenize import PATTERN

QUANTS = {
    "bf16": (LlamaFileType.MOSTLY_BF16, GGMLQuantizationType.BF16),
    "q8_0": (LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0),
    "f32": (LlamaFileType.ALL_F32, GGMLQuantizationType.F32),
}
# The rope each architecture's llama.cpp graph applies (llama_model_rope_type).
ROPE_LAYOUT = {"llama": "interleaved", "qwen2": "half", "qwen3": "half", "starcoder2": "half"}

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama.cpp spells HF's case-insensitive `(?i:'s|...)` out with classes (llama-vocab.cpp).
_CONTRACTIONS_HF = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_TAIL = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# llama.cpp's BPE pre-tokenizers by name: the regexes llm_tokenizer_bpe cuts with, one after
# the other, each match and each gap between matches becoming a piece (llama-vocab.cpp).
# Only families with a code model are listed; "smollm" cuts as "starcoder" does, and unlike
# it leaves spaces before punctuation alone when llama.cpp detokenizes.
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt-2": (GPT2,),
    "smollm": (r"\p{N}", GPT2),  # StarCoder2, SmolLM2: single digits, then GPT-2's cut
    "llama-bpe": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}" + _TAIL,),
    "qwen2": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}" + _TAIL,),
    "deepseek-coder": (
        "[\r\n]",
        r"\s?\p{L}+",
        r"\s?\p{P}+",
        "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
        r"\p{N}",
    ),
}
IGNORE_MERGES = {"llama-bpe"}  # llama.cpp takes a piece that is a token whole, without merging
# The name written for codelm's own pre-tokenizer (pretokenize.PATTERN), which llama.cpp lacks:
# on held-out standard-library code the largest share of its tokens are codelm's (69.7%), with
# the fewest extra tokens (+8.4%); docs/gguf.md has the numbers for each name.
CODELM_PRE = "gpt-2"


def export_gguf(run: Path, out: Path, quant: str = "bf16") -> None:
    """Write the model and tokenizer of RUN as the GGUF file OUT (replaced atomically), its
    matrices in `quant`: "bf16", "q8_0" or "f32". CodelmError for what llama.cpp cannot run."""
    if quant not in QUANTS:
        raise CodelmError(f"unknown GGUF quantization {quant!r}; choose from {', '.join(QUANTS)}")
    run, out = Path(run), Path(out)
    model = load_model(run)
    arch = gguf_arch(model.cfg)
    tok = CodeTokenizer.load(run / "tokenizer.json")
    writer = GGUFWriter(path=None, arch=arch, use_temp_file=True)
    try:
        _add_hparams(writer, model, QUANTS[quant][0], run.resolve().name)
        _add_tokenizer(writer, tok, model.cfg.vocab_size)
        for name, weight in gguf_tensors(model, arch):
            data, qtype = _encode(weight.detach().float().numpy(), QUANTS[quant][1])
            writer.add_tensor(name, data, raw_dtype=qtype)
        _write(writer, out)
    finally:
        writer.close()


def gguf_arch(cfg: ModelConfig) -> str:
    """llama.cpp's architecture for a model of this shape; CodelmError if it has none."""
    if cfg.pos == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and not cfg.bias:
        if cfg.qk_norm and not cfg.qkv_bias:
            return "qwen3"
        if not cfg.qk_norm:
            return "qwen2" if cfg.qkv_bias else "llama"
    if cfg.pos == "rope" and cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.bias and not cfg.qk_norm:
        return "starcoder2"
    raise CodelmError(
        f"no GGUF architecture for pos={cfg.pos} norm={cfg.norm} mlp={cfg.mlp} bias={cfg.bias}"
        f"{' qk_norm' if cfg.qk_norm else ''}: export needs rope with rmsnorm+swiglu and no biases "
        "(llama, qwen2 with qkv_bias, qwen3 with QK-norm) or with layernorm+gelu and biases (starcoder2)"
    )


def to_rope_layout(w: torch.Tensor, heads: int, src: str, dst: str) -> torch.Tensor:
    """The rows (or bias) of a q or k projection of `heads` heads reordered per head from the
    rope layout `src` to `dst`: "half" pairs channel i with i + D/2, "interleaved" 2i with 2i+1."""
    if src == dst:
        return w
    d = w.shape[0] // heads
    pairs = (heads, 2, d // 2) if src == "half" else (heads, d // 2, 2)
    return w.reshape(*pairs, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(model: Transformer, arch: str) -> list[tuple[str, torch.Tensor]]:
    """(llama.cpp name, tensor) for every weight the GGUF holds, in PyTorch's (out, in) shape."""
    cfg, sd = model.cfg, model.state_dict()
    rope, hd = ROPE_LAYOUT[arch], cfg.head_dim
    out = [("token_embd.weight", sd["wte.weight"])]
    for i in range(cfg.n_layer):
        for kind in ("weight", "bias"):  # a bias follows its weight's mapping
            at = {n: sd.get(f"blocks.{i}.{n}.{kind}") for n in ("norm1", "attn.proj", "norm2", "mlp.down")}
            named = {"attn_norm": at["norm1"], "attn_output": at["attn.proj"]}
            named |= {"ffn_norm": at["norm2"], "ffn_down": at["mlp.down"]}
            if (qkv := sd.get(f"blocks.{i}.attn.qkv.{kind}")) is not None:
                q, k, v = qkv.split([cfg.n_head * hd, cfg.kv_heads * hd, cfg.kv_heads * hd])
                named["attn_q"] = to_rope_layout(q, cfg.n_head, cfg.rope_layout, rope)
                named["attn_k"] = to_rope_layout(k, cfg.kv_heads, cfg.rope_layout, rope)
                named["attn_v"] = v
            for norm in ("q_norm", "k_norm"):  # Qwen3's: one head's channels, in its rope layout
                if (w := sd.get(f"blocks.{i}.attn.{norm}.{kind}")) is not None:
                    named[f"attn_{norm}"] = to_rope_layout(w, 1, cfg.rope_layout, rope)
            if (up := sd.get(f"blocks.{i}.mlp.up.{kind}")) is not None:
                gate_up = up.chunk(2) if cfg.mlp == "swiglu" else (None, up)  # gelu: no gate
                named |= dict(zip(("ffn_gate", "ffn_up"), gate_up, strict=True))
            out += [(f"blk.{i}.{n}.{kind}", t) for n, t in named.items() if t is not None]
    out += [
        (f"output_norm.{kind}", sd[f"norm_f.{kind}"]) for kind in ("weight", "bias") if f"norm_f.{kind}" in sd
    ]
    if not cfg.tie_embeddings:
        out.append(("output.weight", sd["head.weight"]))
    if cfg.rope_scaling == "llama3":  # llama.cpp divides each pair's frequency by its factor
        if arch != "llama":
            raise CodelmError(f"llama3 RoPE scaling has no GGUF form for {arch}, only for llama")
        plain = rope_frequencies(replace(cfg, rope_scaling=None))
        out.append(("rope_freqs.weight", plain / rope_frequencies(cfg)))
    return out


def _encode(w: np.ndarray, qtype: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    """The bytes of `w` in `qtype` (f32 for a vector), and the type they are in."""
    if w.ndim == 1:  # llama.cpp's kernels take norms and biases in f32 only
        return w, GGMLQuantizationType.F32
    try:
        return quantize(w, qtype), qtype
    except QuantError:  # rows not a multiple of the block: f16, as convert_hf_to_gguf.py falls back
        return w.astype(np.float16), GGMLQuantizationType.F16


def _add_hparams(w: GGUFWriter, model: Transformer, ftype: LlamaFileType, name: str) -> None:
    cfg = model.cfg
    w.add_name(name)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.mlp_hidden)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)  # every channel rotates (all four graphs assert it)
    if cfg.head_dim * cfg.n_head != cfg.n_embd:  # heads of their own size (Qwen3)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if cfg.rope_scaling == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_factor)
    eps = float(model.norm_f.eps)  # the module's own epsilon: config's norm_eps or its default
    if cfg.norm == "rmsnorm":
        w.add_layer_norm_rms_eps(eps)
    else:
        w.add_layer_norm_eps(eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(ftype)
    w.add_quantization_version(GGML_QUANT_VERSION)


def _add_tokenizer(w: GGUFWriter, tok: CodeTokenizer, n_vocab: int) -> None:
    spec = json.loads(tok.tok.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise CodelmError(f"GGUF export needs a BPE tokenizer, not {model.get('type')}")
    tokens, types = _token_table(spec, tok, n_vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    if "ByteLevel" in _kinds(spec.get("pre_tokenizer")) | _kinds(spec.get("decoder")):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre_tokenizer_name(spec))
        w.add_token_merges(merges)
    elif model.get("byte_fallback"):
        w.add_tokenizer_model("llama")  # llama.cpp's SentencePiece: merges by score, no merge list
        w.add_tokenizer_pre("default")
        w.add_token_scores(_scores(tokens, merges))
        w.add_add_space_prefix(False)  # codelm encodes text as written (no dummy leading space)
        byte = [len(t) == 6 and t.startswith("<0x") and t.endswith(">") for t in tokens]  # <0x0A>
        types = [
            TokenType.BYTE if b and k == TokenType.NORMAL else k for b, k in zip(byte, types, strict=True)
        ]
    else:
        raise CodelmError(
            "GGUF export needs a byte-level BPE or a SentencePiece-style (byte fallback) tokenizer"
        )
    w.add_token_list(tokens)
    w.add_token_types(types)
    _add_special_ids(w, tok, model)
    if tok.chat is not None:  # an imported instruct model's (tokenizer/chat.py), for llama.cpp's chat
        w.add_chat_template(tok.chat.source)


def _token_table(spec: dict, tok: CodeTokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types, one per embedding row."""
    vocab = spec["model"]["vocab"]
    text = {i: t for t, i in vocab.items()}
    kind = dict.fromkeys(text, TokenType.NORMAL)
    for added in spec.get("added_tokens") or []:
        i = added["id"]
        text[i] = added["content"]  # as written: llama.cpp matches added tokens in raw text
        # CONTROL: never read from text, and hidden when detokenized; a role token counts as
        # special even where the file forgets to say so (DeepSeek-Coder's FIM markers).
        kind[i] = TokenType.CONTROL if added.get("special") or i in tok.stop_ids else TokenType.USER_DEFINED
    if (unk := spec["model"].get("unk_token")) in vocab:  # an added token too, in Llama's files
        kind[vocab[unk]] = TokenType.UNKNOWN
    if max(text) >= n_vocab:
        raise CodelmError(f"the tokenizer has ids up to {max(text)} but the model only {n_vocab} embeddings")
    # llama.cpp wants a token per embedding row: unused rows get placeholders, as convert_hf_to_gguf.py's
    rows = range(n_vocab)
    return [text.get(i, f"[PAD{i}]") for i in rows], [kind.get(i, TokenType.UNUSED) for i in rows]


def _scores(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece scores that make llama.cpp merge in the file's order: llama.cpp joins the
    adjacent pair whose joined token scores highest, HF the pair with the lowest merge rank."""
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        a, b = merge.split(" ", 1)
        rank.setdefault(a + b, r)
    return [-float(rank.get(t, len(merges))) for t in tokens]


def _add_special_ids(w: GGUFWriter, tok: CodeTokenizer, model: dict) -> None:
    w.add_bos_token_id(tok.bos_id)
    # codelm starts every prompt with bos_id, also where that is the end-of-text token
    # (codelm's own tokenizers: a file starts after the previous one's end), so llama.cpp must too.
    w.add_add_bos_token(True)
    w.add_eos_token_id(tok.eot_id)
    w.add_eot_token_id(tok.eot_id)
    w.add_pad_token_id(tok.pad_id)
    if (unk := model.get("unk_token")) in model["vocab"]:
        w.add_unk_token_id(model["vocab"][unk])
    fim = ((FIM_PREFIX, Keys.Tokenizer.FIM_PRE_ID), (FIM_SUFFIX, Keys.Tokenizer.FIM_SUF_ID))
    for role, key in (*fim, (FIM_MIDDLE, Keys.Tokenizer.FIM_MID_ID)):
        if role in tok.special:
            w.add_uint32(key, tok.special[role])


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for the pre-tokenizer of a byte-level tokenizer.json (a parsed dict):
    the PRE_TOKENIZERS entry whose regexes equal the file's cuts, CODELM_PRE for codelm's own;
    CodelmError for any other, since a wrong name loads and quietly tokenizes differently."""
    cuts = _cuts(spec.get("pre_tokenizer"))
    if cuts == [PATTERN]:
        return CODELM_PRE
    for name, regexes in PRE_TOKENIZERS.items():
        if cuts == list(regexes):
            return name
    raise CodelmError(
        "llama.cpp implements none of this tokenizer's pre-tokenizer (it knows them by name, "
        f"not by regex); GGUF export recognises {', '.join(PRE_TOKENIZERS)} and codelm's own"
    )


def _cuts(pre: dict | None) -> list[str] | None:
    """The regexes a pre-tokenizer cuts with, in order, in llama.cpp's spelling; None where a
    step is something else."""
    kind = (pre or {}).get("type")
    if pre is None:
        return []
    if kind == "Sequence":
        steps = [_cuts(p) for p in pre["pretokenizers"]]
        return None if None in steps else [r for s in steps for r in s]
    if kind == "Split" and pre.get("behavior") == "Isolated" and not pre.get("invert"):
        regex = pre["pattern"].get("Regex")
        return None if regex is None else [regex.replace(_CONTRACTIONS_HF, _CONTRACTIONS)]
    if kind == "Digits":
        return [r"\p{N}" if pre.get("individual_digits") else r"\p{N}+"]
    if kind == "ByteLevel":  # its own regex is GPT-2's
        return [GPT2] if pre.get("use_regex", True) else []
    return None


def _kinds(node: object) -> set[str]:
    """Every component type in a tokenizer.json pipeline step, nested Sequences included."""
    if isinstance(node, list):
        return set().union(*map(_kinds, node))
    if not isinstance(node, dict):
        return set()
    return {node.get("type", "")}.union(*(_kinds(v) for v in node.values() if isinstance(v, list)))


def llama_cpp_tokenizer(spec: dict, pre: str) -> Tokenizer:
    """An HF tokenizer that computes what llama.cpp does from a "gpt2" GGUF written with `pre`:
    the BPE and added tokens of `spec` (a parsed byte-level tokenizer.json), cut by the
    regexes of PRE_TOKENIZERS[pre] in turn. Tests and docs/gguf.md compare its ids."""
    model = {**spec["model"], "ignore_merges": pre in IGNORE_MERGES}
    tok = Tokenizer.from_str(json.dumps({**spec, "model": model, "normalizer": None, "post_processor": None}))
    cuts = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*cuts, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.encode_special_tokens = True  # llama.cpp reads no control token from text either
    return tok


def _write(writer: GGUFWriter, out: Path) -> None:
    """Write the file under a temporary name beside OUT, fsync it, then rename it over OUT."""
    make_dirs(out.parent)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        try:
            writer.write_header_to_file(path=tmp)
        except OSError as e:  # a directory that exists but takes no new file (/proc, a read-only mount)
            raise CodelmError(f"cannot write {out}: {e.strerror or e}") from None
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
