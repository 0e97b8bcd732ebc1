"""Tokens by kind of text, for bench/tokenizer.py's `--breakdown`: where a code tokenizer's
saving over a plain BPE comes from, and where it is lost out of distribution.

Each held-out file is cut into spans with Python's `tokenize` (keywords, names seen or
not seen in the training files, dotted names, operators, numbers, strings, docstrings,
comments, newlines with their indentation); each token of the whole-file encodings is
counted against the spans its bytes cover (fractionally where it straddles two).
"""

from __future__ import annotations

import io
import keyword
import re
import tokenize
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from codelm.tokenizer import SPECIAL_TOKENS

if TYPE_CHECKING:
    from tokenizer import Pair  # bench/tokenizer.py, the script that imports this module

KINDS = (
    "keyword",
    "name, in train",
    "name, new",
    "dotted name, in train",
    "dotted name, new",
    "operator",
    "number",
    "string",
    "docstring",
    "comment",
    "newline + indent",
    "other whitespace",
    "other",
)
K = {name: i for i, name in enumerate(KINDS)}
NAME_KINDS = frozenset(K[k] for k in KINDS if "name" in k)
# The kinds whose spans --breakdown lists one by one (a run of operators is one span).
LISTED = {
    "names (lone or dotted)": NAME_KINDS,
    "operator runs": frozenset({K["operator"]}),
    "numbers": frozenset({K["number"]}),
    "strings (not docstrings)": frozenset({K["string"]}),
}
LISTED_KINDS = frozenset().union(*LISTED.values())
# What "occurs in the training files" means for a name or a dotted chain: as a regex match
# anywhere (code, strings, comments alike).
_CHAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_SKIP = frozenset({tokenize.DEDENT, tokenize.ENDMARKER, tokenize.ENCODING})
_NEWLINES = frozenset({tokenize.NEWLINE, tokenize.NL, tokenize.INDENT})
_FSTRING_START = getattr(tokenize, "FSTRING_START", -1)  # Python 3.12+ cuts f-strings into parts
_FSTRING_END = getattr(tokenize, "FSTRING_END", -1)


def train_names(train: list[str]) -> tuple[set[str], set[str]]:
    """(identifiers, dotted chains) that occur anywhere in the training files."""
    chains: set[str] = set()
    for text in train:
        chains.update(_CHAIN.findall(text))
    names = {part for chain in chains for part in chain.split(".")}
    return names, {c for c in chains if "." in c}


