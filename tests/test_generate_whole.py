"""A completion that a rule cuts mid-construct is trimmed back to whole code (generate/whole.py),
the same in a batch, a stream, the server and the CLI."""

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codelm.generate import SamplingConfig, StopConfig, complete, generate, generate_batch, parses
from codelm.generate.stopping import FenceEnd, build_rules
from codelm.generate.text import TextState
from codelm.generate.whole import Whole
from codelm.model import ModelConfig, Transformer
from tests.conftest import TINY_MODEL

ADD = "def add(a, b):\n"
BODY = "    total = a + b\n    return total\n"


def _settle(before: str, text: str, after: str = "", floor: int = 0) -> tuple[str, str]:
    whole = Whole(before, after)
    keep, verdict = whole.settle(text, whole.scan(), floor)
    return text[:keep], verdict


def test_whole_code_is_kept_as_it_is():
    assert _settle(ADD, BODY) == (BODY, "parses")
    assert _settle(ADD, "    return a + b") == ("    return a + b", "parses")  # no final newline needed


@pytest.mark.parametrize(
    "tail",
    [
        '    """Return a list of the',  # an open docstring (the demo model's loop)
        "    x = g(a,\n          b",  # an open bracket over two lines
        "    if total:\n",  # a block header without its body
        "    return total +",  # a line cut in the middle
    ],
)
def test_a_cut_mid_construct_is_trimmed_back_to_the_last_line_that_parses(tail):
    kept, verdict = _settle(ADD, BODY + tail)
    assert (kept, verdict) == (BODY, "trimmed")
    assert parses(ADD + kept)


def test_where_nothing_parses_the_text_is_kept_and_says_so():
    text = '\n    """Return a list of the'  # the prompt's header line, then an open docstring
    assert _settle("def add(a, b):", text) == (text, "unparsed")


def test_a_fragment_that_never_parses_is_cut_where_its_brackets_close():
    before = "        return x\n"  # an editor's window: indented, never parses on its own
    text = "        y = [1,\n             2]\n        z = (3,\n"
    assert _settle(before, text) == ("        y = [1,\n             2]\n", "unparsed")
    closed = "        y = 1\n"
    assert _settle(before, closed) == (closed, "unparsed")  # nothing open: kept whole


def test_fill_in_the_middle_parses_with_the_suffix():
    before, after = "def f(a):\n", "\n\nprint(f(1))\n"
    middle = "    out = [a,\n           1]\n    return out\n    x = ("
    assert _settle(before, middle, after) == ("    out = [a,\n           1]\n    return out\n", "trimmed")


def test_a_trim_never_cuts_below_what_a_stream_released():
    text = BODY + "    y = [\n"
    assert _settle(ADD, text, floor=len(BODY) + 2)[1] == "unparsed"
    assert len(_settle(ADD, text, floor=len(BODY) + 2)[0]) >= len(BODY) + 2


def test_line_ends_only_grow_as_the_text_grows():
    whole = Whole(ADD)
    rng = random.Random(0)
    text = BODY + "    y = g(a,\n          b)\n    s = '''x\n(\n'''\n    return s\n"
    scan, ends_seen = whole.scan(), []
    pos = 0
    while pos < len(text):
        pos = min(len(text), pos + rng.randint(1, 7))
        scan.feed(text[:pos])
        assert scan.ends[: len(ends_seen)] == ends_seen  # released text is never taken back
        ends_seen = list(scan.ends)
    fresh = whole.scan()
    fresh.feed(text)
    assert fresh.ends == ends_seen
    assert all(parses(ADD + text[:e]) for e in ends_seen if text[:e].strip())


def _state(tokenizer, prompt: str, **stops) -> TextState:
    rules = build_rules(StopConfig(**stops), prompt, tokenizer.decode)
    return TextState(tokenizer.token_bytes, rules)


def test_a_length_cut_is_trimmed_and_a_stream_never_showed_the_cut_part(tokenizer):
    state, streamed = _state(tokenizer, ADD), ""
    for token in tokenizer.encode(BODY + "    x = g(a,\n          b"):
        assert state.add(token) is None
        streamed += state.take(final=False)[0]
    assert streamed == BODY  # the open call was held back
    state.finish()  # the length limit
    streamed += state.take(final=True)[0]
    assert (state.text, state.syntax, streamed) == (BODY, "trimmed", BODY)


