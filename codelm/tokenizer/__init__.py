"""Tokenizer stage: a byte-level BPE for code, built on HuggingFace `tokenizers`; it also wraps a
pretrained model's tokenizer.json, its special tokens mapped to codelm's roles (`roles.py`), and
an instruct model's chat template (`chat.py`)."""

from codelm.tokenizer.code_tokenizer import MIN_VOCAB, CodeTokenizer, train_tokenizer
from codelm.tokenizer.corpus import TextFiles
from codelm.tokenizer.roles import (
    CODE,
    EOT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    INSTRUCTION,
    PAD,
    SPECIAL_TOKENS,
)

__all__ = [
    "CODE",
    "EOT",
    "FIM_MIDDLE",
    "FIM_PREFIX",
    "FIM_SUFFIX",
    "INSTRUCTION",
    "MIN_VOCAB",
    "PAD",
    "SPECIAL_TOKENS",
    "CodeTokenizer",
    "TextFiles",
    "train_tokenizer",
]
