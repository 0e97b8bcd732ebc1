"""Generation invariants: block-end stopping, greedy determinism, sampling filters."""

from __future__ import annotations

import pytest
import torch

from codelm.errors import CodelmError
from codelm.generate.config import SamplingConfig
from codelm.generate.generator import complete, generate_ids
from codelm.generate.sampling import filter_logits
from codelm.generate.stopping import BlockEnd
from codelm.model import native


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


def test_a_whole_program_goes_on_through_definitions_and_stops_at_other_statements():
    main = "import math\n\ndef area(r):\n    return math.pi * square(r)\n\n"
    helper = "# the helper\n@cache\ndef square(x):\n    return x * x\n"
    assert _stop("", main + helper) is None  # an instruction's program: the helper belongs to it
    assert _stop("", main + helper + "\nprint(area(2))\n") == main + helper
    assert _stop("", "class A:\n    pass\nasync def f():\n    pass\nassert f\n") == (
        "class A:\n    pass\nasync def f():\n    pass\n"
    )
    # with code before it, the block's end is the end, whatever follows
    assert _stop("def area(r):", "\n    return r\ndef square(x):\n") == "\n    return r\n"


def test_block_end_keeps_at_most_the_final_newline_of_blank_lines():
    assert _stop("def f():", "\n    pass\n\n\n\nx = 1") == "\n    pass\n"


def test_greedy_decoding_is_deterministic(tiny_model):
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=20, repetition_penalty=1.0, dry_multiplier=0.0)
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


def _nucleus_by_sorting(logits: torch.Tensor, p: float) -> torch.Tensor:
    """The nucleus as the definition says: sort, keep up to the token that crosses p."""
    values, order = torch.sort(logits, descending=True, dim=-1)
    probs = values.softmax(-1)
    keep = probs.cumsum(-1) - probs < p
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, keep)


@pytest.mark.parametrize("vocab", [50, 256, 4096])
@pytest.mark.parametrize("scale", [0.1, 1.0, 8.0])  # flat (the nucleus past 256 tokens) to peaked
def test_top_p_keeps_exactly_the_nucleus_a_full_sort_gives(vocab, scale):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(64, vocab, generator=gen) * scale
    logits[0, 3:] = float("-inf")  # a row top-k already cut to 3 tokens
    for p in (0.1, 0.5, 0.9, 0.95, 0.999):
        kept = filter_logits(logits, SamplingConfig(temperature=1.0, top_p=p)).isfinite()
        assert torch.equal(kept, _nucleus_by_sorting(logits, p)), p


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


# --- KV cache: rows of different lengths ---------------------------------------------------


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_rows_of_different_lengths_decode_as_each_alone(pos):
    """A right-padded prefill, then per-row positions: each row computes what it would alone."""
    from codelm.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, n_layer=2, n_head=2, n_embd=32, block_size=64, pos=pos))
    model.eval()
    rows = [torch.randint(0, 97, (n,)).tolist() for n in (5, 13, 9)]
    new = torch.randint(0, 97, (3, 7))
    longest = max(map(len, rows))
    idx = torch.tensor([r + [r[-1]] * (longest - len(r)) for r in rows])  # right padding
    lens = torch.tensor([len(r) for r in rows])
    cache = model.new_cache(3)
    got = [model(idx, cache, at=lens - 1)[:, -1]]
    for b, r in enumerate(rows):
        cache.set_length(b, len(r))  # the padding's keys are overwritten by the next tokens
    got += [model(new[:, t : t + 1], cache)[:, -1] for t in range(3)]
    got.append(model(new[:, 3:], cache)[:, -1])  # a chunk after the prefix, too
    cached = torch.stack(got, 1)  # (3, 5, V)
    for b, r in enumerate(rows):
        full = model(torch.tensor([r + new[b].tolist()]))[0, len(r) - 1 :]
        want = torch.cat([full[:4], full[-1:]])
        torch.testing.assert_close(cached[b], want, atol=1e-5, rtol=1e-5)
    # n rows from one prefill: copy_row gives another row the same keys and values
    twice = model.new_cache(6)
    model(idx, twice.rows(0, 3), at=lens - 1)
    for b, r in enumerate(rows):
        twice.set_length(b, len(r))
        twice.copy_row(b, 3 + b)
    step = model(new[:, :1].repeat(2, 1), twice)[:, -1]
    torch.testing.assert_close(step[:3], cached[:, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[3:], cached[:, 1], atol=1e-5, rtol=1e-5)


def _model(tokenizer, **kw):
    from codelm.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = dict(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=64) | kw
    return Transformer(ModelConfig(**cfg)).eval()


def test_batch_of_different_lengths_and_n_samples_match_single_runs(tokenizer):
    from codelm.generate import Prompt, StopConfig, generate_batch

    model = _model(tokenizer, block_size=128)
    greedy, free = (
        SamplingConfig(temperature=0.0, max_new_tokens=12),
        StopConfig(block_end=False, max_repeats=0),
    )
    prompts = ["def add(a, b):", "class Stack:\n    def push(self, item):\n", Prompt("x = ", suffix="\n")]
    batch = generate_batch(model, tokenizer, prompts, greedy, free, n=2)
    for p, pair in zip(prompts, batch, strict=True):
        alone = complete(model, tokenizer, p, greedy, free)
        assert [c.tokens for c in pair] == [alone.tokens, alone.tokens]
        assert pair[0].text == alone.text
    sampled = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=10, seed=3)
    a = generate_batch(model, tokenizer, prompts[:2], sampled, free, n=3)
    b = generate_batch(model, tokenizer, prompts[:2], sampled, free, n=3)
    assert [[c.tokens for c in r] for r in a] == [[c.tokens for c in r] for r in b]
    assert len({tuple(c.tokens) for c in a[0]}) > 1  # the samples differ from each other


