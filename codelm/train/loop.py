"""`codelm train`: the optimisation loop.

AdamW with weight-decay groups, linear warmup then cosine decay, gradient
clipping and accumulation, bf16 autocast where the hardware has it. The budget
is epochs, steps or wall-clock minutes, whichever ends first; the cosine
schedule follows the fraction of the budget used, so a time-boxed run still
anneals its learning rate before it stops.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_json
from codelm.model import ModelConfig, Transformer
from codelm.model.io import WEIGHTS, save_weights
from codelm.tokenizer import CodeTokenizer, train_tokenizer
from codelm.train.batches import PackedWindows, iter_texts, tokenize_split
from codelm.train.config import TrainConfig
from codelm.train.trace import Trace, TraceRow


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CodelmError("--device cuda asked for, but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast_dtype(device: torch.device, name: str) -> torch.dtype | None:
    """bf16 where the device computes it natively (AVX512-BF16/AMX on CPU), else fp32 (None)."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return (
        torch.bfloat16
        if torch.backends.cpu.get_cpu_capability() == "AVX512" and torch.cpu._is_avx512_bf16_supported()
        else None
    )


def make_optimizer(model: Transformer, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Decay matrices (attention, MLP, embeddings); never norms or other vectors."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def lr_at(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr to lr*min_lr_ratio over the budget."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def train_step(
    model: Transformer,
    opt: torch.optim.Optimizer,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    grad_clip: float,
    amp: torch.dtype | None,
) -> float:
    """One optimizer step over (inputs, targets) micro-batches; returns the mean loss.

    Targets equal to -100 (padding, or the instruction part of a pair) carry no loss.
    """
    device = next(model.parameters()).device
    total = 0.0
    for x, y in micro_batches:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
        (loss / len(micro_batches)).backward()
        total += loss.item() / len(micro_batches)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def evaluate(
    model: Transformer,
    windows: PackedWindows,
    indices,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> tuple[float, float]:
    """Mean loss and next-token top-1 accuracy over the given windows."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for i in range(0, len(indices), batch_size):
        x, y = (t.to(device) for t in windows.get(indices[i : i + batch_size]))
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    model.train()
    return loss_sum / max(count, 1), correct / max(count, 1)


@dataclass
class Budget:
    """Progress in [0, 1]: the larger of the step fraction and the time fraction."""

    total_steps: int  # from epochs and max_steps
    max_seconds: float  # 0: no time limit
    start: float

    def progress(self, step: int) -> float:
        p = step / self.total_steps
        if self.max_seconds > 0:
            p = max(p, (time.monotonic() - self.start) / self.max_seconds)
        return min(p, 1.0)


def prepare(
    data_dir: Path,
    run_dir: Path,
    cfg: TrainConfig,
    tokenizer: str | Path | None,
    console: Console,
    model_overrides: dict | None = None,
) -> tuple[CodeTokenizer, PackedWindows, PackedWindows, ModelConfig]:
    """Tokenizer, token files and model config for a new run; writes config.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tok = CodeTokenizer.load(tokenizer)
    else:
        console.print(f"training a {cfg.vocab_size}-token tokenizer on {data_dir}/train.parquet")
        tok = train_tokenizer(iter_texts(data_dir, "train"), cfg.vocab_size)
    tok.save(run_dir / "tokenizer.json")
    model_cfg = ModelConfig.from_preset(
        cfg.preset, **{**(model_overrides or {}), "vocab_size": tok.vocab_size}
    )
    seq_len = cfg.seq_len or model_cfg.block_size
    if seq_len > model_cfg.block_size:
        raise CodelmError(f"seq_len {seq_len} exceeds the model's block_size {model_cfg.block_size}")
    console.print("tokenizing the train and val splits")
    train = PackedWindows(tokenize_split(data_dir, "train", tok, run_dir / "tokens" / "train.bin"), seq_len)
    val = PackedWindows(tokenize_split(data_dir, "val", tok, run_dir / "tokens" / "val.bin"), seq_len)
    if len(train) == 0:
        raise CodelmError(f"the train split has fewer than {seq_len + 1} tokens: add more code")
    if len(val) == 0:
        val = train  # a corpus this small has no usable val split; say so in the trace
        console.print("[yellow]val split too small: evaluating on training windows[/yellow]")
    atomic_write_json(
        run_dir / "config.json",
        {"model": model_cfg.to_dict(), "train": cfg.to_dict(), "data": str(data_dir)},
    )
    return tok, train, val, model_cfg


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[tps]:>7.0f} tok/s  loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def train(
    data_dir: str | Path,
    run_dir: str | Path,
    cfg: TrainConfig,
    tokenizer: str | Path | None = None,
    console: Console | None = None,
    model_overrides: dict | None = None,
) -> Trace:
    """Train a model on DATA/ into RUN/ and return its trace.

    `model_overrides` change fields of the preset's ModelConfig (tests use 2-layer models).
    """
    console = console or Console(stderr=True)
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(device, cfg.dtype)
    tok, train_w, val_w, model_cfg = prepare(data_dir, run_dir, cfg, tokenizer, console, model_overrides)
    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg).to(device)
    console.print(
        f"model: {cfg.preset}, {model.num_params() / 1e6:.2f}M parameters, "
        f"{len(train_w)} training sequences of {train_w.seq_len} tokens, "
        f"{'bf16' if amp else 'fp32'} on {device}"
    )
    opt = make_optimizer(model, cfg, device)
    batch = min(cfg.batch_size, len(train_w))
    steps_per_epoch = max(1, len(train_w) // (batch * cfg.grad_accum))
    total = math.ceil(cfg.epochs * steps_per_epoch) if cfg.epochs > 0 else 10**12
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    budget = Budget(total, cfg.max_minutes * 60, time.monotonic())
    trace = Trace(run_dir)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    eval_idx = val_w.spread(cfg.eval_sequences)
    state = {"epoch": 0, "cursor": 0, "order": train_w.epoch_order(cfg.seed, 0)}

    def next_batch():
        if state["cursor"] + batch > len(train_w):
            state["epoch"] += 1
            state["cursor"] = 0
            state["order"] = train_w.epoch_order(cfg.seed, state["epoch"])
        idx = state["order"][state["cursor"] : state["cursor"] + batch]
        state["cursor"] += batch
        return tuple(t.to(device) for t in train_w.get(idx))

    step, tokens, losses, next_eval = 0, 0, [], 1
    with _progress(console) as bar:
        task = bar.add_task("train", total=1000, tps=0.0, loss=float("nan"))
        while True:
            progress = budget.progress(step)
            if progress >= 1.0:
                break
            t0 = time.monotonic()
            lr = lr_at(step, progress, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            micro = [next_batch() for _ in range(cfg.grad_accum)]
            loss_acc = train_step(model, opt, micro, cfg.grad_clip, amp)
            tokens += sum(y.numel() for _, y in micro)
            step += 1
            losses.append(loss_acc)
            trace.log_train(step, loss_acc)
            tps = batch * cfg.grad_accum * train_w.seq_len / max(time.monotonic() - t0, 1e-9)
            progress = budget.progress(step)
            bar.update(task, completed=1000 * progress, tps=tps, loss=loss_acc)
            if progress >= next_eval / cfg.evals or progress >= 1.0:
                while next_eval <= cfg.evals and progress >= next_eval / cfg.evals:
                    next_eval += 1
                vl, va = evaluate(model, val_w, eval_idx, batch, device, amp)
                row = trace.add(
                    TraceRow(
                        step,
                        tokens / (len(train_w) * train_w.seq_len),
                        tokens,
                        sum(losses) / len(losses),
                        vl,
                        va,
                        lr,
                        time.monotonic() - budget.start,
                    )
                )
                losses = []
                bar.console.print(
                    f"epoch {row.epoch:.2f}  step {step}  train {row.train_loss:.3f}  "
                    f"val {vl:.3f}  acc {va:.3f}  {row.observation}"
                )
                save_weights(model, run_dir / WEIGHTS)
    if not trace.rows:
        raise CodelmError("the budget ended before the first training step")
    return trace
