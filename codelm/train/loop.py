"""`codelm train`: the optimisation loop.

Muon + AdamW (muon.py) or AdamW alone, with weight-decay groups; linear warmup
then cosine decay, gradient clipping and accumulation, bf16 autocast where the
hardware has it, optional torch.compile. The budget is epochs, steps, tokens or
wall-clock minutes, whichever ends first; the cosine schedule follows the
fraction of the budget used, so a time-boxed run still anneals its learning
rate before it stops.
Evaluations are spread over the budget and also end every epoch; checkpoints
hold everything needed to resume exactly (see checkpoint.py).
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from codelm import hardware
from codelm.errors import CodelmError
from codelm.fsutil import DiskFull
from codelm.memory import keep_freed_memory
from codelm.model import Transformer
from codelm.model.io import save_run_weights
from codelm.model.lora import add_adapters
from codelm.train import distributed, shard
from codelm.train.checkpoint import latest_valid, list_checkpoints, load_checkpoint, save_checkpoint
from codelm.train.config import TrainConfig
from codelm.train.lora import freeze_base
from codelm.train.muon import MuonAdamW
from codelm.train.prepare import Prepared, check_new_run, prepare
from codelm.train.step import evaluate, train_step
from codelm.train.trace import Trace, TraceRow


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CodelmError("--device cuda asked for, but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast_dtype(device: torch.device, name: str) -> torch.dtype | None:
    """For "auto": bf16 where the device computes it natively (codelm.hardware), else fp32 (None)."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if hardware.bf16_native(device) else None


