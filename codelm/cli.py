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

    from codelm.data.build import DataConfig, build_dataset, stats_table
    from codelm.data.dedup import DedupConfig
    from codelm.data.filters import FilterConfig
    from codelm.data.pairs import PairConfig
    from codelm.data.split import parse_fractions

    cfg = DataConfig(
        fractions=parse_fractions(a.split),
        filters=FilterConfig(max_bytes=a.max_bytes, keep_unparsable=a.keep_unparsable),
        dedup=DedupConfig(
            near_dup_threshold=a.near_dup_threshold, num_perm=a.num_perm, shingle_size=a.shingle_size
        ),
        pairs=PairConfig(enabled=not a.no_pairs),
        decontaminate=tuple(a.decontaminate),
        text_field=a.text_field,
        near_dup=not a.no_near_dup,
        num_proc=a.num_proc,
    )
    stats = build_dataset(a.sources, a.out, cfg)
    Console().print(stats_table(stats, a.out))


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
    from rich.console import Console

    from codelm.train.config import TrainConfig
    from codelm.train.loop import train

    cfg = TrainConfig(
        preset=a.preset,
        vocab_size=a.vocab_size,
        epochs=a.epochs,
        max_minutes=a.max_minutes,
        max_steps=a.max_steps,
        max_tokens=a.max_tokens,
        batch_size=a.batch_size,
        grad_accum=a.grad_accum,
        seq_len=a.seq_len,
        lr=a.lr,
        fim_rate=a.fim_rate,
        eval_every=a.eval_every,
        early_stop_patience=a.early_stop,
        checkpoint_every=a.checkpoint_every,
        compile=a.compile,
        dtype=a.dtype,
        seed=a.seed,
        device=a.device,
    )
    if not a.resume and a.data is None:
        raise CodelmError("give --data DATA (or --resume an existing run)")
    trace = train(a.data, a.out, cfg, tokenizer=a.tokenizer, resume=a.resume, init_from=a.init_from)
    Console().print(trace.table())


def _eval(a: argparse.Namespace) -> None:
    from rich.console import Console

    if a.completions:
        from codelm.evaluate.passk import score_file

        report = score_file(a.problems, a.completions, json_out=a.json, workers=a.workers or None)
        keys = ["problems", "samples", "passed", *[k for k in report if k.startswith("pass@")]]
        for k in keys:
            print(f"{k}: {report[k]:.3f}" if isinstance(report[k], float) else f"{k}: {report[k]}")
        print(f"results: {report['results_file']}  (sandbox: {report['sandbox']['isolation']})")
        return
    if a.run is None:
        raise CodelmError("give a RUN directory, or --completions FILE to score completions made elsewhere")
    from codelm.evaluate.report import EvalConfig, evaluate_run, report_table

    cfg = EvalConfig(samples=a.samples, temperature=a.temperature, workers=a.workers, seed=a.seed)
    report = evaluate_run(a.run, data=a.data, problems=a.problems, cfg=cfg, json_out=a.json)
    Console().print(report_table(report))


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
    b = data.add_parser("build", help="SOURCE...: dir | git repo | *.jsonl | *.parquet | stdlib")
    b.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a directory, a git repository (its root is read from HEAD; prefix dir: for the work"
        " tree, git: to force HEAD), *.jsonl[.gz], *.parquet, a code file, or 'stdlib'",
    )
    b.add_argument("--out", required=True, help="the DATA directory to write (replaced atomically)")
    b.add_argument("--text-field", default="content", help="code column of JSONL/Parquet (default: content)")
    b.add_argument("--max-bytes", type=int, default=1_000_000, help="drop larger files (default: 1000000)")
    b.add_argument("--keep-unparsable", action="store_true", help="keep Python that ast cannot parse")
    b.add_argument("--near-dup-threshold", type=float, default=0.85, help="MinHash Jaccard (default: 0.85)")
    b.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default: 128)")
    b.add_argument("--shingle-size", type=int, default=5, help="tokens per shingle (default: 5)")
    b.add_argument("--no-near-dup", action="store_true", help="remove exact duplicates only")
    b.add_argument(
        "--decontaminate",
        action="append",
        default=[],
        metavar="FILE.jsonl",
        help="drop documents containing a problem of this benchmark (repeatable)",
    )
    b.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions (default: 0.8,0.1,0.1)")
    b.add_argument("--no-pairs", action="store_true", help="do not mine docstring->code pairs")
    b.add_argument("--num-proc", type=int, default=1, help="worker processes (output is the same)")
    b.set_defaults(func=_data_build)

    tk = sub.add_parser("tokenizer", help="train a tokenizer").add_subparsers(dest="tok_cmd", required=True)
    t = tk.add_parser("train", help="train a code BPE on DATA")
    t.add_argument("data")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=int, default=8192)
    t.set_defaults(func=_tokenizer_train)

    tr = sub.add_parser("train", help="train a model (under torchrun: data parallel)")
    tr.add_argument("--data", default=None, help="DATA directory from `codelm data build`")
    tr.add_argument("--out", required=True, help="RUN directory")
    tr.add_argument("--tokenizer", default=None, help="TOK dir or tokenizer.json (default: train one)")
    tr.add_argument("--preset", default="tiny", help="model size: tiny | small | base")
    tr.add_argument("--vocab-size", type=int, default=8192, help="when training a tokenizer")
    tr.add_argument("--epochs", type=float, default=1.0)
    tr.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock budget")
    tr.add_argument("--max-steps", type=int, default=0)
    tr.add_argument("--max-tokens", type=int, default=0)
    tr.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch (global)")
    tr.add_argument("--grad-accum", type=int, default=1)
    tr.add_argument("--seq-len", type=int, default=0, help="0: the model's context length")
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--fim-rate", type=float, default=0.5, help="share of files made FIM examples")
    tr.add_argument("--eval-every", type=int, default=0, help="steps; 0: 8 points over the budget")
    tr.add_argument("--early-stop", type=int, default=0, help="patience in evaluations; 0: off")
    tr.add_argument("--checkpoint-every", type=int, default=0, help="steps; 0: at each evaluation")
    tr.add_argument("--compile", action="store_true", help="torch.compile the model")
    tr.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    tr.add_argument("--resume", action="store_true", help="continue RUN from its newest checkpoint")
    tr.add_argument("--init-from", default=None, help="fine-tune from another RUN's weights")
    tr.add_argument("--seed", type=int, default=1337)
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    tr.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="metrics, line completion and pass@k of a run")
    ev.add_argument("run", nargs="?", default=None, help="RUN directory (not needed with --completions)")
    ev.add_argument("--data", default=None, help="DATA dir (its test split) or a folder of code")
    ev.add_argument("--problems", default=None, help="HumanEval-format JSONL (default: our benchmark)")
    ev.add_argument("--completions", default=None, help="score this JSONL of completions, no model")
    ev.add_argument("--samples", type=int, default=10, help="completions per problem; 0 skips pass@k")
    ev.add_argument("--temperature", type=float, default=0.2)
    ev.add_argument("--workers", type=int, default=0, help="sandbox processes; 0: one per core")
    ev.add_argument("--json", default=None, help="write the full report here")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=_eval)

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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse printed its usage error (or --help)
        return int(e.code or 0)
    try:
        args.func(args)
    except CodelmError as e:
        print(f"codelm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("codelm: interrupted", file=sys.stderr)
        return 130
    return 0
