"""`codelm <command>`: parses arguments, calls one stage's plain function, prints.

Results go to stdout, messages and progress to stderr. A user mistake
(`CodelmError`) becomes a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from codelm.errors import CodelmError


def _demo(a: argparse.Namespace) -> None:
    from codelm.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=a.out, max_minutes=a.max_minutes, seed=a.seed))


def _data_build(a: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from codelm.data.build import DataConfig, build_dataset

    stats = build_dataset(a.sources, a.out, DataConfig())
    table = Table(title=f"corpus -> {a.out}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for k, v in stats.items():
        table.add_row(k, f"{v:,}")
    Console().print(table)


def _tokenizer_train(a: argparse.Namespace) -> None:
    from pathlib import Path

    from codelm.tokenizer import train_tokenizer
    from codelm.train.batches import iter_texts

    data = Path(a.data)
    if not data.exists():
        raise CodelmError(f"corpus not found: {data}")
    tok = train_tokenizer(iter_texts(data, "train"), a.vocab_size)
    out = Path(a.out)
    tok.save(out / "tokenizer.json" if out.suffix != ".json" else out)
    print(f"trained a {tok.vocab_size}-token tokenizer -> {out}")


def _train(a: argparse.Namespace) -> None:
    from codelm.train.config import TrainConfig
    from codelm.train.loop import train

    cfg = TrainConfig(
        preset=a.preset,
        epochs=a.epochs,
        max_minutes=a.max_minutes,
        max_steps=a.max_steps,
        seed=a.seed,
        device=a.device,
    )
    from rich.console import Console

    trace = train(a.data, a.out, cfg, tokenizer=a.tokenizer)
    Console().print(trace.table())


def _generate(a: argparse.Namespace) -> None:
    from codelm.generate.generator import complete, load_run
    from codelm.generate.sampling import SamplingConfig

    model, tok = load_run(a.run)
    cfg = SamplingConfig(
        temperature=a.temperature,
        top_p=a.top_p,
        top_k=a.top_k,
        max_new_tokens=a.max_new_tokens,
        seed=a.seed,
    )
    result = complete(model, tok, a.prompt, cfg)
    sys.stdout.write(result.text if result.text.endswith("\n") else result.text + "\n")
    print(f"[stop: {result.stop_reason}, {len(result.tokens)} tokens]", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codelm", description="Train code models on your own code.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="stdlib -> tokenizer -> tiny model -> trace -> samples")
    d.add_argument("--out", default="runs/demo", help="directory for data, tokenizer and run")
    d.add_argument("--max-minutes", type=float, default=5.0, help="training budget (minutes)")
    d.add_argument("--seed", type=int, default=1337)
    d.set_defaults(func=_demo)

    data = sub.add_parser("data", help="build a corpus").add_subparsers(dest="data_cmd", required=True)
    b = data.add_parser("build", help="SOURCE...: a directory or 'stdlib'")
    b.add_argument("sources", nargs="+")
    b.add_argument("--out", required=True)
    b.set_defaults(func=_data_build)

    tk = sub.add_parser("tokenizer", help="train a tokenizer").add_subparsers(dest="tok_cmd", required=True)
    t = tk.add_parser("train", help="train a code BPE on DATA")
    t.add_argument("data")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=int, default=8192)
    t.set_defaults(func=_tokenizer_train)

    tr = sub.add_parser("train", help="train a model")
    tr.add_argument("--data", required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--tokenizer", default=None, help="TOK dir or tokenizer.json (default: train one)")
    tr.add_argument("--preset", default="tiny")
    tr.add_argument("--epochs", type=float, default=1.0)
    tr.add_argument("--max-minutes", type=float, default=0.0)
    tr.add_argument("--max-steps", type=int, default=0)
    tr.add_argument("--seed", type=int, default=1337)
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    tr.set_defaults(func=_train)

    g = sub.add_parser("generate", help="complete a prompt with a trained run")
    g.add_argument("run")
    g.add_argument("prompt")
    g.add_argument("--temperature", type=float, default=0.2)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--seed", type=int, default=None)
    g.set_defaults(func=_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CodelmError as e:
        print(f"codelm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("codelm: interrupted", file=sys.stderr)
        return 130
    return 0
