"""A lossless byte-level BPE tokenizer for code, with the special tokens of DESIGN.md.

Byte-level means every string maps to bytes first, so decode(encode(x)) == x for
any text: tabs, CRLF, trailing spaces and emoji included. Special tokens get the
first ids (0..6) and text that merely spells one (say "<|endoftext|>") is
encoded as ordinary text unless the caller asks otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from codelm.errors import CodelmError

EOT = "<|endoftext|>"
PAD = "<|pad|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
INSTRUCTION = "<|instruction|>"
CODE = "<|code|>"
SPECIAL_TOKENS = [EOT, PAD, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, INSTRUCTION, CODE]
BYTE_ALPHABET = 256

# Pre-tokenization for code: runs of spaces/tabs at a line start stay one unit
# (an indent of 8 is one token), newlines stay apart from text, operators and
# brackets never merge into identifiers, and digits are split one by one.
_CODE_SPLIT = Regex(
    r"\r?\n|^[ \t]+|"  # newlines; indentation (Oniguruma's ^ is a line start)
    r" ?[\p{L}_][\p{L}\p{N}_]*|\p{N}|"  # identifiers take one leading space; digits split
    r" ?(?:\*\*=|//=|>>=|<<=|\.\.\.|->|:=|==|!=|<=|>=|\*\*|//|<<|>>|[-+*/%&|^@]=)|"
    r" ?[^\s\p{L}\p{N}_]|[ \t]+|\s"  # any other symbol; leftover whitespace
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(_CODE_SPLIT, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


class CodeTokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer` with the ids the pipeline needs."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        # Text that spells a special token is encoded as text; see encode(allow_special=True).
        self.tok.encode_special_tokens = True
        ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            raise CodelmError("tokenizer.json lacks codelm's special tokens")
        self.special = dict(zip(SPECIAL_TOKENS, ids, strict=True))
        self.eot_id = self.special[EOT]
        self.pad_id = self.special[PAD]

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        self.tok.encode_special_tokens = not allow_special
        try:
            return self.tok.encode(text, add_special_tokens=False).ids
        finally:
            self.tok.encode_special_tokens = True

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        return self.tok.id_to_token(i)

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
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises plain Exceptions on bad JSON
            raise CodelmError(f"cannot load tokenizer {path}: {e}") from None


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> CodeTokenizer:
    """Train a code BPE on an iterator of documents."""
    minimum = BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise CodelmError(
            f"vocab size {vocab_size} is too small: it must be at least {minimum} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seen = 0

    def counted() -> Iterator[str]:
        nonlocal seen
        for t in texts:
            seen += 1
            yield t

    tok.train_from_iterator(counted(), trainer=trainer)
    if seen == 0:
        raise CodelmError("cannot train a tokenizer on an empty corpus")
    return CodeTokenizer(tok)
