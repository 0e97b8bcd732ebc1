"""The editor's prompt budget, settings, suggestion cache and telemetry, without a server."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codelm.errors import CodelmError
from codelm.lsp.cache import SuggestionCache, cursor_of
from codelm.lsp.postprocess import InlineEdit
from codelm.lsp.prompt import CUT_LINES, SEAM_TOKENS, LspConfig, fit
from codelm.lsp.telemetry import Telemetry, percentiles


def count(text: str) -> int:
    """A stand-in tokenizer: one token per 4 characters, at least one per line."""
    return sum(max(1, -(-len(line) // 4)) for line in text.split("\n")) if text else 0


def doc(lines: int, width: int = 20) -> str:
    return "".join(f"line {i:04d} " + "x" * width + "\n" for i in range(lines))


@given(st.integers(0, 300), st.integers(0, 300), st.integers(40, 600), st.booleans())
@settings(max_examples=60, deadline=None)
def test_the_prompt_fits_its_budget_and_keeps_the_text_nearest_the_cursor(above, below, budget, ctx):
    prefix, suffix = doc(above) + "    x = ", " + 1\n" + doc(below)
    context = (lambda tokens: "# a.py\n" + "y = 1\n" * max(0, tokens // 2 - 2)) if ctx else None
    f = fit(prefix, suffix, budget, count, context, LspConfig())
    assert count(f.context) + count(f.prefix) + count(f.suffix) <= budget - SEAM_TOKENS
    assert prefix.endswith(f.prefix) and suffix.startswith(f.suffix)
    assert f.prefix.endswith("    x = ")  # the cursor's line is always there
    if len(f.suffix) < len(suffix):  # the suffix keeps whole lines
        assert f.suffix.endswith("\n") or not f.suffix
    cut_line = prefix[: len(prefix) - len(f.prefix)].count("\n")
    assert cut_line % CUT_LINES == 0 or above - cut_line < CUT_LINES


def test_typing_on_a_line_changes_only_the_end_of_the_prompt():
    """The prefix's cut stays put while the user types: the engine's prompt cache reuses it."""
    base = doc(400)
    cuts = set()
    for typed in ["", "r", "re", "ret", "retu", "retur", "return", "return x"]:
        f = fit(base + "    " + typed, "\n", 300, count, None, LspConfig())
        cuts.add(len(base) + 4 + len(typed) - len(f.prefix))
    assert len(cuts) == 1


def test_a_minified_line_over_budget_keeps_its_end():
    line = "x" * 5000
    f = fit(line, "", 100, count, None, LspConfig())
    assert line.endswith(f.prefix) and 0 < count(f.prefix) <= 100 - SEAM_TOKENS


def test_settings_camel_or_snake_case_and_bad_ones_are_one_line_errors():
    cfg = LspConfig().updated(
        {"codelm": {"maxTokens": 32, "debounce_ms": 0, "temperature": 1, "context": False}}
    )
    assert (cfg.max_tokens, cfg.debounce_ms, cfg.temperature, cfg.context) == (32, 0, 1.0, False)
    assert LspConfig().updated(None) == LspConfig() and LspConfig().updated({}) == LspConfig()
    for bad, words in [
        ({"maxTokens": "many"}, "must be a int"),
        ({"context": 1}, "must be a bool"),
        ({"maxTokens": True}, "must be a int"),
        ({"colour": "red"}, "unknown setting"),
        ({"maxTokens": 0}, "max_tokens must be >= 1"),
        ({"contextShare": 0.5, "suffixShare": 0.5}, "leave the prefix"),
    ]:
        with pytest.raises(CodelmError, match=words):
            LspConfig().updated(bad)


def test_the_cache_answers_the_same_cursor_and_typing_along():
    cache = SuggestionCache(capacity=2)
    prefix, suffix = "def f(x):\n    ", "\n"
    edit = InlineEdit("return x * 2", cursor_of(prefix), cursor_of(prefix))
    cache.put("a", prefix, suffix, [edit])
    assert cache.get("a", prefix, suffix) == [edit]
    assert cache.get("b", prefix, suffix) is None  # another document
    [along] = cache.get("a", prefix + "ret", suffix)
    assert along == InlineEdit("urn x * 2", (1, 7), (1, 7))
    assert cache.get("a", prefix + "rex", suffix) is None  # typed off the suggestion
    assert cache.get("a", prefix + "return x * 2", suffix) is None  # typed it all
    assert cache.get("a", prefix + "ret", suffix + "y") is None  # the text after the cursor changed
    cache.forget("a")
    assert cache.get("a", prefix, suffix) is None


def test_typing_along_moves_a_range_that_replaces_closers():
    cache = SuggestionCache()
    prefix, suffix = "print(max(", "))\n"
    cache.put("a", prefix, suffix, [InlineEdit("x, 2))", (0, 10), (0, 12))])
    [along] = cache.get("a", prefix + "x, ", suffix)
    assert along == InlineEdit("2))", (0, 13), (0, 15))
    cache.put("b", "if x:", "\n    pass\n", [InlineEdit("\n    y = 1", (0, 5), (1, 0))])
    [along] = cache.get("b", "if x:\n", "\n    pass\n")  # Enter typed: the range's other line moves down
    assert along == InlineEdit("    y = 1", (1, 0), (2, 0))


def test_the_cache_is_bounded():
    cache = SuggestionCache(capacity=3)
    for i in range(10):
        cache.put(f"doc{i}", "x = ", "\n", [InlineEdit(str(i), (0, 4), (0, 4))])
    assert len(cache._exact) == 3 and len(cache._last) == 3
    assert cache.get("doc9", "x = ", "\n") is not None and cache.get("doc0", "x = ", "\n") is None


def test_telemetry_counts_each_acceptance_once_and_gives_percentiles():
    tele = Telemetry()
    ids = [tele.issue() for _ in range(4)]
    for _ in range(2):
        tele.add("shown", 1)
    assert tele.accept(ids[0]) and not tele.accept(ids[0])
    assert not tele.accept("made-up") and not tele.accept(7)
    for ms in range(1, 101):
        tele.time("latency_ms", float(ms))
    snap = tele.snapshot(index={"files": 1})
    assert snap["accepted"] == 1 and snap["accept_rate"] == 0.5 and snap["index"] == {"files": 1}
    assert snap["latency_ms"] == {"p50": 50.0, "p95": 95.0, "n": 100}
    assert percentiles([]) == {"p50": 0.0, "p95": 0.0, "n": 0}


def test_the_server_applies_good_settings_and_reports_the_bad_ones():
    from codelm.lsp.completer import Completer
    from codelm.lsp.server import _configure

    class Client:
        logged: list[str] = []

        def window_log_message(self, params):
            self.logged.append(params.message)

    ls, completer = Client(), Completer(backend=None)  # type: ignore[arg-type]
    _configure(
        ls, completer, {"codelm": {"maxLines": 3, "colour": "red", "temperature": "hot", "context": False}}
    )
    assert (completer.cfg.max_lines, completer.cfg.context, completer.cfg.temperature) == (3, False, 0.0)
    [message] = ls.logged
    assert "unknown setting 'colour'" in message and "'temperature' must be a float" in message
