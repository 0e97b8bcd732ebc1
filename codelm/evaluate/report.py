"""`codelm eval`: every metric of a run in one report (terminal table and `--json OUT`).

- intrinsic metrics on held-out code (a DATA split, by default the run's test
  split, or any folder of code);
- line completion against the n-gram baseline, on the same held-out files;
- pass@k on HumanEval- or MBPP-format problems (our own benchmark by default),
  the model's samples run in the sandbox; an MBPP problem (or one with an
  `instruction`) is asked in instruction mode.

Or, without a run: `--completions FILE` scores completions made elsewhere
(passk.score_file). A run is reproducible from its seed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from codelm.data.dataset import iter_texts, split_files
from codelm.data.records import Skip
from codelm.data.sources import open_source
from codelm.errors import CodelmError
from codelm.evaluate.intrinsic import IntrinsicConfig, intrinsic_metrics
from codelm.evaluate.line_completion import (
    LineConfig,
    model_predictions,
    ngram_predictions,
    sample_positions,
    score,
)
from codelm.evaluate.ngram import NGramModel
from codelm.evaluate.passk import DEFAULT_KS, find_problems, load_problems, score_completions
from codelm.evaluate.sandbox import SandboxConfig, resolve
from codelm.fsutil import atomic_write_json, atomic_write_text
from codelm.generate.config import SamplingConfig
from codelm.generate.generator import generate_batch, load_run
from codelm.generate.prompts import Prompt
from codelm.model.io import read_config
from codelm.train.batches import open_tokens


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"  # which DATA split is held out
    samples: int = 10  # completions per problem for pass@k (pass@10 needs 10)
    temperature: float = 0.2  # Codex's setting for pass@1; diversity for pass@10 is modest
    max_new_tokens: int = 256
    ngram_order: int = 4
    ngram_tokens: int = 4_000_000  # training tokens the baseline counts: seconds with numpy
    workers: int = 0  # sandbox processes in parallel; 0 means the number of cores
    seed: int = 0
    intrinsic: IntrinsicConfig = IntrinsicConfig()
    lines: LineConfig = LineConfig()

    def __post_init__(self) -> None:
        for name, low in (("samples", 0), ("workers", 0), ("max_new_tokens", 1), ("ngram_order", 1)):
            if getattr(self, name) < low:
                raise CodelmError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.temperature < 0:
            raise CodelmError(f"temperature must be >= 0, got {self.temperature}")


def held_out_texts(data: str, split: str) -> tuple[list[str], str]:
    """Held-out documents: a DATA split, or the code files of a folder (read as the corpus
    stage reads a directory: virtualenvs, build folders and the like skipped); and a label."""
    path = Path(data)
    if split_files(path, split):  # one file or its shards
        return list(iter_texts(path, split)), f"{path} ({split} split)"
    if path.is_dir():
        texts = []
        for item in open_source(f"dir:{path}"):  # the work tree as it is, not a git HEAD
            if isinstance(item, Skip):
                continue
            try:
                texts.append(item.data.decode("utf-8"))
            except UnicodeDecodeError:
                continue
        if texts:
            return texts, str(path)
    raise CodelmError(f"no held-out code at {path}: give --data DATA or a folder")


def _ngram(run: Path, cfg: EvalConfig, vocab_size: int) -> NGramModel | None:
    bin_path = run / "tokens" / "train.bin"
    if not bin_path.is_file() or vocab_size > 2**16:
        return None
    ids, _ = open_tokens(bin_path, vocab_size)
    return NGramModel(np.asarray(ids[: cfg.ngram_tokens]), cfg.ngram_order)


def pass_at_k_report(
    model, tok, problems_path: Path, cfg: EvalConfig, out_jsonl: Path | None, console
) -> dict:
    problems = load_problems(problems_path)
    completions: dict[str, list[str]] = {}
    for i, p in enumerate(problems):
        # All samples of a problem decode in one batch; the seed depends only on (seed, problem).
        s = SamplingConfig(
            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed * 1_000_003 + i
        )
        prompt = Prompt(p.prompt, instruction=p.instruction or None)  # MBPP's: instruction mode
        completions[p.task_id] = [c.text for c in generate_batch(model, tok, [prompt], s, n=cfg.samples)[0]]
        console.print(f"sampled {p.task_id} ({i + 1}/{len(problems)})")
    sandbox = SandboxConfig()
    isolation, _ = resolve(sandbox)
    ks = [k for k in DEFAULT_KS if k <= cfg.samples]
    rows, summary = score_completions(problems, completions, sandbox, cfg.workers or None, ks)
    if out_jsonl is not None:
        atomic_write_text(out_jsonl, "".join(json.dumps(r) + "\n" for r in rows))
    return {"problems_file": str(problems_path), "problems": len(rows), "isolation": isolation, **summary}


def _held_out_metrics(report: dict, model, tok, run: Path, data: str, cfg: EvalConfig, console) -> None:
    """Intrinsic metrics and line completion (the model's and the n-gram baseline's) on held-out code."""
    texts, report["data"] = held_out_texts(data, cfg.split)
    console.print(f"intrinsic metrics on {report['data']}")
    report["intrinsic"] = asdict(intrinsic_metrics(model, tok, texts, cfg.intrinsic))
    console.print("line completion")
    positions = sample_positions(texts, cfg.lines)
    report["line_completion"] = {
        "model": asdict(score(model_predictions(model, tok, positions, cfg.lines), positions))
    }
    ngram = _ngram(run, cfg, tok.vocab_size)
    if ngram is not None:
        report["line_completion"]["ngram"] = asdict(
            score(ngram_predictions(ngram, tok, positions, cfg.lines), positions)
        )


def evaluate_run(
    run: str | Path,
    data: str | None = None,
    problems: str | None = None,
    cfg: EvalConfig = EvalConfig(),
    json_out: str | None = None,
    console: Console | None = None,
) -> dict:
    console = console or Console(stderr=True)
    run = Path(run)
    # An imported run was trained elsewhere and names no DATA: without --data it gets pass@k only.
    data = data or read_config(run).get("data")
    if not data and cfg.samples == 0:
        raise CodelmError(f"{run} names no DATA it was trained on: give --data DATA or a folder")
    model, tok = load_run(str(run))
    began = time.monotonic()
    report: dict = {"run": str(run), "data": None, "settings": asdict(cfg)}
    if data:
        _held_out_metrics(report, model, tok, run, data, cfg, console)
    else:
        console.print(f"{run} names no DATA it was trained on: pass@k only (--data DATA adds the rest)")
    if cfg.samples > 0:
        path = find_problems(problems)
        out = Path(json_out).with_suffix(".problems.jsonl") if json_out else None
        console.print(f"pass@k on {path.name}: {cfg.samples} samples per problem")
        report["pass_at_k"] = pass_at_k_report(model, tok, path, cfg, out, console)
    report["duration_s"] = round(time.monotonic() - began, 1)
    if json_out:
        atomic_write_json(json_out, report)
    return report


def report_table(report: dict) -> Table:
    t = Table(title=f"codelm eval: {report.get('run', '')}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("loss", "perplexity", "bits_per_byte", "top1", "top5", "tokens"):
        if k in report.get("intrinsic", {}):
            v = report["intrinsic"][k]
            t.add_row(k.replace("_", " "), f"{v:,}" if isinstance(v, int) else f"{v:.3f}")
    for who, s in report.get("line_completion", {}).items():
        t.add_row(f"line exact match ({who})", f"{s['exact_match']:.3f}")
        t.add_row(f"line edit similarity ({who})", f"{s['edit_similarity']:.3f}")
    for k, v in report.get("pass_at_k", {}).items():
        if k.startswith("pass@"):
            t.add_row(k, f"{v:.3f}")
    if "pass_at_k" in report:
        t.add_row("sandbox isolation", report["pass_at_k"]["isolation"])
    return t