def test_healing_lets_the_first_token_re_spell_the_prompts_end(tokenizer):
    from codelm.generate.healing import heal
    from codelm.generate.prompts import Prompt, encode_prompt

    ids = encode_prompt(tokenizer, Prompt("def add(a, b):\n"), 1000).ids
    cut, h = heal(tokenizer, ids)
    assert h is not None and cut == ids[:-1] and h.text == tokenizer.decode(ids[-1:]) == "\n"
    allowed = h.allowed.nonzero().flatten().tolist()
    assert ids[-1] in allowed and not set(allowed) & set(tokenizer.special.values())
    assert all(tokenizer.decode([i]).startswith(h.text) for i in allowed)
    assert tokenizer.encode("\n    ") in [[i] for i in allowed]  # the newline with its indent
    fim = encode_prompt(tokenizer, Prompt("x = ", suffix="\n"), 1000).ids
    assert heal(tokenizer, fim) == (fim, None)  # it ends with a special token


def test_a_healed_completion_reads_on_from_the_prompt(tokenizer):
    from codelm.generate import StopConfig

    model = _model(tokenizer, block_size=128)
    free = StopConfig(block_end=False, max_repeats=0)
    for seed in range(3):
        cfg = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=seed)
        c = complete(model, tokenizer, "def add(a, b):\n", cfg, free)
        assert c.healed == "\n"
        assert tokenizer.decode(c.tokens[:1]).startswith(c.healed)  # the first token re-spells it
        assert tokenizer.decode(c.tokens)[len(c.healed) :].startswith(c.text)
        assert c.logprobs[0] <= 0


# --- sampling --------------------------------------------------------------------------------


def test_repetition_penalty_lowers_seen_tokens_of_either_sign():
    from codelm.generate.sampling import penalize

    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert penalize(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]
    assert penalize(logits, seen, 1.0) is logits
    with pytest.raises(CodelmError):
        SamplingConfig(repetition_penalty=0.0)


def test_repetition_penalty_changes_greedy_loops(tiny_model):
    plain = [
        s.token for s in generate_ids(tiny_model, [1, 2], SamplingConfig(temperature=0, max_new_tokens=30))
    ]
    cfg = SamplingConfig(temperature=0, max_new_tokens=30, repetition_penalty=100.0)
    penalised = [s.token for s in generate_ids(tiny_model, [1, 2], cfg)]
    assert len(set(penalised)) == 30  # a huge penalty never repeats a token
    assert len(set(plain)) < 30


# --- stop rules, one by one -------------------------------------------------------------------


def test_any_special_token_ends_a_row_as_end_of_text(tiny_model):
    """The engine ends a row on an end id (any special token), which never reaches its text."""
    from codelm.generate.engine import Engine, Row, Sampler

    greedy = Sampler(SamplingConfig(temperature=0))
    free = [
        s.token for s in generate_ids(tiny_model, [1, 2], SamplingConfig(temperature=0, max_new_tokens=8))
    ]
    end = free[3]
    engine = Engine(tiny_model, 2, frozenset({end}))
    row, other = Row([1, 2], 8, greedy), Row([3], 8, greedy)
    engine.add([row, other])
    while engine.active:
        engine.step()
    assert row.reason == "end_of_text" and row.tokens == free[: free.index(end) + 1]
    assert other.reason in ("end_of_text", "length")


def test_rows_of_the_embedding_past_the_tokenizer_are_never_sampled(tiny_model):
    """A model may have more embedding rows than its tokenizer has tokens (Qwen2.5 pads to a
    multiple of 128): the engine samples below `vocab` even where those rows score highest."""
    from codelm.generate.engine import Engine, Row, Sampler

    V = tiny_model.cfg.vocab_size
    favoured = torch.zeros(V)
    favoured[V - 5 :] = 1e4
    model = _with_head_bias(tiny_model, favoured)
    for vocab, expect_padding in ((None, True), (V - 5, False)):
        engine = Engine(model, 2, frozenset(), vocab=vocab)
        rows = [
            Row([1, 2], 6, Sampler(SamplingConfig(temperature=1.0, top_k=0, top_p=1.0))) for _ in range(2)
        ]
        engine.add(rows)
        while engine.active:
            engine.step()
        padding = any(t >= V - 5 for r in rows for t in r.tokens)
        assert padding == expect_padding


