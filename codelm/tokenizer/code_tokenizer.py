"""A lossless byte-level BPE tokenizer for code, with codelm's special tokens.

Byte-level means every string maps to bytes first, so decode(encode(x)) == x for
any text: tabs, CRLF, form feeds, trailing spaces, emoji and unicode identifiers
included. A Python string holding a lone surrogate (not Unicode, no UTF-8 form)
does not fail: the surrogate is encoded as U+FFFD and decodes as U+FFFD.
HF `tokenizers` trains the BPE and owns every merge; `pretokenize.py` holds the
code-aware cutting, `units.py` makes operators and indents single tokens, and
`encoder.py` is the fast encoder (the same ids as HF's pipeline, 6x faster here cold).

Special tokens get the first ids (0..6, in SPECIAL_TOKENS order). Text that merely
spells one (say "<|endoftext|>") is encoded as ordinary text unless the caller
passes allow_special=True; no ordinary text can produce a special id, because the
pre-tokenizer always cuts `<|` and `|>` away from the word inside.

The saved form is one `tokenizer.json` that loads with `tokenizers.Tokenizer.from_file`
and transformers' `PreTrainedTokenizerFast(tokenizer_file=...)`, giving the same ids
for ordinary text (those treat spelled-out special tokens as specials, as
allow_special=True does here).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from codelm.errors import CodelmError
from codelm.tokenizer.encoder import PieceEncoder, is_code_pipeline
from codelm.tokenizer.pretokenize import CHAR_TO_BYTE, hf_pre_tokenizer, replace_surrogates
from codelm.tokenizer.units import UnitScanner, force_units

EOT = "<|endoftext|>"
PAD = "<|pad|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
INSTRUCTION = "<|instruction|>"
CODE = "<|code|>"
SPECIAL_TOKENS = [EOT, PAD, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, INSTRUCTION, CODE]
BYTE_ALPHABET = 256
MIN_VOCAB = BYTE_ALPHABET + len(SPECIAL_TOKENS)


class CodeTokenizer:
    """A trained tokenizer: the HF `Tokenizer` (`.tok`) plus the ids and fast paths the pipeline needs.

    Safe to share between threads: the only state that calls change is the encoder's
    piece cache, which `PieceEncoder` guards."""

    def __init__(self, tok: Tokenizer, native: bool | None = None):
        """`native`: cut and cache pieces in C++ (True) or Python (False); default: C++
        where it builds (`pieces.available()`). Both give the same ids."""
        self.tok = tok
        # Anyone calling self.tok directly also gets spelled-out specials encoded as text.
        self.tok.encode_special_tokens = True
        ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            raise CodelmError("tokenizer.json lacks codelm's special tokens")
        self.special = dict(zip(SPECIAL_TOKENS, ids, strict=True))
        self.eot_id = self.special[EOT]
        self.pad_id = self.special[PAD]
        spec = json.loads(tok.to_str())
        added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        self._added = added
        self._added_re = re.compile(
            "(" + "|".join(map(re.escape, sorted(added, key=len, reverse=True))) + ")"
        )
        # The fast path needs this package's pre-tokenizer; a foreign or older tokenizer.json
        # is still usable through HF's own pipeline (same ids for it, several times slower).
        self._fast = PieceEncoder(spec, added, native) if is_code_pipeline(spec) else None

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. With allow_special, spelled-out special tokens become their ids."""
        if allow_special:
            return self._encode_with_specials(text)
        return self._encode_plain([text])[0]

    def encode_batch(self, texts: list[str], allow_special: bool = False) -> list[list[int]]:
        """Token ids of each text (whole files are fine); the same as encode() on each one."""
        if allow_special:
            return [self._encode_with_specials(t) for t in texts]
        return self._encode_plain(list(texts))

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return self._fast.encode_batch(texts)
        texts = [t if t.isascii() else replace_surrogates(t) for t in texts]
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def _encode_with_specials(self, text: str) -> list[int]:
        parts = self._added_re.split(text)  # odd positions hold the special tokens themselves
        plain = self._encode_plain([p for p in parts[0::2]])
        out: list[int] = []
        for k, ids in enumerate(plain):
            out += ids
            if 2 * k + 1 < len(parts):
                out.append(self._added[parts[2 * k + 1]])
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; special tokens are written out. Byte sequences that are not
        UTF-8 (a sampled token cut mid-character) become U+FFFD, as in HF."""
        if self._fast is not None:
            return self._fast.decode(ids)
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        return self.tok.id_to_token(i)

    @functools.cached_property
    def token_bytes(self) -> list[bytes]:
        """The raw bytes of every id (a special token: its spelled-out name), built once:
        a streamed completion then grows by one token in O(1)."""
        if self._fast is not None and len(self._fast.token_bytes) == self.vocab_size:
            return self._fast.token_bytes  # the fast encoder's decode table: the same bytes
        special = set(self.special.values())
        table = []
        for i in range(self.vocab_size):
            piece = self.id_to_token(i) or ""
            if i not in special and all(c in CHAR_TO_BYTE for c in piece):
                table.append(bytes(CHAR_TO_BYTE[c] for c in piece))
            else:  # special tokens, or a tokenizer.json that is not byte-level
                table.append(self.decode([i]).encode("utf-8"))
        return table

    def save(self, path: str | Path) -> None:
        from codelm.fsutil import atomic_write_text

        atomic_write_text(path, self.tok.to_str(pretty=False))

    @classmethod
    def load(cls, path: str | Path) -> CodeTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise CodelmError(f"tokenizer not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exceptions on bad JSON
            raise CodelmError(f"cannot load tokenizer {path}: {str(e).splitlines()[0]}") from None
        return cls(tok)


class _CorpusStats:
    """Counts what the trainer consumed and notes which whole-token units occur."""

    def __init__(self) -> None:
        self.documents = 0
        self.chars = 0
        self.units = UnitScanner()

    def stream(self, texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            if not isinstance(text, str):
                raise CodelmError(f"the corpus must yield text, got {type(text).__name__}")
            if not text:
                continue
            if not text.isascii():
                text = replace_surrogates(text)  # HF cannot take a lone surrogate
            self.documents += 1
            self.chars += len(text)
            self.units.scan(text)
            yield text


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 8192, show_progress: bool = False
) -> CodeTokenizer:
    """Train a code BPE of exactly `vocab_size` tokens (fewer if the corpus runs out of pairs)
    on an iterable of documents. Raises CodelmError on an empty corpus or a too-small size."""
    if vocab_size < MIN_VOCAB:
        raise CodelmError(
            f"vocab size {vocab_size} is too small: it must be at least {MIN_VOCAB} "
            f"({BYTE_ALPHABET} bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = hf_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    stats = _CorpusStats()
    tok.train_from_iterator(stats.stream(texts), trainer=trainer)
    if stats.chars == 0:
        raise CodelmError("cannot train a tokenizer on an empty corpus (it holds no text)")
    spec = force_units(json.loads(tok.to_str()), stats.units.present(), vocab_size)
    return CodeTokenizer(Tokenizer.from_str(json.dumps(spec)))
