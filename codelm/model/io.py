"""Save and load a model as `config.json` + `model.safetensors` in a run directory.

The config is everything loading needs: no pickles, no code on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from codelm.errors import CodelmError
from codelm.model.config import ModelConfig
from codelm.model.transformer import Transformer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def state_for_saving(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict without the tied head (safetensors refuses shared storage)."""
    sd = model.state_dict()
    if model.cfg.tie_embeddings:
        sd.pop("head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_weights(model: Transformer, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state_for_saving(model), str(tmp))
    tmp.replace(path)


def read_config(run: str | Path) -> dict[str, Any]:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise CodelmError(f"not a run directory (no {CONFIG}): {run}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CodelmError(f"corrupt {path}: {e}") from None


def load_model(run: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """Build the model from RUN/config.json and load RUN/model.safetensors."""
    cfg = ModelConfig.from_dict(read_config(run)["model"])
    weights = Path(run) / WEIGHTS
    if not weights.is_file():
        raise CodelmError(f"no trained weights in {run} ({WEIGHTS} missing)")
    model = Transformer(cfg)
    try:
        sd = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types on damage
        raise CodelmError(f"corrupt weights {weights}: {e}") from None
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "head.weight")]
    if missing or unexpected:
        raise CodelmError(
            f"weights in {weights} do not match config: missing {missing}, unexpected {unexpected}"
        )
    return model.to(device).eval()