def _with_head_bias(model, bias: torch.Tensor):
    """A copy of `model` whose logits gain `bias` (a forward hook on the head)."""
    import copy

    model = copy.deepcopy(model)
    model.head.register_forward_hook(lambda _m, _i, out: out + bias.to(out.dtype))
    return model


def test_stop_strings_match_across_tokens_and_cut_before():
    from codelm.generate.stopping import StopStrings

    rule = StopStrings(["\nclass", "###"])
    text = ""
    for piece in ["x = 1", "\ncl", "ass Foo"]:
        text += piece
        cut = rule.check(text, [])
    assert text[:cut] == "x = 1"
    assert rule.safe("x = 1\ncl", []) == len("x = 1")  # may still become "\nclass"
    assert rule.safe("x = 1#", []) == len("x = 1")
    assert rule.safe("x = 1", []) == 5


def test_block_end_never_stops_inside_brackets_or_a_string():
    prompt = "def f(x):"
    call = "\n    y = g(\n1,\n2)\n    return y\n"
    assert _stop(prompt, call) is None
    assert _stop(prompt, call + "z = 3") == call
    doc = '\n    """Doc.\nNot indented, still the docstring.\n    """\n'
    assert _stop(prompt, doc) is None
    assert _stop(prompt, doc + "x = 1") == doc
    assert _stop(prompt, "\n    s = '(' # )\nx") == "\n    s = '(' # )\n"  # quoted and commented


def test_block_end_safe_prefix_holds_only_blank_tails():
    rule = BlockEnd("def f():")
    assert rule.safe("\n    return 1", []) == len("\n    return 1")
    assert rule.safe("\n    return 1\n\n    ", []) == len("\n    return 1\n")
    assert BlockEnd("x = 1\n").safe("", []) == 0


def test_max_lines_rule():
    from codelm.generate.stopping import MaxLines

    assert MaxLines(1, "def f():").check("\n    a = 1\n    b", []) == len("\n    a = 1\n")
    assert MaxLines(1, "x = fo").check("o(1)\nbar", []) == len("o(1)\n")
    assert MaxLines(2, "x\n").check("a\nb", []) is None
    assert MaxLines(2, "x\n").check("a\nb\n", []) == 4


def test_repetition_rule_stops_loops_and_keeps_one_copy():
    from codelm.generate.stopping import Repetition

    rule = Repetition(lambda ids: "".join(chr(97 + i) for i in ids), max_repeats=3)
    line = "        self.name = name\n"
    assert rule.check("\n" + line * 3, []) is None
    assert rule.check("\n" + line * 4, []) == 1 + len(line)
    two = 'x = 1\n"""\n'
    assert rule.check("# a\n" + two * 4, []) == len("# a\n" + two)
    assert rule.check("\n\n\n\n\n", []) is None  # blank lines are the block rule's business
    cycle = [0, 1]  # "ab" x 8: a 2-token cycle spanning 16 tokens
    assert rule.check("ab" * 8, cycle * 8) == 2
    assert rule.check("b" * 7, [1] * 7) is None  # like the zeros of 1000000: too short a span
    rule = Repetition(lambda ids: "=" * len(ids))
    assert rule.check("=" * 70, [7] * 70) is None  # a `# =====` rule is code, not a loop
    assert rule.check("=" * 80, [7] * 80) == 1
    assert rule.safe("x\n" + line * 2, []) == 2 + len(line)  # the second copy may be cut later


def test_first_stop_takes_the_earliest_cut():
    from codelm.generate.stopping import MaxLines, StopStrings, first_stop

    rules = [MaxLines(1, ""), StopStrings(["b"])]
    assert first_stop(rules, "a\nbc", []) == ("max_lines", 2)
    assert first_stop(rules, "ab\nc", []) == ("stop_string", 1)
    assert first_stop(rules, "ac", []) is None


def test_stream_releases_only_text_no_rule_takes_back(tokenizer):
    from codelm.generate.stopping import StopConfig, build_rules
    from codelm.generate.text import TextState

    prompt = "def f(a, b):"
    cases = {
        "block_end": "\n    return a + b\n\n\n\ndef g():\n",
        "stop_string": "\n    x = a # END here\n",
        "repetition": "\n" + "    a = b\n" * 6,
    }
    for reason, body in cases.items():
        rules = build_rules(StopConfig(stop=("# END",)), prompt, tokenizer.decode)
        text, pieces, why = TextState(tokenizer.token_bytes, rules), [], None
        for t in tokenizer.encode(body):
            why = text.add(t)
            pieces.append(text.take(final=why is not None)[0])
            if why:
                break
        assert why == reason
        assert "".join(pieces) == text.text and body.startswith(text.text)


# --- prompts: layouts, truncation, bad input -----------------------------------------------------