def test_a_block_that_ends_after_a_broken_line_is_trimmed_unless_trimming_is_off(tokenizer):
    broken = BODY + "    x = '<', '</a='</a>',\n"  # the demo model's `class Stack:`, then block end
    for trim, want in ((True, (BODY, "trimmed")), (False, (broken, ""))):
        state, fired = _state(tokenizer, ADD, trim=trim), None
        for token in tokenizer.encode(broken + "x = 1\n"):
            if (fired := state.add(token)) is not None:
                break
        assert fired == "block_end"  # on the dedented line
        assert (state.text, state.syntax) == want


MEMORIZED = "    total = a + b\n    x = g(total,\n          b, a)\n    return x\n"


@pytest.fixture(scope="module")
def memorized(tokenizer):
    """A tiny model that writes MEMORIZED after ADD, learned by heart."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=64, block_size=128)
    model = Transformer(cfg)
    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(ADD + MEMORIZED), tokenizer.eot_id]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_the_engine_trims_a_length_cut_in_a_batch_and_a_stream_alike(memorized, tokenizer):
    whole = complete(memorized, tokenizer, ADD, SamplingConfig(0.0, max_new_tokens=64))
    assert whole.text == MEMORIZED and whole.stop_reason in ("end_of_text", "block_end")
    # a limit that ends inside the open call of the second statement
    inside = next(n for n in range(1, 64) if "g(total," in tokenizer.decode(whole.tokens[:n]))
    cfg = SamplingConfig(0.0, max_new_tokens=inside)
    [[cut]] = generate_batch(memorized, tokenizer, [ADD], cfg)
    assert (cut.text, cut.stop_reason, cut.syntax) == ("    total = a + b\n", "length", "trimmed")
    # its tokens (and their log-probabilities, which rank best-of-n) are those of the kept text
    assert tokenizer.decode(cut.tokens[:-1]) == cut.healed + "    total = a + b"
    assert len(cut.tokens) == len(cut.logprobs) < inside
    stream = generate(memorized, tokenizer, ADD, cfg)
    assert "".join(stream) == "    total = a + b\n"  # the open call was never shown
    assert stream.completion.syntax == "trimmed"
    raw = complete(memorized, tokenizer, ADD, cfg, StopConfig(trim=False))
    assert raw.text.startswith("    total = a + b\n    x = g(") and raw.syntax == ""


@pytest.mark.parametrize("prompt", ["def add(a, b):\n", "class Stack:\n    def push(self, x):\n", "x = ["])
def test_random_completions_are_whole_or_say_so_and_stream_the_same(tokenizer, prompt):
    torch.manual_seed(1)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **TINY_MODEL)).eval()
    cfg = SamplingConfig(temperature=0.8, max_new_tokens=24, seed=3)
    for c in generate_batch(model, tokenizer, [prompt], cfg, n=8)[0]:
        assert tokenizer.decode(c.tokens).startswith(c.healed + c.text)  # a start of what was generated
        assert c.syntax in ("parses", "trimmed", "unparsed")
        assert c.syntax == "unparsed" or parses(c.code)
    stream = generate(model, tokenizer, prompt, cfg)
    pieces = list(stream)
    assert "".join(pieces) == stream.completion.text == complete(model, tokenizer, prompt, cfg).text


def _stream(tokenizer, before: str, text: str, **stops) -> tuple[str, TextState]:
    state, streamed = _state(tokenizer, before, **stops), ""
    for token in tokenizer.encode(text):
        state.add(token)
        streamed += state.take(final=False)[0]
    return streamed, state


def test_a_stream_holds_back_a_line_that_breaks_the_code_though_its_quotes_close(tokenizer):
    broken = "    x = '<', '</a='</a>',\n"  # lexically closed at its end, yet no parse
    streamed, state = _stream(tokenizer, ADD, BODY + broken + "    y = 1\n")
    assert streamed == BODY
    state.finish()
    assert (streamed + state.take(final=True)[0], state.syntax) == (BODY, "trimmed")


def test_a_window_that_never_parses_streams_at_closed_lines_after_three(tokenizer):
    before = "        return x\n"  # an editor's window: indented, never parses
    lines = ["        a = 1\n", "        b = [2,\n             3]\n", "        c = 4\n", "        d = (5,\n"]
    streamed, state = _stream(tokenizer, before, "".join(lines), block_end=False)
    assert streamed == "".join(lines[:3])  # released once three closed line ends failed to parse
    state.finish()
    assert (state.text, state.syntax) == ("".join(lines[:3]), "unparsed")


PROMPTS = [ADD, "def add(a, b):", "class Stack:\n    def push(self, x):\n", "        return x\n", "x = ["]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=st.lists(st.integers(min_value=0, max_value=399), max_size=60),
    prompt=st.sampled_from(PROMPTS),
    stop=st.sampled_from([(), ("\n\n",), ("return",)]),
    max_lines=st.integers(min_value=0, max_value=3),
    trim=st.booleans(),
)
def test_fuzz_streamed_text_equals_the_final_text_whatever_the_rules(
    tokenizer, ids, prompt, stop, max_lines, trim
):
    """Any tokens (odd bytes, half characters), any stop rules: a stream never shows text
    that a stop or a trim takes back, and what settles as whole code parses."""
    rules = build_rules(StopConfig(stop, max_lines=max_lines, trim=trim), prompt, tokenizer.decode)
    state, streamed, used = TextState(tokenizer.token_bytes, rules), "", []
    for token in (t for t in ids if t not in tokenizer.stop_ids):
        used.append(token)
        if state.add(token) is not None:
            break
        streamed += state.take(final=False)[0]
    else:
        state.finish()
    streamed += state.take(final=True)[0]
    assert streamed == state.text
    assert tokenizer.decode(used).startswith(state.text)
    assert state.syntax in (("parses", "trimmed", "unparsed") if trim else ("",))
    if state.syntax in ("parses", "trimmed"):
        assert parses(prompt + state.text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\ufffd"), max_size=40),
    stop=st.sampled_from([(), ("\n",), ("é",)]),
    trim=st.booleans(),
)
def test_fuzz_a_stream_fed_one_byte_per_token_never_shows_half_a_character(tokenizer, text, stop, trim):
    """Every byte of a multi-byte character arrives as its own token: the stream holds the
    first bytes back until the character is whole, so no piece carries a U+FFFD."""
    byte_token = {b: i for i, b in enumerate(tokenizer.token_bytes) if len(b) == 1}
    state, pieces = _state(tokenizer, "x = 1\n", stop=stop, trim=trim), []
    for byte in text.encode("utf-8"):
        cut = state.add(byte_token[bytes([byte])])
        if cut is not None:
            break
        pieces.append(state.take(final=False)[0])
    else:
        state.finish()
    pieces.append(state.take(final=True)[0])
    assert "".join(pieces) == state.text and text.startswith(state.text)
    assert not any("\ufffd" in p for p in pieces)


FENCE_PARTS = ["```", "`", "\n", "x = 1", '"""', " ", "```python\n", "def f():\n    return 2\n", "# ```"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.sampled_from(FENCE_PARTS), max_size=12),
    prompt=st.sampled_from(["", "def f(", "x = 1\n"]),
    trim=st.booleans(),
)
def test_fuzz_a_fenced_stream_never_shows_the_fence_or_what_follows(tokenizer, parts, prompt, trim):
    """An answer in a chat template's frame, a byte a token: what is streamed is the final
    text, and it ends no later than where the fence closes (FenceEnd), if it does."""
    text = "".join(parts)
    byte_token = {b: i for i, b in enumerate(tokenizer.token_bytes) if len(b) == 1}
    rules = build_rules(StopConfig(trim=trim), prompt, tokenizer.decode, fenced=True)
    state, streamed = TextState(tokenizer.token_bytes, rules), ""
    for byte in text.encode():
        if state.add(byte_token[bytes([byte])]) is not None:
            break
        streamed += state.take(final=False)[0]
    else:
        state.finish()
    streamed += state.take(final=True)[0]
    assert streamed == state.text and text.startswith(state.text)
    closed = FenceEnd(prompt).check(text)
    assert len(state.text) <= (len(text) if closed is None else closed)
