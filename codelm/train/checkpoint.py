"""Checkpoints for exact resume: model, optimizer, RNG states and loop state, no pickles.

A checkpoint is a directory `checkpoints/step-XXXXXXXX/` holding
`model.safetensors` (or, for a LoRA run, `adapters.safetensors`: the adapters alone,
the frozen base is the base run's), `optimizer.safetensors` (the optimizer state and
the RNG states as tensors) and `state.json` (the loop state, the optimizer's
hyperparameters, and a sha256 of each tensor file). It is built under a temporary name and
renamed into place, so a crash mid-save leaves the previous checkpoints whole.
On load, a checkpoint whose files are missing or whose hashes differ is
reported and the one before it is used; the temporary folder of one that a
kill cut off mid-save is reported and removed. The last `keep` are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from codelm.fsutil import atomic_directory, atomic_write_json, file_sha256, usual_mode
from codelm.model import Transformer
from codelm.model.io import WEIGHTS, state_for_saving
from codelm.model.lora import ADAPTERS, adapter_state, load_adapters

OPTIMIZER = "optimizer.safetensors"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {
        f"state.{idx}.{key}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().cpu()
        for idx, st in sd["state"].items()
        for key, v in st.items()
    }
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors, sd["param_groups"]


def save_checkpoint(
    ckpt_dir: Path, model: Transformer, opt: torch.optim.Optimizer, state: dict[str, Any], keep: int
) -> Path:
    """Write `checkpoints/step-N/` atomically and prune all but the newest `keep`."""
    path = ckpt_dir / f"step-{state['step']:08d}"
    tensors, groups = _optimizer_tensors(opt)
    adapters = adapter_state(model)
    weights = ADAPTERS if adapters else WEIGHTS
    with atomic_directory(path) as tmp:
        save_file(adapters or state_for_saving(model), str(tmp / weights))
        save_file(tensors, str(tmp / OPTIMIZER))
        for name in (weights, OPTIMIZER):
            usual_mode(tmp / name)
        hashes = {name: file_sha256(tmp / name) for name in (weights, OPTIMIZER)}
        atomic_write_json(tmp / "state.json", {"loop": state, "param_groups": groups, "sha256": hashes})
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint directories, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step-"))


def verify(path: Path) -> str | None:
    """None if the checkpoint is whole, else what is wrong with it."""
    try:
        meta = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable state.json ({e.__class__.__name__})"
    hashes = meta.get("sha256", {})
    weights = ADAPTERS if ADAPTERS in hashes else WEIGHTS
    # A sharded checkpoint (shard.py) lists every file DCP wrote; an unsharded one its two.
    names = sorted(hashes) if meta.get("format") == "dcp" else (weights, OPTIMIZER)
    for name in names:
        if not (path / name).is_file():
            return f"{name} is missing"
        if file_sha256(path / name) != hashes.get(name):
            return f"{name} is damaged (checksum mismatch)"
    return None


def _remove_unfinished(ckpt_dir: Path, warn) -> None:
    """Temporary folders of saves that never finished (atomic_directory's `.step-N.XXXX.tmp`,
    shard.py's `.step-N.sharded.tmp`): reported and removed, or each kill would leak a
    checkpoint's space."""
    if not ckpt_dir.is_dir():
        return
    for tmp in sorted(ckpt_dir.glob(".step-*.tmp")):
        name = tmp.name[1:].split(".", 1)[0]
        warn(f"checkpoint {name} was cut off while being written (the run was killed): removed it")
        shutil.rmtree(tmp, ignore_errors=True)


def latest_valid(ckpt_dir: Path, warn) -> Path | None:
    """The newest checkpoint that verifies; damaged ones are reported through `warn`."""
    _remove_unfinished(ckpt_dir, warn)
    for path in reversed(list_checkpoints(ckpt_dir)):
        problem = verify(path)
        if problem is None:
            return path
        warn(f"checkpoint {path.name} is unusable: {problem}; trying the one before it")
    return None


def load_checkpoint(path: Path, model: Transformer, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG states in place; return the saved loop state."""
    meta = json.loads((path / "state.json").read_text())
    if (path / ADAPTERS).is_file():
        load_adapters(model, load_file(str(path / ADAPTERS)), str(path / ADAPTERS))
    else:
        model.load_state_dict(load_file(str(path / WEIGHTS)), strict=False)
    tensors = load_file(str(path / OPTIMIZER))
    torch.set_rng_state(tensors.pop("rng.cpu"))
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors.pop(k) for k in cuda])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = meta["param_groups"]
    for g in groups:
        g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
    return meta["loop"]
