"""The whole pipeline on a tiny inline corpus: data -> tokenizer -> train -> generate -> CLI."""

from __future__ import annotations

import ast
import io
import json

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from codelm.cli import main
from codelm.data.build import build_dataset
from codelm.data.dataset import iter_texts
from codelm.demo import PROMPTS, DemoConfig, run_demo
from codelm.generate import best_of, complete, load_run
from codelm.generate.config import SamplingConfig
from codelm.tokenizer import train_tokenizer
from codelm.train.config import TrainConfig
from codelm.train.loop import train
from tests.conftest import TINY_MODEL


def test_pipeline_end_to_end(tmp_path, corpus_dir, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    stats = build_dataset([str(corpus_dir)], data)
    assert stats["train_documents"] > 0
    paths = {
        s: set(pq.read_table(data / f"{s}.parquet")["path"].to_pylist()) for s in ("train", "val", "test")
    }
    assert not (paths["train"] & paths["val"]) and not (paths["train"] & paths["test"])

    tok = train_tokenizer(iter_texts(data, "train"), vocab_size=512)
    tok.save(tmp_path / "tok" / "tokenizer.json")
    cfg = TrainConfig(epochs=30, batch_size=8, lr=3e-3, warmup_steps=5, evals=4, seed=0)
    trace = train(data, run, cfg, tokenizer=tmp_path / "tok", model_overrides=TINY_MODEL)
    assert len(trace.rows) == 4
    assert trace.rows[-1].val_loss < trace.rows[0].val_loss
    for name in ("config.json", "tokenizer.json", "model.safetensors", "trace.md", "curves.png"):
        assert (run / name).is_file(), name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [r.step for r in trace.rows]

    model, tok = load_run(str(run))
    best, _ = best_of(model, tok, "def add(a, b):", 4, SamplingConfig(max_new_tokens=48, seed=0))
    assert best.stop_reason in {
        "end_of_text",
        "block_end",
        "length",
        "context_full",
        "repetition",
        "max_lines",
    }

    capsys.readouterr()
    assert main(["generate", str(run), "def add(a, b):", "--max-new-tokens", "16", "--seed", "0"]) == 0
    expected = complete(model, tok, "def add(a, b):", SamplingConfig(max_new_tokens=16, seed=0)).text
    assert capsys.readouterr().out.rstrip("\n") == expected.rstrip("\n")


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codelm: error:") and "\n" not in err
    assert main(["data", "build", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()


def test_demo_runs_on_a_small_corpus(tmp_path, corpus_dir, capsys):
    cfg = DemoConfig(
        out=str(tmp_path / "demo"),
        max_minutes=0.05,
        vocab_size=400,
        samples=2,
        compile=False,
        sources=(str(corpus_dir),),
    )
    summary = run_demo(cfg)
    out = capsys.readouterr().out
    assert "Epoch" in out and "val loss" in out and "Run directory" in out
    assert [c["prompt"] for c in summary["completions"]] == list(PROMPTS)
    for c in summary["completions"]:
        assert c["parses"] == _parses(c["prompt"] + c["completion"])
        assert _as_printed(c["prompt"] + c["completion"]) in out


def test_an_interrupted_demo_goes_on_from_its_checkpoint_when_run_again(
    tmp_path, corpus_dir, monkeypatch, capsys
):
    """`make demo`, Ctrl-C while it trains, `make demo`: the second run reuses the corpus and the
    tokenizer and resumes the training from its checkpoint, if it had one; a finished demo,
    run again, starts over."""
    import codelm.demo as demo
    import codelm.train.loop as loop

    cfg = DemoConfig(out=str(tmp_path / "demo"), max_minutes=0.05, vocab_size=400, samples=1, compile=False,
                     sources=(str(corpus_dir),))  # fmt: skip
    checkpoints = tmp_path / "demo" / "run" / "checkpoints"
    real, built = loop.train_step, []

    def at_once(*args, **kw):
        raise KeyboardInterrupt

    def after_a_checkpoint(*args, **kw):
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loop, "train_step", at_once)
    with pytest.raises(KeyboardInterrupt, match="^$"):  # no checkpoint: nothing to go on from
        run_demo(cfg)
    assert demo.interrupted_at(cfg) is None

    monkeypatch.setattr(demo, "build_dataset", lambda *a, **k: built.append(a) or {})
    monkeypatch.setattr(loop, "train_step", after_a_checkpoint)
    with pytest.raises(KeyboardInterrupt, match=r"run the demo again \(`make demo`\) to go on from step-"):
        run_demo(cfg)
    assert built == []  # the corpus of the first run, whose training never began
    at = demo.interrupted_at(cfg)
    assert at is not None and at.parent == checkpoints
    assert demo.interrupted_at(DemoConfig(**{**cfg.__dict__, "seed": 2})) is None  # other settings

    monkeypatch.setattr(loop, "train_step", real)
    capsys.readouterr()
    summary = run_demo(cfg)
    assert built == [] and f"going on from {at.name}" in " ".join(capsys.readouterr().err.split())
    assert len(summary["completions"]) == len(PROMPTS) and demo.interrupted_at(cfg) is None  # finished

    run_demo(cfg)  # a finished demo, run again, starts over: its corpus is built again
    assert len(built) == 1 and "going on" not in capsys.readouterr().err


def _as_printed(text: str) -> str:
    """`text` as the demo's console prints it: rich drops control characters, expands tabs."""
    console = Console(file=io.StringIO(), soft_wrap=True)
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    return console.file.getvalue().rstrip("\n")


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True
