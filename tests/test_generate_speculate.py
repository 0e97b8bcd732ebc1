"""Speculative decoding by prompt lookup (generate/speculate.py through the engine): drafts
come from the sequence's own n-grams, greedy output is the plain greedy output token for
token, and the acceptance rule leaves the sampling distribution unchanged."""

from __future__ import annotations

import pytest
import torch

from codelm.generate import SamplingConfig, StopConfig, generate_batch
from codelm.generate.engine import Engine, Row, Sampler
from codelm.generate.quantize import prepare_model
from codelm.generate.speculate import Lookup, verify
from codelm.model import ModelConfig, Transformer, native


def test_lookup_drafts_what_followed_the_latest_earlier_ngram():
    look = Lookup([1, 2, 3, 4, 9, 2, 3, 5, 6, 1, 2, 3], ngram=3, min_ngram=2, most=4)
    look.k = 4
    assert look.draft(3) == [4, 9, 2]  # the longest n-gram wins: "1 2 3" at the start, not "2 3" later
    look = Lookup([7, 8, 1, 2, 3, 4, 5, 1, 2], ngram=3, min_ngram=2)
    assert look.draft(2) == [3, 4]  # the longest n-gram that occurred: "1 2"
    look.extend([3])
    look.k = 4
    assert look.draft(4) == [4, 5, 1, 2]
    assert Lookup([1, 2, 3, 4]).draft(3) == []  # nothing repeats
    assert Lookup([5, 5, 5]).draft(4) == [5]  # the draft may run into the sequence's end


def test_the_draft_length_follows_what_is_kept():
    look = Lookup([1, 2, 1, 2, 1, 2, 1, 2], most=4)
    assert look.k == 2 and look.draft(8) == [1, 2]
    look.feedback(2, 2)
    look.feedback(3, 3)
    look.feedback(4, 4)
    assert look.k == 4  # never past `most`
    look.feedback(4, 1)
    assert look.k == 4  # partly kept: unchanged
    look.feedback(4, 0)
    look.feedback(3, 0)
    look.feedback(2, 0)
    look.feedback(1, 0)
    assert look.k == 1 and look.draft(8) == [1]  # never below one


def _model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=61, n_layer=2, n_head=2, n_embd=32, block_size=160)).eval()


def _decode(model, prompts, cfg, draft, samplers=1):
    # every row drafts, as one alone does: the batched path must be exact too
    engine = Engine(model, len(prompts), frozenset({0}), draft=draft, draft_rows=len(prompts))
    shared = [Sampler.of(cfg) for _ in range(samplers)]
    rows = [Row(list(p), cfg.max_new_tokens, shared[i % samplers]) for i, p in enumerate(prompts)]
    engine.add(rows)
    steps = 0
    while engine.active:
        engine.step()
        steps += 1
    return rows, steps


@pytest.mark.parametrize(("penalty", "dry"), [(1.0, 0.0), (1.3, 0.0), (1.0, 0.8), (1.3, 0.8)])
@pytest.mark.parametrize("samplers", [1, 3])
def test_speculative_greedy_equals_plain_greedy(penalty, dry, samplers):
    model = _model()
    gen = torch.Generator().manual_seed(1)
    # varied prompts: random, and ones that repeat themselves (so drafts exist from the start)
    prompts = [torch.randint(1, 61, (n,), generator=gen).tolist() for n in (5, 17, 40)]
    prompts += [[3, 4, 5, 6] * 6, [9, 8, 7] * 3 + [1, 2]]
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=60, repetition_penalty=penalty, dry_multiplier=dry)
    plain = [r.tokens for r in _decode(model, prompts, cfg, 0, samplers)[0]]
    for p, want in zip(prompts, plain, strict=True):  # alone
        rows, _ = _decode(model, [p], cfg, 4)
        assert rows[0].tokens == want
    rows, steps = _decode(model, prompts, cfg, 4, samplers)  # in a batch
    assert [r.tokens for r in rows] == plain
    assert steps < max(len(t) for t in plain) - 1  # drafts were kept: fewer steps than tokens
    for r in rows:  # logprobs of every kept token, as plain decoding scores them
        assert len(r.logprobs) == len(r.tokens)


