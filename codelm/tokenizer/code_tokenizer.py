"""A lossless byte-level BPE tokenizer for code, with codelm's special tokens; it also
wraps any pretrained model's tokenizer.json.

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

A foreign tokenizer.json (SmolLM2, Qwen2.5-Coder, DeepSeek-Coder, StarCoder2,
CodeLlama) goes through HF's pipeline; `roles.py` maps its special tokens to codelm's
roles. Two things differ from HF's own use of such a file:
- text is encoded exactly as written: no dummy leading space (SentencePiece's `▁`
  prefix, ByteLevel's add_prefix_space). codelm encodes a document's parts one by
  one (prefix, suffix, instruction, code) and joins the ids, where a space at the
  start of each part would be text nobody wrote;
- decode is the concatenation of `token_bytes`, for every tokenizer: `▁` is a space
  and `<0xNN>` the byte NN in SentencePiece vocabularies, a leading space included
  (HF's Metaspace decoder drops it), because a completion's first token follows the
  prompt, and the space it starts with is text. So decode(encode(x)) == x, and a
  streamed completion (its tokens' bytes, one by one) equals the decode of its ids.
  (SentencePiece itself reads a `▁` written in the text as a space: that one
  character does not round-trip.)
The cost: at a document's start a SentencePiece model was trained on `<s> ▁def`
and codelm gives it `<s> def`, a difference at the first token only, where a `▁`
before every part would put spaces into the code.
Stop tokens (`stop_ids`: every token the file marks special, every role's token,
CodeLlama's `▁<EOT>`) are written as their names, and text never encodes to one,
even where the file leaves a role's token unmarked (DeepSeek-Coder's FIM tokens).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from codelm.errors import CodelmError
from codelm.tokenizer.chat import CHAT_FILE, FENCE, ChatTemplate
from codelm.tokenizer.encoder import PieceEncoder, is_code_pipeline
from codelm.tokenizer.pretokenize import CHAR_TO_BYTE, hf_pre_tokenizer, replace_surrogates
from codelm.tokenizer.roles import (
    EOT,
    INSTRUCTION,
    PAD,
    SPECIAL_TOKENS,
    end_ids,
    find_roles,
    prepended_id,
)
from codelm.tokenizer.units import UnitScanner, force_units

BYTE_ALPHABET = 256
MIN_VOCAB = BYTE_ALPHABET + len(SPECIAL_TOKENS)
_BYTE_TOKEN = re.compile("<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


class CodeTokenizer:
    """A tokenizer: the HF `Tokenizer` (`.tok`) plus the ids and fast paths the pipeline needs.

    `special` maps codelm's roles (EOT, PAD, FIM_*, INSTRUCTION, CODE) to this tokenizer's
    ids, for the roles it has (a codelm tokenizer: all seven); `pad_id` is eot_id without a
    padding token. `bos_id` starts a document (eot_id unless the file's post-processor
    prepends a token); a generated token in `stop_ids` ends the text. `chat` is an imported
    instruct model's chat template (chat.py), saved and loaded beside the tokenizer.json.

    Safe to share between threads: the only state that calls change is the encoder's
    piece cache, which `PieceEncoder` guards."""

    def __init__(self, tok: Tokenizer, native: bool | None = None, chat: ChatTemplate | None = None):
        """`native`: cut and cache pieces in C++ (True) or Python (False); default: C++
        where it builds (`pieces.available()`). Both give the same ids."""
        self.tok = tok
        self.chat = chat
        # Anyone calling self.tok directly also gets spelled-out specials encoded as text.
        self.tok.encode_special_tokens = True
        self.special: dict[str, int] = find_roles(tok.token_to_id)
        self.eot_id = self.special[EOT]
        self.pad_id = self.special.get(PAD, self.eot_id)
        spec = json.loads(tok.to_str())
        bos = prepended_id(spec)
        # Without a token of its own, a document starts after the previous one's end.
        self.bos_id = self.eot_id if bos is None else bos
        added_tokens = spec.get("added_tokens") or []
        marked = {t["id"] for t in added_tokens if t.get("special")}
        self.stop_ids = frozenset(marked | set(self.special.values()) | end_ids(tok.token_to_id))
        added = {t["content"]: t["id"] for t in added_tokens}
        self._added = added
        self._added_re = (
            re.compile("(" + "|".join(map(re.escape, sorted(added, key=len, reverse=True))) + ")")
            if added
            else None
        )
        self._scheme = _piece_scheme(spec)
        # The fast path needs this package's pre-tokenizer; a foreign or older tokenizer.json
        # is still usable through HF's own pipeline (same ids for it, several times slower).
        self._fast = PieceEncoder(spec, added, native) if is_code_pipeline(spec) else None
        self._plain = None if self._fast else _exact_encoder(spec, self.stop_ids) or self.tok

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def has(self, role: str) -> bool:
        """Whether this tokenizer has a token for `role` (EOT, PAD, FIM_PREFIX, ...)."""
        return role in self.special

    @property
    def uses_chat(self) -> bool:
        """Whether instructions are laid out in the chat template: there is one, and no
        instruction tokens of codelm's own (which a codelm-trained model learned)."""
        return self.chat is not None and not self.has(INSTRUCTION)

    @functools.cached_property
    def chat_ids(self) -> tuple[list[int], list[int], list[int]]:
        """The chat template's ids around an instruction and its code: before the instruction
        (the document start first), between it and the code (the assistant's turn opened and
        a ```python fence), and after the code (the turn's end; none where the template shows none)."""
        before, between = self.chat_turn_ids(())  # a CodelmError without a template
        return before, between, self.encode(self.chat.frame.after, allow_special=True)

    def chat_turn_ids(self, history: tuple[tuple[str, str], ...]) -> tuple[list[int], list[int]]:
        """Ids before and after a request that follows the `history` turns ((role, text)), as in
        `chat_ids`: without history, chat_ids' first two."""
        if self.chat is None:
            raise CodelmError("this tokenizer has no chat template")
        before, between = self.chat.around(history)
        ids = self.encode(before, allow_special=True)
        if self.bos_id != self.eot_id and ids[:1] != [self.bos_id]:
            ids = [self.bos_id, *ids]  # every document of such a model starts with it
        return ids, self.encode(between + FENCE, allow_special=True)

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
        assert self._plain is not None
        texts = [t if t.isascii() else replace_surrogates(t) for t in texts]
        return [e.ids for e in self._plain.encode_batch_fast(texts, add_special_tokens=False)]

    def _encode_with_specials(self, text: str) -> list[int]:
        if self._added_re is None:
            return self._encode_plain([text])[0]
        parts = self._added_re.split(text)  # odd positions hold the special tokens themselves
        plain = self._encode_plain([p for p in parts[0::2]])
        out: list[int] = []
        for k, ids in enumerate(plain):
            out += ids
            if 2 * k + 1 < len(parts):
                out.append(self._added[parts[2 * k + 1]])
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`: their `token_bytes` joined; special tokens are written out.
        Byte sequences that are not UTF-8 (a sampled token cut mid-character) become
        U+FFFD, as in HF."""
        if self._fast is not None:
            return self._fast.decode(ids)
        ids = list(ids)
        table = self.token_bytes
        if any(not 0 <= i < len(table) for i in ids):
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise ValueError(f"token id {bad} is outside the vocabulary ({len(table)})")
        return b"".join(map(table.__getitem__, ids)).decode("utf-8", "replace")

    def id_to_token(self, i: int) -> str:
        return self.tok.id_to_token(i)

    @functools.cached_property
    def token_bytes(self) -> list[bytes]:
        """The raw bytes of every id (a special token: its spelled-out name), built once:
        a streamed completion then grows by one token in O(1)."""
        if self._fast is not None and len(self._fast.token_bytes) == self.vocab_size:
            return self._fast.token_bytes  # the fast encoder's decode table: the same bytes
        table = []
        for i in range(self.vocab_size):
            piece = self.id_to_token(i) or ""
            table.append(piece.encode() if i in self.stop_ids else _piece_bytes(piece, self._scheme))
        return table

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json to `path`, and the chat template, if any, beside it."""
        from codelm.fsutil import atomic_write_text

        atomic_write_text(path, self.tok.to_str(pretty=False))
        if self.chat is not None:
            self.chat.save(Path(path).parent / CHAT_FILE)

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
        chat = path.parent / CHAT_FILE
        return cls(tok, chat=ChatTemplate.load(chat) if chat.is_file() else None)


def _piece_scheme(spec: dict) -> str:
    """How a tokenizer.json's vocabulary strings spell bytes: "byte-level" (GPT-2's table),
    "sentencepiece" (`▁` for a space, `<0xNN>` byte fallback) or "text" (UTF-8)."""
    types = _types(spec.get("pre_tokenizer")) | _types(spec.get("decoder"))
    if "ByteLevel" in types:
        return "byte-level"
    if types & {"Metaspace", "ByteFallback"} or (spec.get("model") or {}).get("byte_fallback"):
        return "sentencepiece"
    return "text"


def _types(node: object) -> set[str]:
    """Every component type in a (possibly nested `Sequence`) pipeline step."""
    if isinstance(node, list):
        return set().union(*map(_types, node))
    if not isinstance(node, dict):
        return set()
    inner = [v for v in node.values() if isinstance(v, list)]
    return {node.get("type", "")} | _types(inner)


def _piece_bytes(piece: str, scheme: str) -> bytes:
    """The bytes a vocabulary string stands for, as HF's decoder of that scheme gives them."""
    if scheme == "byte-level" and all(c in CHAR_TO_BYTE for c in piece):
        return bytes(CHAR_TO_BYTE[c] for c in piece)
    if scheme == "sentencepiece":
        byte = _BYTE_TOKEN.fullmatch(piece)
        return bytes([int(byte[1], 16)]) if byte else piece.replace("\u2581", " ").encode()
    return piece.encode()  # byte-level decoders, too, keep a string outside their table as is


def _exact_encoder(spec: dict, ends: frozenset[int]) -> Tokenizer | None:
    """A tokenizer for encoding text exactly as written (see the module docstring): `spec`
    without a dummy leading space, and with every token of `ends` marked special, so no text
    spells one (DeepSeek-Coder's FIM tokens are not marked). None: `spec` is that already."""
    norm, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    added = spec.get("added_tokens") or []
    exact = {
        "normalizer": _without_prepend(norm),
        "pre_tokenizer": _without_prefix_space(pre),
        "added_tokens": [{**t, "special": True} if t["id"] in ends else t for t in added],
    }
    if exact == {"normalizer": norm, "pre_tokenizer": pre, "added_tokens": added}:
        return None
    out = Tokenizer.from_str(json.dumps({**spec, **exact}))
    out.encode_special_tokens = True
    return out


def _without_prepend(norm: dict | None) -> dict | None:
    """A normalizer without SentencePiece's `Prepend("▁")` (old Llama conversions)."""
    if norm is None or _is_prepend(norm):
        return None
    if norm.get("type") == "Sequence":
        return {**norm, "normalizers": [n for n in norm["normalizers"] if not _is_prepend(n)]}
    return norm


def _is_prepend(norm: dict) -> bool:
    return norm.get("type") == "Prepend" and norm.get("prepend") == "\u2581"


def _without_prefix_space(pre: dict | None) -> dict | None:
    """A pre-tokenizer that adds no leading space (Metaspace's prepend, ByteLevel's prefix)."""
    if pre is None:
        return None
    if pre.get("type") == "Sequence":
        return {**pre, "pretokenizers": [_without_prefix_space(p) for p in pre["pretokenizers"]]}
    if pre.get("type") == "Metaspace":
        # Older files say add_prefix_space; newer ones prepend_scheme.
        return {
            **pre,
            "prepend_scheme": "never",
            **({"add_prefix_space": False} if "add_prefix_space" in pre else {}),
        }
    if pre.get("type") == "ByteLevel" and pre.get("add_prefix_space"):
        return {**pre, "add_prefix_space": False}
    return pre


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
