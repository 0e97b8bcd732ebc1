"""`ModelConfig`: the shape of the transformer, and the named presets.

A preset is a plain dict of overrides, so `ModelConfig.from_preset("small",
vocab_size=16384)` reads as what it is.

Besides codelm's own choices, the fields cover the variants that pretrained code models
use, so their checkpoints can be built as a codelm model: grouped-query attention
(`n_kv_head`), a head size of its own and QK-norm (`head_size`, `qk_norm`), biases (`qkv_bias`,
`bias`), an untied head, RoPE's "half" layout, base and scaling (`rope_layout`, `rope_theta`,
`rope_scaling`), the norm's epsilon and the MLP's width. Every new field defaults to what codelm
always did, so a config.json written before it loads unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from codelm.errors import CodelmError


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8192
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256  # width; head size is n_embd // n_head
    # Grouped-query attention (Ainslie et al. 2023): n_head queries share n_kv_head keys and
    # values, a smaller KV cache to read per decoded token; 1 is multi-query attention
    # (Shazeer 2019). None: n_head, plain multi-head attention.
    n_kv_head: int | None = None
    # A pretrained model's own head size where it is not n_embd // n_head (Qwen3: 128 for any
    # width); the attention then projects n_embd to n_head * head_size and back. None: the rule.
    head_size: int | None = None
    # RMSNorm on each head's queries and keys before RoPE (Qwen3's QK-norm). codelm's own
    # models leave it off.
    qk_norm: bool = False
    block_size: int = 512  # context length in tokens
    # RoPE: relative positions generalise better than learned absolute ones and
    # add no parameters (Su et al. 2021); "learned" is the GPT-2 choice.
    pos: str = "rope"
    rope_theta: float = 10000.0
    # Which channels RoPE rotates together: "interleaved", 2i with 2i+1 (the paper's, and
    # codelm's); "half", i with i + head_dim/2 (GPT-NeoX's, used by Llama's HF checkpoints).
    rope_layout: str = "interleaved"
    # A pretrained model's RoPE scaling (its HF config's rope_scaling). "linear" divides every
    # frequency by rope_factor: position interpolation (Chen et al. 2023), DeepSeek-Coder's 4.
    # "llama3" divides the frequencies whose wavelength exceeds rope_original_context /
    # rope_low_freq_factor by it, keeps those under rope_original_context / rope_high_freq_factor,
    # and blends between (Llama 3.1 and 3.2). None: plain RoPE, codelm's own.
    rope_scaling: str | None = None
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context: int = 8192
    # RMSNorm is as good as LayerNorm at lower cost (Zhang & Sennrich 2019).
    norm: str = "rmsnorm"  # or "layernorm"
    norm_eps: float | None = None  # None: 1e-6 for RMSNorm, torch's 1e-5 for LayerNorm (as always)
    # SwiGLU beats GELU at equal parameters (Shazeer 2020); hidden is 8/3 wide to match.
    mlp: str = "swiglu"  # or "gelu"
    mlp_hidden_size: int | None = None  # None: the rule in `mlp_hidden`
    # Biases: Qwen2 has them on the q/k/v projection only; StarCoder2 (`bias`) on every
    # linear layer but the head, and in LayerNorm. codelm leaves them out, as PaLM does.
    qkv_bias: bool = False
    bias: bool = False
    # Tied input/output embeddings save vocab*width parameters, a large share of a small model.
    tie_embeddings: bool = True
    dropout: float = 0.0  # short CPU runs never see a token twice, so regularisation only hurts

    def __post_init__(self) -> None:
        for f in fields(self):  # a config.json edited by hand, an HF config's "64"
            if not _of_type(getattr(self, f.name), str(f.type)):
                raise CodelmError(f"model {f.name} must be {f.type}, got {getattr(self, f.name)!r}")
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                raise CodelmError(f"model {name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise CodelmError(f"model dropout must be in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0:
            raise CodelmError(f"model rope_theta must be > 0, got {self.rope_theta}")
        if not (self.rope_factor > 0 and self.rope_original_context > 0):
            raise CodelmError("model rope_factor and rope_original_context must be > 0")
        if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
            raise CodelmError("model rope_low_freq_factor must be > 0 and under rope_high_freq_factor")
        if self.head_size is None and self.n_embd % self.n_head:
            raise CodelmError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.head_size is not None and self.head_size < 1:
            raise CodelmError(f"model head_size must be at least 1, got {self.head_size}")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise CodelmError(f"model n_kv_head must divide n_head {self.n_head}, got {self.n_kv_head}")
        if self.mlp_hidden_size is not None and self.mlp_hidden_size < 1:
            raise CodelmError(f"model mlp_hidden_size must be at least 1, got {self.mlp_hidden_size}")
        if self.norm_eps is not None and not self.norm_eps > 0:
            raise CodelmError(f"model norm_eps must be > 0, got {self.norm_eps}")
        if self.pos == "rope" and self.head_dim % 2:
            raise CodelmError("RoPE needs an even head size")
        for name, value, allowed in [
            ("pos", self.pos, ("rope", "learned")),
            ("norm", self.norm, ("rmsnorm", "layernorm")),
            ("mlp", self.mlp, ("swiglu", "gelu")),
            ("rope_layout", self.rope_layout, ("interleaved", "half")),
            ("rope_scaling", self.rope_scaling, (None, "linear", "llama3")),
        ]:
            if value not in allowed:
                raise CodelmError(f"model {name} must be one of {allowed}, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Heads of keys and values (each shared by n_head / kv_heads query heads)."""
        return self.n_kv_head or self.n_head

    @property
    def mlp_hidden(self) -> int:
        if self.mlp_hidden_size is not None:  # a pretrained model's own width
            return self.mlp_hidden_size
        if self.mlp == "swiglu":  # 8/3 * width keeps the parameter count of a 4x GELU MLP
            return 64 * ((8 * self.n_embd // 3 + 63) // 64)
        return 4 * self.n_embd

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """The config a run saved (its "model" entry); an unknown key is an error, not dropped,
        since building the model without it would give another shape than was trained."""
        if not isinstance(d, dict):
            raise CodelmError(f'{source}: "model" must be an object, got {type(d).__name__}')
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:  # no field was ever removed or renamed, so this is a newer codelm's run, or a typo
            raise CodelmError(
                f"{source}: unknown model config key(s): {', '.join(unknown)} "
                "(written by a newer codelm? upgrade it to load this run)"
            )
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        check_preset(name)
        return replace(cls(**PRESETS[name]), **overrides)


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


def _of_type(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field's annotation ("int", "float | None", ...); JSON's
    true and false are not numbers here, as Python's bools would be."""
    kinds = annotation.split(" | ")
    if isinstance(value, bool):
        return "bool" in kinds
    return any(isinstance(value, _TYPES[k]) for k in kinds)


def check_preset(name: str) -> None:
    if name not in PRESETS:
        raise CodelmError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")


PRESETS: dict[str, dict[str, Any]] = {
    # The demo's model: 5 minutes on 2 CPU cores give it about 2M tokens (4k vocabulary).
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),
    # The size bench/train.py and bench/generate.py compare with transformers by default (6L/384).
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=512),
    # About GPT-2 small (12L/768); meant for a GPU.
    "base": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}
