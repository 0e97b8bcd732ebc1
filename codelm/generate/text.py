"""A completion's text as it grows: token bytes, characters split across tokens, stop rules.

Each token adds its raw bytes (`CodeTokenizer.token_bytes`, built once), so a
completion grows by one token in O(1), and an incremental UTF-8 decoder holds
the bytes of a character split across two tokens until its last byte arrives:
streamed text never shows a half character. `TextState` holds one completion
(one row of the engine, engine.py)
and applies the stop rules of `codelm.generate.stopping` (stop strings, block
end, repetition ...): `add` reports the rule that cut the text, and `take`
releases only text that no rule can still cut (each rule's `safe`), so
streamed text is never taken back.
"""

from __future__ import annotations

import bisect
import codecs
from collections.abc import Sequence
from dataclasses import dataclass, field

from codelm.generate.stopping import StopRule, first_stop, safe_length
from codelm.generate.whole import LineScan, Whole


@dataclass
class TextState:
    """One completion's text and tokens as they arrive (end tokens are never added)."""

    bytes_of: Sequence[bytes]  # raw bytes of each token id: CodeTokenizer.token_bytes
    rules: Sequence[StopRule] = ()
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # char offset where each token's text starts
    emitted: int = 0  # characters already handed out
    skip: int = 0  # leading bytes of the first token that the prompt already holds (healing)
    syntax: str = ""  # parses | trimmed | unparsed (whole.py), once settled
    shortened: bool = False  # a rule or a trim cut the text: tokens past it are not the result's
    _utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def __post_init__(self) -> None:
        self.whole = next((r for r in self.rules if isinstance(r, Whole)), None)
        self.lines: LineScan | None = self.whole.scan() if self.whole else None

    def add(self, token: int) -> str | None:
        """Append a token; return the name of the rule that fired (the text is cut), or None."""
        self.tokens.append(token)
        self.offsets.append(len(self.text))
        data = self.bytes_of[token]
        if self.skip:
            data, self.skip = data[self.skip :], 0
        self.text += self._utf8.decode(data)
        hit = first_stop(self.rules, self.text, self.tokens)
        if hit is None:
            return None
        self.text, self.shortened = self.text[: hit[1]], True
        self.settle()
        return hit[0]

    def finish(self) -> None:
        """The completion ended without a rule's cut: flush a character left incomplete,
        then settle."""
        self.text += self._utf8.decode(b"", final=True)
        self.settle()

    def settle(self) -> None:
        """Trim a completion that ended mid-construct back to whole code (whole.py)."""
        if self.whole is None or self.lines is None:
            return
        keep, self.syntax = self.whole.settle(self.text, self.lines, self.emitted)
        self.text, self.shortened = self.text[:keep], self.shortened or keep < len(self.text)

    def take(self, final: bool) -> tuple[str, int]:
        """New text safe to stream (all of it when `final`) and how many tokens it completes."""
        end = len(self.text)
        if not final:
            end = min(end, safe_length(self.rules, self.text, self.tokens))
            if self.lines is not None and self.whole is not None:  # hold back what a trim could cut
                end = min(end, self.lines.release(self.text, self.whole))
        end = max(end, self.emitted)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out, self.tokens_within(end)

    def kept(self) -> int:
        """How many tokens the result keeps: all (an end token too) unless the text was cut,
        else those whose text starts inside it."""
        return self.tokens_within(len(self.text)) if self.shortened else len(self.tokens)

    def tokens_within(self, end: int) -> int:
        """Tokens whose text starts before character `end`."""
        return bisect.bisect_left(self.offsets, end)
