"""Everything a run needs before its first step: config, tokenizer, token files, init weights.

A new run writes RUN/config.json and RUN/tokenizer.json; `--resume` reads them
back instead (the saved config wins over flags); `--init-from` takes another
run's model shape, tokenizer and weights. Token files are cached in RUN/tokens/
under a key of what made them, so a resumed run does not tokenize again.
Under torchrun only rank 0 writes; the others wait at a barrier.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file

from codelm.data.dataset import iter_texts, require_data_dir, split_path
from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_json
from codelm.model import ModelConfig
from codelm.model.io import WEIGHTS, read_config
from codelm.tokenizer import CodeTokenizer, train_tokenizer
from codelm.train import distributed
from codelm.train.batches import PackedWindows, open_tokens, tokenize_split
from codelm.train.config import TrainConfig


@dataclass
class Prepared:
    run_dir: Path
    data_dir: Path
    cfg: TrainConfig
    tok: CodeTokenizer
    model_cfg: ModelConfig
    train: PackedWindows
    val: PackedWindows
    device: torch.device
    init_weights: dict[str, torch.Tensor] | None = None


def _fresh(data_dir, run_dir, cfg, tokenizer, console, overrides, init_from, dist):
    """Tokenizer, model config and init weights of a new run; writes config.json on rank 0."""
    init_weights = None
    if init_from is not None:
        saved = read_config(init_from)
        model_cfg = ModelConfig.from_dict(saved["model"])
        tok = CodeTokenizer.load(Path(init_from) / "tokenizer.json")
        try:
            init_weights = load_file(str(Path(init_from) / WEIGHTS))
        except Exception as e:  # missing or damaged file: safetensors has its own errors
            raise CodelmError(f"cannot read weights of {init_from}: {e}") from None
        console.print(f"fine-tuning from {init_from} (its tokenizer and model shape)")
    else:
        if tokenizer is not None:
            tok = CodeTokenizer.load(tokenizer)
        else:
            console.print(f"training a {cfg.vocab_size}-token tokenizer on {split_path(data_dir, 'train')}")
            tok = train_tokenizer(iter_texts(data_dir, "train"), cfg.vocab_size)
        model_cfg = ModelConfig.from_preset(cfg.preset, **{**(overrides or {}), "vocab_size": tok.vocab_size})
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(
            run_dir / "checkpoints", ignore_errors=True
        )  # a new run: old ones would mislead --resume
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        tok.save(run_dir / "tokenizer.json")
        atomic_write_json(
            run_dir / "config.json",
            {"model": model_cfg.to_dict(), "train": cfg.to_dict(), "data": str(Path(data_dir).resolve())},
        )
    return tok, model_cfg, init_weights


def _token_key(data_dir: Path, split: str, tok: CodeTokenizer, cfg: TrainConfig) -> str:
    parquet = split_path(require_data_dir(data_dir, (split,)), split)
    st = parquet.stat()
    fim = cfg.fim_rate if split == "train" else 0.0  # validation stays plain left-to-right
    what = [str(parquet.resolve()), st.st_size, st.st_mtime_ns, tok.tok.to_str(), fim, cfg.seed]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _tokens(data_dir: Path, run_dir: Path, split: str, tok: CodeTokenizer, cfg: TrainConfig, dist, console):
    out = run_dir / "tokens" / f"{split}.bin"
    meta = out.with_suffix(".json")
    key = _token_key(data_dir, split, tok, cfg)
    cached = meta.is_file() and json.loads(meta.read_text()).get("key") == key
    if dist.main and not cached:
        console.print(f"tokenizing the {split} split")
        fim = cfg.fim_rate if split == "train" else 0.0
        tokenize_split(data_dir, split, tok, out, fim_rate=fim, seed=cfg.seed)
        atomic_write_json(meta, {"key": key})
    distributed.barrier(dist)
    return open_tokens(out, tok.vocab_size)


def prepare(
    data_dir, run_dir: Path, cfg, tokenizer, console: Console, overrides, resume, init_from, dist, device
) -> Prepared:
    init_weights = None
    if resume:
        saved = read_config(run_dir)
        cfg = TrainConfig.from_dict(saved["train"])
        model_cfg = ModelConfig.from_dict(saved["model"])
        tok = CodeTokenizer.load(run_dir / "tokenizer.json")
        data_dir = require_data_dir(data_dir or saved["data"], ("train", "val"))
    else:
        if data_dir is None:
            raise CodelmError("give --data DATA (or --resume an existing run)")
        # Checked before a tokenizer is trained or config.json written: a wrong --data fails at once.
        data_dir = require_data_dir(data_dir, ("train", "val"))
        tok, model_cfg, init_weights = _fresh(
            data_dir, run_dir, cfg, tokenizer, console, overrides, init_from, dist
        )
    seq_len = cfg.seq_len or model_cfg.block_size
    if seq_len > model_cfg.block_size:
        raise CodelmError(f"seq_len {seq_len} exceeds the model's block_size {model_cfg.block_size}")
    train = PackedWindows(*_tokens(data_dir, run_dir, "train", tok, cfg, dist, console), seq_len)
    val = PackedWindows(*_tokens(data_dir, run_dir, "val", tok, cfg, dist, console), seq_len)
    if len(train) == 0:
        raise CodelmError(f"the train split has fewer than {seq_len + 1} tokens: add more code")
    if len(val) == 0:
        val = train  # a corpus this small has no usable val split
        console.print("[yellow]the val split is too small: evaluating on training windows[/yellow]")
    return Prepared(run_dir, data_dir, cfg, tok, model_cfg, train, val, device, init_weights)
