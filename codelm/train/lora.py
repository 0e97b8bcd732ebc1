"""The training side of LoRA (the layer, merging and loading are codelm/model/lora.py).

A LoRA run trains only the adapters: the base weights are frozen, so they need no
gradients and no optimizer state, and where training computes in bf16 the frozen
linear weights are held in bf16. Its checkpoints and final weights hold the adapters
alone (checkpoint.py, model/io.py), and its config.json names the base run, which
loading and `--resume` read the base weights from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from codelm.errors import CodelmError
from codelm.model import ModelConfig, Transformer
from codelm.model.lora import LoraConfig, add_adapters, is_adapter


def check_fits(model_cfg: ModelConfig, lora: LoraConfig) -> None:
    """Raise the error `add_adapters` would (a rank wider than a layer) before a run is written;
    the model is built on torch's meta device, which allocates nothing."""
    with torch.device("meta"):
        add_adapters(Transformer(model_cfg), lora)


def config_entry(lora: LoraConfig, base: str | Path, run_dir: Path) -> dict[str, Any]:
    """config.json's "lora": the settings loading needs and the base run's absolute path."""
    base = Path(base).resolve()
    if base == run_dir.resolve():  # the new config.json would name itself as its base
        raise CodelmError(f"--init-from and --out are the same run ({base}): give a new --out")
    return {**lora.to_dict(), "base": str(base)}


def freeze_base(model: Transformer, bf16: bool) -> None:
    """Train the adapters alone: requires_grad off for every other tensor.

    With `bf16` (training autocasts to bf16) the frozen linear weights of the blocks are
    stored in bf16: autocast would round them to bf16 for every matmul anyway, so the
    losses are the same to the bit, for half their memory and no cast per step. Biases,
    norms and the embedding (whose output starts the fp32 residual stream) stay fp32.
    """
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter(name))
    if bf16:
        for module in model.blocks.modules():
            if isinstance(module, nn.Linear):
                module.weight = nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