def _char_labels(
    text: str, names: set[str], chains: set[str]
) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """A kind per character of `text` and the (start, end, kind) character spans of its names,
    dotted chains, operator runs, numbers and strings (with the space before them, if any)."""
    labels = np.full(len(text), K["other whitespace"], dtype=np.uint8)
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        labels[:] = K["other"]
        return labels, []
    starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def at(pos: tuple[int, int]) -> int:
        return starts[pos[0] - 1] + pos[1] if pos[0] - 1 < len(starts) else len(text)

    toks = [t for t in toks if t.type not in _SKIP]
    spans: list[tuple[int, int, int]] = []  # (start, end, kind), in order, not overlapping
    sig = [i for i, t in enumerate(toks) if t.type not in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT)]
    prev_sig = {j: (sig[n - 1] if n else None) for n, j in enumerate(sig)}
    next_sig = {j: (sig[n + 1] if n + 1 < len(sig) else None) for n, j in enumerate(sig)}
    i, depth, fstart = 0, 0, 0
    while i < len(toks):
        t = toks[i]
        s, e = at(t.start), at(t.end)
        if t.type == _FSTRING_START or depth:
            if t.type == _FSTRING_START:
                fstart = s if depth == 0 else fstart
                depth += 1
            elif t.type == _FSTRING_END:
                depth -= 1
                if depth == 0:
                    spans.append((fstart, e, K["string"]))
            i += 1
            continue
        dot_led = t.type == tokenize.OP and t.string == "."
        if (t.type == tokenize.NAME and not keyword.iskeyword(t.string)) or dot_led:
            # a chain: NAME (. NAME)*, or . NAME (. NAME)*, with nothing between the parts
            j, end = i, e
            if dot_led:
                nxt = toks[i + 1] if i + 1 < len(toks) else None
                if nxt is None or nxt.type != tokenize.NAME or at(nxt.start) != e:
                    spans.append((s, e, K["operator"]))
                    i += 1
                    continue
                j, end = i + 1, at(nxt.end)
            while (
                j + 2 < len(toks)
                and toks[j + 1].string == "."
                and toks[j + 2].type == tokenize.NAME
                and at(toks[j + 1].start) == end
                and at(toks[j + 2].start) == end + 1
            ):
                j, end = j + 2, at(toks[j + 2].end)
            chain = text[s:end]
            if "." in chain:
                key = chain.lstrip(".")  # `.b` after a bracket: known if `b` is
                known = key in chains or key in names
                kind = K["dotted name, in train"] if known else K["dotted name, new"]
            else:
                kind = K["name, in train"] if chain in names else K["name, new"]
            spans.append((s, end, kind))
            i = j + 1
            continue
        if t.type == tokenize.NAME:
            kind = K["keyword"]
        elif t.type == tokenize.STRING:
            before, after = prev_sig.get(i), next_sig.get(i)
            lone = (before is None or toks[before].type == tokenize.NEWLINE) and (
                after is None or toks[after].type == tokenize.NEWLINE
            )
            kind = K["docstring"] if lone else K["string"]
        elif t.type == tokenize.COMMENT:
            kind = K["comment"]
        elif t.type == tokenize.NUMBER:
            kind = K["number"]
        elif t.type == tokenize.OP:
            kind = K["operator"]
        elif t.type in _NEWLINES:
            kind = K["newline + indent"]
        else:
            kind = K["other"]
        if spans and kind == K["operator"] == spans[-1][2] and spans[-1][1] == s:
            spans[-1] = (spans[-1][0], e, kind)  # `()`, `]]:`: one run
        elif e > s:
            spans.append((s, e, kind))
        i += 1
    listed: list[tuple[int, int, int]] = []
    prev_end = 0
    for s, e, kind in spans:
        if s > prev_end:  # a gap: indentation at a line's start, else spaces within a line
            if prev_end == 0 or text[prev_end - 1] == "\n":
                labels[prev_end:s] = K["newline + indent"]
            elif text[s - 1] == " ":
                s -= 1  # one space before a token is that token's, as both pre-tokenizers cut it
        labels[s:e] = kind
        if kind in LISTED_KINDS:
            listed.append((s, e, kind))
        prev_end = max(prev_end, e)
    return labels, listed


