"""Hugging Face interop: tiny random transformers models, saved as HF folders, give the same
logits and greedy tokens as codelm after `import_hf`, and `export_hf` gives transformers
codelm's logits back, for imported runs and codelm-trained shapes alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from codelm import cli
from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_json
from codelm.generate.config import SamplingConfig
from codelm.generate.engine import Engine, Row, Sampler
from codelm.interop.hf import export_hf, import_hf
from codelm.model import ModelConfig, Transformer
from codelm.model.io import load_model, read_config, save_weights

transformers = pytest.importorskip("transformers")

VOCAB = 96  # the tokenizers below have fewer tokens: the rest are padding rows, as in real models
SPM = (["<unk>", "<s>", "</s>"], "<s>", "</s>")  # the family's special tokens, its bos, its eos
QWEN = (["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"], None, "<|endoftext|>")
EOT = "<|endoftext|>"
STARCODER = ([EOT, "<fim_prefix>", "<fim_middle>", "<fim_suffix>"], EOT, EOT)
FAMILIES = {  # transformers' class, its config (q heads: 4), its tokens
    "llama": ("LlamaForCausalLM", dict(num_key_value_heads=2, intermediate_size=96, rms_norm_eps=1e-5), SPM),
    "llama_bias": ("LlamaForCausalLM", dict(num_key_value_heads=4, intermediate_size=80, attention_bias=True,
                   mlp_bias=True, tie_word_embeddings=True), SPM),
    "mistral": ("MistralForCausalLM", dict(num_key_value_heads=1, intermediate_size=96), SPM),
    # DeepSeek-Coder's linear RoPE scaling; Llama 3.1's, whose 64-token original context puts the
    # head's 8 frequencies in all three of its bands (kept, blended, divided).
    "llama_linear": ("LlamaForCausalLM", dict(num_key_value_heads=2, intermediate_size=96,
                     rope_parameters=dict(rope_type="linear", factor=4.0, rope_theta=1e5)), SPM),
    "llama_llama3": ("LlamaForCausalLM", dict(num_key_value_heads=2, intermediate_size=96,
                     rope_parameters=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_position_embeddings=64,
                                          rope_theta=5e5)), SPM),
    "qwen2": ("Qwen2ForCausalLM", dict(num_key_value_heads=2, intermediate_size=80, tie_word_embeddings=True),
              QWEN),
    # Qwen3: QK-norm, and heads of 32 channels, not 64 / 4: q projects 64 to 128 and back
    "qwen3": ("Qwen3ForCausalLM", dict(num_key_value_heads=2, intermediate_size=80, head_dim=32,
              tie_word_embeddings=True), QWEN),
    "starcoder2": ("Starcoder2ForCausalLM", dict(num_key_value_heads=2, intermediate_size=128), STARCODER),
}  # fmt: skip
TEXT = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i * 2)\n"]


def write_tokenizer(path: Path, specials: list[str], vocab: int = 80) -> dict[str, int]:
    """A byte-level BPE of the family's special tokens; returns their ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(TEXT * 5, trainer)
    path.mkdir(exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return {s: tok.token_to_id(s) for s in specials}


def randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Weights far from init's (norms at 1, biases at 0), so that every one of them matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            one = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if one else 0.0))


def make_hf(path: Path, family: str, dtype=torch.float32, shard: str | None = None, **over):
    """A random transformers model of `family` saved as an HF folder with a tokenizer.json;
    returns it as transformers loads it back, in float32."""
    cls, theirs, (specials, bos, eos) = FAMILIES[family]
    ids = write_tokenizer(path, specials)
    config_cls = getattr(transformers, cls.replace("ForCausalLM", "Config"))
    shape = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    rope = dict(rope_type="default", rope_theta=5e5)
    hf_cfg = config_cls(**{
        **shape, "max_position_embeddings": 128, "rope_parameters": rope, "pad_token_id": None,
        "bos_token_id": ids.get(bos), "eos_token_id": ids.get(eos), **theirs, **over,
    })  # fmt: skip
    hf = getattr(transformers, cls)(hf_cfg)
    randomize(hf)
    hf.to(dtype).save_pretrained(path, safe_serialization=True, max_shard_size=shard or "5GB")
    auto = transformers.AutoModelForCausalLM
    return auto.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def edit_config(hf: Path, **changes) -> None:
    """Set keys of the HF config.json; a key set to None is removed."""
    cfg = {**json.loads((hf / "config.json").read_text()), **changes}
    (hf / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))


