"""The command line builds configs from the flags given only, so every default lives in its
dataclass; the dataclasses check their own values, so Python callers and the CLI get the same
one-line error; saved run configs refuse keys they do not know."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import fields

import pytest

from codelm import cli, commands
from codelm.data.build import DataConfig
from codelm.data.decontaminate import DecontamConfig
from codelm.data.dedup import DedupConfig
from codelm.data.filters import FilterConfig
from codelm.data.pairs import PairConfig
from codelm.demo import DemoConfig
from codelm.errors import CodelmError
from codelm.evaluate.report import EvalConfig
from codelm.generate.config import SamplingConfig
from codelm.generate.stopping import StopConfig
from codelm.model.config import ModelConfig
from codelm.serve.api import ServeConfig
from codelm.testgen import SampleConfig, TestgenConfig
from codelm.train.config import TrainConfig


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def _config_actions() -> list[argparse.Action]:
    """Every flag of every subcommand that sets a config field."""
    found, parsers = [], [cli.build_parser()]
    while parsers:
        p = parsers.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif "." in action.dest:
                found.append(action)
    return found


# ---------------------------------------------------------------- defaults live in the dataclasses


def test_config_flags_name_fields_of_their_dataclass_and_store_nothing_by_default():
    actions = _config_actions()
    assert len(actions) >= 45  # every command's config flags went through _opt / _switch
    for action in actions:
        config, name = action.dest.split(".")
        assert name in {f.name for f in fields(commands.config_class(config))}, action.option_strings
        assert action.default is argparse.SUPPRESS, action.option_strings
        assert action.help, action.option_strings  # argparse shows no help, so no default, without it


def test_configs_resolve_to_the_dataclasses():
    expected = {
        "demo": DemoConfig,
        "data": DataConfig,
        "filters": FilterConfig,
        "dedup": DedupConfig,
        "pairs": PairConfig,
        "train": TrainConfig,
        "eval": EvalConfig,
        "sampling": SamplingConfig,
        "stops": StopConfig,
        "serve": ServeConfig,
        "testgen": TestgenConfig,
        "testsample": SampleConfig,
    }
    assert {name: commands.config_class(name) for name in commands.CONFIGS} == expected


def test_absent_flags_give_the_dataclass_defaults(monkeypatch):
    monkeypatch.delenv("CODELM_API_KEY", raising=False)
    assert commands.make_config(parse("demo"), "demo") == DemoConfig()
    assert commands.data_config(parse("data", "build", "stdlib", "--out", "D")) == DataConfig()
    assert commands.make_config(parse("train", "--data", "D", "--out", "R"), "train") == TrainConfig()
    assert commands.make_config(parse("eval", "R"), "eval") == EvalConfig()
    a = parse("generate", "R", "x")
    assert commands.make_config(a, "sampling") == SamplingConfig()
    assert commands.make_config(a, "stops") == StopConfig()
    assert commands.serve_config(parse("serve", "R")) == ServeConfig()


def test_given_flags_reach_their_fields(monkeypatch):
    monkeypatch.delenv("CODELM_API_KEY", raising=False)
    a = parse("train", "--data", "D", "--out", "R", "--early-stop", "2", "--lr", "0.01", "--compile")
    assert commands.make_config(a, "train") == TrainConfig(early_stop_patience=2, lr=0.01, compile=True)
    argv = ["data", "build", "s", "--out", "D", "--split", "0.7,0.2,0.1", "--no-pairs", "--no-near-dup"]
    argv += ["--keep-unparsable", "--num-perm", "64", "--exclude", "a/*", "--exclude", "b/*"]
    assert commands.data_config(parse(*argv)) == DataConfig(
        fractions=(0.7, 0.2, 0.1),
        filters=FilterConfig(keep_unparsable=True),
        dedup=DedupConfig(num_perm=64),
        pairs=PairConfig(enabled=False),
        near_dup=False,
        exclude=("a/*", "b/*"),
    )
    a = parse("generate", "R", "x", "--stop", "#", "--stop", "\n\n", "--no-block-end", "--top-k", "5")
    assert commands.make_config(a, "stops") == StopConfig(stop=("#", "\n\n"), block_end=False)
    assert commands.make_config(a, "sampling") == SamplingConfig(top_k=5)
    assert commands.make_config(parse("demo", "--no-compile", "--seed", "3"), "demo") == DemoConfig(
        compile=False, seed=3
    )
    assert commands.serve_config(parse("serve", "R", "--api-key", "k")).api_key == "k"
    monkeypatch.setenv("CODELM_API_KEY", "from-env")
    assert commands.serve_config(parse("serve", "R", "--api-key", "")).api_key == "from-env"


def test_help_shows_the_dataclass_defaults(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert f"(default: {TrainConfig.lr})" in out and f"(default: {TrainConfig.preset})" in out
    assert cli.main(["data", "build", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "train,val,test fractions (default: 0.8,0.1,0.1)" in out
    assert "do not mine docstring->code pairs (default" not in out  # switches show none


def test_version_and_missing_commands_speak_the_users_words(capsys):
    from codelm import __version__

    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"codelm {__version__}\n"
    for argv, missing in ([], "COMMAND"), (["data"], "{build}"), (["tokenizer"], "{train}"):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err  # argparse's own names (data_cmd, tok_cmd) are not the user's
        assert err.rstrip().endswith(f"error: the following arguments are required: {missing}"), err


def test_parsing_arguments_does_not_import_torch():
    code = (
        "import sys; from codelm.cli import build_parser; "
        "build_parser().parse_args(['generate', 'R', 'x', '--top-p', '0.5', '--weights', 'int8']); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- validation in the dataclasses

CLI_AND_PYTHON = [
    (["serve", "R", "--max-batch", "0"], lambda: ServeConfig(max_batch=0)),
    (["serve", "R", "--timeout", "-1"], lambda: ServeConfig(timeout=-1.0)),
    (["train", "--data", "D", "--out", "R", "--fim-rate", "1.5"], lambda: TrainConfig(fim_rate=1.5)),
    (["train", "--data", "D", "--out", "R", "--batch-size", "0"], lambda: TrainConfig(batch_size=0)),
    (["train", "--data", "D", "--out", "R", "--lr", "0"], lambda: TrainConfig(lr=0.0)),
    # before the data is read and a tokenizer trained on it (minutes), not after
    (["train", "--data", "D", "--out", "R", "--preset", "huge"], lambda: TrainConfig(preset="huge")),
    (
        ["train", "--data", "D", "--out", "R", "--max-steps", "5", "--epochs", "-1"],
        lambda: TrainConfig(max_steps=5, epochs=-1.0),
    ),
    (["generate", "R", "x", "--top-p", "0"], lambda: SamplingConfig(top_p=0.0)),
    (["generate", "R", "x", "--temperature", "-1"], lambda: SamplingConfig(temperature=-1.0)),
    (["generate", "R", "x", "--max-lines", "-1"], lambda: StopConfig(max_lines=-1)),
    (["generate", "R", "x", "--stop", ""], lambda: StopConfig(stop=("",))),
    (["eval", "R", "--samples", "-1"], lambda: EvalConfig(samples=-1)),
    (["demo", "--max-minutes", "0"], lambda: DemoConfig(max_minutes=0.0)),
    (
        ["data", "build", "s", "--out", "D", "--near-dup-threshold", "1"],
        lambda: DedupConfig(near_dup_threshold=1.0),
    ),
    (["data", "build", "s", "--out", "D", "--max-bytes", "0"], lambda: FilterConfig(max_bytes=0)),
    (["data", "build", "s", "--out", "D", "--num-proc", "0"], lambda: DataConfig(num_proc=0)),
    (
        ["data", "build", "s", "--out", "D", "--split", "0.5,0.6,0"],
        lambda: DataConfig(fractions=(0.5, 0.6, 0.0)),
    ),
]


@pytest.mark.parametrize("argv, build", CLI_AND_PYTHON, ids=[" ".join(a) for a, _ in CLI_AND_PYTHON])
def test_bad_values_give_the_same_one_line_error_in_python_and_on_the_command_line(
    argv, build, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # R and D are relative: nothing may be made of them
    with pytest.raises(CodelmError) as e:
        build()
    message = str(e.value)
    assert message and "\n" not in message
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"codelm: error: {message}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "build",
    [
        lambda: ModelConfig(n_head=0),  # a user error, not a ZeroDivisionError
        lambda: ModelConfig(block_size=0),
        lambda: ModelConfig(dropout=1.0),
        lambda: TrainConfig(beta2=1.0),
        lambda: TrainConfig(keep_checkpoints=0),
        lambda: TrainConfig(evals=0),
        lambda: SamplingConfig(top_k=-1),
        lambda: StopConfig(max_repeats=-1),
        lambda: ServeConfig(port=70000),
        lambda: ServeConfig(max_prompt_chars=0),
        lambda: DemoConfig(samples=0),
        lambda: DemoConfig(sources=()),
        lambda: EvalConfig(workers=-2),
        lambda: EvalConfig(temperature=-0.5),
        lambda: DedupConfig(num_perm=8),
        lambda: DedupConfig(shingle_size=0),
        lambda: FilterConfig(min_alnum_fraction=1.5),
        lambda: PairConfig(min_instruction_words=-1),
        lambda: DecontamConfig(min_overlap=0.0),
        lambda: DecontamConfig(ngram=0),
    ],
)
def test_bad_python_configs_are_one_line_user_errors(build):
    with pytest.raises(CodelmError) as e:
        build()
    assert str(e.value) and "\n" not in str(e.value)


def test_edge_values_are_accepted():
    ServeConfig(max_batch=1, port=0)
    TrainConfig(fim_rate=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=0.0, min_lr_ratio=1.0)
    SamplingConfig(temperature=0.0, top_p=1.0)
    StopConfig(max_lines=0, max_repeats=0)
    EvalConfig(samples=0)
    assert StopConfig(stop=["a", "b"]).stop == ("a", "b") and StopConfig(stop="ab").stop == ("ab",)


# ---------------------------------------------------------------- saved configs

# `config.json` of a run made by the first release: no field was renamed or removed since, and
# the train entry predates Muon (its runs trained with AdamW).
OLD_MODEL = dict(vocab_size=4096, n_layer=4, n_head=4, n_embd=256, block_size=256, pos="rope",
                 rope_theta=10000.0, norm="rmsnorm", mlp="swiglu", tie_embeddings=True,
                 dropout=0.0)  # fmt: skip
OLD_TRAIN = dict(preset="tiny", vocab_size=4096, seq_len=0, batch_size=8, grad_accum=1, lr=2e-3,
                 min_lr_ratio=0.1, warmup_steps=30, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
                 epochs=0.0, max_steps=0, max_minutes=5.0, evals=8, eval_sequences=64, seed=1337,
                 dtype="auto", device="auto")  # fmt: skip


def test_from_dict_loads_a_config_as_an_old_run_wrote_it():
    model = ModelConfig.from_dict(json.loads(json.dumps(OLD_MODEL)))
    assert model == ModelConfig(**OLD_MODEL)
    train = TrainConfig.from_dict(json.loads(json.dumps(OLD_TRAIN)))
    assert train == TrainConfig(**OLD_TRAIN, optimizer="adamw", muon_split=False, decay=1.0)
    # A Muon run saved before per-head Muon and the shorter decay resumes as it trained.
    muon = TrainConfig.from_dict({**OLD_TRAIN, "optimizer": "muon"})
    assert (muon.optimizer, muon.muon_split, muon.decay) == ("muon", False, 1.0)
    new = TrainConfig(max_steps=3, optimizer="muon", fim_rate=0.0, muon_split=True, decay=0.25)
    assert TrainConfig.from_dict(new.to_dict()) == new
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()


def test_from_dict_rejects_unknown_keys_by_name():
    with pytest.raises(
        CodelmError, match=r"^config\.json: unknown model config key\(s\): bar, foo \(written by"
    ):
        ModelConfig.from_dict({**OLD_MODEL, "foo": 1, "bar": 2})
    with pytest.raises(
        CodelmError, match=r"^config\.json: unknown train config key\(s\): lr_max \(written by"
    ):
        TrainConfig.from_dict({**OLD_TRAIN, "lr_max": 1.0})


NEWER = " (written by a newer codelm? upgrade it to load this run)"


def test_loading_a_run_with_an_unknown_model_key_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model": {**OLD_MODEL, "n_expert": 8}}))
    assert cli.main(["generate", str(tmp_path), "x"]) == 2
    err = capsys.readouterr().err
    assert err == "codelm: error: config.json: unknown model config key(s): n_expert" + NEWER + "\n"


@pytest.mark.parametrize(
    "saved, message",
    [
        ([1], 'not an object with a "model" entry'),
        ({"train": {}}, 'not an object with a "model" entry'),
        ({"model": 5}, '"model" must be an object, got int'),
        ({"model": {**OLD_MODEL, "n_layer": "4"}}, "model n_layer must be int, got '4'"),
        ({"model": {**OLD_MODEL, "tie_embeddings": 1}}, "model tie_embeddings must be bool, got 1"),
        ({"model": {**OLD_MODEL, "n_kv_head": True}}, "model n_kv_head must be int | None, got True"),
    ],
)
def test_a_config_json_of_the_wrong_shape_is_a_one_line_error(tmp_path, capsys, saved, message):
    """Valid JSON, hand-edited or from another tool: one line, never a TypeError's traceback."""
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert cli.main(["generate", str(tmp_path), "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codelm: error: ") and err.count("\n") == 1 and message in err


def test_a_float_field_takes_a_json_integer():
    """JSON writes 10000.0 as 10000 in some tools: a float field takes it."""
    assert ModelConfig.from_dict({**OLD_MODEL, "rope_theta": 500000}).rope_theta == 500000


def _tiny_run(path, tokenizer):
    import torch

    from codelm.fsutil import atomic_write_json
    from codelm.model import Transformer
    from codelm.model.io import save_run_weights

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32))
    atomic_write_json(path / "config.json", {"model": model.cfg.to_dict()})
    tokenizer.save(path / "tokenizer.json")
    save_run_weights(model, path)
    return path


