"""Answers without the model: the same cursor again, or the user typing along a suggestion.

- Exact: an LRU of `capacity` entries keyed by (document URI, prefix, suffix), the text
  around the cursor (hashed). The document's version is left out of the key on purpose:
  it grows with every edit, also when an edit is undone and the text comes back.
- Typing along (Tabby's agent and Continue do this): the user typed `typed` since a
  suggestion was shown at this document's cursor, the text after the cursor is the same,
  and the suggestion began with `typed`: its rest is the answer, its range moved with
  the cursor.
Edits are `postprocess.InlineEdit`s: positions (line, character) in code points.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from codelm.lsp.postprocess import InlineEdit


@dataclass(frozen=True)
class _Shown:
    prefix: str
    suffix: str
    edits: tuple[InlineEdit, ...]


def cursor_of(prefix: str) -> tuple[int, int]:
    """The (line, character) position at the end of `prefix`."""
    return prefix.count("\n"), len(prefix) - (prefix.rfind("\n") + 1)


class SuggestionCache:
    def __init__(self, capacity: int = 100):
        self.capacity = capacity
        self._exact: OrderedDict[tuple[str, int, int], tuple[InlineEdit, ...]] = OrderedDict()
        self._last: dict[str, _Shown] = {}  # per document: the latest suggestion shown

    def put(self, uri: str, prefix: str, suffix: str, edits: list[InlineEdit]) -> None:
        key = (uri, hash(prefix), hash(suffix))
        self._exact[key] = tuple(edits)
        self._exact.move_to_end(key)
        while len(self._exact) > self.capacity:
            self._exact.popitem(last=False)
        if edits:
            self._last[uri] = _Shown(prefix, suffix, tuple(edits))
            while len(self._last) > self.capacity:
                self._last.pop(next(iter(self._last)))

    def get(self, uri: str, prefix: str, suffix: str) -> list[InlineEdit] | None:
        """The edits to show, or None when the model must be asked."""
        key = (uri, hash(prefix), hash(suffix))
        if key in self._exact:
            self._exact.move_to_end(key)
            return list(self._exact[key])
        shown = self._last.get(uri)
        if shown is None or suffix != shown.suffix or not prefix.startswith(shown.prefix):
            return None
        typed = prefix[len(shown.prefix) :]
        old, new = cursor_of(shown.prefix), cursor_of(prefix)
        out = [_moved(e, typed, old, new) for e in shown.edits if e.start == old]
        out = [e for e in out if e is not None]
        return out or None

    def forget(self, uri: str | None = None) -> None:
        """Drop one document's entries (closed), or all (the settings changed)."""
        if uri is None:
            self._exact.clear()
            self._last.clear()
            return
        self._last.pop(uri, None)
        for key in [k for k in self._exact if k[0] == uri]:
            del self._exact[key]


def _moved(e: InlineEdit, typed: str, old: tuple[int, int], new: tuple[int, int]) -> InlineEdit | None:
    """`e`'s rest after `typed`, from the new cursor; its end (on the old cursor's line, past
    text the suffix holds) moves as that text did. None when typing left its path or ended it."""
    if not typed or len(e.text) <= len(typed) or not e.text.startswith(typed):
        return None
    if e.end[0] == old[0]:
        end = (new[0], new[1] + e.end[1] - old[1])
    else:
        end = (e.end[0] + new[0] - old[0], e.end[1])
    return InlineEdit(e.text[len(typed) :], new, end)
