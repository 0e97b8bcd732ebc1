"""Measure codelm's code tokenizer against a plain byte-level BPE on held-out standard-library files.

Both tokenizers are trained with HF `tokenizers` on the same files (the train
split of the standard library, by `codelm.data.split.split_of` on each file's
path), with the same vocabulary size, the same seven special tokens and the same
256-byte alphabet. "Plain" is HF's stock byte-level BPE: the `ByteLevel`
pre-tokenizer with GPT-2's regex. Evaluation is on the val+test files, which
neither tokenizer saw. Printed, in one run:

- tokens per byte for each, and how many fewer tokens ours needs;
- encode throughput of `encode_batch` on whole files, MB/s over wall time and over
  CPU time, all threads counted (median, min, max of `--reps` runs). Ours is
  measured cold (a fresh tokenizer: its piece cache empty), warm (the same files
  again), and cold over the whole standard library in one pass (train and
  held-out files, as a corpus job encodes them; the cache fills on the way), with
  the C++ piece encoder, and cold with the Python one (what a machine without a
  C++ compiler gets); plain is HF's `encode_batch` with TOKENIZERS_PARALLELISM on,
  on all cores it is given;
- both round-trip every held-out file.

    .venv/bin/python bench/tokenizer.py [--vocab-size 16384] [--reps 3] [--train-every 1]

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

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from codelm.data.sources import SKIP_DIRS, stdlib_root  # noqa: E402
from codelm.data.split import split_of  # noqa: E402
from codelm.tokenizer import SPECIAL_TOKENS, CodeTokenizer, pieces, train_tokenizer  # noqa: E402


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


def compression(ours: CodeTokenizer, plain: Tokenizer, held: list[str]) -> None:
    held_bytes = sum(len(t.encode()) for t in held)
    ours_ids = ours.encode_batch(held)
    plain_ids = [e.ids for e in plain.encode_batch(held, add_special_tokens=False)]
    assert all(ours.decode(i) == t for i, t in zip(ours_ids, held, strict=True)), "ours failed a round trip"
    assert all(plain.decode(i) == t for i, t in zip(plain_ids, held, strict=True)), (
        "plain failed a round trip"
    )
    n_ours, n_plain = sum(map(len, ours_ids)), sum(map(len, plain_ids))
    print("\ntokens per byte on held-out (lower is better; every file round-trips for both)")
    print(f"  plain byte-level BPE  {n_plain / held_bytes:.4f}  ({held_bytes / n_plain:.2f} bytes/token)")
    print(f"  codelm code BPE       {n_ours / held_bytes:.4f}  ({held_bytes / n_ours:.2f} bytes/token)")
    print(f"  ours / plain = {n_ours / n_plain:.3f}: {100 * (1 - n_ours / n_plain):.1f}% fewer tokens")


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
    print(f"\nencode_batch on {len(held)} whole files ({mb:.2f} MB), {reps} runs: median (min, max)")
    print(f"ours cuts and caches with the {engine}")
    print(f"  plain, HF encode_batch          {stats(mb, hf_plain)}")
    print(f"  ours, HF pipeline (reference)   {stats(mb, hf_ours)}")
    print(f"  ours, cold (fresh tokenizer)    {stats(mb, cold)}")
    print(f"  ours, warm (same files again)   {stats(mb, warm)}")
    print(f"  ours, cold, the whole stdlib ({mb_corpus:.0f} MB) in one pass  {stats(mb_corpus, whole)}")
    print(f"  ours, cold, Python engine       {stats(mb, python)}")
    ratio = statistics.median(w for w, _ in hf_plain) / statistics.median(w for w, _ in cold)
    print(f"  ours cold / plain = {ratio:.1f}x faster;  load average now {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--train-every", type=int, default=1, help="train on every k-th train file (faster)")
    a = ap.parse_args()
    from common import machine  # bench/, the script's own folder, is on sys.path

    print(machine())

    train, held = stdlib_split()
    train = train[:: a.train_every]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"train: {len(train)} files, {sum(map(len, train)) / 1e6:.1f} M chars")
    print(f"held-out: {len(held)} files, {sum(len(t.encode()) for t in held) / 1e6:.2f} MB")
    parallel = os.environ["TOKENIZERS_PARALLELISM"]
    print(f"cores: {cores}, TOKENIZERS_PARALLELISM={parallel}, load average {os.getloadavg()[0]:.1f}")

    t0 = time.perf_counter()
    ours = train_tokenizer(train, a.vocab_size)
    t1 = time.perf_counter()
    plain = train_plain(train, a.vocab_size)
    t2 = time.perf_counter()
    print(f"trained at vocab {a.vocab_size}: ours {ours.vocab_size} tokens in {t1 - t0:.1f}s,", end=" ")
    print(f"plain {plain.get_vocab_size()} in {t2 - t1:.1f}s")
    compression(ours, plain, held)
    throughput(ours, plain, held, train, a.reps)


if __name__ == "__main__":
    main()
