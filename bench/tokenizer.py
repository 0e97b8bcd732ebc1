"""Measure codelm's code tokenizer against a plain byte-level BPE, in and out of distribution.

Both tokenizers are trained with HF `tokenizers` on the same files (the train
split of the standard library, by `codelm.data.split.split_of` on each file's
path), with the same vocabulary size, the same seven special tokens and the same
256-byte alphabet. "Plain" is HF's stock byte-level BPE: the `ByteLevel`
pre-tokenizer with GPT-2's regex. Both are trained at each size of
`--vocab-sizes` and evaluated on two sets that neither saw:

- `stdlib`: the val+test files of the standard library (in distribution);
- `packages`: the Python files of `codelm.data.sources.HELD_OUT_PACKAGES` (rich,
  click, jinja2, anyio, starlette, h11) in this environment's site-packages, as
  bench/quality.py's `held_out` reads them (interleaved by a path hash, capped at
  `--held-out-bytes`): third-party code no corpus here holds (out of distribution).

Printed, in one run:

- a markdown table, vocab size x eval set: tokens per byte for each tokenizer and
  how many fewer tokens ours needs; both round-trip every evaluated file;
- with `--breakdown`, where the tokens go, by kind of text, for each size: every
  file is cut into spans with Python's `tokenize` (keyword; a lone name, split by
  whether the name occurs anywhere in the training files; a dotted name or
  attribute chain `a.b.c` / `.b` as one span, split the same way by the whole
  chain; operator; number; string; docstring; comment; newline plus indentation;
  other whitespace; other), one space before a token belonging to it, as both
  pre-tokenizers glue it there. Each whole-file encoding's tokens are attributed
  to the spans by byte offsets (the tokens' bytes concatenate to the file); a
  token that straddles spans counts fractionally, by its bytes in each, so the
  kinds' tokens sum to the file's. A file `tokenize` rejects counts as "other".
  Per kind and eval set: share of bytes, tokens of each, the saving on the kind,
  and its contribution (points of the total saving: (plain - ours) / plain total).
  Then the shapes of each vocabulary (dotted, quote+name, ...) and how many of each
  the eval sets use, and the names of the packages that cost ours the most tokens
  over plain, with how each splits them (encoded alone: a span's own encoding);
- encode throughput, at the last vocab size only, unless `--reps 0`:
  `encode_batch` on whole stdlib held-out files, MB/s over wall time and over
  CPU time, all threads counted (median, min, max of `--reps` runs). Ours is
  measured cold (a fresh tokenizer: its piece cache empty), warm (the same files
  again), and cold over the whole standard library in one pass (train and
  held-out files, as a corpus job encodes them; the cache fills on the way), with
  the C++ piece encoder, and cold with the Python one (what a machine without a
  C++ compiler gets); plain is HF's `encode_batch` with TOKENIZERS_PARALLELISM on,
  on all cores it is given.

    .venv/bin/python bench/tokenizer.py [--vocab-sizes 4096 8192 16384] [--reps 3] [--train-every 1]
        [--held-out-bytes 2000000] [--breakdown] [--examples 15]

`--vocab-size N` is the same option as `--vocab-sizes N` (default: 16384).
The machine is shared, so wall-clock MB/s swings with other jobs; the ratios in
one run and the CPU-time figures are the steadier numbers.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # before tokenizers is imported

import argparse  # noqa: E402
import io  # noqa: E402
import keyword  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tokenize  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from codelm.data.sources import SKIP_DIRS, stdlib_root  # noqa: E402
from codelm.data.split import split_of  # noqa: E402
from codelm.tokenizer import SPECIAL_TOKENS, CodeTokenizer, pieces, train_tokenizer  # noqa: E402
from codelm.tokenizer.pretokenize import CHAR_TO_BYTE  # noqa: E402


def stdlib_split() -> tuple[list[str], list[str]]:
    """(train, held-out) texts of the standard library's .py files that decode as UTF-8."""
    root = stdlib_root()
    train, held = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            (train if split_of(rel) == "train" else held).append(text)
    return train, held