def drop_tensor(hf: Path, name: str | None = None, add: str | None = None) -> None:
    sd = load_file(str(hf / "model.safetensors"))
    sd.pop(name, None)
    if add:
        sd[add] = torch.ones(16)
    save_file(sd, str(hf / "model.safetensors"), metadata={"format": "pt"})


def tokens(n: int = 40, rows: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, n), generator=torch.Generator().manual_seed(0))


def assert_same_logits(ours: Transformer, theirs, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x).logits.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_imported_models_give_transformers_logits_and_export_back_unchanged(family, tmp_path):
    hf = make_hf(tmp_path / "hf", family)
    result = import_hf(tmp_path / "hf", tmp_path / "run")
    model = load_model(tmp_path / "run")
    assert (result.model_type, result.dtype, result.model) == (family.split("_")[0], "F32", model.cfg)
    assert result.params == model.num_params() and model.cfg.vocab_size == VOCAB
    assert_same_logits(model, hf, tokens())
    src = tmp_path / "hf" / "tokenizer.json"
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == src.read_bytes()
    saved = read_config(tmp_path / "run")
    assert saved["source"]["path"] == str((tmp_path / "hf").resolve())
    assert saved["source"]["eos_token_id"] == hf.config.eos_token_id

    assert export_hf(tmp_path / "run", tmp_path / "out") == FAMILIES[family][0]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(back) is type(hf)
    with torch.no_grad():
        torch.testing.assert_close(back(tokens()).logits, hf(tokens()).logits, atol=1e-5, rtol=1e-5)
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (hf.config.bos_token_id, hf.config.eos_token_id)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_tokens_match_transformers_in_a_batch_of_prompts(family, tmp_path):
    """codelm's engine decodes prompts of different lengths together, through the KV cache;
    transformers decodes each alone."""
    hf = make_hf(tmp_path / "hf", family)
    import_hf(tmp_path / "hf", tmp_path / "run")
    model = load_model(tmp_path / "run")
    prompts = [tokens(n, 1)[0].tolist() for n in (3, 11, 7)]
    greedy = Sampler(
        SamplingConfig(temperature=0, repetition_penalty=1.0, dry_multiplier=0.0)
    )  # transformers' greedy
    rows = [Row(p, 32, greedy) for p in prompts]
    engine = Engine(model, len(rows), frozenset())
    engine.add(rows)
    while engine.active:
        engine.step()
    for p, row in zip(prompts, rows, strict=True):
        out = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=32, eos_token_id=None)
        assert row.tokens == out[0, len(p) :].tolist()


def test_llama3_scaling_without_its_original_context_takes_the_models_as_transformers_does(tmp_path):
    make_hf(tmp_path / "hf", "llama_llama3")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    rope = {k: v for k, v in cfg["rope_parameters"].items() if k != "original_max_position_embeddings"}
    edit_config(tmp_path / "hf", rope_parameters=rope)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    import_hf(tmp_path / "hf", tmp_path / "run")
    ours = load_model(tmp_path / "run")
    assert (ours.cfg.rope_scaling, ours.cfg.rope_original_context) == ("llama3", 128)
    assert_same_logits(ours, theirs, tokens())


def test_sharded_bf16_weights_import_as_bf16_and_decode(tmp_path):
    hf = make_hf(tmp_path / "hf", "qwen2", dtype=torch.bfloat16, shard="20KB")
    assert len(list((tmp_path / "hf").glob("model-*-of-*.safetensors"))) > 3
    assert import_hf(tmp_path / "hf", tmp_path / "run").dtype == "BF16"
    with safe_open(str(tmp_path / "run" / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(n).get_dtype() for n in f.keys()} == {"BF16"}  # noqa: SIM118
    model = load_model(tmp_path / "run")
    assert model.wte.weight.dtype == torch.float32  # load_model casts
    x = tokens()
    assert_same_logits(model, hf, x)  # hf holds the bf16 values, cast to float
    from codelm.generate.quantize import prepare_model

    with torch.no_grad():
        want = model(x)
        for weights in ("bf16", "int8"):  # generation's fast weights work from it
            fast = prepare_model(load_model(tmp_path / "run"), weights)
            assert (fast(x) - want).abs().max() < 0.1 * want.abs().max()
    export_hf(tmp_path / "run", tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert back.dtype == torch.bfloat16  # bf16 stays bf16
    assert_same_logits(model, back.float().eval(), x)


def test_a_sliding_window_shorter_than_the_context_becomes_the_context(tmp_path):
    hf = make_hf(tmp_path / "hf", "mistral", sliding_window=32)
    result = import_hf(tmp_path / "hf", tmp_path / "run")
    assert result.model.block_size == 32 and "sliding window" in result.notes[0]
    assert_same_logits(load_model(tmp_path / "run"), hf, tokens(32))


def test_older_configs_and_checkpoints_import_the_same(tmp_path):
    """transformers 4's config.json (rope_theta at the top, keys left at their defaults) and an
    old checkpoint's rotary buffers; a Qwen2 window that is switched off keeps the context."""
    hf = make_hf(tmp_path / "hf", "llama")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    for key in ("rope_parameters", "tie_word_embeddings", "hidden_act", "head_dim"):
        cfg.pop(key)
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "rope_theta": 5e5, "rope_scaling": None}))
    drop_tensor(tmp_path / "hf", add="model.layers.0.self_attn.rotary_emb.inv_freq")
    import_hf(tmp_path / "hf", tmp_path / "run")
    assert_same_logits(load_model(tmp_path / "run"), hf, tokens())
    make_hf(tmp_path / "qwen", "qwen2")
    edit_config(tmp_path / "qwen", sliding_window=16, use_sliding_window=False)
    assert import_hf(tmp_path / "qwen", tmp_path / "run").model.block_size == 128