def test_prompt_layouts_match_training(tokenizer):
    import numpy as np

    from codelm.generate.prompts import Prompt, encode_prompt
    from codelm.tokenizer.roles import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
    from codelm.train.batches import Layout, assemble, document_layout

    s, eot = tokenizer.special, tokenizer.eot_id
    assert encode_prompt(tokenizer, Prompt("def f():"), 60).ids == [eot, *tokenizer.encode("def f():")]
    pre, mid, suf = "def add(a, b):\n    ", "return a + b", "\n\nx = 1\n"
    order = [("special", FIM_PREFIX, 1), ("piece", 0, 1), ("special", FIM_SUFFIX, 1), ("piece", 2, 1)]
    layout = Layout(
        [pre, mid, suf], order + [("special", FIM_MIDDLE, 1), ("piece", 1, 1), ("special", EOT, 1)]
    )
    trained, _ = assemble(layout, [tokenizer.encode(p) for p in (pre, mid, suf)], tokenizer)
    fim = encode_prompt(tokenizer, Prompt(pre, suffix=suf), 60).ids
    assert fim == [eot, *trained[: trained.index(s[FIM_MIDDLE]) + 1]]
    spm = [("special", FIM_SUFFIX, 1), ("piece", 2, 1), ("special", FIM_PREFIX, 1), ("piece", 0, 1)]
    layout = Layout([pre, mid, suf], spm + layout.parts[4:])  # training's other order
    trained, _ = assemble(layout, [tokenizer.encode(p) for p in (pre, mid, suf)], tokenizer)
    fim = encode_prompt(tokenizer, Prompt(pre, suffix=suf, fim_order="spm"), 60).ids
    assert fim == [eot, *trained[: trained.index(s[FIM_MIDDLE]) + 1]]
    row = {"kind": "pair", "text": "t", "prompt": "Add two numbers.", "completion": "def add(a, b):"}
    trained, _ = assemble(document_layout(row, np.random.default_rng(0), 0.0), [
        tokenizer.encode(row["prompt"]), tokenizer.encode(row["completion"])], tokenizer)  # fmt: skip
    ins = encode_prompt(tokenizer, Prompt("def add(a, b):", instruction="Add two numbers."), 60).ids
    assert ins == [eot, *trained[:-1]]  # everything but the end token


def test_long_prompts_keep_their_most_recent_tokens_and_the_fim_suffix(tokenizer):
    from codelm.generate.prompts import Prompt, encode_prompt

    text = "".join(f"x{i} = {i}\n" for i in range(80))
    ids = tokenizer.encode(text)
    enc = encode_prompt(tokenizer, Prompt(text), 40)
    assert enc.ids == ids[-40:] and enc.dropped == len(ids) - 40
    suffix = "\nreturn x\n"
    fim = encode_prompt(tokenizer, Prompt(text, suffix=suffix), 40)
    assert len(fim.ids) == 40 and fim.dropped == len(ids) - (40 - 4 - len(tokenizer.encode(suffix)))
    assert fim.ids[-1 - len(tokenizer.encode(suffix)) : -1] == tokenizer.encode(suffix)
    model = _model(tokenizer)
    out = complete(model, tokenizer, text, SamplingConfig(max_new_tokens=8, seed=0))
    assert out.truncated and out.dropped_tokens > 0


@pytest.mark.parametrize(
    "kw", [dict(text=""), dict(text="", suffix=""), dict(instruction="  "), dict(suffix="x", instruction="y")]
)
def test_empty_or_conflicting_prompts_are_user_errors(kw):
    from codelm.generate.prompts import Prompt

    with pytest.raises(CodelmError):
        Prompt(**kw)


# --- modes, best-of-n, trace ---------------------------------------------------------------------


def test_fim_and_instruction_modes_complete(tokenizer):
    from codelm.generate import Prompt, StopConfig

    model, cfg = _model(tokenizer), SamplingConfig(max_new_tokens=10, seed=0)
    fim = complete(model, tokenizer, Prompt("def f(x):\n    ", suffix="\n"), cfg)
    ins = complete(model, tokenizer, Prompt("", instruction="Add two numbers."), cfg)
    for c in (fim, ins):
        assert c.stop_reason in {"end_of_text", "block_end", "repetition", "length", "context_full"}
    assert fim.code == "def f(x):\n    " + fim.text + "\n"
    free = StopConfig(block_end=False, max_repeats=0)
    greedy = complete(model, tokenizer, "x = 1\n", SamplingConfig(temperature=0, max_new_tokens=10), free)
    assert greedy.stop_reason in {"end_of_text", "length"}


def test_best_of_drops_what_does_not_parse_and_ranks_by_mean_logprob(tokenizer, monkeypatch):
    from codelm.generate import best
    from codelm.generate.generator import Completion
    from codelm.generate.prompts import Prompt

    prompt = Prompt("def f():")

    def fake(model, tok, prompts, cfg, stops, n, trace, greedy_first):
        assert greedy_first and n == 3
        return [[
            Completion("\n    return (", "length", [1], [-0.1], prompt),
            Completion("\n    return 1\n", "block_end", [1, 2], [-1.0, -1.0], prompt),
            Completion("\n    return 2\n", "block_end", [1], [-0.5], prompt),
        ]]  # fmt: skip

    monkeypatch.setattr(best, "generate_batch", fake)
    chosen, report = best.best_of(None, tokenizer, prompt, 3)
    assert chosen.text == "\n    return 2\n"
    assert [c.text for c in report.ranked] == ["\n    return 2\n", "\n    return 1\n"]
    assert len(report.dropped) == 1 and "line 2" in report.dropped[0][1]
    assert "1 dropped" in report.summary() and "(" in report.summary()


