"""`codelm <command>`: parses the arguments and hands them to codelm/commands.py, which
calls one stage's plain function and prints.

Results go to stdout, messages and progress to stderr. A user mistake
(`CodelmError`) becomes a one-line error and exit status 2, never a traceback.

A flag that sets a config field is stored as "<config>.<field>" (`train.lr`) and
only when given (`argparse.SUPPRESS`), so a config is built from the given
fields alone: each default lives once, in its dataclass, which checks the
values itself. `--help` reads the defaults from the dataclasses.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from typing import Any

from codelm import __version__, commands
from codelm.commands import config_class
from codelm.errors import CodelmError, first_line
from codelm.fsutil import is_disk_full

# The formats of codelm.generate.quantize.WEIGHTS (a test checks they agree), written out so
# that parsing arguments does not import torch.
WEIGHT_CHOICES = ["auto", "fp32", "bf16", "int8"]
# codelm.generate.rerank.RANKS, its default first (a test checks they agree).
RANK_CHOICES = ["coder-reviewer", "likelihood", "n-coder-reviewer"]


def _field_default(dest: str) -> Any:
    config, name = dest.split(".")
    f = next(f for f in fields(config_class(config)) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


class _Help(argparse.HelpFormatter):
    """Help that ends a config flag's text with "(default: X)", X read from its dataclass."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "." not in action.dest or action.nargs == 0:  # not a config field, or an on/off switch
            return text
        value = _field_default(action.dest)
        if value is None or value == ():
            return text
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()  # argparse %-formats help


class _Parser(argparse.ArgumentParser):
    # Subcommands' parsers are made with their parent's class, so they get _Help too.
    def __init__(self, *args: Any, **kw: Any):
        kw.setdefault("formatter_class", _Help)
        super().__init__(*args, **kw)


def _opt(p: argparse.ArgumentParser, config: str, flag: str, field: str | None = None, **kw: Any) -> None:
    """Add `flag`, which sets `field` of `config` (by default the flag's name: --max-steps,
    max_steps), stored only when given."""
    name = flag.lstrip("-").replace("-", "_")
    if kw.get("action", "store") in ("store", "append") and "choices" not in kw:
        kw.setdefault("metavar", name.upper())  # as argparse would name it, not "TRAIN.MAX_STEPS"
    p.add_argument(flag, dest=f"{config}.{field or name}", default=argparse.SUPPRESS, **kw)


def _switch(p: argparse.ArgumentParser, config: str, flag: str, field: str, value: bool, help: str) -> None:
    """Add a flag without a value that sets `field` of `config` to `value` when given."""
    dest = f"{config}.{field}"
    p.add_argument(flag, dest=dest, action="store_const", const=value, default=argparse.SUPPRESS, help=help)


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="stdlib -> tokenizer -> tiny model -> trace -> samples")
    _opt(d, "demo", "--out", help="directory for data, tokenizer and run")
    _opt(d, "demo", "--max-minutes", type=float, help="training budget (minutes)")
    _opt(d, "demo", "--seed", type=int, help="seed of every random choice")
    _switch(d, "demo", "--no-compile", "compile", False, "train eagerly (skip torch.compile)")
    d.set_defaults(func=commands.cmd_demo)


def _data_parser(sub) -> None:
    data = sub.add_parser("data", help="build a corpus")
    data = data.add_subparsers(dest="data_cmd", required=True, metavar="{build}")
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
    _opt(b, "data", "--text-field", help="code column of JSONL/Parquet")
    _opt(
        b,
        "data",
        "--pair-fields",
        metavar="INSTRUCTION,ANSWER",
        help="read JSONL/Parquet records as instruction -> code pairs from these columns, or 'messages'"
        " (chat); found by itself in a file without the code column",
    )
    _opt(b, "filters", "--max-bytes", type=int, help="drop larger files")
    _switch(b, "filters", "--keep-unparsable", "keep_unparsable", True, "keep Python that ast cannot parse")
    _opt(b, "dedup", "--near-dup-threshold", type=float, help="MinHash Jaccard")
    _opt(b, "dedup", "--num-perm", type=int, help="MinHash permutations")
    _opt(b, "dedup", "--shingle-size", type=int, help="tokens per shingle")
    _switch(b, "data", "--no-near-dup", "near_dup", False, "remove exact duplicates only")
    _opt(
        b,
        "data",
        "--decontaminate",
        action="append",
        metavar="FILE.jsonl",
        help="drop documents containing a problem of this benchmark (repeatable)",
    )
    _opt(b, "data", "--split", "fractions", help="train,val,test fractions")
    _switch(b, "pairs", "--no-pairs", "enabled", False, "do not mine docstring->code pairs")
    _switch(b, "pairs", "--no-doctests", "doctests", False, "do not mine docstring examples (>>>) as pairs")
    _switch(b, "pairs", "--no-function-pairs", "functions", False, "do not mine function docstring pairs")
    _switch(b, "data", "--pairs-only", "documents", False, "keep only the pairs, not the files themselves")
    _opt(
        b,
        "data",
        "--exclude",
        action="append",
        metavar="GLOB",
        help="leave out paths matching GLOB (repeatable)",
    )
    _opt(b, "data", "--num-proc", type=int, help="worker processes (output is the same)")
    engine_help = "local: --num-proc processes here; dask: a Dask cluster (pip install 'codelm[dask]')"
    _opt(b, "data", "--engine", choices=["local", "dask"], help=engine_help)
    _opt(b, "data", "--scheduler", metavar="ADDRESS", help="dask: a running scheduler (tcp://HOST:8786)")
    _opt(b, "data", "--workers", type=int, help="dask: local cluster's worker processes; 0: one per core")
    b.set_defaults(func=commands.cmd_data_build)