CODELM_SHAPES = {  # codelm-trained shapes (RoPE interleaved) -> the architecture they export as
    "LlamaForCausalLM": dict(),
    "Qwen2ForCausalLM": dict(qkv_bias=True, n_kv_head=2, tie_embeddings=False),
    "Starcoder2ForCausalLM": dict(norm="layernorm", mlp="gelu", bias=True, n_kv_head=1),
}
CODELM_SHAPES["LlamaForCausalLM "] = dict(bias=True, n_kv_head=2, norm_eps=1e-5, rope_theta=5e5)
CODELM_SHAPES["Starcoder2ForCausalLM "] = dict(norm="layernorm", mlp="gelu")  # LayerNorm biases: zeros
# interleaved RoPE with QK-norm: the norms' channels are permuted like q's and k's rows
CODELM_SHAPES["Qwen3ForCausalLM"] = dict(
    qk_norm=True, head_size=32, n_kv_head=2, rope_scaling="linear", rope_factor=2.0
)


def codelm_run(path: Path, tokenizer, **shape) -> Transformer:
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=64, **shape)
    model = Transformer(cfg).eval()
    randomize(model, seed=2)
    path.mkdir()
    atomic_write_json(path / "config.json", {"model": cfg.to_dict()})
    save_weights(model, path / "model.safetensors")
    tokenizer.save(path / "tokenizer.json")
    return model


