"""LoRA: low-rank adapters over a transformer's linear layers (Hu et al. 2021).

An adapted layer computes y = W x + b + (alpha / r) * B A x. W and b are the base layer's,
frozen by training; A (r, in) and B (out, r) are the only tensors it trains. B starts at
zero, so an adapted model computes exactly what its base computes until its first step;
A starts as nn.Linear's weights do (Kaiming-uniform, a = sqrt(5)), as in the paper's code
and peft. `merge` folds (alpha / r) B A into W and gives back a plain `Transformer`: a
LoRA run decodes at full speed, through the same code as any other run.

`LoraLinear` is an nn.Linear that keeps its base's `weight` and `bias` under their own
names, so an adapted model's state dict is its base's plus `*.lora_a` and `*.lora_b`: base
weights load into it unchanged, and the adapter state is the keys that end so.

Why not peft: it targets plain nn.Linear by name and wraps codelm's layers correctly (a
test checks that it gives the same logits for the same A and B), but every command that
loads a LoRA run (generate, serve, eval, export) would then import peft, transformers and
accelerate as runtime dependencies (about 3.7 s of imports before a first token, here),
and it renames the base weights (`qkv.base_layer.weight`) and adapters
(`qkv.lora_A.default.weight`) away from codelm's state dict, for what is about 80 lines.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from codelm.errors import CodelmError
from codelm.model.transformer import Transformer

ADAPTERS = "adapters.safetensors"  # a LoRA run's trained tensors, beside its config.json

# The names users give (--lora-targets) and the linear layers of a block each one adapts.
TARGETS: dict[str, tuple[str, ...]] = {
    "qkv": ("attn.qkv",),
    "proj": ("attn.proj",),
    "mlp": ("mlp.up", "mlp.down"),
}
# Every linear layer by default: adapting attention alone falls short of full fine-tuning
# where adapting all of them matches it (Dettmers et al. 2023, QLoRA, section 4).
DEFAULT_TARGETS = ("qkv", "proj", "mlp")


@dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float  # the update is scaled by alpha / rank
    targets: tuple[str, ...] = DEFAULT_TARGETS
    dropout: float = 0.0  # on the adapters' input only; the base layer sees x as it is

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))  # a JSON list when read back
        if self.rank < 1:
            raise CodelmError(f"LoRA rank must be at least 1, got {self.rank}")
        if not self.alpha > 0:
            raise CodelmError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise CodelmError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            shown = ",".join(self.targets) or "nothing"
            raise CodelmError(f"LoRA targets must be distinct ones of {', '.join(TARGETS)}; got {shown}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> LoraConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise CodelmError(f"{source}: unknown LoRA config key(s): {', '.join(unknown)}")
        return cls(**d)


class LoraLinear(nn.Linear):
    """base(x) + scale * B(A(dropout(x))), sharing the base layer's weight and bias."""

    def __init__(self, base: nn.Linear, cfg: LoraConfig):
        # On "meta": nn.Linear's own weights are made only to be replaced by the base's.
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(cfg.rank, base.in_features, device=device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, cfg.rank, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = cfg.scale
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scaling the rank-r middle costs r multiplies per token instead of out_features.
        low = F.linear(self.dropout(x), self.lora_a) * self.scale  # (..., r)
        return super().forward(x) + F.linear(low, self.lora_b)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing what this layer computes without dropout: W + scale B A."""
        delta = (self.lora_b @ self.lora_a) * self.scale  # (out, in), in the adapters' fp32
        self.weight += delta.to(self.weight.dtype)
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        return plain


def _layers(model: Transformer, targets: tuple[str, ...]) -> Iterator[tuple[nn.Module, str]]:
    """(parent module, attribute) of each targeted linear layer, block by block."""
    for block in model.blocks:
        for target in targets:
            for path in TARGETS[target]:
                parent, name = path.split(".")
                yield getattr(block, parent), name


def add_adapters(model: Transformer, cfg: LoraConfig) -> Transformer:
    """Put a LoraLinear over each targeted layer of every block, in place; returns `model`.
    On a model built under torch.device("meta") this checks the rank costs no memory."""
    places = list(_layers(model, cfg.targets))
    for parent, name in places:
        layer = getattr(parent, name)
        if isinstance(layer, LoraLinear):
            raise ValueError("the model already has adapters: merge them first")
        narrowest = min(layer.in_features, layer.out_features)
        if cfg.rank > narrowest:  # B A could not have rank r: a typo, not a choice
            raise CodelmError(f"LoRA rank {cfg.rank} exceeds the width {narrowest} of the {name} layers")
    for parent, name in places:
        setattr(parent, name, LoraLinear(getattr(parent, name), cfg))
    return model


def is_adapter(name: str) -> bool:
    """Whether a parameter name (from named_parameters or a state dict) is an adapter's."""
    return name.endswith((".lora_a", ".lora_b"))


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors by name, on the CPU; empty for a model without adapters."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if is_adapter(n)}


def load_adapters(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy saved adapters into `model`'s; every adapter it has must be there, and no other."""
    expected = {n for n, _ in model.named_parameters() if is_adapter(n)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CodelmError(f"adapters in {source} do not match the run's config: "
                          f"missing {missing[:3]}, unexpected {unexpected[:3]}")  # fmt: skip
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape mismatch
        raise CodelmError(f"adapters in {source} do not match the model: {e}") from None


def merge(model: Transformer) -> Transformer:
    """Fold every adapter into its base weight, in place; returns the plain `model`."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, LoraLinear):
                setattr(module, name, child.merged())
    return model