def train_plain(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def plain_token_bytes(plain: Tokenizer) -> list[bytes]:
    """The raw bytes of every id of the plain BPE (a special token: its name)."""
    table = [b""] * plain.get_vocab_size()
    for piece, i in plain.get_vocab().items():
        if piece in SPECIAL_TOKENS:
            table[i] = piece.encode()
        else:
            table[i] = bytes(CHAR_TO_BYTE[c] for c in piece)
    return table


@dataclass
class Pair:
    """Both tokenizers at one vocab size, and the bytes of each of their ids."""

    size: int
    ours: CodeTokenizer
    plain: Tokenizer

    def __post_init__(self) -> None:
        self.ours_bytes = self.ours.token_bytes
        self.plain_bytes = plain_token_bytes(self.plain)

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """(ours, plain) ids of each text; both must round-trip every text."""
        ours_ids = self.ours.encode_batch(texts)
        plain_ids = [e.ids for e in self.plain.encode_batch(texts, add_special_tokens=False)]
        assert all(self.ours.decode(i) == t for i, t in zip(ours_ids, texts, strict=True)), (
            "ours failed a round trip"
        )
        assert all(self.plain.decode(i) == t for i, t in zip(plain_ids, texts, strict=True)), (
            "plain failed a round trip"
        )
        return ours_ids, plain_ids


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process's threads) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def stats(mb: float, runs: list[tuple[float, float]]) -> str:
    wall = [mb / w for w, _ in runs]
    cpu = [mb / c for _, c in runs]
    return (
        f"{statistics.median(wall):6.1f} MB/s (min {min(wall):5.1f}, max {max(wall):5.1f})"
        f"   {statistics.median(cpu):6.1f} MB per CPU-s"
    )


def throughput(ours: CodeTokenizer, plain: Tokenizer, held: list[str], train: list[str], reps: int) -> None:
    mb = sum(len(t.encode()) for t in held) / 1e6
    corpus = train + held
    mb_corpus = sum(len(t.encode()) for t in corpus) / 1e6
    spec = ours.tok.to_str()
    native = pieces.available()
    cold, warm, whole, python, hf_ours, hf_plain = [], [], [], [], [], []
    for _ in range(reps):  # interleaved, so drift in the machine's load hits all alike
        fresh = CodeTokenizer(Tokenizer.from_str(spec))
        cold.append(timed(lambda fresh=fresh: fresh.encode_batch(held)))
        warm.append(timed(lambda fresh=fresh: fresh.encode_batch(held)))
        fresh = CodeTokenizer(Tokenizer.from_str(spec))
        whole.append(timed(lambda fresh=fresh: fresh.encode_batch(corpus)))
        fresh = CodeTokenizer(Tokenizer.from_str(spec), native=False)
        python.append(timed(lambda fresh=fresh: fresh.encode_batch(held)))
        hf_plain.append(timed(lambda: plain.encode_batch(held, add_special_tokens=False)))
        hf_ours.append(timed(lambda: ours.tok.encode_batch(held, add_special_tokens=False)))
    engine = "C++ piece encoder" if native else f"Python's (no C++ piece encoder: {pieces.reason()})"
    print(
        f"\nencode_batch on {len(held)} whole stdlib held-out files ({mb:.2f} MB), {reps} runs: median (min, max)"
    )
    print(f"ours cuts and caches with the {engine}")
    print(f"  plain, HF encode_batch          {stats(mb, hf_plain)}")
    print(f"  ours, HF pipeline (reference)   {stats(mb, hf_ours)}")
    print(f"  ours, cold (fresh tokenizer)    {stats(mb, cold)}")
    print(f"  ours, warm (same files again)   {stats(mb, warm)}")
    print(f"  ours, cold, the whole stdlib ({mb_corpus:.0f} MB) in one pass  {stats(mb_corpus, whole)}")
    print(f"  ours, cold, Python engine       {stats(mb, python)}")
    ratio = statistics.median(w for w, _ in hf_plain) / statistics.median(w for w, _ in cold)
    print(f"  ours cold / plain = {ratio:.1f}x faster;  load average now {os.getloadavg()[0]:.1f}")


# ---------------------------------------------------------------- spans by kind of text

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


def _char_labels(text: str, names: set[str], chains: set[str]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A kind per character of `text` and the (start, end) character spans of its names
    and dotted chains (with the space before them, if any)."""
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
                kind = K["dotted name, in train"] if chain.lstrip(".") in chains else K["dotted name, new"]
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
        if e > s:
            spans.append((s, e, kind))
        i += 1
    named: list[tuple[int, int]] = []
    prev_end = 0
    for s, e, kind in spans:
        if s > prev_end:  # a gap: indentation at a line's start, else spaces within a line
            if prev_end == 0 or text[prev_end - 1] == "\n":
                labels[prev_end:s] = K["newline + indent"]
            elif text[s - 1] == " ":
                s -= 1  # one space before a token is that token's, as both pre-tokenizers cut it
        labels[s:e] = kind
        if kind in NAME_KINDS:
            named.append((s, e))
        prev_end = max(prev_end, e)
    return labels, named


def byte_labels(text: str, names: set[str], chains: set[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A kind per UTF-8 byte of `text`, and its names' (start, end) byte spans and texts."""
    labels, named = _char_labels(text, names, chains)
    spans = np.array(named, dtype=np.int64).reshape(-1, 2)
    texts = [text[s:e] for s, e in named]
    if text.isascii():
        return labels, spans, texts
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    width = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
    offset = np.concatenate([[0], np.cumsum(width)])
    return np.repeat(labels, width), offset[spans], texts


@dataclass
class EvalSet:
    """Texts and, with --breakdown, a kind per byte of them all (files concatenated)."""

    name: str
    texts: list[str]
    labels: np.ndarray | None = None
    name_spans: np.ndarray | None = None  # (n, 2) byte offsets into the concatenation
    name_texts: list[str] | None = None

    @property
    def n_bytes(self) -> int:
        return sum(len(t.encode()) for t in self.texts)

    def label(self, names: set[str], chains: set[str]) -> None:
        labels, spans, texts, base = [], [], [], 0
        for text in self.texts:
            lab, sp, tx = byte_labels(text, names, chains)
            labels.append(lab)
            spans.append(sp + base)
            texts += tx
            base += len(lab)
        self.labels = np.concatenate(labels)
        self.name_spans = np.concatenate(spans)
        self.name_texts = texts
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


def shown(ids: list[int], table: list[bytes]) -> str:
    return "|".join(table[i].decode("utf-8", "replace") for i in ids).replace("\n", "\\n")


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


def breakdown(pair: Pair, sets: list[EvalSet], encoded: dict[str, tuple], examples: int) -> None:
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
            row += f" {100 * nb[k] / totals[ev.name][0]:.1f}% | {o[k]:,.0f} | {p[k]:,.0f} | {saving} | {pts:+.2f} |"
        print(row)
    row = "| **all** |"
    for ev in sets:
        nb, o, p = totals[ev.name]
        row += f" 100% | {o:,.0f} | {p:,.0f} | {100 * (1 - o / p):.1f}% | {100 * (p - o) / p:+.2f} |"
    print(row)

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

    # The names (lone or dotted) of the last set that cost ours the most tokens over plain.
    ev = sets[-1]
    ours_ids, plain_ids = encoded[ev.name]
    cum = {}
    for side, (ids, table) in enumerate(((ours_ids, pair.ours_bytes), (plain_ids, pair.plain_bytes))):
        cum[side] = np.concatenate([[0.0], np.cumsum(byte_weights(ids, table))])
    a, b = ev.name_spans[:, 0], ev.name_spans[:, 1]
    per_o, per_p = cum[0][b] - cum[0][a], cum[1][b] - cum[1][a]
    agg: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for text, o, p in zip(ev.name_texts, per_o, per_p, strict=True):
        entry = agg[text]
        entry[0] += 1
        entry[1] += o
        entry[2] += p
    if not examples:
        return
    for title, sign in (("cost ours the most tokens over plain", 1), ("save ours the most tokens", -1)):
        ranked = sorted(agg.items(), key=lambda kv: sign * (kv[1][2] - kv[1][1]))[:examples]
        print(
            f"\n#### vocab {pair.size}: names on {ev.name} that {title} (split shown: the span encoded alone)\n"
        )
        print("| span | count | ours/each | plain/each | ours - plain, all | ours | plain |")
        print("|---|---:|---:|---:|---:|---|---|")
        for text, (n, o, p) in ranked:
            split_o = shown(pair.ours.encode(text), pair.ours_bytes)
            split_p = shown(pair.plain.encode(text, add_special_tokens=False).ids, pair.plain_bytes)
            print(
                f"| `{text!r}` | {n} | {o / n:.2f} | {p / n:.2f} | {o - p:+.0f} | `{split_o}` | `{split_p}` |"
            )
    # Totals per kind of name: how much of each kind's loss the head of the list holds.
    excess = Counter({t: v[1] - v[2] for t, v in agg.items()})
    top = sum(v for _, v in excess.most_common(100))
    print(
        f"\nnames on {ev.name}: {len(agg):,} distinct; ours - plain over all of them {sum(excess.values()):+,.0f}"
        f" tokens; the 100 costliest {top:+,.0f}"
    )


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-sizes", "--vocab-size", type=int, nargs="+", default=[16384], dest="vocab_sizes")
    ap.add_argument("--reps", type=int, default=3, help="throughput runs, at the last vocab size (0: none)")
    ap.add_argument("--train-every", type=int, default=1, help="train on every k-th train file (faster)")
    ap.add_argument("--held-out-bytes", type=int, default=2_000_000, help="cap on the packages' files")
    ap.add_argument("--breakdown", action="store_true", help="tokens by kind of text, vocab shapes, examples")
    ap.add_argument("--examples", type=int, default=15, help="names listed each way by --breakdown")
    a = ap.parse_args()
    from common import machine  # bench/, the script's own folder, is on sys.path
    from quality import held_out

    print(machine())

    train, held = stdlib_split()
    train = train[:: a.train_every]
    sets = [EvalSet("stdlib", held), EvalSet("packages", held_out(a.held_out_bytes))]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"train: {len(train)} stdlib files, {sum(map(len, train)) / 1e6:.1f} M chars")
    for ev in sets:
        print(f"eval {ev.name}: {len(ev.texts)} files, {ev.n_bytes / 1e6:.2f} MB")
    parallel = os.environ["TOKENIZERS_PARALLELISM"]
    print(f"cores: {cores}, TOKENIZERS_PARALLELISM={parallel}, load average {os.getloadavg()[0]:.1f}")
    if a.breakdown:
        t0 = time.perf_counter()
        names, chains = train_names(train)
        for ev in sets:
            ev.label(names, chains)
        print(
            f"spans: {len(names):,} names and {len(chains):,} dotted chains in train;"
            f" cut in {time.perf_counter() - t0:.1f}s"
        )

    rows = []
    pair = None
    for size in a.vocab_sizes:
        t0 = time.perf_counter()
        ours = train_tokenizer(train, size)
        t1 = time.perf_counter()
        plain = train_plain(train, size)
        t2 = time.perf_counter()
        print(f"\ntrained at vocab {size}: ours {ours.vocab_size} tokens in {t1 - t0:.1f}s,", end=" ")
        print(f"plain {plain.get_vocab_size()} in {t2 - t1:.1f}s")
        pair = Pair(size, ours, plain)
        encoded = {ev.name: pair.encode(ev.texts) for ev in sets}
        for ev in sets:
            n_ours, n_plain = (sum(map(len, ids)) for ids in encoded[ev.name])
            rows.append((size, ev, n_ours, n_plain))
        if a.breakdown:
            breakdown(pair, sets, encoded, a.examples)

    print("\ntokens per byte on held-out files (lower is better; every file round-trips for both)\n")
    print("| vocab | eval set | MB | ours tokens/byte | plain tokens/byte | fewer tokens ours needs |")
    print("|---:|---|---:|---:|---:|---:|")
    for size, ev, n_ours, n_plain in rows:
        nb = ev.n_bytes
        print(
            f"| {size} | {ev.name} | {nb / 1e6:.2f} | {n_ours / nb:.4f} | {n_plain / nb:.4f} |"
            f" {100 * (1 - n_ours / n_plain):.1f}% |"
        )
    if a.reps > 0 and pair is not None:
        print(f"\nthroughput at vocab {pair.size}")
        throughput(pair.ours, pair.plain, held, train, a.reps)


if __name__ == "__main__":
    main()