def test_speculation_stops_at_the_same_text_rules(tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=128)
    model = Transformer(cfg).eval()
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=40)
    prompts = ["def add(a, b):\n    return a + b\n\ndef add(a, b):\n", "x = [1, 2, 3]\ny = [1, 2"]
    for stops in (StopConfig(), StopConfig(block_end=False, max_repeats=0, stop=("\n\n",))):
        plain = generate_batch(model, tokenizer, prompts, cfg, stops, draft=0)
        fast = generate_batch(model, tokenizer, prompts, cfg, stops, draft=4)
        got = [(c.text, c.stop_reason, c.tokens) for [c] in fast]
        assert got == [(c.text, c.stop_reason, c.tokens) for [c] in plain]


@pytest.mark.parametrize("cfg", [
    SamplingConfig(temperature=1.0, top_p=1.0, repetition_penalty=1.0, dry_multiplier=0.0),
    SamplingConfig(temperature=0.7, top_p=0.9, top_k=4, repetition_penalty=1.2),
])  # fmt: skip
def test_the_acceptance_rule_keeps_the_sampling_distribution(cfg):
    """Two positions, a draft at the first: the first token and the pair (first, second)
    follow plain sampling's distribution, within sampling error."""
    from codelm.generate.sampling import filter_logits, penalize

    V, N, d = 6, 40_000, 2
    logits = torch.tensor([[1.0, 0.2, 1.5, -0.5, 0.0, 0.7], [0.3, 1.1, -0.2, 0.9, 0.4, 0.0]])
    seen = torch.zeros(V, dtype=torch.bool)
    seen[5] = True

    def dist(row: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        return filter_logits(penalize(row[None], marks[None], cfg.repetition_penalty), cfg).softmax(-1)[0]

    p0 = dist(logits[0], seen)
    after = seen.clone()
    after[d] = True
    p1 = dist(logits[1], after)
    out = verify(logits.expand(N, 2, V), [[d]] * N, cfg, torch.Generator().manual_seed(0), seen.expand(N, V))
    first = torch.bincount(torch.tensor([o[0] for o in out]), minlength=V) / N
    assert (first - p0).abs().max() < 0.01
    kept = [o for o in out if len(o) == 2]  # the draft was kept: the second token follows p1
    second = torch.bincount(torch.tensor([o[1] for o in kept]), minlength=V) / len(kept)
    assert len(kept) / N == pytest.approx(float(p0[d]), abs=0.01)
    assert (second - p1).abs().max() < 0.015


def test_a_batch_drafts_only_once_one_row_is_left():
    model = _model()
    prompts = [[3, 4, 5, 6] * 6, [9, 8, 7] * 8]  # both repeat themselves: drafts from the start
    engine = Engine(model, 2, frozenset({0}), draft=4)  # the default: speculate alone only
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=12)
    engine.add([Row(list(prompts[0]), 12, Sampler.of(cfg)), Row(list(prompts[1]), 40, Sampler.of(cfg))])
    while len(engine.active) == 2:
        engine.step()
    assert engine.drafted == 0  # two rows: plain steps
    while engine.active:
        engine.step()
    assert engine.drafted > 0  # the longer row, left alone, drafts


def test_seeded_speculative_sampling_is_reproducible():
    model = _model()
    prompts = [[3, 4, 5, 6] * 5, [1, 2, 3]]
    cfg = SamplingConfig(temperature=0.8, max_new_tokens=30, seed=5)
    a = [r.tokens for r in _decode(model, prompts, cfg, 4)[0]]
    b = [r.tokens for r in _decode(model, prompts, cfg, 4)[0]]
    assert a == b


@pytest.mark.skipif(not native.available(), reason="no native kernels")
def test_speculation_through_the_fused_kernels_is_exact():
    """int8 weights decode through the fused step (a draft's T tokens in one call), whose
    per-token arithmetic does not depend on T: the output is plain greedy's, bit for bit."""
    torch.manual_seed(0)
    model = prepare_model(
        Transformer(ModelConfig(vocab_size=96, n_layer=2, n_head=2, n_embd=32, block_size=160)), "int8"
    )
    assert model.fast_step is not None
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 96, (n,), generator=gen).tolist() for n in (6, 30)] + [[5, 6, 7, 8] * 6]
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=60, repetition_penalty=1.1)
    plain = [r.tokens for r in _decode(model, prompts, cfg, 0)[0]]
    rows, steps = _decode(model, prompts, cfg, 4)
    assert [r.tokens for r in rows] == plain
    assert steps < max(len(t) for t in plain) - 1
