"""`codelm <command>`: parses arguments, calls one stage's plain function, prints.

Results go to stdout, messages and progress to stderr. A user mistake
(`CodelmError`) becomes a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from codelm.errors import CodelmError

# The formats of codelm.generate.quantize.WEIGHTS (a test checks they agree), written out so
# that parsing arguments does not import torch.
WEIGHT_CHOICES = ["auto", "fp32", "bf16", "int8"]


def _demo(a: argparse.Namespace) -> None:
    from codelm.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=a.out, max_minutes=a.max_minutes, seed=a.seed, compile=not a.no_compile))


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
        exclude=tuple(a.exclude),
    )
    stats = build_dataset(a.sources, a.out, cfg)
    Console().print(stats_table(stats, a.out))


def _tokenizer_train(a: argparse.Namespace) -> None:
    from pathlib import Path

    from codelm.tokenizer import TextFiles, train_tokenizer
    from codelm.train.batches import iter_texts

    data = Path(a.data)
    if not data.exists():
        raise CodelmError(f"corpus not found: {data}")
    # DATA from `codelm data build` (its train split), else plain text files.
    is_data = any((data / n).exists() for n in ("train.parquet", "val.parquet", "manifest.json"))
    files = None if is_data else TextFiles(data)
    texts = iter_texts(data, "train") if files is None else files
    tok = train_tokenizer(texts, a.vocab_size, show_progress=sys.stderr.isatty())
    out = Path(a.out)
    path = out if out.suffix == ".json" else out / "tokenizer.json"
    try:
        tok.save(path)
    except OSError as e:
        raise CodelmError(f"cannot write {path}: {e.strerror or e}") from None
    if files is not None and files.skipped:
        print(f"skipped {files.skipped} file(s): binary, not UTF-8, empty or too big", file=sys.stderr)
    print(f"trained a {tok.vocab_size}-token tokenizer -> {path}")


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
        optimizer=a.optimizer,
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
    from codelm.generate.command import read_prompt, run_generate
    from codelm.generate.generator import load_run
    from codelm.generate.prompts import Prompt
    from codelm.generate.sampling import SamplingConfig
    from codelm.generate.stopping import StopConfig

    if a.trace_layers and not a.trace:
        raise CodelmError("--trace-layers adds to --trace: give both")
    prompt = Prompt(read_prompt(a.prompt), suffix=a.suffix, instruction=a.instruction)
    cfg = SamplingConfig(
        temperature=a.temperature,
        top_p=a.top_p,
        top_k=a.top_k,
        max_new_tokens=a.max_new_tokens,
        seed=a.seed,
        **({} if a.repetition_penalty is None else {"repetition_penalty": a.repetition_penalty}),
    )
    stops = StopConfig(
        stop=tuple(a.stop),
        block_end=False if a.no_block_end else None,
        max_lines=a.max_lines,
        max_repeats=a.max_repeats,
    )
    model, tok = load_run(a.run, weights=a.weights)
    trace = "lens" if a.trace_layers else "top" if a.trace else ""
    run_generate(model, tok, prompt, cfg, stops, n=a.n, best=a.best, stream=a.stream, trace=trace)


def _serve(a: argparse.Namespace) -> None:
    import os

    from codelm.serve import ServeConfig, serve

    cfg = ServeConfig(
        host=a.host,
        port=a.port,
        api_key=a.api_key or os.environ.get("CODELM_API_KEY") or None,
        max_batch=a.max_batch,
        max_queue=a.max_queue,
        max_tokens=a.max_tokens,
        max_prompt_chars=a.max_prompt_chars,
        timeout=a.timeout,
        model_name=a.model_name,
    )
    for name in ("max_batch", "max_queue", "max_tokens", "max_prompt_chars", "timeout"):
        if getattr(cfg, name) <= 0:
            raise CodelmError(f"--{name.replace('_', '-')} must be positive")
    serve(a.run, cfg, device=a.device, weights=a.weights)


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="stdlib -> tokenizer -> tiny model -> trace -> samples")
    d.add_argument("--out", default="runs/demo", help="directory for data, tokenizer and run")
    d.add_argument("--max-minutes", type=float, default=5.0, help="training budget (minutes)")
    d.add_argument("--seed", type=int, default=1337)
    d.add_argument("--no-compile", action="store_true", help="train eagerly (skip torch.compile)")
    d.set_defaults(func=_demo)


def _data_parser(sub) -> None:
    data = sub.add_parser("data", help="build a corpus").add_subparsers(dest="data_cmd", required=True)
    build_help = "SOURCE...: dir | git repo | *.jsonl | *.parquet | stdlib | site-packages"
    b = data.add_parser("build", help=build_help)
    b.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a directory, a git repository (its root is read from HEAD; prefix dir: for the work"
        " tree, git: to force HEAD), *.jsonl[.gz], *.parquet, a code file, 'stdlib', or 'site-packages'"
        " (installed packages, 1 MB of each, the held-out ones left out)",
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
    b.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out paths matching GLOB (repeatable)",
    )
    b.add_argument("--num-proc", type=int, default=1, help="worker processes (output is the same)")
    b.set_defaults(func=_data_build)


def _tokenizer_parser(sub) -> None:
    tk = sub.add_parser("tokenizer", help="train a tokenizer").add_subparsers(dest="tok_cmd", required=True)
    t = tk.add_parser("train", help="train a code BPE on DATA")
    t.add_argument("data", help="DATA dir from `codelm data build`, or a text file or a directory of them")
    t.add_argument("--out", required=True, help="TOK directory (gets tokenizer.json), or a path ending .json")
    t.add_argument("--vocab-size", type=int, default=8192, help="all tokens: specials and 256 bytes included")
    t.set_defaults(func=_tokenizer_train)


def _train_parser(sub) -> None:
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
    tr.add_argument("--lr", type=float, default=2e-3, help="AdamW's peak rate; Muon's is 10x this")
    tr.add_argument("--optimizer", default="muon", choices=["muon", "adamw"], help="muon: Muon + AdamW")
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


def _eval_parser(sub) -> None:
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


def _generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="complete a prompt with a trained run")
    g.add_argument("run")
    g.add_argument("prompt", help="code to complete (FIM: prefix; --instruction: code start); - is stdin")
    g.add_argument("--suffix", default=None, help="fill in the middle between PROMPT and this code")
    g.add_argument("--instruction", default=None, help="write code for this request (PROMPT: its start)")
    g.add_argument("--temperature", type=float, default=0.2, help="0: greedy (default: 0.2)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus mass in (0, 1] (default: 0.95)")
    g.add_argument("--top-k", type=int, default=0, help="0: no top-k cut")
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        help=">1 lowers repeated tokens; 1 turns it off (default: SamplingConfig's, 1.1)",
    )
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--max-lines", type=int, default=0, help="stop after N lines (0: no limit)")
    g.add_argument("--max-repeats", type=int, default=3, help="stop when a line loops more (0: off)")
    g.add_argument("--stop", action="append", default=[], metavar="S", help="stop string (repeatable)")
    g.add_argument("--no-block-end", action="store_true", help="do not stop at the end of the block")
    g.add_argument("--n", type=int, default=1, help="samples to draw (in one batch)")
    g.add_argument("--best", action="store_true", help="print the most likely sample that parses")
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    g.add_argument("--trace", action="store_true", help="print the top 5 candidates per token")
    g.add_argument("--trace-layers", action="store_true", help="with --trace: add the logit lens")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument(
        "--weights",
        default="auto",
        choices=WEIGHT_CHOICES,
        help="inference weights; auto: int8 on CPU for models over 1M parameters (default: auto)",
    )
    g.set_defaults(func=_generate)


def _serve_parser(sub) -> None:
    sv = sub.add_parser("serve", help="OpenAI-style completions API and web playground for a run")
    sv.add_argument("run")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="require Bearer KEY (or set CODELM_API_KEY)")
    sv.add_argument("--max-batch", type=int, default=16, help="requests decoded together; 1: one at a time")
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503 (default: 64)")
    sv.add_argument("--max-tokens", type=int, default=512, help="cap on a request's max_tokens")
    sv.add_argument("--max-prompt-chars", type=int, default=200_000, help="longer prompts get 400")
    sv.add_argument("--timeout", type=float, default=120.0, help="seconds per request, queue wait included")
    sv.add_argument("--model-name", default=None, help="model id in the API (default: the run's name)")
    sv.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    sv.add_argument("--weights", default="auto", choices=WEIGHT_CHOICES, help="as in generate")
    sv.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codelm", description="Train code models on your own code.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_demo_parser, _data_parser, _tokenizer_parser, _train_parser, _eval_parser,
                _generate_parser, _serve_parser):  # fmt: skip
        add(sub)
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
