"""`--shard`: FSDP2 (torch's `fully_shard`) under torchrun, and its sharded checkpoints.

Each block, then the whole model, is wrapped with `fully_shard`: every process holds
1/N of each parameter, of its gradient and of the optimizer state, and gathers a
block's whole weights only while it computes with them. It runs on CUDA (nccl) and
on CPUs (gloo), which is what the tests use. On CUDA the weights are gathered and
computed in bf16 and gradients are reduced in fp32; on a CPU the training's own
autocast applies, as it does without sharding.

Muon needs each whole matrix for its Newton-Schulz step. It gathers: every process
all-gathers each matrix's update, orthogonalises all of them, and applies its own
rows (muon.py). That is the same arithmetic as one process, at the cost of one
all-gather per matrix per step and of the orthogonalisation done N times. Sharding
by whole matrices (process r orthogonalises every N-th one, then all send theirs)
would save that compute, but not the traffic, and not at the small N of one machine.

A sharded checkpoint is torch's distributed checkpoint (DCP): each process writes its
shards, and `state.json` records the loop state and a sha256 of every file as for an
unsharded checkpoint (checkpoint.py). DCP reshards on load, so a run resumes on any
number of processes, one included, and `checkpoint_weights` reads one back as whole
tensors (`codelm export --format safetensors --checkpoint`).
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_json, file_sha256, writing
from codelm.model import ModelConfig, Transformer
from codelm.model.io import WEIGHTS, read_config, save_weights
from codelm.train import distributed
from codelm.train.checkpoint import latest_valid, list_checkpoints, verify

FORMAT = "dcp"  # state.json's "format" for a sharded checkpoint


def apply(model: Transformer, device: torch.device) -> None:
    """Shard each block, then the rest (embeddings, final norm, head), in place."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kw = {"mp_policy": mp} if device.type == "cuda" else {}
    for block in model.blocks:
        fully_shard(block, **kw)
    fully_shard(model, **kw)


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole tensors on the CPU of process 0 (an empty dict elsewhere). Every process calls it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def _read(state: dict[str, Any], path: Path) -> None:
    """dcp.load, quiet about loading in one process: resharding onto one is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))


def _state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, opt),
        "rng": torch.get_rng_state(),
    }


def save(
    ckpt_dir: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loop: dict[str, Any],
    keep: int,
    dist: distributed.Dist,
) -> Path:
    """Every process writes its shards into `.step-N.sharded.tmp/`; process 0 adds state.json with the
    files' sha256 and renames the folder into place, so a kill leaves no half checkpoint."""
    path = ckpt_dir / f"step-{loop['step']:08d}"
    tmp = ckpt_dir / f".{path.name}.sharded.tmp"
    with writing(path):
        if dist.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier(dist)
        dcp.save(_state(model, opt), checkpoint_id=str(tmp))
        distributed.barrier(dist)
        if dist.main:
            hashes = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
            meta = {"format": FORMAT, "loop": loop, "sha256": hashes}  # DCP holds the param groups
            atomic_write_json(tmp / "state.json", meta)
            shutil.rmtree(path, ignore_errors=True)
            tmp.replace(path)
            for old in list_checkpoints(ckpt_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        distributed.barrier(dist)
    return path


def is_dcp(path: Path) -> bool:
    try:
        return json.loads((path / "state.json").read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def load(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore a sharded checkpoint into `model` and `opt`, sharded or not, on any number of
    processes; return the saved loop state."""
    meta = json.loads((path / "state.json").read_text())
    state = _state(model, opt)  # the layout to fill: this run's own shards
    _read(state, path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    torch.set_rng_state(state["rng"])
    return meta["loop"]


def checkpoint_weights(path: Path, model: Transformer) -> dict[str, torch.Tensor]:
    """A sharded checkpoint's weights as whole tensors, read in this one process."""
    state = {"model": get_model_state_dict(model)}
    _read(state, path)
    return state["model"]


def _named(ckpts: Path, name: str) -> Path:
    """The checkpoint a user names: its folder's name (`step-00000012`), or its step
    (`12`, `step-12`), as the trace and the training log print it."""
    step = re.fullmatch(r"(?:step-)?(\d+)", name)
    if step and (ckpts / f"step-{int(step[1]):08d}").is_dir():
        return ckpts / f"step-{int(step[1]):08d}"
    return ckpts / name


def export_weights(run: Path, checkpoint: str | None, out: Path) -> Path:
    """RUN's checkpoint `checkpoint` (its newest when None), sharded or not, as one
    safetensors file of whole weights at `out`, loadable as a run's model.safetensors."""
    saved = read_config(run)
    if "lora" in saved:
        raise CodelmError(f"{run} is a LoRA run: its checkpoints hold adapters only")
    ckpts = run / "checkpoints"
    path = _named(ckpts, checkpoint) if checkpoint else latest_valid(ckpts, lambda m: None)  # verified
    if path is None or not path.is_dir():
        have = ", ".join(p.name for p in list_checkpoints(ckpts)) or "none"
        raise CodelmError(f"no checkpoint {checkpoint + ' ' if checkpoint else ''}in {ckpts} (there: {have})")
    problem = verify(path) if checkpoint else None
    if problem is not None:
        raise CodelmError(f"checkpoint {path} is unusable: {problem}")
    model = Transformer(ModelConfig.from_dict(saved["model"]))
    if is_dcp(path):
        model.load_state_dict(checkpoint_weights(path, model))
    else:
        model.load_state_dict(load_file(str(path / WEIGHTS)), strict=False)
    save_weights(model, out)
    return path