def _tokenizer_parser(sub) -> None:
    tk = sub.add_parser("tokenizer", help="train a tokenizer")
    tk = tk.add_subparsers(dest="tok_cmd", required=True, metavar="{train}")
    t = tk.add_parser("train", help="train a code BPE on DATA")
    t.add_argument("data", help="DATA dir from `codelm data build`, or a text file or a directory of them")
    t.add_argument("--out", required=True, help="TOK directory (gets tokenizer.json), or a path ending .json")
    t.add_argument("--vocab-size", type=int, default=8192, help="all tokens: specials and 256 bytes included")
    t.set_defaults(func=commands.cmd_tokenizer_train)


def _train_parser(sub) -> None:
    tr = sub.add_parser("train", help="train a model (under torchrun: data parallel)")
    tr.add_argument("--data", default=None, help="DATA directory from `codelm data build`")
    tr.add_argument("--out", required=True, help="RUN directory")
    tr.add_argument("--tokenizer", default=None, help="TOK dir or tokenizer.json (default: train one)")
    _opt(tr, "train", "--preset", help="model size: tiny | small | base")
    _opt(tr, "train", "--vocab-size", type=int, help="when training a tokenizer")
    _opt(tr, "train", "--epochs", type=float, help="passes over the training tokens")
    _opt(tr, "train", "--max-minutes", type=float, help="wall-clock budget; 0: none")
    _opt(tr, "train", "--max-steps", type=int, help="0: no limit")
    _opt(tr, "train", "--max-tokens", type=int, help="0: no limit")
    _opt(tr, "train", "--batch-size", type=int, help="sequences per micro-batch (global)")
    _opt(tr, "train", "--grad-accum", type=int, help="micro-batches per optimizer step")
    _opt(tr, "train", "--seq-len", type=int, help="0: the model's context, at most 1024")
    _opt(tr, "train", "--lr", type=float, help="AdamW's peak rate; Muon's is 10x this")
    _opt(tr, "train", "--decay", type=float, help="share of the budget, at its end, the rate decays over")
    _opt(tr, "train", "--optimizer", choices=["muon", "adamw"], help="muon: Muon + AdamW")
    _opt(tr, "train", "--fim-rate", type=float, help="share of files made FIM examples")
    repo_help = "repository documents per file (a stretch after snippets of its repo); 0: none"
    _opt(tr, "train", "--repo-rate", type=float, help=repo_help)
    pair_help = "passes over the instruction -> code pairs per pass over the files (default 1; 0: none)"
    _opt(tr, "train", "--pair-rate", type=float, help=pair_help)
    _opt(tr, "train", "--eval-every", type=int, help="steps; 0: only the evaluations spread over the budget")
    _opt(tr, "train", "--early-stop", "early_stop_patience", type=int, help="patience in evaluations; 0: off")
    _opt(tr, "train", "--checkpoint-every", type=int, help="steps; 0: at each evaluation")
    _switch(tr, "train", "--compile", "compile", True, "torch.compile the model")
    _switch(tr, "train", "--shard", "shard", True, "under torchrun: FSDP2, each process holds 1/N of it")
    _opt(tr, "train", "--dtype", choices=["auto", "bf16", "fp32"], help="auto: bf16 where the device has it")
    again = tr.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue RUN from its newest checkpoint")
    again.add_argument("--force", action="store_true", help="start RUN over, deleting its model")
    tr.add_argument("--init-from", default=None, help="fine-tune from another RUN's weights")
    lora_help = "train rank-R LoRA adapters (AdamW) over --init-from's frozen weights; 0: every weight"
    _opt(tr, "train", "--lora", "lora_rank", type=int, metavar="R", help=lora_help)
    _opt(tr, "train", "--lora-alpha", type=float, metavar="A", help="adapters' scale: A/R (default: 2R)")
    _opt(tr, "train", "--lora-targets", metavar="T,...", help="layers adapted in every block: qkv, proj, mlp")
    _opt(tr, "train", "--lora-dropout", type=float, metavar="P", help="dropout on the adapters' input")
    _opt(tr, "train", "--seed", type=int, help="seed of every random choice")
    _opt(tr, "train", "--device", choices=["auto", "cpu", "cuda"], help="auto: cuda if there is one")
    tr.set_defaults(func=commands.cmd_train)


