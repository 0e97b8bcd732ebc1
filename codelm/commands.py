"""What each `codelm` command does with its parsed arguments: build the stage's config
from the flags given, call the stage's plain function, print the result.

codelm/cli.py builds the parser and maps each command here; each function imports its
stage when called, so `--help` and argument errors never import torch. A flag that sets a
config field arrives as "<config>.<field>" (`train.lr`), only when given: a config is
built from the given fields alone, and each default lives once, in its dataclass.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from codelm.errors import CodelmError

# The dataclass behind each config prefix, by import path: building a config or printing
# --help imports it, parsing arguments does not (that would import torch).
CONFIGS = {
    "demo": "codelm.demo:DemoConfig",
    "data": "codelm.data.build:DataConfig",
    "filters": "codelm.data.filters:FilterConfig",
    "dedup": "codelm.data.dedup:DedupConfig",
    "pairs": "codelm.data.pairs:PairConfig",
    "train": "codelm.train.config:TrainConfig",
    "eval": "codelm.evaluate.report:EvalConfig",
    "sampling": "codelm.generate.config:SamplingConfig",
    "stops": "codelm.generate.stopping:StopConfig",
    "serve": "codelm.serve.api:ServeConfig",
    "testgen": "codelm.testgen.writer:TestgenConfig",
    "testsample": "codelm.testgen.candidates:SampleConfig",
}


def config_class(config: str) -> type:
    """The dataclass named by CONFIGS[config], imported."""
    module, name = CONFIGS[config].split(":")
    return getattr(importlib.import_module(module), name)


def given(a: argparse.Namespace, config: str) -> dict[str, Any]:
    """The fields of `config` the user gave flags for, e.g. {"lr": 0.01} from `--lr 0.01`."""
    prefix = f"{config}."
    return {k.removeprefix(prefix): v for k, v in vars(a).items() if k.startswith(prefix)}


def make_config(a: argparse.Namespace, config: str) -> Any:
    """The `config` dataclass from the flags given; every other field keeps its default."""
    return config_class(config)(**given(a, config))


def data_config(a: argparse.Namespace) -> Any:
    """`codelm data build`'s DataConfig, with its nested filter, dedup and pair configs."""
    from codelm.data.split import parse_fractions

    top = given(a, "data")
    if "fractions" in top:  # --split 0.8,0.1,0.1
        top["fractions"] = parse_fractions(top["fractions"])
    parts = {name: make_config(a, name) for name in ("filters", "dedup", "pairs")}
    return config_class("data")(**top, **parts)


def serve_config(a: argparse.Namespace) -> Any:
    """`codelm serve`'s ServeConfig; the API key comes from --api-key, else CODELM_API_KEY."""
    cfg = given(a, "serve")
    key = cfg.pop("api_key", None) or os.environ.get("CODELM_API_KEY")  # an empty flag counts as unset
    return config_class("serve")(**cfg, **({"api_key": key} if key else {}))


def cmd_demo(a: argparse.Namespace) -> None:
    from codelm.demo import run_demo

    run_demo(make_config(a, "demo"))


def cmd_data_build(a: argparse.Namespace) -> None:
    from rich.console import Console

    from codelm.data.build import build_dataset, stats_table

    stats = build_dataset(a.sources, a.out, data_config(a))
    Console().print(stats_table(stats, a.out))


def cmd_tokenizer_train(a: argparse.Namespace) -> None:
    from pathlib import Path

    from codelm.data.dataset import is_data_dir, iter_texts
    from codelm.fsutil import check_can_create
    from codelm.tokenizer import TextFiles, train_tokenizer

    data = Path(a.data)
    if not data.exists():
        raise CodelmError(f"corpus not found: {data}")
    out = Path(a.out)
    path = out if out.suffix == ".json" else out / "tokenizer.json"
    if path.is_file() and (path.parent / "config.json").is_file():
        raise CodelmError(
            f"{path} is the tokenizer of the model in {path.parent}: replacing it would break "
            "that model; choose another --out"
        )
    check_can_create(path.parent)  # before the training, not after it
    # DATA from `codelm data build` (its train split), else plain text files.
    is_data = is_data_dir(data)
    files = None if is_data else TextFiles(data)
    texts = iter_texts(data, "train") if files is None else files
    tok = train_tokenizer(texts, a.vocab_size, show_progress=sys.stderr.isatty())
    try:
        tok.save(path)
    except OSError as e:
        raise CodelmError(f"cannot write {path}: {e.strerror or e}") from None
    if files is not None and files.skipped:
        print(f"skipped {files.skipped} file(s): binary, not UTF-8, empty or too big", file=sys.stderr)
    print(f"trained a {tok.vocab_size}-token tokenizer -> {path}")


def cmd_train(a: argparse.Namespace) -> None:
    from rich.console import Console

    from codelm.train.distributed import leave, under_torchrun
    from codelm.train.loop import train

    try:
        cfg = make_config(a, "train")
        if not a.resume and a.data is None:
            raise CodelmError("give --data DATA (or --resume an existing run)")
        trace = train(
            a.data, a.out, cfg, tokenizer=a.tokenizer, resume=a.resume, init_from=a.init_from, force=a.force
        )
    except CodelmError as e:
        if under_torchrun():  # a worker leaves with its error as with its result (see leave)
            print(f"codelm: error: {e}", file=sys.stderr)
            leave(2)
        raise
    Console().print(trace.table())
    leave(0)  # under torchrun: exits here


