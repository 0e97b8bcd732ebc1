"""The editor's settings and its fill-in-the-middle prompt: prefix, suffix and repository
context fitted into the model's context.

The budget (tokens the prompt may take: the context length less the completion's
tokens) is shared out so:
- the suffix gets at most `suffix_share` of it, its lines nearest the cursor first;
- repository context (lsp/context.py) at most `context_share`, its best snippets first;
- the prefix takes the rest, its lines nearest the cursor first; what the other two left
  unused goes to it.
The prefix is cut at a line that is a multiple of `CUT_LINES` from the document's start,
and retrieval asks with complete lines only (the cursor's line is left out). So while
the user types on one line, the prompt changes only at its end, and in SPM order
(`<fim_suffix> suffix <fim_prefix> context prefix <fim_middle>`) the engine's prefix
cache reuses everything before the cursor (bench/latency.py measured the gain).
Counting is the caller's (`count`): the model's own tokenizer, or an estimate for a
remote server. This module does not run the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from codelm.errors import CodelmError

CUT_LINES = 8  # the prefix's first line is a multiple of this: the prompt's start stays put
SEAM_TOKENS = 8  # slack for tokens that merge where the parts meet


@dataclass(frozen=True)
class LspConfig:
    temperature: float = 0.0  # greedy: ghost text that does not change between keystrokes
    max_tokens: int = 96  # new tokens per completion; a multi-line one ends at block end first
    max_lines: int = 8  # lines of a multi-line completion
    debounce_ms: int = 30  # automatic triggers wait this long for the next keystroke; invoked ones never
    context: bool = True  # repository context: BM25 snippets of the workspace and open files
    context_snippets: int = 5  # snippets retrieved; those that fit the budget go in
    # Stubs of workspace functions and classes the code above names, before the snippets (as
    # Tabby's declarations). Off: with codelm's `small` (20 minutes; bench/lsp.py, paired by
    # keystroke) they lowered first-line similarity by 0.9 points against snippets alone. For
    # a model that reads them, such as a larger code model behind --server (not measured).
    context_declarations: int = 0
    context_share: float = 0.25  # most of the prompt's tokens that context may take
    suffix_share: float = 0.2  # most of the prompt's tokens that the suffix may take
    invoked_n: int = 3  # candidates for an invoked request (the first greedy, the others sampled)
    invoked_temperature: float = 0.6  # the sampled candidates' temperature

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_lines", "invoked_n"):
            if getattr(self, name) < 1:
                raise CodelmError(f"{name} must be >= 1, got {getattr(self, name)}")
        counts = ("debounce_ms", "context_snippets", "context_declarations")
        for name in (*counts, "temperature", "invoked_temperature"):
            if getattr(self, name) < 0:
                raise CodelmError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (0 <= self.context_share < 1 and 0 <= self.suffix_share < 1):
            raise CodelmError("context_share and suffix_share must be in [0, 1)")
        if self.context_share + self.suffix_share > 0.8:
            raise CodelmError("context_share + suffix_share must leave the prefix at least 0.2")

    def updated(self, settings: Any) -> LspConfig:
        """This config with a client's settings applied: {"codelm": {...}} or the inner object,
        keys in camelCase (`maxTokens`) or snake_case. Unknown keys and wrong types raise."""
        if isinstance(settings, dict) and isinstance(settings.get("codelm"), dict):
            settings = settings["codelm"]
        if not settings:
            return self
        if not isinstance(settings, dict):
            raise CodelmError("codelm settings must be an object")
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in settings.items():
            name = _snake(key)
            if name not in fields:
                raise CodelmError(f"unknown setting {key!r}")
            kind = type(getattr(self, name))
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if not ok or (kind is not bool and isinstance(value, bool)):
                raise CodelmError(f"setting {key!r} must be a {kind.__name__}, got {value!r}")
            changes[name] = kind(value)
        return dataclasses.replace(self, **changes)


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


@dataclass(frozen=True)
class Fitted:
    context: str  # the repository-context block ("" for none)
    prefix: str  # the document's prefix as kept
    suffix: str  # the document's suffix as kept

    @property
    def text(self) -> str:
        """What goes in the prompt's prefix part: context, then the document's prefix."""
        return self.context + self.prefix


def fit(
    prefix: str,
    suffix: str,
    budget: int,
    count: Callable[[str], int],
    context: Callable[[int], str] | None,
    cfg: LspConfig,
) -> Fitted:
    """The prompt's parts within `budget` tokens; `context(tokens)` lays out repository
    context in at most that many tokens (None: no context)."""
    budget -= SEAM_TOKENS
    if budget < 16:
        raise CodelmError(f"the model's context leaves {budget} tokens for a prompt")
    kept_suffix = _head_lines(suffix, int(budget * cfg.suffix_share), count)
    used = count(kept_suffix)
    ctx = context(int(budget * cfg.context_share)) if context is not None and cfg.context else ""
    used += count(ctx) if ctx else 0
    kept_prefix = _tail_lines(prefix, budget - used, count)
    if len(kept_prefix) == len(prefix) and len(kept_suffix) < len(suffix):  # the suffix takes what is left
        left = budget - count(kept_prefix) - (count(ctx) if ctx else 0)
        kept_suffix = _head_lines(suffix, left, count)
    return Fitted(ctx, kept_prefix, kept_suffix)


def _head_lines(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest run of whole lines from `text`'s start within `budget` tokens."""
    if budget <= 0 or not text:
        return ""
    text = text[: budget * 8]  # no token spans more than a few characters: count less
    if count(text) <= budget:
        return text
    ends = [i + 1 for i, c in enumerate(text) if c == "\n"]
    lo, hi = 0, len(ends)  # the answer keeps ends[lo - 1] characters; lo = 0: nothing
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[: ends[mid - 1]]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[: ends[lo - 1]] if lo else ""


def _tail_lines(text: str, budget: int, count: Callable[[str], int]) -> str:
    """`text` from its earliest line that is a multiple of CUT_LINES (among the last
    CUT_LINES lines: any line) whose tail fits in `budget` tokens; when not even the
    cursor's line fits, the last characters that do."""
    if count(text) <= budget:
        return text
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    last_cut = (len(starts) - 1) // CUT_LINES * CUT_LINES
    # Every CUT_LINES-th line, then each line of the last few: ever shorter tails.
    cuts = [starts[i] for i in range(0, last_cut + 1, CUT_LINES)] + starts[last_cut + 1 :]
    lo, hi = 0, len(cuts)  # the first cut whose tail fits; len(cuts): none does
    while lo < hi:
        mid = (lo + hi) // 2
        if count(text[cuts[mid] :]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo < len(cuts):
        return text[cuts[lo] :]
    last = text[starts[-1] :]  # the cursor's line alone is over budget: a minified file
    while last and count(last) > budget:
        last = last[len(last) // 4 or 1 :]
    return last