def test_best_of_on_a_model_returns_one_of_n(tokenizer):
    from codelm.generate import best_of

    chosen, report = best_of(_model(tokenizer), tokenizer, "def f():", 3, SamplingConfig(max_new_tokens=8))
    assert len(report.ranked) + len(report.dropped) == 3
    assert chosen in report.ranked or report.none_parsed


def test_trace_lists_top_candidates_and_a_logit_lens(tokenizer):
    from codelm.generate import format_trace

    model = _model(tokenizer)
    # no penalties: greedy then picks the model's own top candidate, which the trace lists
    cfg = SamplingConfig(temperature=0, max_new_tokens=6, repetition_penalty=1.0, dry_multiplier=0.0)
    out = complete(model, tokenizer, "def f():", cfg, trace="lens")
    assert out.trace is not None and len(out.trace) == len(out.tokens)
    for step, tok_id, lp in zip(out.trace, out.tokens, out.logprobs, strict=True):
        probs = [p for _, p in step.top]
        assert len(step.top) == 5 and probs == sorted(probs, reverse=True)
        assert step.token == tok_id == step.top[0][0]  # greedy picks the top candidate
        assert step.prob == pytest.approx(torch.tensor(lp).exp().item(), rel=1e-5)
        assert len(step.lens) == 2 and step.lens[-1][0] == step.top[0][0]  # the last layer is the model
    table = format_trace(out.trace, tokenizer)
    assert len(table.splitlines()) == len(out.tokens) + 1 and "logit lens" in table
    assert complete(model, tokenizer, "def f():", cfg).trace is None


# --- inference weights -------------------------------------------------------------------------


def _exact(q) -> torch.Tensor:
    """The weights an Int8Linear stands for, in fp32."""
    w = native.unpack_int8(q.q) if q.native else q.q
    return w.float() * q.scale.float()[:, None]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("native", marks=pytest.mark.skipif(not native.available(), reason="no native kernels")),
        "aten",
    ],
)
@pytest.mark.parametrize("width", [64, 40])  # 40: neither kernel takes it, dequantizing must
def test_int8_and_bf16_weights_stay_close_to_fp32(width, path, monkeypatch):
    from codelm.generate.quantize import Int8Linear, prepare_model
    from codelm.model import ModelConfig, Transformer

    if path == "aten":
        monkeypatch.setattr(native, "available", lambda: False)
    torch.manual_seed(0)
    lin = torch.nn.Linear(width, 48, bias=False)
    x = torch.randn(40, width)
    q = Int8Linear(lin)
    assert q.native == (path == "native" and width % 16 == 0)
    assert q.kernel == (path == "aten" and width % 32 == 0)
    exact = _exact(q)
    assert (exact - lin.weight).abs().max() <= q.scale.float().max() / 2 + 1e-6  # rounding, no more
    for rows in (x[:1], x[:5], x):  # the kernels (one row, several), and dequantizing (40 rows)
        tol = 1e-5 if q.native and len(rows) <= 32 else 0.01  # the others compute in bf16
        assert (q(rows) - rows @ exact.t()).abs().max() <= tol * (rows @ exact.t()).abs().max()
        assert (q(rows) - lin(rows)).abs().max() < 0.02 * lin(rows).abs().max()
    model = Transformer(ModelConfig(vocab_size=97, n_layer=2, n_head=2, n_embd=width, block_size=32)).eval()
    idx = torch.randint(0, 97, (1, 12))
    for weights in ("int8", "bf16"):
        fast = prepare_model(model, weights)
        assert isinstance(model.head, torch.nn.Linear)  # the original is left as it was
        assert fast.kv_dtype == (torch.bfloat16 if path == "native" else None) and model.kv_dtype is None
        torch.testing.assert_close(fast(idx), model(idx), atol=0.05, rtol=0.05)
        assert fast.head.weight.dtype == torch.float32
    assert prepare_model(model, "auto") is model  # below 1M parameters fp32 is exact and as fast
    with pytest.raises(CodelmError):
        prepare_model(model, "int4")


def test_cli_offers_the_weight_formats_of_quantize():
    from codelm.cli import WEIGHT_CHOICES
    from codelm.generate.quantize import WEIGHTS

    assert list(WEIGHTS) == WEIGHT_CHOICES


def test_int8_tiles_round_trip():
    q = torch.randint(-127, 128, (12, 48), dtype=torch.int8)
    tiles = native.pack_int8(q)
    assert tiles.shape == (3, 3, 4, 16) and torch.equal(tiles[1, 2, 3], q[7, 32:48])
    assert torch.equal(native.unpack_int8(tiles), q)