def _eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="metrics, line completion and pass@k of a run")
    ev.add_argument("run", nargs="?", default=None, help="RUN directory (not needed with --completions)")
    ev.add_argument("--data", default=None, help="DATA dir (its test split) or a folder of code")
    ev.add_argument(
        "--problems",
        default=None,
        help="HumanEval- or MBPP-format or notebook problems JSONL (default: our benchmark; notebook_basic)",
    )
    ev.add_argument("--completions", default=None, help="score this JSONL of completions, no model")
    _opt(ev, "eval", "--samples", type=int, help="completions per problem; 0 skips pass@k")
    _opt(ev, "eval", "--temperature", type=float, help="of the pass@k samples")
    _opt(ev, "eval", "--workers", type=int, help="sandbox processes; 0: one per core")
    ev.add_argument("--json", default=None, help="write the full report here")
    _opt(ev, "eval", "--seed", type=int, help="seed of the pass@k samples")
    ev.set_defaults(func=commands.cmd_eval)


def _generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="complete a prompt with a trained run")
    g.add_argument("run")
    g.add_argument("prompt", help="code to complete (FIM: prefix; --instruction: code start); - is stdin")
    g.add_argument("--suffix", default=None, help="fill in the middle between PROMPT and this code")
    g.add_argument("--instruction", default=None, help="write code for this request (PROMPT: its start)")
    _opt(g, "sampling", "--temperature", type=float, help="0: greedy")
    _opt(g, "sampling", "--top-p", type=float, help="nucleus mass in (0, 1]")
    _opt(g, "sampling", "--top-k", type=int, help="0: no top-k cut")
    _opt(g, "sampling", "--repetition-penalty", type=float, help=">1 lowers repeated tokens; 1 turns it off")
    _opt(g, "sampling", "--dry-multiplier", type=float, help="DRY: the cost of extending a repeat; 0: off")
    _opt(g, "sampling", "--dry-base", type=float, help="DRY: the cost grows by this factor per token")
    _opt(g, "sampling", "--dry-allowed-length", type=int, help="DRY: tokens a repeat runs for free")
    _opt(g, "sampling", "--max-new-tokens", type=int, help="length limit of a completion")
    _opt(g, "stops", "--max-lines", type=int, help="stop after N lines (0: no limit)")
    _opt(g, "stops", "--max-repeats", type=int, help="stop when a line loops more (0: off)")
    _opt(g, "stops", "--stop", action="append", metavar="S", help="stop string (repeatable)")
    _switch(g, "stops", "--no-block-end", "block_end", False, "do not stop at the end of the block")
    _switch(g, "stops", "--no-trim", "trim", False, "keep a completion cut mid-construct as it is")
    g.add_argument("--n", type=int, default=1, help="samples to draw (in one batch)")
    g.add_argument("--best", action="store_true", help="print the best sample that parses (see --rank)")
    g.add_argument(
        "--rank", choices=RANK_CHOICES, default=RANK_CHOICES[0], help="how --best ranks: generate/rerank.py"
    )
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    g.add_argument("--trace", action="store_true", help="print the top 5 candidates per token")
    g.add_argument("--trace-layers", action="store_true", help="with --trace: add the logit lens")
    g.add_argument("--verbose", action="store_true", help="say on stderr how it decodes (weights, kernels)")
    _opt(g, "sampling", "--seed", type=int, help="makes sampling reproducible")
    g.add_argument(
        "--weights",
        default="auto",
        choices=WEIGHT_CHOICES,
        help="inference weights; auto: int8 on CPU for models over 1M parameters (default: auto)",
    )
    g.set_defaults(func=commands.cmd_generate)


