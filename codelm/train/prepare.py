"""Everything a run needs before its first step: config, tokenizer, token files, init weights.

A new run writes RUN/config.json and RUN/tokenizer.json; `--resume` reads them
back instead (the saved config wins over flags); `--init-from` takes another
run's model shape, tokenizer and weights, through `load_model`, so a LoRA run or an
imported one serves as well as a trained one. A LoRA run (train/lora.py) names its
base in config.json and reads the base weights from there again on `--resume`.
Token files are cached in RUN/tokens/ under a key of what made them, so a resumed
run does not tokenize again.
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

from codelm.data.dataset import iter_texts, require_data_dir, split_files
from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_json, check_can_create, make_dirs
from codelm.model import ModelConfig
from codelm.model.io import WEIGHTS, load_model, read_config, verify_run_files
from codelm.model.lora import ADAPTERS
from codelm.tokenizer import FIM_PREFIX, CodeTokenizer, train_tokenizer
from codelm.tokenizer.chat import CHAT_FILE
from codelm.train import distributed
from codelm.train.batches import PackedWindows, open_tokens, tokenize_split
from codelm.train.checkpoint import list_checkpoints
from codelm.train.config import TrainConfig
from codelm.train.lora import check_fits, config_entry


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


def check_new_run(run_dir: Path, init_from: str | Path | None = None) -> None:
    """Refuse to start a new run where an earlier one left a model, adapters or checkpoints:
    the new run would delete them (`force` in `train` says to)."""
    if init_from is not None and Path(init_from).resolve() == run_dir.resolve():
        raise CodelmError(
            f"--init-from and --out are the same run ({run_dir}): give a new --out "
            "(--force fine-tunes it in place, replacing its model)"
        )
    found = [name for name in (WEIGHTS, ADAPTERS) if (run_dir / name).is_file()]
    ckpts = list_checkpoints(run_dir / "checkpoints")
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint{'s' if len(ckpts) > 1 else ''}, the newest {ckpts[-1].name}")
    if found:
        go_on = "--resume goes on from its newest checkpoint, " if ckpts else ""
        raise CodelmError(
            f"{run_dir} already holds a run ({', '.join(found)}): {go_on}"
            "--force starts over and deletes it, or choose another --out"
        )


def _fresh(data_dir, run_dir, cfg, tokenizer, console, overrides, init_from, dist):
    """Tokenizer, model config and init weights of a new run; writes config.json on rank 0."""
    init_weights = None
    check_can_create(run_dir)  # before any work, such as training a tokenizer
    if init_from is not None:
        base = load_model(init_from)  # a LoRA run's base with its adapters merged, or plain weights
        model_cfg, init_weights = base.cfg, base.state_dict()
        tok = CodeTokenizer.load(Path(init_from) / "tokenizer.json")
        console.print(f"fine-tuning from {init_from} (its tokenizer and model shape)")
    else:
        if tokenizer is not None:
            tok = CodeTokenizer.load(tokenizer)
        else:
            console.print(f"training a {cfg.vocab_size}-token tokenizer on the train split of {data_dir}")
            tok = train_tokenizer(iter_texts(data_dir, "train"), cfg.vocab_size)
        model_cfg = ModelConfig.from_preset(cfg.preset, **{**(overrides or {}), "vocab_size": tok.vocab_size})
    saved = {"model": model_cfg.to_dict(), "train": cfg.to_dict(), "data": str(Path(data_dir).resolve())}
    if cfg.lora is not None:
        check_fits(model_cfg, cfg.lora)
        saved["lora"] = config_entry(cfg.lora, init_from, run_dir)
    if dist.main:
        make_dirs(run_dir)
        shutil.rmtree(
            run_dir / "checkpoints", ignore_errors=True
        )  # a new run: old ones would mislead --resume
        # a LoRA run must not keep full weights, nor a run a chat template its tokenizer lacks
        for stale in ("metrics.jsonl", WEIGHTS, ADAPTERS, CHAT_FILE):
            (run_dir / stale).unlink(missing_ok=True)
        tok.save(run_dir / "tokenizer.json")
        atomic_write_json(run_dir / "config.json", saved)
    return tok, model_cfg, init_weights


def _token_key(data_dir: Path, split: str, tok: CodeTokenizer, cfg: TrainConfig, window: int) -> str:
    # Every file of the split (its one file, or each of its shards in order): a changed,
    # added or removed shard makes the cached tokens stale.
    files = [(str(f.resolve()), f.stat()) for f in split_files(require_data_dir(data_dir, (split,)), split)]
    fim = cfg.fim_rate if split == "train" else 0.0  # validation stays plain left-to-right
    if len(files) == 1:  # one file: the key of a DATA written before shards existed stays the same
        (path, st), *_ = files
        what = [path, st.st_size, st.st_mtime_ns, tok.tok.to_str(), fim, cfg.seed]
    else:
        stamps = [[path, st.st_size, st.st_mtime_ns] for path, st in files]
        what = [stamps, tok.tok.to_str(), fim, cfg.seed]
    if split == "train" and cfg.repo_rate:  # keys of runs without repository documents stay as they were
        what += [cfg.repo_rate, window]
    if split == "train" and cfg.pair_rate != 1:  # as do those of runs that weigh pairs as files
        what += [{"pair_rate": cfg.pair_rate}]
    if tok.uses_chat:  # pairs go in the chat template's frame: a changed template changes them
        what += [{"chat": tok.chat.source}]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _tokens(
    data_dir: Path,
    run_dir: Path,
    split: str,
    tok: CodeTokenizer,
    cfg: TrainConfig,
    window: int,
    dist,
    console,
):
    out = run_dir / "tokens" / f"{split}.bin"
    meta = out.with_suffix(".json")
    key = _token_key(data_dir, split, tok, cfg, window)
    cached = meta.is_file() and json.loads(meta.read_text()).get("key") == key
    if dist.main and not cached:
        console.print(f"tokenizing the {split} split")
        fim = cfg.fim_rate if split == "train" else 0.0
        if fim and not tok.has(FIM_PREFIX):
            console.print("this tokenizer has no fill-in-the-middle tokens: training without FIM")
        repo = cfg.repo_rate if split == "train" else 0.0
        pairs = cfg.pair_rate if split == "train" else 1.0  # validation holds each pair once
        tokenize_split(data_dir, split, tok, out, fim, cfg.seed, repo, window, pair_rate=pairs)
        atomic_write_json(meta, {"key": key})
    distributed.barrier(dist)
    return open_tokens(out, tok.vocab_size)


MAX_DEFAULT_SEQ = 1024  # codelm's own presets have at most this context, so it changes none of them


def prepare(
    data_dir, run_dir: Path, cfg, tokenizer, console: Console, overrides, resume, init_from, dist, device
) -> Prepared:
    init_weights = None
    if resume:
        saved = read_config(run_dir)
        verify_run_files(run_dir)  # a config.json or tokenizer.json damaged since the last save
        if "train" not in saved:  # an imported model: nothing was trained here to resume
            raise CodelmError(f"{run_dir} is not a training run to resume: train with --init-from {run_dir}")
        cfg = TrainConfig.from_dict(saved["train"])
        model_cfg = ModelConfig.from_dict(saved["model"])
        tok = CodeTokenizer.load(run_dir / "tokenizer.json")
        data_dir = require_data_dir(data_dir or saved["data"], ("train", "val"))
        if "lora" in saved:  # its checkpoints hold the adapters alone
            init_weights = load_model(saved["lora"]["base"]).state_dict()
    else:
        if cfg.lora is not None and init_from is None:
            raise CodelmError("--lora trains adapters over a trained model's weights: give --init-from RUN")
        if data_dir is None:
            raise CodelmError("give --data DATA (or --resume an existing run)")
        # Checked before a tokenizer is trained or config.json written: a wrong --data fails at once.
        data_dir = require_data_dir(data_dir, ("train", "val"))
        tok, model_cfg, init_weights = _fresh(
            data_dir, run_dir, cfg, tokenizer, console, overrides, init_from, dist
        )
    # Imported models have contexts of 8-32k tokens: windows that long would make a CPU step
    # take minutes, so 0 means the context up to MAX_DEFAULT_SEQ; --seq-len asks for more.
    seq_len = cfg.seq_len or min(model_cfg.block_size, MAX_DEFAULT_SEQ)
    if seq_len > model_cfg.block_size:
        raise CodelmError(f"seq_len {seq_len} exceeds the model's block_size {model_cfg.block_size}")
    train = PackedWindows(*_tokens(data_dir, run_dir, "train", tok, cfg, seq_len, dist, console), seq_len)
    val = PackedWindows(*_tokens(data_dir, run_dir, "val", tok, cfg, seq_len, dist, console), seq_len)
    if len(train) == 0:
        raise CodelmError(f"the train split has fewer than {seq_len + 1} tokens: add more code")
    if len(val) == 0:
        val = train  # a corpus this small has no usable val split
        console.print("[yellow]the val split is too small: evaluating on training windows[/yellow]")
    return Prepared(run_dir, data_dir, cfg, tok, model_cfg, train, val, device, init_weights)