# --- the command line --------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path, tokenizer):
    from codelm.fsutil import atomic_write_json
    from codelm.model.io import save_weights

    model = _model(tokenizer)
    atomic_write_json(tmp_path / "config.json", {"model": model.cfg.to_dict()})
    save_weights(model, tmp_path / "model.safetensors")
    tokenizer.save(tmp_path / "tokenizer.json")
    return str(tmp_path)


def test_cli_modes_best_of_trace_and_stream(run_dir, capsys):
    from codelm.cli import main

    base = [run_dir, "--max-new-tokens", "8", "--seed", "1"]
    assert main(["generate", *base, "def f(x):", "--stream"]) == 0
    streamed = capsys.readouterr().out
    assert main(["generate", *base, "def f(x):"]) == 0
    assert capsys.readouterr().out == streamed
    assert main(["generate", *base, "def f(x):\n    ", "--suffix", "\n    return y\n"]) == 0
    assert main(["generate", *base, "", "--instruction", "Add two numbers."]) == 0
    capsys.readouterr()
    assert main(["generate", *base, "def f(x):", "--n", "3", "--best"]) == 0
    assert "best of 3" in capsys.readouterr().err
    assert main(["generate", *base, "def f(x):", "--n", "2"]) == 0
    assert capsys.readouterr().out.count("# --- sample") == 2
    assert main(["generate", *base, "def f(x):", "--trace", "--trace-layers"]) == 0
    assert "top 5 candidates" in capsys.readouterr().out
    assert main(["generate", *base, "def f(x):", "--verbose", "--weights", "int8"]) == 0
    assert "codelm: weights int8 on cpu: decode through" in capsys.readouterr().err  # the chosen path


