"""Token files, loss masks, fill-in-the-middle and packed batches.

Each split is tokenized once into a flat token file (uint16 when the
vocabulary fits, else uint32) and a parallel uint8 loss mask. Every document
ends with end-of-text, so documents pack into fixed windows with no padding.

- A file is trained on in full. With probability `fim_rate` it is first cut at
  two random characters into prefix/middle/suffix and laid out as PSM
  (`<|fim_prefix|> p <|fim_suffix|> s <|fim_middle|> m <|endoftext|>`) or, half
  the time, SPM (`<|fim_suffix|> s <|fim_prefix|> p <|fim_middle|> m ...`), the
  layouts of Bavarian et al. 2022. Cutting characters, not tokens, teaches the
  model to infill from the middle of a word, as an editor asks.
- A pair is `<|instruction|> prompt <|code|> completion <|endoftext|>`; its mask
  is 0 over the instruction part and 1 over the completion and the end token.
  The mask comes from the ids of each part, never from searching for a template.
- A repository document (train/repo.py, `repo_rate`) is snippets of other code of the
  file's repository, with mask 0, then a stretch of the file; with FIM the snippets
  open the prefix part, as in the editor's prompt. They follow the split's files.

A pretrained model's tokenizer may lack codelm's roles (codelm/tokenizer/roles.py):
without FIM tokens there is no FIM (fim_rate 0); without instruction tokens a pair
is `# prompt` (a comment line per line, then a blank line) followed by the
completion, the layout `codelm.generate.prompts` gives such a model; with a chat
template (an imported instruct model, tokenizer/chat.py) a pair is the template's frame:
the user's message, the assistant's turn opened with a ```python fence, then the code,
the fence's close, the turn's end and end-of-text, with loss from the code on. A tokenizer
whose documents start with a token of their own (Llama's `<s>`) gets it before
every document, with no loss on it: codelm's own start after the previous end.

Windows are read from memory maps in an order fixed by (seed, epoch), so the
data position is (epoch, cursor) and a resumed run sees the same batches.
FIM is drawn once per document when tokenizing, not anew each epoch. Rows come
from DATA through codelm/data/dataset.py; this module does not read Parquet.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codelm.data.dataset import iter_rows
from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_bytes
from codelm.tokenizer import CodeTokenizer
from codelm.tokenizer.chat import fence_close
from codelm.tokenizer.roles import CODE, EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, INSTRUCTION, comment_block
from codelm.train.repo import RepoDoc, repo_documents

ENCODE_BATCH = 256  # documents per encode_batch call
IGNORE = -100  # target value that carries no loss (F.cross_entropy's ignore_index)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class Layout:
    """A document as text pieces (encoded together in one batch) and special ids around them."""

    pieces: list[str]
    # How to assemble: a list of ("special", name), ("piece", index) or ("ids", ids) with a loss flag.
    parts: list[tuple[str, str | int | tuple[int, ...], int]]


def fim_layout(text: str, rng: np.random.Generator, spm_rate: float = 0.5) -> Layout:
    """Cut `text` at two random characters into prefix/middle/suffix, in PSM or SPM order."""
    a, b = sorted(rng.integers(0, len(text) + 1, size=2).tolist())
    prefix, middle, suffix = text[:a], text[a:b], text[b:]
    if rng.random() < spm_rate:
        order = [("special", FIM_SUFFIX, 1), ("piece", 2, 1), ("special", FIM_PREFIX, 1), ("piece", 0, 1)]
    else:
        order = [("special", FIM_PREFIX, 1), ("piece", 0, 1), ("special", FIM_SUFFIX, 1), ("piece", 2, 1)]
    tail = [("special", FIM_MIDDLE, 1), ("piece", 1, 1), ("special", EOT, 1)]
    return Layout([prefix, middle, suffix], order + tail)


def repo_layout(doc: RepoDoc, rng: np.random.Generator, fim_rate: float) -> Layout:
    """A repository document (train/repo.py): its snippets, with no loss, then its stretch of
    code; with FIM, the snippets open the prefix part, where the editor's prompt has them."""
    if not (fim_rate > 0 and rng.random() < fim_rate):
        return Layout([doc.context, doc.text], [("piece", 0, 0), ("piece", 1, 1), ("special", EOT, 1)])
    fim = fim_layout(doc.text, rng)
    parts = []
    for kind, what, flag in fim.parts:
        if kind == "piece" and what == 0:  # the prefix: the snippets go just before it
            parts.append(("piece", 3, 0))
        parts.append((kind, what, flag))
    return Layout([*fim.pieces, doc.context], parts)


