"""Intrinsic metrics on held-out code: loss, perplexity, bits per byte, top-1/top-5 accuracy.

Documents are tokenized, each followed by end-of-text, concatenated, and cut
into non-overlapping windows of the model's context; every token is predicted
once. Bits per byte divide the total negative log-likelihood (in bits, end-of-
text predictions included) by the UTF-8 bytes of the text, so the number does
not depend on the tokenizer and compares with gzip or xz on the same files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from codelm.errors import CodelmError
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer


@dataclass(frozen=True)
class IntrinsicConfig:
    max_tokens: int = 200_000  # evaluation budget in tokens: ~1 minute for `small` on 2 cores
    batch_size: int = 8  # windows per forward pass


@dataclass
class Intrinsic:
    loss: float  # mean nats per token
    perplexity: float
    bits_per_byte: float
    top1: float
    top5: float
    tokens: int
    bytes: int
    documents: int


def _stream(tok: CodeTokenizer, texts: Iterable[str], max_tokens: int) -> tuple[np.ndarray, int, int]:
    """Token ids of whole documents (each + EOT) up to the budget, their bytes and count."""
    ids: list[int] = []
    nbytes = docs = 0
    for text in texts:
        doc = tok.encode(text) + [tok.eot_id]
        if ids and len(ids) + len(doc) > max_tokens + 1:
            break
        ids += doc[: max_tokens + 1]
        nbytes += len(text.encode("utf-8", "surrogatepass"))
        docs += 1
    return np.asarray(ids, dtype=np.int64), nbytes, docs


@torch.no_grad()
def intrinsic_metrics(
    model: Transformer, tok: CodeTokenizer, texts: Iterable[str], cfg: IntrinsicConfig = IntrinsicConfig()
) -> Intrinsic:
    ids, nbytes, docs = _stream(tok, texts, cfg.max_tokens)
    if len(ids) < 2:
        raise CodelmError("nothing to evaluate: the held-out text is empty")
    T = model.cfg.block_size
    device = model.head.weight.device
    nll = top1 = top5 = count = 0.0
    starts = list(range(0, len(ids) - 1, T))
    for b in range(0, len(starts), cfg.batch_size):
        for s in starts[b : b + cfg.batch_size]:  # windows differ in length at the end: one at a time
            chunk = torch.from_numpy(ids[s : s + T + 1]).to(device)
            x, y = chunk[:-1][None], chunk[1:][None]
            logits = model(x).float()[0]  # (T, V)
            nll += F.cross_entropy(logits, y[0], reduction="sum").item()
            best = logits.topk(5, dim=-1).indices  # (T, 5)
            top1 += (best[:, 0] == y[0]).sum().item()
            top5 += (best == y[0][:, None]).any(-1).sum().item()
            count += y.numel()
    loss = nll / count
    return Intrinsic(
        loss=loss,
        perplexity=math.exp(min(loss, 50)),
        bits_per_byte=nll / math.log(2) / max(nbytes, 1),
        top1=top1 / count,
        top5=top5 / count,
        tokens=int(count),
        bytes=nbytes,
        documents=docs,
    )