def cmd_eval(a: argparse.Namespace) -> None:
    from rich.console import Console

    if a.completions:
        from codelm.evaluate.passk import score_file

        workers = given(a, "eval").get("workers") or None  # None: score_file's own choice
        report = score_file(a.problems, a.completions, json_out=a.json, workers=workers)
        keys = ["problems", "samples", "passed", *[k for k in report if k.startswith("pass@")]]
        for k in keys:
            print(f"{k}: {report[k]:.3f}" if isinstance(report[k], float) else f"{k}: {report[k]}")
        print(f"results: {report['results_file']}  (sandbox: {report['sandbox']['isolation']})")
        return
    if a.run is None:
        raise CodelmError("give a RUN directory, or --completions FILE to score completions made elsewhere")
    from codelm.evaluate.passk import find_problems
    from codelm.notebook.problems import is_notebook_file

    if a.problems and is_notebook_file(find_problems(a.problems)):
        from codelm.notebook.bench import evaluate_notebook, notebook_table

        report = evaluate_notebook(a.run, find_problems(a.problems), make_config(a, "eval"), a.json)
        Console().print(notebook_table(report))
        return
    from codelm.evaluate.report import evaluate_run, report_table

    cfg = make_config(a, "eval")
    report = evaluate_run(a.run, data=a.data, problems=a.problems, cfg=cfg, json_out=a.json)
    Console().print(report_table(report))


def cmd_generate(a: argparse.Namespace) -> None:
    from codelm.generate.command import read_prompt, run_generate
    from codelm.generate.generator import load_run
    from codelm.generate.prompts import Prompt

    if a.trace_layers and not a.trace:
        raise CodelmError("--trace-layers adds to --trace: give both")
    prompt = Prompt(read_prompt(a.prompt), suffix=a.suffix, instruction=a.instruction)
    cfg, stops = make_config(a, "sampling"), make_config(a, "stops")
    model, tok = load_run(a.run, weights=a.weights)
    if a.verbose:
        from codelm.generate.quantize import describe

        print(f"codelm: {describe(model)}", file=sys.stderr)
    trace = "lens" if a.trace_layers else "top" if a.trace else ""
    run_generate(
        model, tok, prompt, cfg, stops, n=a.n, best=a.best, stream=a.stream, trace=trace, rank=a.rank
    )


def cmd_serve(a: argparse.Namespace) -> None:
    from codelm.serve import serve

    serve(a.run, serve_config(a), device=a.device, weights=a.weights)


def cmd_lsp(a: argparse.Namespace) -> None:
    from codelm.lsp.server import run_local, run_remote

    if (a.run is None) == (a.server is None):
        raise CodelmError("give a RUN directory or --server URL (one of them)")
    if a.tcp is not None and not 0 < a.tcp < 65536:
        raise CodelmError(f"--tcp must be a port in [1, 65535], got {a.tcp}")
    if a.server is not None:
        key = a.api_key or os.environ.get("CODELM_API_KEY")
        run_remote(a.server, key, a.model, a.tcp)
    else:
        run_local(a.run, a.tcp, a.weights, a.device)


def cmd_testgen(a: argparse.Namespace) -> None:
    from codelm.testgen import write_tests

    top = given(a, "testgen")
    top["functions"] = tuple(top.get("functions", ()))
    cfg = config_class("testgen")(**top, sample=make_config(a, "testsample"))
    done = write_tests(a.module, a.run, a.candidates, a.out, a.json, cfg)
    print(f"kept {done.summary.kept} of {done.summary.candidates} tests -> {done.out}")


def cmd_import(a: argparse.Namespace) -> None:
    from codelm.interop.hf import import_hf

    done = import_hf(a.src, a.out, chat_template=a.chat_template)
    for note in done.notes:
        print(f"codelm: {note}", file=sys.stderr)
    chat = ", with its chat template" if done.chat_template else ""
    print(f"imported {done.model_type}: {done.params:,} parameters ({done.dtype}){chat} -> {a.out}")


def cmd_export(a: argparse.Namespace) -> None:
    from pathlib import Path

    if a.format == "safetensors":
        from codelm.train.shard import export_weights

        done = export_weights(Path(a.run), a.checkpoint, Path(a.out))
        print(f"exported the weights of {done.name} -> {a.out}")
        return
    if a.checkpoint is not None:
        raise CodelmError("--checkpoint is for --format safetensors")
    if a.format == "gguf":
        from codelm.interop.gguf import export_gguf

        export_gguf(Path(a.run), Path(a.out), a.quant or "bf16")
        print(f"exported GGUF ({a.quant or 'bf16'}) -> {a.out}")
        return
    if a.quant is not None:
        raise CodelmError("--quant is for --format gguf")
    from codelm.interop.hf import export_hf

    print(f"exported {export_hf(a.run, a.out)} -> {a.out}")
