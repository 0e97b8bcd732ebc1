"""Model invariants: causality, KV-cache equivalence, config checks, save/load."""

from __future__ import annotations

import pytest
import torch

from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_json
from codelm.model import ModelConfig, Transformer
from codelm.model.io import load_model, save_weights


@pytest.mark.parametrize("pos,norm,mlp", [("rope", "rmsnorm", "swiglu"), ("learned", "layernorm", "gelu")])
def test_changing_a_later_token_never_changes_earlier_logits(pos, norm, mlp):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=50, n_layer=2, n_head=2, n_embd=32, block_size=32, pos=pos, norm=norm, mlp=mlp
    )
    model = Transformer(cfg).eval()
    x = torch.randint(0, 50, (2, 20))
    base = model(x)
    for t in (0, 7, 18):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] + 1) % 50
        out = model(y)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])  # the change itself is seen


def test_kv_cache_decoding_equals_full_recomputation(tiny_model):
    x = torch.randint(0, 97, (2, 40))
    full = tiny_model(x)
    cache = tiny_model.new_cache(2)
    parts = [tiny_model(x[:, :13], cache), tiny_model(x[:, 13:21], cache)]
    parts += [tiny_model(x[:, t : t + 1], cache) for t in range(21, 40)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_head_is_tied_and_presets_have_expected_sizes():
    m = Transformer(ModelConfig.from_preset("tiny", vocab_size=1000))
    assert m.head.weight is m.wte.weight
    assert ModelConfig.from_preset("small").n_layer == 6 and ModelConfig.from_preset("small").n_embd == 384
    assert ModelConfig.from_preset("base").n_embd == 768


def test_bad_configs_are_user_errors():
    with pytest.raises(CodelmError):
        ModelConfig(n_embd=30, n_head=4)
    with pytest.raises(CodelmError):
        ModelConfig.from_preset("huge")


def test_save_and_load_round_trip(tmp_path, tiny_model):
    atomic_write_json(tmp_path / "config.json", {"model": tiny_model.cfg.to_dict()})
    save_weights(tiny_model, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    x = torch.randint(0, 97, (1, 10))
    assert torch.equal(loaded(x), tiny_model(x))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CodelmError, match="corrupt weights"):
        load_model(tmp_path)
