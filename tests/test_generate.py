"""Generation invariants: block-end stopping, greedy determinism, sampling filters."""

from __future__ import annotations

import pytest
import torch

from codelm.errors import CodelmError
from codelm.generate.generator import complete, generate_ids
from codelm.generate.sampling import SamplingConfig, filter_logits
from codelm.generate.stopping import BlockEnd


def _stop(prompt: str, completion: str) -> str | None:
    cut = BlockEnd(prompt).check(completion)
    return None if cut is None else completion[:cut]


def test_block_end_stops_at_the_dedent():
    body = "\n    return a + b\n"
    assert _stop("def add(a, b):", body + "\n\ndef sub(a, b):\n") == body
    assert _stop("def add(a, b):", body) is None  # the next line has not begun yet
    # A method stops when the next method starts, not at the end of the class.
    method = "\n        return self.items.pop()\n"
    prompt = "class Stack:\n    def pop(self):"
    assert _stop(prompt, method + "\n    def push(self, x):\n") == method


def test_block_end_waits_for_the_body_and_keeps_deeper_lines():
    assert _stop("def f():", "\n") is None
    text = "\n    if x:\n        y = 1\n\n    return y\n"
    assert _stop("def f(x):", text) is None
    assert _stop("def f(x):", text + "print(f(1))") == text


def test_block_end_keeps_at_most_the_final_newline_of_blank_lines():
    assert _stop("def f():", "\n    pass\n\n\n\nx = 1") == "\n    pass\n"


def test_greedy_decoding_is_deterministic(tiny_model):
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=20)
    a = [s.token for s in generate_ids(tiny_model, [1, 2, 3], cfg)]
    b = [s.token for s in generate_ids(tiny_model, [1, 2, 3], cfg)]
    assert a == b and len(a) == 20
    # and it is the argmax of a full recomputation at every step
    seq = [1, 2, 3]
    for tok in a:
        assert tok == int(tiny_model(torch.tensor([seq]))[0, -1].argmax())
        seq.append(tok)


def test_seeded_sampling_is_reproducible(tiny_model):
    cfg = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=15, seed=7)
    a = [s.token for s in generate_ids(tiny_model, [5], cfg)]
    b = [s.token for s in generate_ids(tiny_model, [5], cfg)]
    assert a == b


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    kept = filter_logits(logits, SamplingConfig(temperature=1.0, top_k=2, top_p=1.0)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(-1)[0]
    p = float(probs[0] + probs[1]) - 1e-4  # needs two tokens to reach p
    kept = filter_logits(logits, SamplingConfig(temperature=1.0, top_p=p)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]


@pytest.mark.parametrize(
    "kw", [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(max_new_tokens=0)]
)
def test_bad_sampling_settings_are_user_errors(kw):
    with pytest.raises(CodelmError):
        SamplingConfig(**kw)


def test_complete_reports_a_stop_reason(tiny_model, tokenizer):
    from codelm.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=64)
    )
    out = complete(model.eval(), tokenizer, "def f():", SamplingConfig(temperature=0.0, max_new_tokens=8))
    assert out.stop_reason in {"end_of_text", "block_end", "length", "context_full"}
    assert len(out.tokens) <= 8
    with pytest.raises(CodelmError):
        complete(model, tokenizer, "", SamplingConfig())
