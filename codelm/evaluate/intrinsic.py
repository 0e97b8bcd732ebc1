"""Intrinsic metrics on held-out code: loss, perplexity, bits per byte, top-1/top-5 accuracy.

Documents are tokenized, each followed by end-of-text (and, for a tokenizer whose
documents start with a token of their own, Llama's `<s>`, preceded by it, as the
model was trained), concatenated, and cut into non-overlapping windows of the
model's context; every token is predicted once, except such a start token: it
holds no text, and scoring it would make bits per byte depend on the tokenizer
again. Bits per byte divide the total negative log-likelihood (in bits, end-of-
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
from codelm.train.batches import IGNORE


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


def _stream(
    tok: CodeTokenizer, texts: Iterable[str], max_tokens: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Token ids of whole documents (each + EOT, after its start token if it has one) up to
    the budget, the targets to score (the ids less the start tokens), their bytes and count."""
    # codelm's own tokenizers start a document after the previous one's end-of-text.
    head = [tok.bos_id] if tok.bos_id != tok.eot_id else []
    ids: list[int] = []
    nbytes = docs = 0
    for text in texts:
        doc = head + tok.encode(text) + [tok.eot_id]
        if ids and len(ids) + len(doc) > max_tokens + 1:
            break
        ids += doc[: max_tokens + 1]
        nbytes += len(text.encode("utf-8", "surrogatepass"))
        docs += 1
    out = np.asarray(ids, dtype=np.int64)
    targets = np.where(np.isin(out, head), IGNORE, out)
    return out, targets, nbytes, docs


@torch.no_grad()
def intrinsic_metrics(
    model: Transformer, tok: CodeTokenizer, texts: Iterable[str], cfg: IntrinsicConfig = IntrinsicConfig()
) -> Intrinsic:
    ids, targets, nbytes, docs = _stream(tok, texts, cfg.max_tokens)
    if len(ids) < 2:
        raise CodelmError("nothing to evaluate: the held-out text is empty")
    T = model.cfg.block_size
    device = model.head.weight.device
    nll = top1 = top5 = count = 0.0
    starts = list(range(0, len(ids) - 1, T))
    for b in range(0, len(starts), cfg.batch_size):
        for s in starts[b : b + cfg.batch_size]:  # windows differ in length at the end: one at a time
            chunk = ids[s : s + T + 1]
            x = torch.from_numpy(chunk[:-1]).to(device)[None]
            y = torch.from_numpy(targets[s + 1 : s + len(chunk)]).to(device)  # IGNORE: not scored
            logits = model(x).float()[0]  # (T, V)
            nll += F.cross_entropy(logits, y, reduction="sum", ignore_index=IGNORE).item()
            best = logits.topk(5, dim=-1).indices  # (T, 5)
            top1 += (best[:, 0] == y).sum().item()
            top5 += (best == y[:, None]).any(-1).sum().item()
            count += (y != IGNORE).sum().item()
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


def copy_gain(model: Transformer, span: int = 48, rows: int = 16, seed: int = 0) -> float:
    """Nats per token that a model saves on the second copy of a random span of tokens over the
    first: ~0 before it has induction heads, which find an earlier occurrence of the current
    token and predict what followed it (Olsson et al. 2022), and several nats after. Their
    appearance is abrupt, and a short training budget may end just before it: in docs/quality.md
    the 5-minute `tiny` model on 2 cores had 5.5 nats with bf16 and 0.1-0.25 with fp32's
    fewer steps.
    Tokens are drawn from the upper 90% of the vocabulary (no special tokens), the first few
    predictions of each copy left out."""
    vocab, span = model.cfg.vocab_size, min(span, model.cfg.block_size // 2)  # both copies fit
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(vocab // 10, vocab, (rows, span), generator=g)
    idx = torch.cat((first, first), dim=1).to(model.wte.weight.device)  # (rows, 2 span)
    was = model.training
    model.eval()
    with torch.no_grad():
        logp = model(idx).float().log_softmax(-1)[:, :-1]  # (rows, T-1, V)
    model.train(was)
    nll = -logp.gather(-1, idx[:, 1:, None])[..., 0]  # nll[:, t] predicts idx[:, t + 1]
    skip = min(8, span // 4)
    return (nll[:, skip : span - 1].mean() - nll[:, span + skip - 1 :].mean()).item()
