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
  bench/held_out.py's `held_out` reads them (interleaved by a path hash, capped at
  `--held-out-bytes`): third-party code no corpus here holds (out of distribution).

Printed, in one run:

- a markdown table, vocab size x eval set: tokens per byte for each tokenizer and
  how many fewer tokens ours needs; both round-trip every evaluated file;
- with `--breakdown`, for each size, where the tokens go by kind of text. Every
  file is cut into spans with Python's `tokenize`: keyword; a lone name, split by
  whether it occurs anywhere in the training files; a dotted name or attribute
  chain (`a.b.c`, or `.b` after a bracket) as one span, split the same way by the
  whole chain (`.b`: by `b`); operator; number; string; docstring; comment;
  newline plus indentation; other whitespace; other (and every file `tokenize`
  rejects). One space before a token belongs to it, as both pre-tokenizers glue
  it there. Each whole-file encoding's tokens are attributed to the spans by byte
  offsets (the tokens' bytes concatenate to the file); a token that straddles
  spans counts fractionally, by its bytes in each, so the kinds' tokens sum to
  the file's. Printed per kind and eval set: share of bytes, tokens of each, the
  saving on the kind, and its contribution in points of the total saving
  ((plain - ours) / all of plain's tokens); then the drop in points from stdlib to
  packages split into the mix of text and the savings within kinds (`decompose`).
  A line's first token and its indentation trade fractions (plain's ` return`
  takes the indent's last space, ours keeps the indent whole), so read "keyword",
  "operator" and "newline + indent" together. Then the saving per package, the
  files where ours does worst, the shapes of each vocabulary (dotted, quote+name,
  ...) and how many of each the eval sets use, and the packages' names (lone or
  dotted) that cost ours the most tokens over plain and that save it the most,
  and the costliest operator runs, numbers and strings, each with how the two
  tokenizers split it (the span encoded alone, after a digit or `=`);
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

`--reps 0` skips the throughput part.

`--vocab-size N` is the same option as `--vocab-sizes N` (default: 16384).
The machine is shared, so wall-clock MB/s swings with other jobs; the ratios in
one run and the CPU-time figures are the steadier numbers.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # before tokenizers is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from tokenizer_kinds import EvalSet, breakdown, train_names  # noqa: E402  (bench/, on sys.path)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from codelm.data.sources import SKIP_DIRS, stdlib_root  # noqa: E402
from codelm.data.split import split_of  # noqa: E402
from codelm.tokenizer import SPECIAL_TOKENS, CodeTokenizer, pieces, train_tokenizer  # noqa: E402
from codelm.tokenizer.pretokenize import CHAR_TO_BYTE  # noqa: E402


def stdlib_split() -> tuple[list[str], list[str], list[str]]:
    """(train texts, held-out texts, held-out paths) of the standard library's .py files that
    decode as UTF-8."""
    root = stdlib_root()
    train, held, paths = [], [], []
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
            if split_of(rel) == "train":
                train.append(text)
            else:
                held.append(text)
                paths.append(rel)
    return train, held, paths


def package_files(max_bytes: int) -> tuple[list[str], list[str]]:
    """(texts, paths) of the held-out packages' files, as bench/held_out.py's `held_out` picks them."""
    from held_out import held_out_files  # bench/, the script's own folder, is on sys.path

    files = held_out_files(max_bytes)
    return [t for _, t in files], [p for p, _ in files]


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
        f"\nencode_batch on {len(held)} whole stdlib held-out files ({mb:.2f} MB), {reps} runs:"
        " median (min, max)"
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


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-sizes", "--vocab-size", type=int, nargs="+", default=[16384], dest="vocab_sizes")
    ap.add_argument("--reps", type=int, default=3, help="throughput runs, at the last vocab size (0: none)")
    ap.add_argument("--train-every", type=int, default=1, help="train on every k-th train file (faster)")
    ap.add_argument("--held-out-bytes", type=int, default=2_000_000, help="cap on the packages' files")
    ap.add_argument("--breakdown", action="store_true", help="tokens by kind of text, vocab shapes, examples")
    ap.add_argument(
        "--examples", type=int, default=15, help="rows per example table of --breakdown (0: no tables)"
    )
    a = ap.parse_args()
    from common import machine  # bench/, the script's own folder, is on sys.path

    print(machine())

    train, held, held_paths = stdlib_split()
    train = train[:: a.train_every]
    sets = [EvalSet("stdlib", held, held_paths), EvalSet("packages", *package_files(a.held_out_bytes))]
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
            ev.label(names, chains, keep_spans=ev is sets[-1])
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
