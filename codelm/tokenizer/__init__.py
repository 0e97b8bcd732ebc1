"""Tokenizer stage: a byte-level BPE for code, built on HuggingFace `tokenizers`."""

from codelm.tokenizer.code_tokenizer import SPECIAL_TOKENS, CodeTokenizer, train_tokenizer

__all__ = ["SPECIAL_TOKENS", "CodeTokenizer", "train_tokenizer"]