def document_layout(
    row: dict,
    rng: np.random.Generator,
    fim_rate: float,
    instruction_tokens: bool = True,
    chat: tuple[list[int], list[int], list[int]] | None = None,
) -> Layout:
    """The layout of one DATA row; `instruction_tokens`: the tokenizer has INSTRUCTION and CODE
    (else a pair's prompt becomes a comment block above its code, or with `chat`, the chat
    template's ids before, between and after (CodeTokenizer.chat_ids), goes in its frame)."""
    if row.get("kind") == "pair" and row.get("prompt") is not None and row.get("completion") is not None:
        if chat is not None:
            before, between, after = map(tuple, chat)
            code = row["completion"] + fence_close(row["completion"])
            parts = [("ids", before, 0), ("piece", 0, 0), ("ids", between, 0), ("piece", 1, 1)]
            return Layout([row["prompt"], code], [*parts, ("ids", after, 1)])
        if not instruction_tokens:
            return Layout(
                [comment_block(row["prompt"]), row["completion"]],
                [("piece", 0, 0), ("piece", 1, 1), ("special", EOT, 1)],
            )
        return Layout(
            [row["prompt"], row["completion"]],
            [("special", INSTRUCTION, 0), ("piece", 0, 0), ("special", CODE, 0), ("piece", 1, 1),
             ("special", EOT, 1)],
        )  # fmt: skip
    text = row["text"]
    if fim_rate > 0 and rng.random() < fim_rate:
        return fim_layout(text, rng)
    return Layout([text], [("piece", 0, 1), ("special", EOT, 1)])


def assemble(layout: Layout, encoded: list[list[int]], tok: CodeTokenizer) -> tuple[list[int], list[int]]:
    """Token ids and the per-token loss flag (1 = predicted with loss) of one document."""
    start = tok.bos_id != tok.eot_id  # else the previous document's end token starts this one
    ids: list[int] = [tok.bos_id] if start else []
    mask: list[int] = [0] if start else []
    for kind, what, flag in layout.parts:
        part = _part(kind, what, encoded, tok)
        ids += part
        mask += [flag] * len(part)
    return ids, mask


def _part(kind: str, what, encoded: list[list[int]], tok: CodeTokenizer) -> list[int]:
    if kind == "ids":
        return list(what)
    return [tok.special[what]] if kind == "special" else encoded[what]


def _passes(data_dir: str | Path, split: str, pair_rate: float, seed: int) -> Iterator[tuple[int, dict]]:
    """(index, row) of the split's documents: every row once, then further passes over the pairs
    until `pair_rate` passes are made; a pass's fraction keeps each pair with that probability."""
    for k in range(max(1, math.ceil(pair_rate))):  # pass 0: every row; later ones: pairs only
        keep = min(1.0, pair_rate - k)
        for i, row in enumerate(iter_rows(data_dir, split, ["text", "kind", "prompt", "completion"])):
            pair = row.get("kind") == "pair"
            if not row.get("text") or (k and not pair):
                continue
            if not pair or keep >= 1 or np.random.default_rng([seed, 2, k, i]).random() < keep:
                yield i, row


