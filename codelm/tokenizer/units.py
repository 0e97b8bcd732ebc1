"""Whole-token units: make every operator and common indent a single token, at the same vocab size.

The pre-tokenizer isolates `**=`, but BPE only merges what is frequent: trained on
the standard library at 8k tokens, 31 of the 74 units found there (`**=`, ` //=`,
`>=`, `+=`, a 24-space indent...) were not single tokens, 24 at 16k; on a small
corpus even `==` may stay two bytes. After training, for each unit that
occurs in the corpus, this module appends the merges that join its BPE pieces
(lowest priority, so they change nothing else that was already merged) and
drops as many of the least frequent trained merges as it added, so the
vocabulary keeps its size. The merges come out of HF's own BPE model: this only
edits the merge list of `tokenizer.json`.

Units: each operator in `pretokenize.OPERATORS`, bare and after one space (the
forms the pre-tokenizer produces), and indents of 4..32 spaces and 1..4 tabs,
bare and after a newline. What it does not do: force units absent from the
corpus (they would only waste slots; 4-, 8- and 12-space indents are the
exception), or more units than the vocabulary has room for (then the first
ones in the list win).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import models

from codelm.tokenizer.pretokenize import OPERATORS, split, to_byte_level

_INDENTS = [" " * n for n in range(4, 33, 4)] + ["\t" * n for n in range(1, 5)]
# In priority order, for when the vocabulary cannot hold them all.
UNITS: tuple[str, ...] = (
    *("\n" + i for i in _INDENTS),
    *OPERATORS,
    *(" " + op for op in OPERATORS),
    *_INDENTS,
)


# Made single tokens whether or not the corpus shows them (the examples of an indent).
ALWAYS = frozenset(pad for n in (4, 8, 12) for pad in (" " * n, "\n" + " " * n))


class UnitScanner:
    """Which units occur as pieces in a stream of texts (one extra regex pass per text:
    about 1 s on the standard library, next to about 15 s of training)."""

    def __init__(self, units: Iterable[str] = UNITS):
        self.units = tuple(units)
        self.pending = set(self.units)
        self.found: set[str] = set()

    def scan(self, text: str) -> None:
        if self.pending:
            hits = self.pending.intersection(split(text))
            self.found |= hits
            self.pending -= hits

    def present(self) -> list[str]:
        """Found units, in priority order."""
        return [u for u in self.units if u in self.found or u in ALWAYS]


def _parse_merges(raw: list) -> list[tuple[str, str]]:
    # tokenizers >= 0.20 writes [a, b] pairs; older versions wrote "a b" strings.
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in raw]


def _vocab(base: list[str], merges: list[tuple[str, str]]) -> dict[str, int]:
    """Base tokens first (specials and bytes, in their ids), then each merge's result in merge order."""
    vocab = {t: i for i, t in enumerate(base)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab


def _join_units(
    base: list[str], merges: list[tuple[str, str]], units: list[str], size: int | None = None
) -> list[tuple[str, str]]:
    """Merges to append so each unit is one token (while the vocab stays within `size`, if given).

    Each round appends, for every unit still in pieces, the merge of its first two
    pieces. An appended merge has the lowest priority, so it applies only after all
    others are done; every round shortens every unfinished unit by at least one
    piece, so the loop ends within a unit's length in rounds."""
    added: list[tuple[str, str]] = []
    todo = list(units)
    while todo:
        vocab = _vocab(base, merges + added)
        bpe = models.BPE(vocab=vocab, merges=merges + added)
        new: list[tuple[str, str]] = []
        left = []
        for unit in todo:
            pieces = [t.value for t in bpe.tokenize(unit)]
            if len(pieces) > 1:
                left.append(unit)
                pair = (pieces[0], pieces[1])
                if pair not in new and (size is None or len(vocab) + len(new) < size):
                    new.append(pair)
        if not new:
            break  # done, or no room left: the remaining units stay in pieces
        added += new
        todo = left
    return added


def force_units(spec: dict, units: list[str], vocab_size: int) -> dict:
    """`spec` (a parsed tokenizer.json of a trained byte-level BPE) with `units` made single tokens."""
    if not units:
        return spec
    model = spec["model"]
    merges = _parse_merges(model["merges"])
    produced = {a + b for a, b in merges}
    base = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if t not in produced]
    units_bl = [to_byte_level(u) for u in units]
    keep = len(merges)
    while True:
        kept = merges[:keep]
        added = _join_units(base, kept, units_bl)
        over = len(_vocab(base, kept + added)) - vocab_size
        if over <= 0:
            break
        if keep == 0:  # not even all units fit: the first ones in priority order do
            added = _join_units(base, kept, units_bl, vocab_size)
            break
        keep = max(0, keep - over)  # drop the least frequent trained merges to make room
    vocab = _vocab(base, kept + added)
    old = model["vocab"]
    assert all(vocab[t] == old[t] for t in base), "base tokens must keep their ids"
    model["vocab"] = vocab
    model["merges"] = [[a, b] for a, b in kept + added]
    return spec