@pytest.mark.parametrize("arch", list(CODELM_SHAPES))
def test_codelm_trained_models_export_to_transformers(arch, tmp_path, tokenizer):
    model = codelm_run(tmp_path / "run", tokenizer, **CODELM_SHAPES[arch])
    assert export_hf(tmp_path / "run", tmp_path / "out") == arch.strip()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    x = torch.randint(0, tokenizer.vocab_size, (2, 50))
    assert_same_logits(model, hf, x)
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not model.cfg.tie_embeddings)  # noqa: SIM118
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    eot = tokenizer.eot_id
    assert gen == {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": tokenizer.pad_id}
    assert hf.config.eos_token_id == eot


@pytest.mark.parametrize(
    "shape, message",
    [
        (dict(pos="learned"), "learned positions"),
        (dict(norm="layernorm"), "no Hugging Face architecture has norm 'layernorm' with mlp 'swiglu'"),
        (dict(norm="layernorm", mlp="gelu", qkv_bias=True), "biases on q/k/v only"),
    ],
)
def test_shapes_without_an_hf_architecture_are_one_line_errors(shape, message, tmp_path, tokenizer):
    codelm_run(tmp_path / "run", tokenizer, **shape)
    with pytest.raises(CodelmError, match=message) as e:
        export_hf(tmp_path / "run", tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_the_command_line_imports_exports_and_generates(tmp_path, tokenizer, capsys):
    """A Llama with codelm's own tokenizer: `codelm generate` runs on the imported bf16 run."""
    tokenizer.save(tmp_path / "tok.json")
    make_hf(tmp_path / "hf", "llama", dtype=torch.bfloat16, vocab_size=tokenizer.vocab_size)
    (tmp_path / "hf" / "tokenizer.json").write_bytes((tmp_path / "tok.json").read_bytes())
    run, out = str(tmp_path / "run"), str(tmp_path / "out")
    capsys.readouterr()  # transformers' progress bars
    assert cli.main(["import", str(tmp_path / "hf"), "--out", run]) == 0
    assert "imported llama: " in capsys.readouterr().out
    argv = ["generate", run, "def f(x):", "--max-new-tokens", "8", "--temperature", "0", "--weights"]
    assert cli.main([*argv, "int8"]) == 0 and cli.main([*argv, "fp32"]) == 0
    assert cli.main(["export", run, "--format", "hf", "--out", out]) == 0
    assert capsys.readouterr().out.endswith(f"exported LlamaForCausalLM -> {out}\n")
    assert cli.main(["import", str(tmp_path / "hf"), "--out", run]) == 0  # a run is replaced
    assert cli.main(["export", run, "--format", "hf", "--out", run]) == 2  # not the run being read
    assert cli.main(["export", run, "--format", "hf", "--quant", "q8_0", "--out", out]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"codelm: error: --out {run} would replace {run}, which is being read"
    assert err[1] == "codelm: error: --quant is for --format gguf"


def test_imported_runs_fine_tune_with_init_from(tmp_path, tokenizer, corpus_dir):
    from codelm.data.build import build_dataset
    from codelm.train.config import TrainConfig
    from codelm.train.loop import train

    tokenizer.save(tmp_path / "tok.json")
    make_hf(tmp_path / "hf", "qwen2", dtype=torch.bfloat16, vocab_size=tokenizer.vocab_size)
    (tmp_path / "hf" / "tokenizer.json").write_bytes((tmp_path / "tok.json").read_bytes())
    import_hf(tmp_path / "hf", tmp_path / "run")
    build_dataset([str(corpus_dir)], tmp_path / "data")
    cfg = TrainConfig(max_steps=2, epochs=0, batch_size=2, evals=1, seq_len=32, dtype="fp32", warmup_steps=0)
    train(tmp_path / "data", tmp_path / "ft", cfg, init_from=tmp_path / "run")
    assert load_model(tmp_path / "ft").cfg == load_model(tmp_path / "run").cfg


def test_foreign_tokenizers_serve_generation_from_an_imported_run(tmp_path):
    """The family's roles are mapped, and the embedding's padding rows (more rows than the
    tokenizer has tokens, as in Qwen2.5-Coder) are never sampled, healing included."""
    from codelm.generate.generator import complete, load_run

    make_hf(tmp_path / "hf", "starcoder2")
    import_hf(tmp_path / "hf", tmp_path / "run")
    model, tok = load_run(tmp_path / "run")
    assert model.cfg.vocab_size > tok.vocab_size
    for prompt in ("def add(a, b):\n", "def add(a, b):\n    ret"):  # the second one is healed
        sampling = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=16, seed=3)
        done = complete(model, tok, prompt, sampling)
        assert done.stop_reason in ("end_of_text", "length", "block_end", "max_lines")
        assert all(t < tok.vocab_size for t in done.tokens)


def test_an_imported_qwen2_run_fills_in_the_middle_through_the_api_with_its_own_tokens(tmp_path):
    """`codelm serve` on an imported run, through OpenAI's client: a request with a suffix is
    laid out with Qwen's FIM tokens, and the text is what the generator gives."""
    openai = pytest.importorskip("openai")
    from codelm.generate.generator import complete, load_run
    from codelm.generate.prompts import Prompt
    from codelm.generate.stopping import StopConfig
    from codelm.serve import BackgroundServer, ServeConfig, create_app
    from codelm.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

    make_hf(tmp_path / "hf", "qwen2")
    import_hf(tmp_path / "hf", tmp_path / "run")
    model, tok = load_run(tmp_path / "run")
    spelled = [tok.id_to_token(tok.special[r]) for r in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)]
    assert spelled == ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
    prefix, suffix = "def add(a, b):\n    ", "\n    return c\n"
    raw = StopConfig(block_end=False, max_repeats=0)  # what the API does unless asked for more
    want = complete(model, tok, Prompt(prefix, suffix), SamplingConfig(temperature=0, max_new_tokens=8), raw)
    with BackgroundServer(create_app(model, tok, ServeConfig(), name="qwen")) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        out = api.completions.create(model="qwen", prompt=prefix, suffix=suffix, max_tokens=8, temperature=0)
    assert out.choices[0].text == want.text
    assert out.usage.prompt_tokens == len(tok.encode(prefix)) + len(tok.encode(suffix)) + 4  # bos + 3 FIM
