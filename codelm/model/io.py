"""Save and load a model as `config.json` + `model.safetensors` in a run directory.

Every tensor file written here carries, in its safetensors metadata, a sha256 of its
tensors (names, dtypes, shapes and bytes); loading recomputes it, so a bit flipped on
disk is a one-line error instead of a model that silently computes something else.
Files without it (written elsewhere, or before it existed) load unchecked. A run's
weights also record the sha256 of the config.json and tokenizer.json beside them, so a
bit flipped in those (a changed merge, a changed number that still parses) is caught
too; the price is that a config.json edited by hand after training no longer loads.

The config is everything loading needs: no pickles, no code on disk. A LoRA run
(model/lora.py) holds `adapters.safetensors` instead of a copy of its base's weights,
and its config.json names the base run under "lora": loading builds the base, adds the
adapters and merges them, so every caller gets a plain `Transformer` either way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from codelm.errors import CodelmError
from codelm.fsutil import file_sha256, make_dirs, usual_mode, writing
from codelm.model.config import ModelConfig
from codelm.model.lora import ADAPTERS, LoraConfig, adapter_state, add_adapters, load_adapters, merge
from codelm.model.transformer import Transformer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"  # a name only: model/ never reads what is in it
DIGEST = "codelm.sha256"  # safetensors metadata key: `digest` of the file's tensors
COMPANIONS = "codelm.files.sha256"  # metadata key: {file name: sha256} of config.json, tokenizer.json


Tensors = dict[str, torch.Tensor]


def state_for_saving(model: Transformer, sd: Tensors | None = None) -> Tensors:
    """The state dict (`sd`, or the model's own) without the tied head (safetensors refuses
    shared storage)."""
    sd = dict(model.state_dict() if sd is None else sd)
    if model.cfg.tie_embeddings:
        sd.pop("head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _companions(run: Path) -> dict[str, str]:
    return {name: file_sha256(run / name) for name in (CONFIG, TOKENIZER) if (run / name).is_file()}


def _save(tensors: dict[str, torch.Tensor], path: Path, companions: dict[str, str] | None = None) -> None:
    tmp = make_dirs(path.parent) / f".{path.name}.tmp"
    metadata = {DIGEST: digest(tensors)}
    if companions:
        metadata[COMPANIONS] = json.dumps(companions, sort_keys=True)
    try:
        with writing(path):
            save_file(tensors, str(tmp), metadata=metadata)
            usual_mode(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def save_weights(model: Transformer, path: str | Path) -> None:
    _save(state_for_saving(model), Path(path))


def save_run_weights(model: Transformer, run: str | Path, whole: Tensors | None = None) -> Path:
    """A run's trained weights: RUN/adapters.safetensors (the adapters alone) for a model with
    LoRA adapters, else RUN/model.safetensors. Returns the path written. `whole`: the
    weights already gathered whole from a sharded model."""
    adapters = adapter_state(model)
    path = Path(run) / (ADAPTERS if adapters else WEIGHTS)
    tensors = adapters or state_for_saving(model, whole)
    _save(tensors, path, _companions(Path(run)))
    return path


def read_config(run: str | Path) -> dict[str, Any]:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise CodelmError(f"not a run directory (no {CONFIG}): {run}")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CodelmError(f"corrupt {path}: {e}") from None
    if not isinstance(saved, dict) or "model" not in saved:
        raise CodelmError(f'corrupt {path}: not an object with a "model" entry')
    return saved


def _tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CodelmError(f"no trained {what} in {path.parent} ({path.name} missing)")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types on damage
        raise CodelmError(f"corrupt {what} {path}: {e}") from None
    expected = meta.get(DIGEST)
    if expected is not None and digest(tensors) != expected:
        raise CodelmError(f"corrupt {what} {path}: checksum mismatch (the file changed after it was written)")
    check_companions(path, meta.get(COMPANIONS))
    return tensors


def check_companions(weights: Path, recorded: str | None) -> None:
    """The config.json and tokenizer.json beside `weights` are the ones it was saved with."""
    try:
        files = json.loads(recorded) if recorded else {}
    except json.JSONDecodeError:
        raise CodelmError(f"corrupt {weights}: unreadable {COMPANIONS} metadata") from None
    for name, sha in files.items():
        path = weights.parent / name
        if path.is_file() and file_sha256(path) != sha:
            why = "a damaged disk, or an edit by hand"
            raise CodelmError(f"corrupt {path}: it changed after {weights.name} was saved ({why})")


def verify_run_files(run: str | Path) -> None:
    """Check RUN's config.json and tokenizer.json against its weights' record, if it has one."""
    for name in (WEIGHTS, ADAPTERS):
        path = Path(run) / name
        if path.is_file():
            try:
                with safe_open(str(path), "pt") as f:
                    recorded = (f.metadata() or {}).get(COMPANIONS)
            except Exception as e:
                raise CodelmError(f"corrupt {path}: {e}") from None
            check_companions(path, recorded)


def load_model(run: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """Build the model from RUN/config.json and load RUN/model.safetensors; for a LoRA run,
    its base run's model with RUN/adapters.safetensors merged into the weights."""
    return _load(Path(run), ()).to(device).eval()


def _load(run: Path, chain: tuple[Path, ...]) -> Transformer:
    saved = read_config(run)
    cfg = ModelConfig.from_dict(saved["model"])
    if "lora" in saved:
        return _load_adapted(run, cfg, saved["lora"], chain)
    weights = run / WEIGHTS
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(_tensors(weights, "weights"), strict=False)
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "head.weight")]
    if missing or unexpected:
        raise CodelmError(
            f"weights in {weights} do not match config: missing {missing}, unexpected {unexpected}"
        )
    return model


def _load_adapted(run: Path, cfg: ModelConfig, lora: dict[str, Any], chain: tuple[Path, ...]) -> Transformer:
    """The base run's model (itself possibly a LoRA run) with RUN's adapters merged in."""
    if not lora.get("base"):
        raise CodelmError(f'{run / CONFIG}: its "lora" entry names no base run')
    base = Path(lora["base"])
    chain = (*chain, run.resolve())
    if not (base / CONFIG).is_file():
        raise CodelmError(f"the base run of LoRA run {run} is missing: {base}")
    if base.resolve() in chain:
        raise CodelmError(f"LoRA runs name each other as base: {' -> '.join(map(str, chain))} -> {base}")
    model = _load(base, chain)
    if model.cfg != cfg:
        raise CodelmError(f"the base run {base} no longer has the model shape {run} was trained on")
    settings = LoraConfig.from_dict({k: v for k, v in lora.items() if k != "base"}, str(run / CONFIG))
    add_adapters(model, settings)
    load_adapters(model, _tensors(run / ADAPTERS, "adapters"), str(run / ADAPTERS))
    return merge(model)
