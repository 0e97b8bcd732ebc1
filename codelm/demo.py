"""`codelm demo`: the whole pipeline on the code of the running interpreter.

stdlib and site-packages (test suites and the held-out packages left out) ->
DATA (80/10/10 by path hash) -> code tokenizer -> `tiny` model trained within
a wall-clock budget -> epoch trace table -> three completions. Needs no network
and no arguments. Stopped while it trains, the demo run again with the same settings
keeps its corpus and tokenizer and goes on from its newest checkpoint (`interrupted_at`);
a finished one starts over.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from codelm.data.build import DataConfig, build_dataset
from codelm.data.dataset import iter_texts
from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_json
from codelm.generate import best_of, load_run, parses
from codelm.generate.config import SamplingConfig
from codelm.hardware import bf16_native
from codelm.tokenizer import train_tokenizer
from codelm.train.checkpoint import latest_valid, list_checkpoints
from codelm.train.config import TrainConfig
from codelm.train.loop import resolve_device, train

# A signature and a docstring, as a user would write them: a 5-minute model given a bare
# signature mostly writes a docstring of its own, and with one it attempts the body. A prompt
# may end after a newline too: token healing (generate/healing.py) lets the model re-spell it
# with the next line's indent (bench/healing.py: the same scores either way).
PROMPTS = (
    'def add(a, b):\n    """Return the sum of a and b."""',
    'def is_palindrome(s):\n    """Return True if s reads the same forwards and backwards."""',
    'def read_lines(path):\n    """Return the lines of the file at path."""',
)
# Test suites are 60% of the stdlib's bytes (19 of 31 MB) and teach `self.assertEqual`
# rather than the library code the demo's prompts ask for; in five minutes the model sees
# about 2M tokens, so the demo spends them on library code.
TEST_SUITES = ("test/*", "*/test/*", "*/tests/*", "idlelib/idle_test/*", "tkinter/test/*")


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"  # holds data/, tokenizer/ and run/
    max_minutes: float = 5.0  # training budget on the wall clock
    # 4k beat 8k on unseen code after 5 minutes (1.67 against 1.84 bits per byte): the head
    # costs half as much, so 30% more steps fit, and a small vocabulary is learned sooner.
    vocab_size: int = 4096
    preset: str = "tiny"
    samples: int = 8  # candidates per prompt; the most likely one that parses is shown
    max_new_tokens: int = 128  # a demo function body fits; a runaway one stops here
    # torch.compile fuses the small ops that weigh on a tiny model's step on CPU (norms,
    # RoPE, casts): steps measured 1.8x faster (tiny, 16x256, on a busy machine) after a
    # 30-40 s first step that the budget pays for.
    compile: bool = True
    # The installed third-party packages (1 MB of each) beside the stdlib: on unseen
    # third-party code, 5 minutes gave 1.93 bits per byte against 2.18 with the stdlib
    # alone (bench/quality.py, docs/quality.md).
    sources: tuple[str, ...] = ("stdlib", "site-packages")
    exclude: tuple[str, ...] = TEST_SUITES  # paths left out of the corpus
    seed: int = 1337

    def __post_init__(self) -> None:
        if not self.max_minutes > 0:  # the demo's only budget: it trains for this long
            raise CodelmError(f"max_minutes must be positive, got {self.max_minutes}")
        for name in ("samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise CodelmError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.sources:
            raise CodelmError("the demo needs at least one source")


def run_demo(cfg: DemoConfig = DemoConfig(), out: Console | None = None) -> dict:
    """Run the demo end to end; return a summary (times, final metrics, completions)."""
    out = out or Console()
    err = Console(stderr=True)
    root = Path(cfg.out)
    data, tok_dir, run = root / "data", root / "tokenizer", root / "run"
    t0 = time.monotonic()
    if _stopped(cfg):  # while it trained: its corpus and tokenizer are whole
        err.print(f"[bold]1-2/4[/bold]: the corpus and tokenizer of the demo stopped in {root}")
    else:  # afresh: no checkpoint of an earlier demo may be offered to resume
        (root / MARKER).unlink(missing_ok=True)
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        _corpus_and_tokenizer(cfg, data, tok_dir, err)
        atomic_write_json(root / MARKER, {**_settings(cfg), "trained": False})
    going_on = interrupted_at(cfg)
    summary: dict = {"prepare_s": time.monotonic() - t0}

    again = f", going on from {going_on.name}" if going_on else ""
    minutes = f"{cfg.max_minutes:g} minute{'' if cfg.max_minutes == 1 else 's'}"
    err.print(f"[bold]3/4 training[/bold]: preset {cfg.preset}, {minutes} -> {run}{again}")
    t1 = time.monotonic()
    try:
        trace = train(
            data, run, demo_train_config(cfg), tokenizer=tok_dir / "tokenizer.json", console=err,
            resume=going_on is not None, force=True,  # a finished demo starts over
        )  # fmt: skip
    except KeyboardInterrupt:
        last = list_checkpoints(run / "checkpoints")
        if not last:
            raise
        raise KeyboardInterrupt(f"run the demo again (`make demo`) to go on from {last[-1].name}") from None
    atomic_write_json(root / MARKER, {**_settings(cfg), "trained": True})
    summary["train_s"] = time.monotonic() - t1
    out.print(trace.table())
    summary.update(
        val_loss=trace.rows[-1].val_loss,
        val_accuracy=trace.rows[-1].val_accuracy,
        first_val_loss=trace.rows[0].val_loss,
    )
    err.print("[bold]4/4 completions[/bold] (temperature 0.2, stop at the end of the block)")
    summary["completions"] = _completions(cfg, run, out)
    _next_steps(out, data, tok_dir, run)
    return summary


# The settings the corpus and the tokenizer were built with, written once they are, and
# whether the training that followed finished.
MARKER = "demo.json"


def _settings(cfg: DemoConfig) -> dict:
    return json.loads(json.dumps({"demo": asdict(cfg), "python": sys.version}))


def _stopped(cfg: DemoConfig) -> bool:
    """Whether a demo with these settings (and this Python) built its corpus and tokenizer
    and was stopped before its training finished (a finished demo runs again from the start)."""
    try:
        return json.loads((Path(cfg.out) / MARKER).read_text()) == {**_settings(cfg), "trained": False}
    except (OSError, json.JSONDecodeError):
        return False


def interrupted_at(cfg: DemoConfig) -> Path | None:
    """The newest checkpoint of a demo stopped while training (`_stopped`), from which
    `run_demo` goes on instead of starting over; None where there is none."""
    return latest_valid(Path(cfg.out) / "run" / "checkpoints", lambda _: None) if _stopped(cfg) else None


def _corpus_and_tokenizer(cfg: DemoConfig, data: Path, tok_dir: Path, err: Console) -> None:
    err.print(f"[bold]1/4 corpus[/bold]: {', '.join(cfg.sources)} -> {data}")
    workers = min(os.cpu_count() or 1, 4)
    stats = build_dataset(list(cfg.sources), data, DataConfig(num_proc=workers, exclude=cfg.exclude))
    err.print(
        f"    kept {stats.get('train_documents', 0)} train / {stats.get('val_documents', 0)} val"
        f" / {stats.get('test_documents', 0)} test files"
    )
    err.print(f"[bold]2/4 tokenizer[/bold]: {cfg.vocab_size}-token code BPE -> {tok_dir}")
    train_tokenizer(iter_texts(data, "train"), cfg.vocab_size).save(tok_dir / "tokenizer.json")


# How many steps the demo's recipe takes a minute on 2 cores in fp32 (a CPU without native
# bf16): 658-760 in 5 minutes, emulated AVX2. With bf16 it takes about 3 times as many.
FP32_STEPS_PER_MINUTE = 150


def short_budget_decay(minutes: float) -> float:
    """The share of the budget the learning rate decays over (TrainConfig.decay): 0.3 where
    the budget gives fewer than about 1,000 steps (fp32 on a CPU, at most 6.7 minutes), else
    the cosine over the whole budget.

    Induction heads (the copy gain, codelm.evaluate.intrinsic) formed near step 700 of the
    5-minute demo in bf16. In fp32 its budget ends near step 740, and a cosine over all of it
    had lowered the rate before they formed: holding the peak until the last 30% gave
    1.589-1.683 bits per byte on the held-out packages against 1.654-1.713, 0.04 better on
    average over four pairs of runs (two gains of 0.09-0.10, two ties), and a copy gain of
    0.44-1.06 nats against 0.14-0.23 in all four (emulated AVX2).
    With bf16's 2,000 steps the same decay lost (1.244 against 1.183), and a decay over
    half the budget was no better than the cosine on either CPU (bench/quality.py
    --variants wsd wsd-half cosine; docs/quality.md)."""
    fp32 = not bf16_native(resolve_device("auto"))
    return 0.3 if fp32 and minutes * FP32_STEPS_PER_MINUTE < 1000 else 1.0


def demo_train_config(cfg: DemoConfig) -> TrainConfig:
    # FIM off: the demo's few minutes go to left-to-right code, what its prompts ask for.
    return TrainConfig(
        preset=cfg.preset,
        epochs=0,
        max_minutes=cfg.max_minutes,
        decay=short_budget_decay(cfg.max_minutes),
        batch_size=8,  # more, smaller steps: a 5-minute budget is a few hundred steps either way
        eval_sequences=32,  # 8 evaluations of 64 sequences took a tenth of the budget
        seed=cfg.seed,
        compile=cfg.compile,
        fim_rate=0.0,
    )


def _completions(cfg: DemoConfig, run: Path, out: Console) -> list[dict]:
    model, tok = load_run(str(run), weights="auto")  # int8 on CPU where it pays off
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    done = []
    for prompt in PROMPTS:
        best, report = best_of(model, tok, prompt, cfg.samples, sampling)
        ok = parses(prompt + best.text)
        done.append(
            {"prompt": prompt, "completion": best.text, "parses": ok, "stop_reason": best.stop_reason}
        )
        out.rule(
            f"{escape(prompt.splitlines()[0])}  [dim](stop: {best.stop_reason}; "
            f"{len(report.dropped)}/{cfg.samples} samples "
            f"did not parse{'' if ok else '; none parsed'})[/dim]"
        )
        out.print(prompt + best.text, markup=False, highlight=False, soft_wrap=True)
    out.rule()
    return done


def _next_steps(out: Console, data: Path, tok_dir: Path, run: Path) -> None:
    out.print(f"Run directory: {run.resolve()}")
    out.print("Next, try:")
    venv = ".venv/bin/" if Path(".venv/bin/codelm").exists() else ""
    for line in (
        f'codelm generate {run} "def fibonacci(n):"',
        f"codelm serve {run}    # API, chat and playground on http://127.0.0.1:8000/",
        f"codelm lsp {run}      # completions in your editor: editors/README.md",
        f"codelm train --data {data} --tokenizer {tok_dir} --out runs/mine --max-minutes 30",
    ):
        out.print(f"  {venv}{line}", markup=False, soft_wrap=True)  # whole lines, to copy
    out.print(f"  open {run / 'curves.png'} and {run / 'trace.md'}", markup=False, soft_wrap=True)