def tokenize_split(
    data_dir: str | Path,
    split: str,
    tok: CodeTokenizer,
    out: str | Path,
    fim_rate: float = 0.0,
    seed: int = 0,
    repo_rate: float = 0.0,
    window: int = 0,
    pair_rate: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize a split into `out` (.bin tokens, .mask flags; atomic) and memory-map them.
    A tokenizer without FIM tokens gets no FIM, whatever `fim_rate` says. With `repo_rate`,
    repository documents (train/repo.py) for `window`-token windows follow the files.
    `pair_rate` passes over the pairs (TrainConfig.pair_rate): the first among the files,
    the others after them, each pass keeping a pair with probability min(1, what is left)."""
    out = Path(out)
    fim_rate = fim_rate if tok.has(FIM_PREFIX) else 0.0
    instruction_tokens = tok.has(INSTRUCTION)
    chat = None
    if tok.uses_chat:
        before, between, after = tok.chat_ids
        # chat_ids' before starts with the document start where it is a token of its own:
        # `assemble` puts that one first already. Every document ends with end-of-text.
        end = after if after[-1:] == [tok.eot_id] else [*after, tok.eot_id]
        chat = (before[1:] if tok.bos_id != tok.eot_id else before, between, end)
    dtype = token_dtype(tok.vocab_size)
    id_chunks: list[np.ndarray] = []
    mask_chunks: list[np.ndarray] = []
    layouts: list[Layout] = []

    def flush() -> None:
        flat = [p for lay in layouts for p in lay.pieces]
        encoded = iter(tok.encode_batch(flat))
        for lay in layouts:
            ids, mask = assemble(lay, [next(encoded) for _ in lay.pieces], tok)
            id_chunks.append(np.asarray(ids, dtype=dtype))
            mask_chunks.append(np.asarray(mask, dtype=np.uint8))
        layouts.clear()

    for i, row in _passes(data_dir, split, pair_rate, seed):
        rng = np.random.default_rng([seed, i])
        layouts.append(document_layout(row, rng, fim_rate, instruction_tokens, chat))
        if len(layouts) >= ENCODE_BATCH:
            flush()
    if repo_rate > 0:
        rows = iter_rows(data_dir, split, ["text", "kind", "path", "source"])
        docs = repo_documents(rows, repo_rate, window, lambda s: len(tok.encode(s)), seed)
        for j, doc in enumerate(docs):
            layouts.append(repo_layout(doc, np.random.default_rng([seed, 1, j]), fim_rate))
            if len(layouts) >= ENCODE_BATCH:
                flush()
    flush()
    ids = np.concatenate(id_chunks) if id_chunks else np.zeros(0, dtype)
    mask = np.concatenate(mask_chunks) if mask_chunks else np.zeros(0, np.uint8)
    atomic_write_bytes(out.with_suffix(".mask"), mask.tobytes())
    atomic_write_bytes(out.with_suffix(".bin"), ids.tobytes())
    return open_tokens(out, tok.vocab_size)


def open_tokens(out: str | Path, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    out = Path(out)
    dtype = token_dtype(vocab_size)
    if out.with_suffix(".bin").stat().st_size == 0:  # an empty split: numpy cannot map 0 bytes
        return np.zeros(0, dtype), np.zeros(0, np.uint8)
    ids = np.memmap(out.with_suffix(".bin"), dtype=dtype, mode="r")
    mask = np.memmap(out.with_suffix(".mask"), dtype=np.uint8, mode="r")
    if len(ids) != len(mask):
        raise CodelmError(f"token file {out} and its mask differ in length: delete {out.parent}")
    return ids, mask


class PackedWindows:
    """Non-overlapping windows of `seq_len` inputs (+1 target) over a token stream."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, seq_len: int):
        self.tokens, self.mask, self.seq_len = tokens, mask, seq_len
        self.n = max(0, (len(tokens) - 1) // seq_len)

    def __len__(self) -> int:
        return self.n

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, seq_len); targets whose mask is 0 are IGNORE."""
        T = self.seq_len
        rows = np.stack([self.tokens[i * T : i * T + T + 1] for i in indices]).astype(np.int64)
        keep = np.stack([self.mask[i * T + 1 : i * T + T + 1] for i in indices]).astype(bool)
        x = torch.from_numpy(rows[:, :-1])
        y = torch.from_numpy(np.where(keep, rows[:, 1:], IGNORE))
        return x, y

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """A permutation of the windows that depends only on (seed, epoch)."""
        return np.random.default_rng([seed, epoch]).permutation(self.n)

    def spread(self, count: int) -> np.ndarray:
        """`count` window indices spread evenly over the stream (a fixed eval set)."""
        count = min(count, self.n)
        if count == 0:
            return np.zeros(0, np.int64)
        return np.linspace(0, self.n - 1, count).round().astype(np.int64)