# A flipped bit that leaves valid JSON: a vocabulary id (two tokens now share one), and the
# dropout (0.0 -> 0.1). Neither stops the file from loading; the weights' record catches both.
FLIPS = {"tokenizer.json": r'"vocab":\{"[^"]*":(\d)', "config.json": r'"dropout": 0\.(0)'}


@pytest.mark.parametrize("name", sorted(FLIPS))
def test_a_bit_flip_that_still_parses_is_caught_by_the_weights_record(tmp_path, capsys, tokenizer, name):
    import re

    _tiny_run(tmp_path, tokenizer)  # its weights record both files' sha256
    assert cli.main(["generate", str(tmp_path), "x", "--max-new-tokens", "2"]) == 0
    capsys.readouterr()
    text = (tmp_path / name).read_text()
    at = re.search(FLIPS[name], text).start(1)
    flipped = text[:at] + chr(ord(text[at]) ^ 1) + text[at + 1 :]
    json.loads(flipped)  # still valid JSON
    (tmp_path / name).write_text(flipped)
    assert cli.main(["generate", str(tmp_path), "x"]) == 2
    err = capsys.readouterr().err
    why = "it changed after model.safetensors was saved (a damaged disk, or an edit by hand)"
    assert err == f"codelm: error: corrupt {tmp_path / name}: {why}\n"


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", "model.safetensors"])
def test_a_truncated_run_file_is_a_one_line_error(tmp_path, capsys, tokenizer, name):
    import torch

    from codelm.fsutil import atomic_write_json
    from codelm.model import Transformer
    from codelm.model.io import save_weights

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32))
    atomic_write_json(tmp_path / "config.json", {"model": model.cfg.to_dict()})
    save_weights(model, tmp_path / "model.safetensors")
    tokenizer.save(tmp_path / "tokenizer.json")
    assert cli.main(["generate", str(tmp_path), "x", "--max-new-tokens", "2"]) == 0
    capsys.readouterr()
    whole = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(whole[: len(whole) // 2])
    assert cli.main(["generate", str(tmp_path), "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codelm: error:") and err.count("\n") == 1 and name in err


def _wrong_column(tmp_path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"code": ["def f():\n    return 1\n"]}), tmp_path / "dump.parquet")
    return str(tmp_path / "dump.parquet")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "build", "{empty}", "--out", "{tmp}/data"], "no usable code found in {empty}"),
        (["tokenizer", "train", "{empty}", "--out", "{tmp}/tok.json"], "no UTF-8 text to train on"),
        (["train", "--data", "{empty}", "--out", "{tmp}/run"], "not a DATA directory"),
        (["data", "build", "{parquet}", "--out", "{tmp}/data"], "no column 'content'"),
    ],
)
def test_empty_or_wrong_inputs_exit_2_with_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    names = {"empty": str(tmp_path / "empty"), "tmp": str(tmp_path), "parquet": _wrong_column(tmp_path)}
    assert cli.main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codelm: error: ") and err.count("\n") == 1 and message.format(**names) in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "build", "{src}", "--out", "{out}"],
        ["tokenizer", "train", "{src}", "--out", "{out}/tok.json"],
        ["train", "--data", "{data}", "--out", "{out}", "--max-steps", "1"],
        ["export", "{run}", "--format", "hf", "--out", "{out}"],
        ["export", "{run}", "--format", "gguf", "--out", "{out}/m.gguf"],
        ["testgen", "{src}/pkg0/mod_0.py", "--run", "{run}", "--out", "{out}/test_mod.py"],
    ],
    ids=lambda argv: "-".join(a for a in argv[:4] if not a.startswith("{")),
)
def test_an_output_that_cannot_be_made_is_one_line_before_any_work(
    tmp_path, capsys, corpus_dir, tokenizer, argv
):
    """--out below a file: one line naming the file in the way, and the command stops before
    its work (no tokenizer trained, no candidates sampled), where libraries raised tracebacks."""
    run = _tiny_run(tmp_path, tokenizer)
    data = tmp_path / "data"
    if "{data}" in argv:
        assert cli.main(["data", "build", str(corpus_dir), "--out", str(data)]) == 0
    (tmp_path / "blocker").write_text("a file where a directory must be\n")
    out = tmp_path / "blocker" / "out"
    names = {"src": str(corpus_dir), "data": str(data), "run": str(run), "out": str(out)}
    capsys.readouterr()
    assert cli.main([a.format(**names) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("codelm: error: ") and captured.err.count("\n") == 1
    assert f"{tmp_path / 'blocker'} is a file" in captured.err
    assert "tokenizer" not in captured.out + captured.err.replace("tok.json", "")  # nothing trained first


def test_weights_saved_below_a_file_are_a_one_line_error(tmp_path):
    """`export --format safetensors` and every run's weights write through one function."""
    from codelm.model import Transformer
    from codelm.model.io import save_weights

    (tmp_path / "blocker").write_text("")
    model = Transformer(ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32))
    with pytest.raises(CodelmError, match="blocker is a file"):
        save_weights(model, tmp_path / "blocker" / "sub" / "model.safetensors")


@pytest.mark.parametrize("out", ["{run}", "{run}/tokenizer.json"])
def test_a_tokenizer_is_never_trained_over_a_models_own(tmp_path, capsys, corpus_dir, tokenizer, out):
    """`--out RUN` (a folder means its tokenizer.json) would replace the tokenizer that a run's
    weights were trained with: refused, one line, before any training, the file untouched."""
    run = _tiny_run(tmp_path / "run", tokenizer)
    before = (run / "tokenizer.json").read_bytes()
    assert cli.main(["tokenizer", "train", str(corpus_dir), "--out", out.format(run=run)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"codelm: error: {run / 'tokenizer.json'} is the tokenizer of the model in {run}: replacing it "
        "would break that model; choose another --out\n"
    )
    assert (run / "tokenizer.json").read_bytes() == before