def _serve_parser(sub) -> None:
    sv = sub.add_parser("serve", help="OpenAI-style completions and chat API and web playground for a run")
    sv.add_argument("run")
    _opt(sv, "serve", "--host", help="address to bind; loopback: this machine only")
    _opt(sv, "serve", "--port", type=int, help="TCP port; 0: any free one")
    _opt(sv, "serve", "--api-key", help="require Bearer KEY (or set CODELM_API_KEY)")
    _opt(sv, "serve", "--max-batch", type=int, help="requests decoded together; 1: one at a time")
    _opt(sv, "serve", "--max-queue", type=int, help="waiting requests before 503")
    _opt(sv, "serve", "--max-tokens", type=int, help="cap on a request's max_tokens")
    _opt(sv, "serve", "--max-prompt-chars", type=int, help="longer prompts get 400")
    _opt(sv, "serve", "--timeout", type=float, help="seconds per request, queue wait included")
    _opt(sv, "serve", "--model-name", help="model id in the API (default: the run's name)")
    _opt(sv, "serve", "--prompt-cache-mb", type=int, help="KV of recent prompts kept for reuse; 0: none")
    _opt(sv, "serve", "--draft", type=int, help="tokens drafted per step by prompt lookup; 0: none")
    sv.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    sv.add_argument("--weights", default="auto", choices=WEIGHT_CHOICES, help="as in generate")
    sv.set_defaults(func=commands.cmd_serve)


def _lsp_parser(sub) -> None:
    ls = sub.add_parser("lsp", help="language server: completions as ghost text in your editor")
    ls.add_argument("run", nargs="?", help="RUN directory (or give --server)")
    ls.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead of stdio")
    ls.add_argument("--server", metavar="URL", help="complete through an OpenAI-style completions server")
    ls.add_argument("--api-key", help="the server's Bearer key (or set CODELM_API_KEY)")
    ls.add_argument("--model", help="the server's model id (default: its first)")
    ls.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ls.add_argument("--weights", default="auto", choices=WEIGHT_CHOICES, help="as in generate")
    ls.set_defaults(func=commands.cmd_lsp)


def _testgen_parser(sub) -> None:
    tg = sub.add_parser("testgen", help="unit tests for a module, kept if they pass and catch a mutant")
    tg.add_argument("module", help="the Python file to test")
    tg.add_argument("--run", default=None, help="RUN directory whose model writes the candidates")
    tg.add_argument("--candidates", default=None, help="filter the test_* functions of this file, no model")
    _opt(tg, "testgen", "--function", "functions", action="append", metavar="NAME", help="f or Cls.meth")
    _opt(tg, "testsample", "--n", type=int, help="candidates per target, in one batch")
    _opt(tg, "testsample", "--temperature", type=float, help="of the samples after the first (greedy)")
    _opt(tg, "testsample", "--seed", type=int, help="of the samples")
    _opt(tg, "testgen", "--max-mutants", type=int, help="mutants per target")
    _opt(tg, "testgen", "--test-timeout", "test_timeout_s", type=float, help="seconds per test run")
    _opt(tg, "testgen", "--workers", type=int, help="sandboxes at a time; 0: one per core")
    tg.add_argument("--out", default=None, help="test file to write (default: beside the import root)")
    tg.add_argument("--json", default=None, help="also write the report, every candidate's fate, here")
    _switch(tg, "testgen", "--force", "force", True, "overwrite an existing --out")
    tg.set_defaults(func=commands.cmd_testgen)


def _interop_parsers(sub) -> None:
    im = sub.add_parser("import", help="a local Hugging Face model folder -> a RUN")
    im.add_argument("src", metavar="HF_DIR", help="config.json, *.safetensors, tokenizer.json")
    im.add_argument("--out", required=True, help="RUN directory to write (replaced atomically)")
    im.add_argument(
        "--no-chat-template",
        dest="chat_template",
        action="store_false",
        help="leave the folder's chat template out (a base model's): instructions go in as # comments",
    )
    im.set_defaults(func=commands.cmd_import)
    what = "a RUN -> a Hugging Face folder (hf), a llama.cpp file (gguf), or one weights file (safetensors)"
    ex = sub.add_parser("export", help=what)
    ex.add_argument("run")
    ex.add_argument("--format", required=True, choices=["hf", "gguf", "safetensors"])
    ex.add_argument("--out", required=True, help="hf: a folder (replaced atomically); else a file")
    ex.add_argument(
        "--checkpoint", help="safetensors: the checkpoint of this step (12 or step-12; default: the newest)"
    )
    ex.add_argument("--quant", choices=["bf16", "q8_0", "f32"], help="gguf weights (default: bf16)")
    ex.set_defaults(func=commands.cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="codelm", description="Train code models on your own code.")
    p.add_argument("--version", action="version", version=f"codelm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_demo_parser, _data_parser, _tokenizer_parser, _train_parser, _eval_parser,
                _generate_parser, _serve_parser, _lsp_parser, _testgen_parser,
                _interop_parsers):  # fmt: skip
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
    except KeyboardInterrupt as e:  # its message, where there is one, says how to go on
        print(f"codelm: interrupted{f'; {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk where no write site named its path
        if not is_disk_full(e):
            raise
        print(f"codelm: error: no space left on device ({first_line(e)})", file=sys.stderr)
        return 2
    return 0