def make_optimizer(model: Transformer, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Decay matrices (attention, MLP, embeddings); never norms or other vectors. With
    `cfg.optimizer == "muon"` the blocks' matrices move by Muon, the rest by AdamW."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "muon":
        hidden = [p for n, p in named if n.startswith("blocks.") and p.dim() == 2]
        ids = {id(p) for p in hidden}
        rest = [(n, p) for n, p in named if id(p) not in ids]
        groups = [
            {"params": hidden, "muon": True, "lr_scale": cfg.muon_lr_scale, "weight_decay": cfg.weight_decay},
            {"params": [p for _, p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for _, p in rest if p.dim() < 2]},
        ]
        dtype, splits = hardware.compute_dtype(device), muon_splits(model) if cfg.muon_split else {}
        return MuonAdamW(groups, lr=cfg.lr, betas=betas, ns_dtype=dtype, splits=splits)
    params = [p for _, p in named]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # Fused on a CPU too: one pass over each tensor instead of torch's default loop of ops.
    # `tiny`'s step took 3 ms instead of 10 (bench/train.py --optimizer adamw, emulated AVX2).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=device.type in ("cpu", "cuda"))


def muon_splits(model: Transformer) -> dict[int, tuple[int, ...]]:
    """The fused matrices' parts that Muon orthogonalises as matrices of their own: each
    head's rows of q, k and v in `attn.qkv`, and SwiGLU's gate and up halves in `mlp.up`.

    Orthogonalised whole, a fused matrix's update gives its parts the same singular values
    together, so the parts with the larger gradients (v's, early on) take most of the step
    and q and k, which shape where the heads look, move little. One piece per head moves
    every head's q, k and v at Muon's full rate, and induction heads form ~350 steps
    sooner: the 5-minute demo scored 1.650 bits per byte on unseen code instead of 1.742
    on emulated AVX2, and 1.186 instead of 1.226 with bf16 (docs/quality.md)."""
    c, out = model.cfg, {}
    for name, p in model.named_parameters():
        if name.endswith("attn.qkv.weight"):
            out[id(p)] = (c.head_dim,) * (c.n_head + 2 * c.kv_heads)
        elif name.endswith("mlp.up.weight") and c.mlp == "swiglu":
            out[id(p)] = (c.mlp_hidden, c.mlp_hidden)
    return out


def lr_at(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then lr until the budget's last `decay` share, then a
    cosine from lr to lr*min_lr_ratio over that share (decay 1: over the whole budget)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    into = max(0.0, min(progress, 1.0) - (1 - cfg.decay)) / cfg.decay  # 0 until the decay starts
    cosine = 0.5 * (1 + math.cos(math.pi * into))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


@dataclass
class LoopState:
    """Everything about the loop's position that a resumed run needs (saved as JSON)."""

    step: int = 0
    tokens: int = 0
    epoch: int = 0
    cursor: int = 0  # windows of the current epoch's order already used
    elapsed_s: float = 0.0
    next_eval: int = 1  # index of the next of the `evals` evenly spread evaluation points
    pending: list[float] = field(default_factory=list)  # train losses since the last evaluation
    best_val: float = math.inf
    bad_evals: int = 0
    epoch_ended: bool = False


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[tps]:>7.0f} tok/s  loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


class Trainer:
    """Owns the model, optimizer, data stream and trace of one run."""

    def __init__(self, p: Prepared, cfg: TrainConfig, console: Console, dist: distributed.Dist):
        self.p, self.cfg, self.console, self.dist = p, cfg, console, dist
        self.device = p.device
        self.amp = autocast_dtype(self.device, cfg.dtype)
        torch.manual_seed(cfg.seed)
        self.model = Transformer(p.model_cfg).to(self.device)
        if p.init_weights is not None:
            self.model.load_state_dict(p.init_weights, strict=False)
        if cfg.lora is not None:
            add_adapters(self.model, cfg.lora)
            freeze_base(self.model, bf16=self.amp == torch.bfloat16)
        # Sharded only under torchrun: a resumed --shard run may go on in one process.
        self.sharded = cfg.shard and dist.enabled
        if self.sharded:
            shard.apply(self.model, self.device)  # before the optimizer: it holds the shards
        self.opt = make_optimizer(self.model, cfg, self.device)
        self.net = self._wrap(torch.compile(self.model) if cfg.compile else self.model)
        self.batch = min(cfg.batch_size, len(p.train))
        if self.batch % dist.world:
            raise CodelmError(f"batch size {self.batch} is not divisible by {dist.world} processes")
        per_epoch = max(1, len(p.train) // (self.batch * cfg.grad_accum))
        total = math.ceil(cfg.epochs * per_epoch) if cfg.epochs > 0 else 10**12
        if cfg.max_steps > 0:
            total = min(total, cfg.max_steps)
        if cfg.max_tokens > 0:
            total = min(total, math.ceil(cfg.max_tokens / (self.batch * cfg.grad_accum * p.train.seq_len)))
        self.total_steps = total
        # Epoch ends get their own evaluation only when epochs are long next to the
        # spacing of the spread points; a tiny corpus would otherwise evaluate every step.
        self.eval_epoch_ends = per_epoch * cfg.evals >= total or cfg.max_minutes > 0 and per_epoch >= 50
        self.eval_idx = p.val.spread(cfg.eval_sequences)
        self.trace = Trace(p.run_dir)
        self.state = LoopState()
        self.order = p.train.epoch_order(cfg.seed, 0)

    def resume(self) -> None:
        path = latest_valid(self.p.run_dir / "checkpoints", self.console.print)
        if path is None:
            raise CodelmError(f"nothing to resume in {self.p.run_dir}: no usable checkpoint")
        if shard.is_dcp(path):  # resharded onto this run's processes, one or many
            loop = shard.load(path, self.model, self.opt)
        elif self.sharded:
            raise CodelmError(f"{path.name} was saved without --shard: resume it with one process")
        else:
            loop = load_checkpoint(path, self.model, self.opt)
        self.state = LoopState(**loop)
        self.order = self.p.train.epoch_order(self.cfg.seed, self.state.epoch)
        self.trace.restore(self.state.step)
        self.console.print(f"resuming from {path.name} (step {self.state.step})")

    def progress(self, elapsed: float) -> float:
        p = self.state.step / self.total_steps
        if self.cfg.max_minutes > 0:
            p = max(p, elapsed / (self.cfg.max_minutes * 60))
        return distributed.all_max(self.dist, min(p, 1.0), self.device)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the next global micro-batch."""
        st, n = self.state, len(self.p.train)
        if st.cursor + self.batch > n:
            st.epoch, st.cursor, st.epoch_ended = st.epoch + 1, 0, True
            self.order = self.p.train.epoch_order(self.cfg.seed, st.epoch)
        idx = self.order[st.cursor : st.cursor + self.batch]
        st.cursor += self.batch
        share = self.batch // self.dist.world
        idx = idx[self.dist.rank * share : (self.dist.rank + 1) * share]
        return tuple(t.to(self.device) for t in self.p.train.get(idx))

    def step(self, micro: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """One optimizer step; if torch.compile fails on the first one, go on eagerly."""
        try:
            return train_step(self.net, self.opt, micro, self.cfg.grad_clip, self.amp, self.dist)
        except Exception as e:  # inductor raises many kinds (no compiler, unsupported op, ...)
            if not self.cfg.compile or self.state.step > 0 or self.net is self.model:
                raise
            self.console.print(
                f"[yellow]torch.compile failed ({type(e).__name__}): training eagerly[/yellow]"
            )
            self.net = self._wrap(self.model)
            self.opt.zero_grad(set_to_none=True)
            return train_step(self.net, self.opt, micro, self.cfg.grad_clip, self.amp, self.dist)

    def _wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        if not self.dist.enabled or self.sharded:
            return net
        ids = [self.dist.local_rank] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def run(self) -> Trace:
        st, cfg = self.state, self.cfg
        start = time.monotonic() - st.elapsed_s
        with _progress_bar(self.console) as bar:
            task = bar.add_task("train", total=1000, tps=0.0, loss=float("nan"))
            while (progress := self.progress(time.monotonic() - start)) < 1.0:
                t0 = time.monotonic()
                for g in self.opt.param_groups:
                    g["lr"] = lr_at(st.step, progress, cfg)
                micro = [self.next_batch() for _ in range(cfg.grad_accum)]
                loss = self.step(micro)
                st.step += 1
                st.tokens += self.batch * cfg.grad_accum * self.p.train.seq_len
                st.pending.append(loss)
                st.elapsed_s = time.monotonic() - start
                self.trace.log_train(st.step, loss)
                tps = self.batch * cfg.grad_accum * self.p.train.seq_len / max(time.monotonic() - t0, 1e-9)
                progress = self.progress(st.elapsed_s)
                bar.update(task, completed=1000 * progress, tps=tps, loss=loss)
                if self.after_step(progress, bar.console):
                    break
        if not self.trace.rows:
            raise CodelmError("the budget ended before the first evaluation")
        return self.trace

    def after_step(self, progress: float, console: Console) -> bool:
        """Evaluate and checkpoint when due; True when early stopping ends the run."""
        st, cfg = self.state, self.cfg
        spread_due = progress >= st.next_eval / cfg.evals
        while st.next_eval <= cfg.evals and progress >= st.next_eval / cfg.evals:
            st.next_eval += 1
        every_due = cfg.eval_every > 0 and st.step % cfg.eval_every == 0
        stop = False
        epoch_due = st.epoch_ended and self.eval_epoch_ends
        if spread_due or every_due or epoch_due or progress >= 1.0:
            st.epoch_ended = False
            stop = self.evaluate_and_log(console)
        ckpt_due = cfg.checkpoint_every > 0 and st.step % cfg.checkpoint_every == 0
        if ckpt_due or progress >= 1.0 or stop or (cfg.checkpoint_every == 0 and spread_due):
            where, keep = self.p.run_dir / "checkpoints", cfg.keep_checkpoints
            if self.sharded:  # every process writes its shards
                shard.save(where, self.model, self.opt, asdict(st), keep, self.dist)
            elif self.dist.main:
                save_checkpoint(where, self.model, self.opt, asdict(st), keep)
        return stop

    def evaluate_and_log(self, console: Console) -> bool:
        st, cfg = self.state, self.cfg
        vl, va = evaluate(self.model, self.p.val, self.eval_idx, self.batch, self.device, self.amp)
        epochs = st.tokens / max(len(self.p.train) * self.p.train.seq_len, 1)
        lr = self.opt.param_groups[0]["lr"]
        row = TraceRow(
            st.step, epochs, st.tokens, sum(st.pending) / len(st.pending), vl, va, lr, st.elapsed_s
        )
        st.pending = []
        whole = shard.full_state(self.model) if self.sharded else None  # every process gathers
        if self.dist.main:
            self.trace.add(row)
            save_run_weights(self.model, self.p.run_dir, whole)  # adapters alone for LoRA
            console.print(
                f"epoch {row.epoch:.2f}  step {st.step}  train {row.train_loss:.3f}  "
                f"val {vl:.3f}  acc {va:.3f}  {row.observation}"
            )
        else:
            self.trace.rows.append(row)
        if vl < st.best_val:
            st.best_val, st.bad_evals = vl, 0
        else:
            st.bad_evals += 1
        if cfg.early_stop_patience > 0 and st.bad_evals >= cfg.early_stop_patience:
            console.print(f"early stop: no better validation loss in {st.bad_evals} evaluations")
            return True
        return False


def train(
    data_dir: str | Path | None,
    run_dir: str | Path,
    cfg: TrainConfig,
    tokenizer: str | Path | None = None,
    console: Console | None = None,
    model_overrides: dict | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    force: bool = False,
) -> Trace:
    """Train a model on DATA/ into RUN/ and return its trace.

    `resume` continues RUN from its newest whole checkpoint with RUN's saved
    config; otherwise a RUN that holds a model or checkpoints is refused unless
    `force` (they would be deleted). `init_from` starts from another run's weights
    and tokenizer (fine-tuning); `model_overrides` change fields of the preset
    (tests use 2 layers).
    A script that calls it under torchrun ends with `distributed.leave(0)`, as the CLI does.
    """
    if not resume and not force:
        check_new_run(Path(run_dir), init_from)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults for each step's re-allocations (memory.py)
    dist = distributed.init(device.type)
    console = console or Console(stderr=True, quiet=not dist.main)
    finished = False
    try:
        p = prepare(
            data_dir, Path(run_dir), cfg, tokenizer, console, model_overrides, resume, init_from, dist, device
        )
        trainer = Trainer(p, p.cfg, console, dist)
        lora, model = p.cfg.lora, trainer.model
        adapters = sum(t.numel() for t in model.parameters() if t.requires_grad)
        console.print(
            f"model: {p.cfg.preset}, {model.num_params() / 1e6:.2f}M parameters"
            + (f" ({adapters:,} of them in rank-{lora.rank} LoRA adapters)" if lora else "")
            + f"; {len(p.train)} training sequences of {p.train.seq_len} tokens; "
            f"{'bf16' if trainer.amp else 'fp32'} on {device}"
            + (f"; {dist.world} processes" if dist.enabled else "")
        )
        if resume:
            trainer.resume()
        try:
            trace = trainer.run()
            finished = True
            return trace
        except DiskFull as e:
            again = f"`codelm train --out {run_dir} --resume` goes on from the last checkpoint"
            if not list_checkpoints(p.run_dir / "checkpoints"):
                again = "run the same command again (no checkpoint was written yet)"
            raise DiskFull(f"{e}; free some space, then {again}") from None
        except KeyboardInterrupt:
            done = list_checkpoints(p.run_dir / "checkpoints")
            if not done:
                raise
            again = f"`codelm train --out {run_dir} --resume` goes on from {done[-1].name}"
            raise KeyboardInterrupt(again) from None
    finally:
        # DDP's reducer holds the process group. Left to the garbage collector, it dropped the
        # group's last reference with the GIL held, and gloo's destructor joined a thread that
        # was waiting for the GIL: a finished run hung at exit (seen under the test suite).
        trainer = None  # noqa: F841
        if dist.enabled:
            gc.collect()
        distributed.shutdown(dist, finished)
