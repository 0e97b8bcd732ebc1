"""The files of model folders: a Hugging Face folder's safetensors memory-mapped tensor by
tensor, and a run or HF folder written whole or not at all, its safetensors streamed one
tensor at a time (interop/hf.py's import and export)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from codelm.errors import CodelmError, first_line
from codelm.fsutil import atomic_directory, read_json
from codelm.model.io import CONFIG

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
CODES = {v: k for k, v in DTYPES.items()}


def open_weights(src: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Each tensor name of the folder's safetensors -> the open (memory-mapped) file holding it."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({src / f for f in read_json(index).get("weight_map", {}).values()})
    else:
        files = sorted(src.glob("model*.safetensors"))  # not Mistral's consolidated.safetensors
    if not files:
        pickles = sorted(p.name for p in src.glob("*.bin"))
        if pickles:
            raise CodelmError(f"{src} has pickled weights only ({pickles[0]}): codelm reads *.safetensors")
        raise CodelmError(f"no model.safetensors in {src}")
    where: dict[str, Any] = {}
    for path in files:
        if not path.is_file():
            raise CodelmError(f"missing weights file {path} (listed in {index.name})")
        try:
            f = stack.enter_context(safe_open(str(path), framework="pt"))
        except Exception as e:  # safetensors raises its own error types on damage
            raise CodelmError(f"corrupt weights {path}: {first_line(e)}") from None
        for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
            where.setdefault(name, f)
    return where


@contextlib.contextmanager
def replacing(out: Path, reading: Path) -> Iterator[Path]:
    """A temporary folder that replaces `out` on success (as `codelm data build` does)."""
    if out.resolve() == reading.resolve() or out.resolve() in reading.resolve().parents:
        raise CodelmError(f"--out {out} would replace {reading}, which is being read")
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / CONFIG).is_file()):
        raise CodelmError(f"{out} exists and is not a model folder: not replacing it")
    with atomic_directory(out) as tmp:
        yield tmp


def write_safetensors(
    path: Path,
    spec: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    tensors: Iterable[tuple[str, torch.Tensor]],
) -> None:
    """A safetensors file of the tensors `spec` announces (dtype, shape), written as
    `tensors` yields them in the same order: one tensor in memory at a time."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in spec.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for (name, t), (expected, (dtype, shape)) in zip(tensors, spec.items(), strict=True):
            assert name == expected and t.dtype == dtype and tuple(t.shape) == shape, name
            f.write(t.contiguous().view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())