def byte_labels(text: str, names: set[str], chains: set[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A kind per UTF-8 byte of `text`, and the (start, end, kind) byte spans and texts of its
    spans of LISTED_KINDS."""
    labels, listed = _char_labels(text, names, chains)
    spans = np.array(listed, dtype=np.int64).reshape(-1, 3)
    texts = [text[s:e] for s, e, _ in listed]
    if text.isascii():
        return labels, spans, texts
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    width = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
    offset = np.concatenate([[0], np.cumsum(width)])
    spans[:, :2] = offset[spans[:, :2]]
    return np.repeat(labels, width), spans, texts


@dataclass
class EvalSet:
    """Texts and, with --breakdown, a kind per byte of them all (files concatenated)."""

    name: str
    texts: list[str]
    paths: list[str]
    labels: np.ndarray | None = None
    spans: np.ndarray | None = None  # of LISTED_KINDS, (n, 3): start, end (bytes), kind
    span_texts: list[str] | None = None

    @property
    def n_bytes(self) -> int:
        return sum(len(t.encode()) for t in self.texts)

    def label(self, names: set[str], chains: set[str], keep_spans: bool) -> None:
        labels, spans, texts, base = [], [], [], 0
        for text in self.texts:
            lab, sp, tx = byte_labels(text, names, chains)
            labels.append(lab)
            if keep_spans:
                sp[:, :2] += base
                spans.append(sp)
                texts += tx
            base += len(lab)
        self.labels = np.concatenate(labels)
        if keep_spans:
            self.spans = np.concatenate(spans)
            self.span_texts = texts
        bad = sum(1 for lab in labels if len(lab) and (lab == K["other"]).all())
        if bad:
            print(f"  {self.name}: {bad} of {len(self.texts)} files do not tokenize; they count as 'other'")


def byte_weights(ids: list[list[int]], table: list[bytes]) -> np.ndarray:
    """Per byte of the concatenated texts, 1/len of the token that holds it: summed over a
    span, the span's share of the tokens."""
    lengths = np.array([len(b) for b in table], dtype=np.int64)
    flat = np.fromiter((i for seq in ids for i in seq), dtype=np.int64)
    n = lengths[flat]
    return np.repeat(1.0 / n, n)


def shown(encode: Callable[[str], list[int]], text: str, table: list[bytes]) -> str:
    """How `text` splits after a digit, or after `=` if it starts with one (alone, a leading
    space would be cut off by ours as the indentation at the start of a text), the tokens
    joined by `·`."""
    before = "=" if text.lstrip()[:1].isdigit() else "1"
    ids = encode(before + text)
    assert table[ids[0]] == before.encode(), "the character before must be a token of its own"
    return "·".join(visible(table[i].decode("utf-8", "replace")) for i in ids[1:])


def visible(text: str) -> str:
    """`text` with spaces as `␣`, newlines as `\\n` and `|` escaped, for a markdown table."""
    return text.replace(" ", "␣").replace("\n", "\\n").replace("|", "\\|")


def vocab_shape(piece: bytes) -> str:
    s = piece.decode("utf-8", "replace")
    if s.isspace():
        return "whitespace"
    if re.fullmatch(r" ?[A-Za-z_][A-Za-z0-9_]*", s):
        return "name" if s[0] != " " else "space + name"
    if re.search(r"[A-Za-z0-9_]\.[A-Za-z_]|^ ?\.[A-Za-z_]", s):
        return "dotted (a.b, .b)"
    if re.match(r" ?[bBrRfFuU]{0,2}['\"][A-Za-z_]", s):
        return "quote + name"
    if re.match(r" ?# ?[A-Za-z_]", s):
        return "'#' + name"
    return "other"


def decompose(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> np.ndarray:
    """Per kind, the change in points of saving from set `a` to set `b` (each: bytes, ours and
    plain tokens per kind), split in two that sum to it: (mix, within). A kind's points are its
    share of plain's tokens times its saving; mix is the change of share at `a`'s saving,
    within the change of saving at `b`'s share."""
    (_, oa, pa), (_, ob, pb) = a, b
    with np.errstate(divide="ignore", invalid="ignore"):
        sa = np.where(pa > 0, 1 - oa / pa, 0.0)
        sb = np.where(pb > 0, 1 - ob / pb, 0.0)
    wa, wb = pa / pa.sum(), pb / pb.sum()
    return 100 * np.stack([(wb - wa) * sa, wb * (sb - sa)], axis=1)


def breakdown(
    pair: Pair, sets: list[EvalSet], encoded: dict[str, tuple], examples: int, files_shown: int = 5
) -> None:
    tok_by_kind: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for ev in sets:
        ours_ids, plain_ids = encoded[ev.name]
        wo = byte_weights(ours_ids, pair.ours_bytes)
        wp = byte_weights(plain_ids, pair.plain_bytes)
        assert len(wo) == len(wp) == len(ev.labels), "token bytes must cover the texts exactly"
        nbytes = np.bincount(ev.labels, minlength=len(KINDS))
        tok_by_kind[ev.name] = (
            nbytes,
            np.bincount(ev.labels, weights=wo, minlength=len(KINDS)),
            np.bincount(ev.labels, weights=wp, minlength=len(KINDS)),
        )
    print(f"\n#### vocab {pair.size}: tokens by kind of text (fractional tokens, see the docstring)\n")
    head = "| kind |"
    rule = "|---|"
    for ev in sets:
        head += f" {ev.name} bytes | {ev.name} ours | {ev.name} plain | {ev.name} saving | {ev.name} pts |"
        rule += "---:|---:|---:|---:|---:|"
    print(head)
    print(rule)
    totals = {name: (nb.sum(), o.sum(), p.sum()) for name, (nb, o, p) in tok_by_kind.items()}
    for k, kind in enumerate(KINDS):
        row = f"| {kind} |"
        for ev in sets:
            nb, o, p = tok_by_kind[ev.name]
            saving = f"{100 * (1 - o[k] / p[k]):.1f}%" if p[k] else "-"
            pts = 100 * (p[k] - o[k]) / totals[ev.name][2]
            share = 100 * nb[k] / totals[ev.name][0]
            row += f" {share:.1f}% | {o[k]:,.0f} | {p[k]:,.0f} | {saving} | {pts:+.2f} |"
        print(row)
    row = "| **all** |"
    for ev in sets:
        nb, o, p = totals[ev.name]
        row += f" 100% | {o:,.0f} | {p:,.0f} | {100 * (1 - o / p):.1f}% | {100 * (p - o) / p:+.2f} |"
    print(row)
    first, last = sets[0].name, sets[-1].name
    drop = decompose(tok_by_kind[first], tok_by_kind[last])
    mix, rate = drop.sum(axis=0)
    print(
        f"\n{first} -> {last}: the saving moves by {mix + rate:+.2f} points: {mix:+.2f} from the mix of"
        f" text (each kind's share of plain's tokens, at its {first} saving), {rate:+.2f} from the"
        f" savings within kinds (at the {last} mix). By kind, mix / within:"
    )
    print("  " + "; ".join(f"{kind} {m:+.2f} / {r:+.2f}" for kind, (m, r) in zip(KINDS, drop, strict=True)))

    # Per package of the last set, and the files of each set where ours does worst against plain.
    last = sets[-1]
    per_top: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    ours_ids, plain_ids = encoded[last.name]
    for path, text, o, p in zip(last.paths, last.texts, ours_ids, plain_ids, strict=True):
        entry = per_top[path.split("/")[0]]
        entry[0] += 1
        entry[1] += len(text.encode())
        entry[2] += len(o)
        entry[3] += len(p)
    print(f"\n#### vocab {pair.size}: {last.name}, one by one\n")
    print("| package | files | MB | ours tokens/byte | plain tokens/byte | fewer tokens ours needs |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (n, nb, o, p) in sorted(per_top.items()):
        print(f"| {name} | {n} | {nb / 1e6:.2f} | {o / nb:.4f} | {p / nb:.4f} | {100 * (1 - o / p):.1f}% |")
    for ev in sets:
        ours_ids, plain_ids = encoded[ev.name]
        files = sorted(
            zip(ev.paths, ev.texts, ours_ids, plain_ids, strict=True), key=lambda f: len(f[3]) - len(f[2])
        )
        print(f"\n{ev.name}: the {files_shown} files where ours needs the most tokens over plain")
        for path, text, o, p in files[:files_shown]:
            print(
                f"  {path}: {len(text.encode()) / 1e3:.0f} KB, ours {len(o):,}, plain {len(p):,}"
                f" ({100 * (1 - len(o) / len(p)):+.1f}% fewer)"
            )

    # The vocabularies' shapes, and how many of each shape the eval sets use.
    used = {}
    for ev in sets:
        ours_ids, plain_ids = encoded[ev.name]
        used[ev.name] = ({i for s in ours_ids for i in s}, {i for s in plain_ids for i in s})
    print(f"\n#### vocab {pair.size}: token shapes (count in the vocabulary; of them, used on each set)\n")
    cols = " | ".join(f"{who} used on {ev.name}" for who in ("ours", "plain") for ev in sets)
    print(f"| shape | ours | plain | {cols} |")
    print("|---|" + "---:|" * (2 + 2 * len(sets)))
    shapes: dict[str, list[tuple[list[int], list[int]]]] = defaultdict(lambda: ([], []))
    for side, table in enumerate((pair.ours_bytes, pair.plain_bytes)):
        for i, b in enumerate(table[len(SPECIAL_TOKENS) :], start=len(SPECIAL_TOKENS)):
            shapes[vocab_shape(b)][side].append(i)
    for shape in (
        "name",
        "space + name",
        "dotted (a.b, .b)",
        "quote + name",
        "'#' + name",
        "whitespace",
        "other",
    ):
        mine, theirs = shapes[shape]
        cells = [
            str(sum(i in used[ev.name][side] for i in ids))
            for side, ids in ((0, mine), (1, theirs))
            for ev in sets
        ]
        print(f"| {shape} | {len(mine)} | {len(theirs)} | " + " | ".join(cells) + " |")

    # The spans of the last set that cost ours the most tokens over plain, by group of kinds.
    if not examples:
        return
    ev = sets[-1]
    ours_ids, plain_ids = encoded[ev.name]
    cum = {}
    for side, (ids, table) in enumerate(((ours_ids, pair.ours_bytes), (plain_ids, pair.plain_bytes))):
        cum[side] = np.concatenate([[0.0], np.cumsum(byte_weights(ids, table))])
    a, b = ev.spans[:, 0], ev.spans[:, 1]
    per_o, per_p = cum[0][b] - cum[0][a], cum[1][b] - cum[1][a]
    agg: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for text, kind, o, p in zip(ev.span_texts, ev.spans[:, 2], per_o, per_p, strict=True):
        entry = agg[text, int(kind)]
        entry[0] += 1
        entry[1] += o
        entry[2] += p
    for group, kinds in LISTED.items():
        mine = {key: v for key, v in agg.items() if key[1] in kinds}
        ways = [("cost ours the most tokens over plain", 1)]
        if kinds == NAME_KINDS:
            ways.append(("save ours the most tokens", -1))
        for title, sign in ways:
            ranked = sorted(mine.items(), key=lambda kv: sign * (kv[1][2] - kv[1][1]))[:examples]
            print(
                f"\n#### vocab {pair.size}: {group} on {ev.name} that {title}"
                " (split: the span encoded alone, after a digit or `=`)\n"
            )
            print("| span | kind | count | ours/each | plain/each | ours - plain, all | ours | plain |")
            print("|---|---|---:|---:|---:|---:|---|---|")
            for (text, kind), (n, o, p) in ranked:
                if len(text) > 60:
                    span, split_o, split_p = visible(text[:57]) + "...", "(long)", "(long)"
                else:
                    span = visible(text)
                    split_o = shown(pair.ours.encode, text, pair.ours_bytes)
                    split_p = shown(
                        lambda t: pair.plain.encode(t, add_special_tokens=False).ids, text, pair.plain_bytes
                    )
                print(
                    f"| `{span}` | {KINDS[kind]} | {n} | {o / n:.2f} | {p / n:.2f} | {o - p:+.0f}"
                    f" | `{split_o}` | `{split_p}` |"
                )
        # How concentrated the loss is: all spans of the group against the 100 costliest.
        excess = Counter({key: v[1] - v[2] for key, v in mine.items()})
        top = sum(v for _, v in excess.most_common(100))
        print(
            f"\n{group} on {ev.name}: {len(mine):,} distinct;"
            f" ours - plain over all of them {sum(excess.values()):+,.0f} tokens;"
            f" over the 100 costliest {top:+,.0f}"
        )
