"""What `codelm import` refuses: each source it cannot convert exactly is a one-line error
naming the reason, exit 2, and no run is left behind."""

from __future__ import annotations

import pytest

from codelm import cli
from tests.test_interop import VOCAB, drop_tensor, edit_config, make_hf, write_tokenizer  # needs transformers

BAD_SOURCES = {
    "unknown model_type": (
        lambda hf: edit_config(hf, model_type="gpt2"),
        "model_type 'gpt2' is not supported",
    ),
    "rope scaling": (
        lambda hf: edit_config(hf, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 5e5}),
        "RoPE scaling 'yarn' (rope_parameters) is not supported",
    ),
    "old rope scaling": (
        lambda hf: edit_config(hf, rope_scaling={"type": "dynamic", "factor": 2.0}),
        "RoPE scaling 'dynamic' (rope_scaling) is not supported",
    ),
    "rope scaling without its factor": (
        lambda hf: edit_config(hf, rope_scaling={"type": "linear"}),
        "rope_scaling: RoPE scaling 'linear' needs a number factor, got None",
    ),
    "head_dim not a number": (
        lambda hf: edit_config(hf, head_dim="32"),
        "config.json: head_dim must be an integer, got '32'",
    ),
    "head_dim unlike the weights": (
        lambda hf: edit_config(hf, head_dim=32),
        "weight model.layers.0.self_attn.q_proj.weight has shape (64, 64), expected (128, 64)",
    ),
    "activation": (
        lambda hf: edit_config(hf, hidden_act="gelu"),
        "hidden_act 'gelu' of llama is not supported",
    ),
    "config not an object": (
        lambda hf: (hf / "config.json").write_text("[]"),
        "cannot read {hf}/config.json: a JSON list, not an object",
    ),
    "size as a string": (
        lambda hf: edit_config(hf, hidden_size="64"),
        "config.json: hidden_size must be an integer, got '64'",
    ),
    "no size": (
        lambda hf: edit_config(hf, intermediate_size=None),
        "config.json has no 'intermediate_size'",
    ),
    "eps as a string": (
        lambda hf: edit_config(hf, rms_norm_eps="1e-6"),
        "model norm_eps must be float | None, got '1e-6'",
    ),
    "no config": (lambda hf: (hf / "config.json").unlink(), "no config.json in {hf}"),
    "no tokenizer": (lambda hf: (hf / "tokenizer.json").unlink(), "no tokenizer.json in {hf}"),
    "pickles only": (
        lambda hf: (hf / "model.safetensors").rename(hf / "pytorch_model.bin"),
        "{hf} has pickled weights only (pytorch_model.bin): codelm reads *.safetensors",
    ),
    "no weights": (lambda hf: (hf / "model.safetensors").unlink(), "no model.safetensors in {hf}"),
    "missing weight": (
        lambda hf: drop_tensor(hf, "model.layers.1.self_attn.k_proj.weight"),
        "weight model.layers.1.self_attn.k_proj.weight is missing",
    ),
    "left over weight": (
        lambda hf: drop_tensor(hf, add="model.layers.0.self_attn.q_norm.weight"),
        "weight model.layers.0.self_attn.q_norm.weight is left over: codelm's model has no place for it",
    ),
    "small embedding": (
        lambda hf: write_tokenizer(hf, [f"<extra_{i}>" for i in range(VOCAB)]),
        "{hf}/tokenizer.json has 120 tokens, more than the model's 96 embedding rows",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_what_codelm_cannot_import_is_a_one_line_error(case, tmp_path, capsys):
    hf = tmp_path / "hf"
    make_hf(hf, "llama")
    spoil, message = BAD_SOURCES[case]
    spoil(hf)
    capsys.readouterr()  # transformers' progress bars
    assert cli.main(["import", str(hf), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"codelm: error: {message.format(hf=hf)}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["import", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"codelm: error: not a folder: {tmp_path / 'nope'}\n"
