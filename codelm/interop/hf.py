"""Hugging Face model folders <-> codelm runs: `import_hf` and `export_hf`.

`import_hf(SRC, OUT)` reads a local HF folder of a Llama, Mistral, Qwen2, Qwen3 or StarCoder2
model (config.json; model.safetensors, or its shards and model.safetensors.index.json;
tokenizer.json) and writes the codelm run OUT: config.json ({"model": ..., "source":
...}), the tokenizer.json byte for byte, and model.safetensors in codelm's names and the
source's dtype (`load_model` casts on load), and an instruct model's chat template as
chat_template.json (tokenizer/chat.py). Tensors are read from the memory-mapped
source and written one by one, so a large model is never held twice in memory.
`export_hf(RUN, OUT)` goes the other way, to a folder that transformers'
`AutoModelForCausalLM.from_pretrained` loads with codelm's logits: an imported run as its
own architecture, a codelm-trained one as Llama, Qwen2 or StarCoder2 by its shape.

The mapping: q, k and v projections are the rows of codelm's fused `attn.qkv`, gate and up
those of `mlp.up` (gate first: `MLP.forward` takes `gate, up = h.chunk(2)`); Qwen3's q_norm
and k_norm are `attn.q_norm` and `attn.k_norm`. HF's RoPE rotates channel i with i + D/2
(codelm's rope_layout "half"), so an imported model needs no permutation, and export permutes
the q and k rows (and QK-norm weights) of an "interleaved" model per head.

What it does not do: download, unpickle (`*.bin` checkpoints are refused), or convert what
codelm's Transformer cannot compute exactly (RoPE scalings other than linear and llama3,
other activations, other architectures): each is a one-line CodelmError. A sliding window
shorter than the context cuts the context to the window instead: up to the window, full
attention is the same.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from codelm.errors import CodelmError, first_line
from codelm.fsutil import atomic_write_json, read_json
from codelm.interop.folders import CODES, DTYPES, open_weights, replacing, write_safetensors
from codelm.model import ModelConfig, Transformer
from codelm.model.io import CONFIG, WEIGHTS, load_model, read_config, state_for_saving
from codelm.tokenizer.chat import CHAT_FILE, ChatTemplate, read_hf

TOKENIZER = "tokenizer.json"
CLASSES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
}
# transformers' defaults for the keys a config.json may leave out
SILU = dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False)
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(SILU, max_position_embeddings=2048),
    "mistral": dict(SILU, max_position_embeddings=131072, sliding_window=4096),
    "qwen2": dict(SILU, max_position_embeddings=32768),
    "qwen3": dict(SILU, max_position_embeddings=32768, head_dim=128),
    "starcoder2": dict(hidden_act="gelu_pytorch_tanh", norm_epsilon=1e-5, tie_word_embeddings=True,
                       use_bias=True, max_position_embeddings=4096),
}  # fmt: skip
# codelm's MLPs compute SiLU (SwiGLU) and GELU's tanh approximation; the names HF gives them
ACTIVATIONS = {"llama": ("silu",), "mistral": ("silu",), "qwen2": ("silu",), "qwen3": ("silu",)}
ACTIVATIONS["starcoder2"] = ("gelu_pytorch_tanh", "gelu_new")
IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# codelm module -> the HF module(s) whose rows, concatenated, make its weight (and bias)
TOP = {"wte": "model.embed_tokens", "norm_f": "model.norm", "head": "lm_head"}
LAYER = {"norm1": ["input_layernorm"], "norm2": ["post_attention_layernorm"],
         "attn.qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
         "attn.proj": ["self_attn.o_proj"],
         "attn.q_norm": ["self_attn.q_norm"], "attn.k_norm": ["self_attn.k_norm"]}  # fmt: skip
MLP = {
    "swiglu": {"mlp.up": ["mlp.gate_proj", "mlp.up_proj"], "mlp.down": ["mlp.down_proj"]},
    "gelu": {"mlp.up": ["mlp.c_fc"], "mlp.down": ["mlp.c_proj"]},
}

Plan = dict[str, list[tuple[str, tuple[int, ...]]]]  # codelm tensor -> HF tensors (name, shape)


@dataclass(frozen=True)
class Imported:
    model: ModelConfig
    model_type: str
    dtype: str  # of the weights, as in safetensors: "BF16", "F32", ...
    params: int
    notes: list[str] = field(default_factory=list)  # what the user should know (a cut context)
    chat_template: bool = False  # an instruct model's, kept (tokenizer/chat.py)


def hf_plan(cfg: ModelConfig) -> Plan:
    """For each tensor of codelm's model of `cfg`, the HF tensors that make it, in order."""
    with torch.device("meta"):  # shapes only: no memory, whatever the size
        shapes = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    if cfg.tie_embeddings:
        shapes.pop("head.weight")
    plan: Plan = {}
    for name, shape in shapes.items():
        module, param = name.rsplit(".", 1)
        if module in TOP:
            plan[name] = [(f"{TOP[module]}.{param}", shape)]
            continue
        _, layer, rest = module.split(".", 2)  # blocks.{i}.{rest}
        theirs = {**LAYER, **MLP[cfg.mlp]}[rest]
        D = cfg.head_dim
        rows = [cfg.n_head * D, cfg.kv_heads * D, cfg.kv_heads * D] if rest == "attn.qkv" else None
        rows = rows or [shape[0] // len(theirs)] * len(theirs)  # gate and up: halves
        plan[name] = [
            (f"model.layers.{layer}.{m}.{param}", (r, *shape[1:])) for m, r in zip(theirs, rows, strict=True)
        ]
    return plan


def check_plan(plan: Plan, found: dict[str, tuple[int, ...]], skip: Iterable[str] = ()) -> None:
    """A one-line CodelmError for an HF tensor the plan needs that is missing or of another
    shape, or one found that it does not use (except those in `skip`)."""
    needed = {n: s for parts in plan.values() for n, s in parts}
    for name, shape in needed.items():
        if name not in found:
            raise CodelmError(f"weight {name} is missing")
        if tuple(found[name]) != shape:
            raise CodelmError(f"weight {name} has shape {tuple(found[name])}, expected {shape}")
    left = sorted(set(found) - set(needed) - set(skip))
    if left:
        raise CodelmError(f"weight {left[0]} is left over: codelm's model has no place for it")


def to_codelm(plan: Plan, read: Callable[[str], torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """codelm's tensors, one at a time, from HF tensors got by `read(name)`."""
    for name, parts in plan.items():
        ts = [read(n) for n, _ in parts]
        yield name, ts[0] if len(ts) == 1 else torch.cat([t.to(ts[0].dtype) for t in ts])


def to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF's tensors from codelm's state dict (views where no permutation is needed)."""
    out = {}
    for name, parts in hf_plan(cfg).items():
        pieces = state[name].split([s[0] for _, s in parts])
        for (theirs, _), t in zip(parts, pieces, strict=True):
            rotated = theirs.split(".")[-2] in ("q_proj", "k_proj", "q_norm", "k_norm")
            out[theirs] = _half_layout(t, cfg.head_dim) if rotated and cfg.rope_layout == "interleaved" else t
    return out


def _half_layout(t: torch.Tensor, D: int) -> torch.Tensor:
    """q or k rows (weight or bias) of heads in the interleaved RoPE layout, moved to the
    half layout: head channel j of the half layout is channel perm[j] of the interleaved
    (pairs 2i, 2i+1 become i, i + D/2), which turns one rotation into the other."""
    perm = torch.arange(D).view(D // 2, 2).t().flatten()
    return t.unflatten(0, (-1, D))[:, perm].flatten(0, 1)


# ModelConfig's RoPE scaling fields <- the HF rope_scaling (or rope_parameters) keys, per kind
ROPE_KEYS = {
    "linear": {"rope_factor": "factor"},
    "llama3": {"rope_factor": "factor", "rope_low_freq_factor": "low_freq_factor",
               "rope_high_freq_factor": "high_freq_factor",
               "rope_original_context": "original_max_position_embeddings"},
}  # fmt: skip


def _rope(hf: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig's RoPE fields for an HF config: its base, and a linear or llama3 scaling
    (transformers 5's `rope_parameters`, or 4's `rope_scaling` beside `rope_theta`)."""
    out: dict[str, Any] = {}
    for key in ("rope_scaling", "rope_parameters"):
        rope = hf.get(key) or {}
        if any(isinstance(v, dict) for v in rope.values()):
            raise CodelmError(f"per-layer RoPE ({key} by layer type) is not supported")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default" and kind not in ROPE_KEYS:
            raise CodelmError(f"RoPE scaling {kind!r} ({key}) is not supported: only linear and llama3")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise CodelmError("partial RoPE (partial_rotary_factor) is not supported")
        if kind == "llama3":  # as transformers reads it: the config's own key first, then the
            # scaling's, then the config's context
            name = "original_max_position_embeddings"
            rope = {**rope, name: hf.get(name) or rope.get(name) or hf.get("max_position_embeddings")}
        for ours, name in ROPE_KEYS.get(kind, {}).items():
            value = rope.get(name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise CodelmError(f"{key}: RoPE scaling {kind!r} needs a number {name}, got {value!r}")
            out |= {"rope_scaling": kind, ours: int(value) if ours == "rope_original_context" else value}
    theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
    return {**out, "rope_theta": float(theta)}


# The sizes an HF config.json must give, as integers.
_SIZES = ("hidden_size", "num_attention_heads", "max_position_embeddings", "num_hidden_layers",
          "vocab_size", "intermediate_size")  # fmt: skip


def hf_model_config(hf: dict[str, Any]) -> tuple[ModelConfig, list[str]]:
    """codelm's ModelConfig for the dict of an HF config.json, and notes for the user."""
    kind = hf.get("model_type")
    if kind not in CLASSES:
        raise CodelmError(f"model_type {kind!r} is not supported: codelm imports {', '.join(CLASSES)}")
    hf = {**DEFAULTS[kind], **hf}
    for key in _SIZES:
        if key not in hf:
            raise CodelmError(f"config.json has no {key!r}")
        if not isinstance(hf[key], int) or isinstance(hf[key], bool):
            raise CodelmError(f"config.json: {key} must be an integer, got {hf[key]!r}")
    C, H, block = hf["hidden_size"], hf["num_attention_heads"], hf["max_position_embeddings"]
    shape = dict(n_layer=hf["num_hidden_layers"], n_head=H, n_embd=C, vocab_size=hf["vocab_size"])
    shape["mlp_hidden_size"] = hf["intermediate_size"]
    if hf.get("head_dim") not in (None, C // H):  # Qwen3's 128 at any width
        if not isinstance(hf["head_dim"], int) or isinstance(hf["head_dim"], bool) or hf["head_dim"] < 2:
            raise CodelmError(f"config.json: head_dim must be an integer, got {hf['head_dim']!r}")
        shape["head_size"] = hf["head_dim"]
    if (act := hf["hidden_act"]) not in ACTIVATIONS[kind]:
        raise CodelmError(f"hidden_act {act!r} of {kind} is not supported (only {ACTIVATIONS[kind][0]})")
    notes, window = [], hf.get("sliding_window")
    if window and hf.get("use_sliding_window", True) and window < block:
        notes.append(f"context cut from {block} to the {window}-token sliding window (the same attention)")
        block = window
    common = dict(
        block_size=block, n_kv_head=hf.get("num_key_value_heads") or H,
        **_rope(hf), rope_layout="half", tie_embeddings=bool(hf["tie_word_embeddings"]),
    )  # fmt: skip
    if kind == "starcoder2":
        if not hf["use_bias"]:  # its LayerNorms keep their biases: codelm has those only with bias=True
            raise CodelmError("starcoder2 with use_bias false is not supported")
        return ModelConfig(
            **shape, **common, norm="layernorm", mlp="gelu", bias=True, norm_eps=hf["norm_epsilon"]
        ), notes
    biases: dict[str, Any] = dict(qkv_bias=kind == "qwen2", qk_norm=kind == "qwen3")
    if kind == "qwen3" and hf.get("attention_bias"):
        raise CodelmError("qwen3 with attention_bias is not supported")
    if kind == "llama" and (hf.get("attention_bias") or hf.get("mlp_bias")):
        if not (hf.get("attention_bias") and hf.get("mlp_bias")):  # codelm: all linear layers or none
            raise CodelmError("llama with attention_bias but not mlp_bias (or the reverse) is not supported")
        biases = dict(bias=True)
    return ModelConfig(**shape, **common, **biases, norm_eps=hf["rms_norm_eps"]), notes


def _special_ids(src: Path, hf: dict[str, Any]) -> dict[str, Any]:
    """bos/eos/pad ids: config.json's, where generation_config.json does not override them."""
    ids = {k: hf.get(k) for k in IDS}
    gen = src / "generation_config.json"
    return ids | ({k: v for k, v in read_json(gen).items() if k in IDS} if gen.is_file() else {})


def _check_tokenizer(path: Path, rows: int) -> None:
    if not path.is_file():
        raise CodelmError(f"no {TOKENIZER} in {path.parent}")
    try:
        n = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as e:  # tokenizers raises plain Exceptions on bad JSON
        raise CodelmError(f"cannot load tokenizer {path}: {first_line(e)}") from None
    if n > rows:
        raise CodelmError(f"{path} has {n} tokens, more than the model's {rows} embedding rows")


def import_hf(src: str | Path, out: str | Path, chat_template: bool = True) -> Imported:
    """Write the codelm run `out` from the local Hugging Face model folder `src`; with its chat
    template unless `chat_template` is off (a base model's folder often ships its family's)."""
    src, out = Path(src), Path(out)
    if not (src / CONFIG).is_file():
        raise CodelmError(f"no {CONFIG} in {src}" if src.is_dir() else f"not a folder: {src}")
    hf = read_json(src / CONFIG)
    cfg, notes = hf_model_config(hf)
    with contextlib.ExitStack() as stack:
        where = open_weights(src, stack)
        found = {n: tuple(f.get_slice(n).get_shape()) for n, f in where.items()}
        # The embedding's rows may exceed the tokenizer's vocabulary (padding rows): they count.
        rows = found.get("model.embed_tokens.weight", (cfg.vocab_size,))[0]
        cfg = replace(cfg, vocab_size=rows)
        _check_tokenizer(src / TOKENIZER, cfg.vocab_size)
        plan = hf_plan(cfg)
        # buffers old checkpoints saved, and a tied head saved anyway: not weights of their own
        check_plan(plan, found, [n for n in found if n.endswith("inv_freq") or n == "lm_head.weight"])
        spec = {}
        for name, parts in plan.items():
            code = where[parts[0][0]].get_slice(parts[0][0]).get_dtype()
            if code not in DTYPES:
                raise CodelmError(f"weight {parts[0][0]} is {code}: quantized checkpoints are not supported")
            spec[name] = (DTYPES[code], (sum(s[0] for _, s in parts), *parts[0][1][1:]))
        source = {"format": "hf", "model_type": hf["model_type"], "path": str(src.resolve())}
        source |= {"architectures": hf.get("architectures") or [], **_special_ids(src, hf)}
        chat, why = read_hf(src) if chat_template else (None, None)  # one codelm cannot use: told why
        notes += [why] if why else []
        with replacing(out, src) as tmp:
            shutil.copyfile(src / TOKENIZER, tmp / TOKENIZER)
            if chat is not None:
                chat.save(tmp / CHAT_FILE)
            write_safetensors(tmp / WEIGHTS, spec, to_codelm(plan, lambda n: where[n].get_tensor(n)))
            atomic_write_json(tmp / CONFIG, {"model": cfg.to_dict(), "source": source})
    dtype = "/".join(sorted({CODES[d] for d, _ in spec.values()}))
    params = sum(math.prod(s) for _, s in spec.values())
    return Imported(cfg, hf["model_type"], dtype, params, notes, chat is not None)


def _source(run: Path) -> dict[str, Any]:
    """Where the run's weights came from: its own "source", or its LoRA base run's."""
    saved = read_config(run)
    base = (saved.get("lora") or {}).get("base")
    return saved.get("source") or (_source(Path(base)) if base else {})


def export_kind(cfg: ModelConfig, source_type: str | None = None) -> str:
    """The HF model_type that computes what codelm's model of `cfg` does."""
    if cfg.pos != "rope":
        raise CodelmError("a model with learned positions (pos 'learned') has no Hugging Face architecture")
    if cfg.qk_norm:
        if cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and not (cfg.bias or cfg.qkv_bias):
            return "qwen3"
        raise CodelmError("QK-norm has an HF architecture (qwen3) only with rmsnorm, swiglu and no biases")
    if cfg.norm == "rmsnorm" and cfg.mlp == "swiglu":
        kind = "qwen2" if cfg.qkv_bias and not cfg.bias else "llama"  # llama: biases everywhere or none
        return "mistral" if source_type == "mistral" and not cfg.bias else kind
    if cfg.norm == "layernorm" and cfg.mlp == "gelu" and (cfg.bias or not cfg.qkv_bias):
        return "starcoder2"
    raise CodelmError(
        f"no Hugging Face architecture has norm {cfg.norm!r} with mlp {cfg.mlp!r}"
        + (", biases on q/k/v only" if cfg.qkv_bias and not cfg.bias else "")
    )


def hf_config(cfg: ModelConfig, kind: str, dtype: torch.dtype, ids: dict[str, Any]) -> dict[str, Any]:
    """The config.json of the HF `kind` model computing codelm's model of `cfg`."""
    scaling = {"rope_type": cfg.rope_scaling or "default"}
    scaling |= {name: getattr(cfg, ours) for ours, name in ROPE_KEYS.get(cfg.rope_scaling or "", {}).items()}
    rope = {**scaling, "rope_theta": cfg.rope_theta}
    d = dict(
        architectures=[CLASSES[kind]], model_type=kind, vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd,
        intermediate_size=cfg.mlp_hidden, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.block_size, rope_parameters=rope,
        rope_theta=cfg.rope_theta,  # as transformers 4.x reads it
        tie_word_embeddings=cfg.tie_embeddings,
        dtype=str(dtype).removeprefix("torch."), use_cache=True, **ids,
    )  # fmt: skip
    if cfg.rope_scaling:
        d["rope_scaling"] = scaling  # as transformers 4.x reads it
    if kind != "llama":
        d["sliding_window"] = None  # full attention over the whole context, as codelm's
    if kind == "starcoder2":
        return d | dict(hidden_act="gelu_pytorch_tanh", norm_epsilon=cfg.norm_eps or 1e-5, use_bias=cfg.bias)
    d |= dict(hidden_act="silu", rms_norm_eps=cfg.norm_eps or 1e-6, head_dim=cfg.head_dim)
    if kind in ("llama", "qwen3"):
        d |= dict(attention_bias=cfg.bias)
    if kind == "llama":
        d |= dict(mlp_bias=cfg.bias)
    return d | (dict(use_sliding_window=False) if kind in ("qwen2", "qwen3") else {})


def export_hf(run: str | Path, out: str | Path) -> str:
    """Write the run `run` as the Hugging Face model folder `out`; returns its architecture."""
    run, out = Path(run), Path(out)
    model = load_model(run)  # a LoRA run's adapters come merged
    cfg, source = model.cfg, _source(run)
    kind = export_kind(cfg, source.get("model_type"))
    if not (run / TOKENIZER).is_file():
        raise CodelmError(f"no {TOKENIZER} in {run}")
    if source.get("format") == "hf":
        ids = {k: source.get(k) for k in IDS}
    else:
        from codelm.tokenizer import CodeTokenizer

        tok = CodeTokenizer.load(run / TOKENIZER)
        ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eot_id, "pad_token_id": tok.pad_id}
    dtype = _stored_dtype(run)
    with torch.no_grad():
        tensors = to_hf(cfg, state_for_saving(model))
        if kind == "starcoder2" and not cfg.bias:  # its LayerNorms always have biases: zeros
            norms = [n.removesuffix(".weight") for n in tensors if "norm" in n]
            tensors |= {f"{n}.bias": torch.zeros(cfg.n_embd) for n in norms}
        spec = {n: (dtype, tuple(t.shape)) for n, t in tensors.items()}
        with replacing(out, run) as tmp:
            shutil.copyfile(run / TOKENIZER, tmp / TOKENIZER)
            if (run / CHAT_FILE).is_file():  # where transformers' apply_chat_template finds it
                chat = ChatTemplate.load(run / CHAT_FILE)
                atomic_write_json(tmp / "tokenizer_config.json", chat.hf_config())
            write_safetensors(tmp / WEIGHTS, spec, ((n, t.to(dtype)) for n, t in tensors.items()))
            atomic_write_json(tmp / CONFIG, hf_config(cfg, kind, dtype, ids))
            atomic_write_json(tmp / "generation_config.json", ids)
    return CLASSES[kind]


def _stored_dtype(run: Path) -> torch.dtype:
    """The dtype of the run's saved weights (bf16 stays bf16); float32 for a LoRA run, whose
    merged weights would lose the adapters' low bits when rounded."""
    path = run / WEIGHTS
    if "lora" in read_config(run) or not path.is_file():
        return torch.float32
    with safe_open(str(path), framework="pt") as f:
        return DTYPES.get(f.get_slice("wte.weight").get_dtype(), torch.float32)
