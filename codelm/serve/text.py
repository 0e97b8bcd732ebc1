"""Completion text as it streams: token bytes, characters split across tokens, stop rules.

`TokenBytes` maps each id of codelm's byte-level BPE to its raw bytes once, so
a completion grows by one token in O(1), and an incremental UTF-8 decoder holds
the bytes of a character split across two tokens until its last byte arrives:
streamed text never shows a half character. `TextState` holds one completion
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
from codelm.tokenizer import CodeTokenizer


def _unicode_to_byte() -> dict[str, int]:
    """The inverse of the byte-level alphabet (GPT-2's bytes_to_unicode) that `tokenizers` uses."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TokenBytes:
    """Raw bytes of every token id of a tokenizer."""

    def __init__(self, tok: CodeTokenizer):
        back = _unicode_to_byte()
        special = set(tok.special.values())
        self.table: list[bytes] = []
        for i in range(tok.vocab_size):
            piece = tok.id_to_token(i) or ""
            if i not in special and all(c in back for c in piece):
                self.table.append(bytes(back[c] for c in piece))
            else:  # special tokens, or a tokenizer that is not byte-level
                self.table.append(tok.decode([i]).encode("utf-8"))

    def __getitem__(self, token: int) -> bytes:
        return self.table[token]


@dataclass
class TextState:
    """One completion's text and tokens as they arrive (end tokens are never added)."""

    bytes_of: TokenBytes
    rules: Sequence[StopRule] = ()
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # char offset where each token's text starts
    emitted: int = 0  # characters already handed out
    _utf8: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def add(self, token: int) -> str | None:
        """Append a token; return the name of the rule that fired (the text is cut), or None."""
        self.tokens.append(token)
        self.offsets.append(len(self.text))
        self.text += self._utf8.decode(self.bytes_of[token])
        hit = first_stop(self.rules, self.text, self.tokens)
        if hit is None:
            return None
        self.text = self.text[: hit[1]]
        return hit[0]

    def finish(self) -> None:
        """The completion ended without a cut: flush a character left incomplete."""
        self.text += self._utf8.decode(b"", final=True)

    def take(self, final: bool) -> tuple[str, int]:
        """New text safe to stream (all of it when `final`) and how many tokens it completes."""
        end = len(self.text)
        if not final:
            end = min(end, safe_length(self.rules, self.text, self.tokens))
        end = max(end, self.emitted)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out, self.tokens_within(end)

    def tokens_within(self, end: int) -> int:
        """Tokens whose text starts before character `end`."""
        return bisect.bisect_left(self.offsets, end)