def test_cli_bad_input(run_dir, capsys):
    from codelm.cli import main

    for args in (
        [""],
        ["x", "--top-p", "0"],
        ["x", "--top-p", "1.5"],
        ["x", "--max-new-tokens", "0"],
        ["x", "--suffix", "y", "--instruction", "z"],
        ["x", "--n", "2", "--stream"],
        ["x", "--best"],  # one sample: nothing to pick from
        ["x", "--trace-layers"],
    ):
        assert main(["generate", run_dir, *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("codelm: error:") and "\n" not in err
    long = "".join(f"x{i} = {i}\n" for i in range(60))
    assert main(["generate", run_dir, long, "--max-new-tokens", "4"]) == 0
    assert "left out" in capsys.readouterr().err


@pytest.mark.parametrize("fake, want", [("avx2", torch.float32), ("amx", torch.bfloat16)])
def test_the_prompt_pass_computes_in_the_policys_dtype(monkeypatch, fake, want):
    """A prompt's many rows dequantize int8 (or widen bf16) weights to what the precision
    policy says this CPU computes fastest: fp32 without native bf16, where the result is
    exactly the dequantized weights' product; bf16 where it is native, to bf16's precision."""
    from codelm.generate.quantize import BF16Linear, Int8Linear, describe, prepare_model
    from codelm.model import ModelConfig, Transformer

    monkeypatch.setenv("CODELM_CPU", fake)
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    x = torch.randn(40, 64)  # more rows than any decoding kernel takes
    for q in (Int8Linear(lin), BF16Linear(lin)):
        assert q.prompt_dtype == want
        exact = q.weight  # the stored weights, as fp32
        ref = x @ exact.t() + lin.bias
        tol = 1e-5 if want == torch.float32 else 0.01
        assert (q(x) - ref).abs().max() <= tol * ref.abs().max()
    model = Transformer(ModelConfig(vocab_size=97, n_layer=2, n_head=2, n_embd=64, block_size=64)).eval()
    fast = prepare_model(model, "int8")
    assert all(m.prompt_dtype == want for m in fast.modules() if isinstance(m, Int8Linear))
    idx = torch.randint(0, 97, (2, 40))
    torch.testing.assert_close(fast(idx), model(idx), atol=0.05, rtol=0.05)
    assert ("bf16 is not native here" in describe(fast)) == (want == torch.float32)


def test_bf16_prompt_gemms_take_few_shapes_and_keep_every_row(monkeypatch):
    """oneDNN builds and keeps a primitive per GEMM shape: prompts of every length must
    map to a few row counts (8 per power of two), and the zero rows must change nothing."""
    from codelm.generate import quantize

    sizes = {quantize.gemm_rows(m) for m in range(1, 4097)}
    assert len(sizes) <= 8 * 12  # 4,096 lengths, 12 powers of two
    assert all(m <= quantize.gemm_rows(m) <= max(m + 15, m * 9 // 8) for m in range(1, 4097))
    seen = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w: seen.append(len(x)) or linear(x, w))
    torch.manual_seed(0)
    w = torch.randn(48, 64).bfloat16()
    for m in (1, 17, 40, 129, 300):
        x = torch.randn(m, 64).bfloat16()
        got = quantize.bf16_gemm(x, w)
        assert got.shape == (m, 48) and seen[-1] == quantize.gemm_rows(m)
        torch.testing.assert_close(got, linear(x, w))


# --- pretrained models' tokenizers: document start, missing roles, stop ids ----------------------


def test_prompts_start_with_the_tokenizers_document_start(tokenizer):
    from codelm.generate.prompts import Prompt, encode_prompt
    from tests.test_tokenizer import foreign_tokenizer

    llama = foreign_tokenizer("deepseek")  # `<｜begin▁of▁sentence｜>` first, then the text
    assert llama.bos_id != llama.eot_id
    assert encode_prompt(llama, Prompt("x = 1"), 60).ids == [llama.bos_id, *llama.encode("x = 1")]
    fim = encode_prompt(llama, Prompt("a = ", suffix="\n"), 60).ids
    assert fim[:2] == [llama.bos_id, llama.special["<|fim_prefix|>"]]
    assert encode_prompt(tokenizer, Prompt("x = 1"), 60).ids[0] == tokenizer.eot_id  # codelm's own


def test_fill_in_the_middle_needs_fim_tokens():
    from codelm.generate.prompts import Prompt, plan
    from tests.test_tokenizer import foreign_tokenizer

    with pytest.raises(CodelmError, match="no fill-in-the-middle tokens"):
        plan(foreign_tokenizer("gpt2"), Prompt("a = ", suffix="\n"), 64, 16)


def test_an_instruction_without_instruction_tokens_is_a_comment_block_as_in_training():
    import numpy as np

    from codelm.generate.prompts import Prompt, encode_prompt
    from codelm.train.batches import assemble, document_layout
    from tests.test_tokenizer import foreign_tokenizer

    t = foreign_tokenizer("deepseek")
    instruction, code = "Add two numbers.\nReturn their sum.", "def add(a, b):"
    comment = t.encode("# Add two numbers.\n# Return their sum.\n\n")
    ids = encode_prompt(t, Prompt(code, instruction=instruction), 60).ids
    assert ids == [t.bos_id, *comment, *t.encode(code)]
    row = {"kind": "pair", "text": "t", "prompt": instruction, "completion": code + "\n    return a + b\n"}
    lay = document_layout(row, np.random.default_rng(0), 1.0, instruction_tokens=False)
    trained, mask = assemble(lay, [t.encode(p) for p in lay.pieces], t)
    body = t.encode(row["completion"])
    assert trained == [t.bos_id, *comment, *body, t.eot_id]
    assert mask == [0] * (1 + len(comment)) + [1] * (len(body) + 1)  # loss on the code and the end only


def test_tokenizing_for_a_tokenizer_without_fim_or_instruction_tokens(tmp_path):
    from codelm.data.dataset import make_row, write_data
    from codelm.train.batches import tokenize_split
    from tests.test_tokenizer import foreign_tokenizer

    t = foreign_tokenizer("gpt2")
    files = ["def f(x):\n    return x\n", "y = 2\n"]
    with write_data(tmp_path / "data") as w:
        for i, text in enumerate(files):
            w.add("train", make_row(text, f"m{i}.py", "test"))
        w.add("train", make_row("t", "p.py", "test", "pair", "Say hi.", "print('hi')\n"))
        w.finish({}, {})
    ids, mask = tokenize_split(tmp_path / "data", "train", t, tmp_path / "tok" / "train.bin", fim_rate=1.0)
    want = [i for text in files for i in [*t.encode(text), t.eot_id]]  # no FIM
    comment, code = t.encode("# Say hi.\n\n"), t.encode("print('hi')\n")
    assert ids.tolist() == want + comment + code + [t.eot_id]
    assert mask.tolist() == [1] * len(want) + [0] * len(comment) + [1] * (len(code) + 1)


def test_healing_never_allows_a_token_that_ends_the_text():
    from codelm.generate.healing import heal
    from tests.test_tokenizer import foreign_tokenizer

    t = foreign_tokenizer("starcoder")
    ids = [t.bos_id, *t.encode("x <")]
    cut, h = heal(t, ids)
    assert h is not None and cut == ids[:-1]
    assert t.token_bytes[t.special["<|fim_prefix|>"]].startswith(h.text.encode())  # `<fim_prefix>`...
    assert not any(h.allowed[i] for i in t.stop_ids)  # ... is not a spelling of `<`
    assert heal(t, [*ids, t.special["<|fim_middle|>"]])[1] is None


def test_intrinsic_scores_every_token_but_a_document_start(tokenizer):
    from codelm.evaluate.intrinsic import IntrinsicConfig, intrinsic_metrics
    from codelm.model import ModelConfig, Transformer
    from tests.test_tokenizer import foreign_tokenizer

    texts = ["def f(x):\n    return x\n", "y = 2\n"]
    for tok, scored in ((foreign_tokenizer("deepseek"), 0), (tokenizer, -1)):
        torch.manual_seed(0)
        model = Transformer(
            ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=8)
        )
        m = intrinsic_metrics(model.eval(), tok, texts, IntrinsicConfig(max_tokens=1000))
        # Llama-style: each document's start token is read, not scored; codelm's: all but the first.
        assert m.tokens == sum(len(tok.encode(t)) + 1 for t in texts) + scored


@pytest.mark.skipif(not native.available(), reason="no native kernels")
def test_bf16_weights_decode_through_the_kernel_as_fp32_on_the_same_weights():
    """With bf16 weights, codelm's kernel makes a decode step the fp32 model's on the weights
    rounded to bf16 (the same bf16 cache): logits to fp32 rounding, the same greedy tokens. aten's
    path (activations rounded to bf16, as bf16 decoding was before the kernel) stays within
    bf16's precision and picks the same tokens here. Biases (Qwen2's q/k/v) go through it too."""
    import copy

    from codelm.generate.quantize import BF16Linear, describe, prepare_model
    from codelm.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64, qkv_bias=True
    )
    model = Transformer(cfg).eval()
    fast = prepare_model(model, "bf16")
    assert all(m.native for m in fast.modules() if isinstance(m, BF16Linear))
    assert f"decode through codelm's {native.isa()} kernels" in describe(fast)
    exact = copy.deepcopy(model)
    for m in exact.modules():
        if isinstance(m, torch.nn.Linear):  # a new parameter: the head's, tied, leaves the embedding as it is
            m.weight = torch.nn.Parameter(m.weight.detach().bfloat16().float())
    exact.kv_dtype = fast.kv_dtype
    aten = copy.deepcopy(fast)
    for m in aten.modules():
        if isinstance(m, BF16Linear):
            m.native = False
    idx = torch.randint(0, 97, (1, 30))
    logits = {}
    with torch.no_grad():
        for name, m in (("fast", fast), ("exact", exact), ("aten", aten)):
            cache = m.new_cache(1)
            prompt = m(idx[:, :6], cache)  # 6 rows: the kernel's on any CPU
            logits[name] = torch.cat([prompt] + [m(idx[:, t : t + 1], cache) for t in range(6, 30)], 1)
    torch.testing.assert_close(logits["fast"], logits["exact"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits["aten"], logits["fast"], atol=0.05, rtol=0.05)
    assert (logits["aten"] - logits["exact"]).abs().max() > 1e-4  # so "fast" did not take aten's path
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=20, repetition_penalty=1.0, dry_multiplier=0.0)
    tokens = {
        k: [s.token for s in generate_ids(m, [5, 6, 7], greedy)]
        for k, m in (("fast", fast), ("exact", exact), ("aten", aten))
    }
    assert tokens["fast"] == tokens["exact"] == tokens["aten"]


def test_dry_charges_the_token_that_would_extend_a_repeat():
    from codelm.generate.sampling import apply_dry, dry_penalties

    cfg = SamplingConfig(dry_multiplier=0.8, dry_base=2.0, dry_allowed_length=2)
    # 7 8 9 | 5 7 8: after "7 8" again, 9 would repeat a run of 2; 5 follows nothing repeated
    assert dry_penalties([7, 8, 9, 5, 7, 8], cfg) == {9: 0.8}
    # a run of 4 repeated ("1 2 3 4"), then the token after it costs 0.8 * 2 ** (4 - 2)
    assert dry_penalties([1, 2, 3, 4, 6, 1, 2, 3, 4], cfg) == {6: 3.2}
    # shorter than the allowed length: free; off: free
    assert dry_penalties([7, 9, 5, 7], cfg) == {}
    assert dry_penalties([1, 2, 3, 4, 6, 1, 2, 3, 4], SamplingConfig(dry_multiplier=0.0)) == {}
    assert dry_penalties([1, 2, 3, 4, 6, 1, 2, 3, 4], SamplingConfig()) == {6: 0.8}  # the default: 4 free
    logits = torch.zeros(2, 10)
    out = apply_dry(logits, [[1, 2, 3, 4, 6, 1, 2, 3, 4], [5]], cfg)
    assert out[0, 6] == -3.2 and out[0].count_nonzero() == 1 and out[1].count_nonzero() == 0


def test_dry_breaks_a_loop_that_greedy_decoding_falls_into(tiny_model):
    from codelm.generate.engine import Engine, Row, Sampler

    def decode(cfg):
        engine = Engine(tiny_model, 1, frozenset(), draft=0)
        row = Row([5, 6, 7], 64, Sampler.of(cfg))
        engine.add([row])
        while engine.active:
            engine.step()
        return row.tokens

    def longest_repeat(tokens):  # the longest run that occurs twice
        return max(
            (
                n
                for n in range(1, len(tokens))
                for i in range(len(tokens) - n)
                if tokens[i : i + n] in [tokens[j : j + n] for j in range(i + 1, len(tokens) - n + 1)]
            ),
            default=0,
        )

    plain = decode(SamplingConfig(temperature=0.0, repetition_penalty=1.0, dry_multiplier=0.0))
    dry = decode(
        SamplingConfig(temperature=0.0, repetition_penalty=1.0, dry_multiplier=2.0, dry_allowed_length=2)
    )
    assert longest_repeat(plain) > 8  # a random tiny model loops
    assert longest_repeat(dry) < longest_repeat(plain) and longest_repeat(dry) <= 4
