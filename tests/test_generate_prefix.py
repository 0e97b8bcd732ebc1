"""Prompt reuse across requests (generate/prefix.py through the engine): a reused prefix
gives the logits of a fresh prefill, the cache keeps its byte bound, rows that share a
prefix do not disturb each other, and an edit reuses only what comes before it."""

from __future__ import annotations

import torch

from codelm.generate import SamplingConfig, StopConfig, complete
from codelm.generate.engine import Engine, Row, Sampler
from codelm.generate.prefix import PrefixCache
from codelm.model import ModelConfig, Transformer

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12, repetition_penalty=1.0, dry_multiplier=0.0)


def _model(vocab: int = 97, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab, n_layer=2, n_head=2, n_embd=32, block_size=128) | kw
    return Transformer(ModelConfig(**cfg)).eval()


def _decode(model, prompts, prefixes=None, cfg=GREEDY, top=5) -> list[Row]:
    """Each prompt decoded greedily with the top-5 alternatives of every token."""
    engine = Engine(model, len(prompts), frozenset(), prefixes=prefixes, draft=0)
    rows = [Row(list(p), cfg.max_new_tokens, Sampler.of(cfg), top=top) for p in prompts]
    engine.add(rows)
    while engine.active:
        engine.step()
    return rows


def _same(a: Row, b: Row) -> None:
    assert a.tokens == b.tokens
    for x, y in zip(a.tops, b.tops, strict=True):  # (token, logprob) alternatives at each step
        assert [t for t, _ in x] == [t for t, _ in y]
        torch.testing.assert_close(torch.tensor([v for _, v in x]), torch.tensor([v for _, v in y]))


def _common(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of a and b."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def test_logits_after_reuse_equal_a_fresh_prefill():
    model = _model()
    cache = PrefixCache(1 << 24)
    first = torch.randint(0, 97, (40,)).tolist()
    [done] = _decode(model, [first], cache)
    assert len(cache) == 1
    # typing along: the prompt grows by the completion's first tokens and two more
    typed = first + done.tokens[:5] + [3, 4]
    [again] = _decode(model, [typed], cache)
    [fresh] = _decode(model, [typed])
    assert again.cached == len(first) + 5  # what the first row's cache held, up to the new tokens
    _same(again, fresh)
    # the same prompt again: all but its last token come from the cache
    [repeat] = _decode(model, [typed], cache)
    assert repeat.cached == len(typed) - 1
    _same(repeat, fresh)


def test_an_edit_before_the_end_reuses_only_up_to_the_edit():
    model = _model()
    cache = PrefixCache(1 << 24)
    prompt = torch.randint(0, 97, (30,)).tolist()
    _decode(model, [prompt], cache)
    edited = list(prompt)
    edited[12] = (edited[12] + 1) % 97
    [row] = _decode(model, [edited], cache)
    assert row.cached == 12
    _same(row, _decode(model, [edited])[0])


def test_rows_sharing_a_prefix_decode_as_each_alone():
    """Rows that reuse one entry, a fresh row beside them, and a row joining mid-decode."""
    model = _model()
    cache = PrefixCache(1 << 24)
    shared = torch.randint(0, 97, (25,)).tolist()
    _decode(model, [shared], cache)
    prompts = [shared + [1, 2, 3], shared + [7], torch.randint(0, 97, (9,)).tolist(), shared[:20]]
    engine = Engine(model, 5, frozenset(), prefixes=cache, draft=0)
    rows = [Row(list(p), 12, Sampler.of(GREEDY), top=5) for p in prompts]
    engine.add(rows[:3])
    engine.step()
    engine.step()
    engine.add(rows[3:])  # joins while the others decode, reusing the same entry
    while engine.active:
        engine.step()
    assert [r.cached for r in rows] == [25, 25, 0, 19]
    for r, p in zip(rows, prompts, strict=True):
        _same(r, _decode(model, [p])[0])


def test_eviction_keeps_the_byte_bound_and_the_most_recently_used():
    model = _model()
    one = 2 * 2 * 2 * 20 * 16 * 4  # keys and values: layers x kv heads x 20 positions x head dim x fp32
    cache = PrefixCache(3 * one)
    prompts = [[k] + torch.randint(0, 97, (19,)).tolist() for k in range(5)]  # 20 tokens each
    for p in prompts[:3]:
        _decode(model, [p], cache, cfg=SamplingConfig(temperature=0.0, max_new_tokens=1))
    assert len(cache) == 3 and cache.bytes == 3 * one
    assert cache.match(prompts[0])[0] == 20  # used again: now the most recent
    for p in prompts[3:]:
        _decode(model, [p], cache, cfg=SamplingConfig(temperature=0.0, max_new_tokens=1))
        assert cache.bytes <= 3 * one
    assert cache.match(prompts[0])[0] == 20  # kept
    assert cache.match(prompts[1])[0] == 0 and cache.match(prompts[2])[0] == 0  # evicted
    cache.store(list(range(200)), torch.zeros(2, 2, 200, 16), torch.zeros(2, 2, 200, 16))
    assert cache.bytes <= 3 * one  # larger than the bound: not stored at all


def test_a_sequence_that_extends_an_entry_replaces_it():
    cache = PrefixCache(1 << 20)
    k = torch.randn(1, 1, 10, 16)
    cache.store(list(range(5)), k, k)
    cache.store(list(range(8)), k, k)
    assert len(cache) == 1 and cache.match(list(range(10)))[0] == 8
    cache.store(list(range(6)), k, k)  # covered by the entry: nothing new
    assert len(cache) == 1


def test_typing_along_through_complete_equals_fresh_completions(tokenizer):
    """Text prompts that end mid-token are healed: the reuse keys on the ids the model read,
    so typing on never reuses a stale last token."""
    model = _model(tokenizer.vocab_size)
    cache = PrefixCache(1 << 24)
    stops = StopConfig(block_end=False, max_repeats=0)
    text = "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    text += "    def push(self, x):\n        se"
    reused = 0
    for extra in ("", "l", "lf", "lf.", "lf.it"):
        got = complete(model, tokenizer, text + extra, GREEDY, stops, prefixes=cache)
        want = complete(model, tokenizer, text + extra, GREEDY, stops)
        assert (got.text, got.tokens, got.healed) == (want.text, want.tokens, want.healed)
        reused += got.cached_tokens
    assert reused > 0


def test_spm_prompts_change_only_at_their_end_as_the_user_types(tokenizer):
    """In SPM order a keystroke at the cursor leaves every token before the prefix's last
    few alone, so the prefix cache reuses them; PSM's suffix follows the edit."""
    from codelm.generate.prompts import Prompt, plan

    before, after = "def area(w, h):\n    ", "\n\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
    shared = {"psm": [], "spm": []}
    for order in shared:
        last = None
        for typed in ("re", "ret", "retu", "return", "return w"):
            ids = plan(tokenizer, Prompt(before + typed, after, fim_order=order), 256, 16).ids
            if last is not None:
                same = _common(ids, last)
                shared[order].append(len(ids) - same)  # tokens to prefill after the reused ones
            last = ids
    suffix_tokens = len(tokenizer.encode(after))
    assert max(shared["spm"]) <= 4
    assert min(shared["psm"]) > suffix_tokens
