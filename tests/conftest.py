"""Shared fixtures: tiny corpora, tokenizers and models built inside the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from codelm.model import ModelConfig, Transformer
from codelm.tokenizer import train_tokenizer

TINY_MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=64)

SNIPPETS = [
    '''
    def add(a, b):
        """Return the sum of a and b."""
        return a + b
    ''',
    """
    def is_even(n):
        return n % 2 == 0


    def is_odd(n):
        return not is_even(n)
    """,
    """
    class Stack:
        def __init__(self):
            self.items = []

        def push(self, item):
            self.items.append(item)

        def pop(self):
            return self.items.pop()
    """,
    """
    def clamp(x, lo, hi):
        if x < lo:
            return lo
        if x > hi:
            return hi
        return x
    """,
    """
    import os


    def list_python_files(root):
        out = []
        for dirpath, _, names in os.walk(root):
            for name in names:
                if name.endswith(".py"):
                    out.append(os.path.join(dirpath, name))
        return sorted(out)
    """,
]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(cmd: list, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `cmd` (`[*TORCHRUN, script, ...]`, or a command that relaunches itself under
    torchrun). PYTHONFAULTHANDLER makes a rank that crashes print each thread's Python stack."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.run([str(a) for a in cmd], capture_output=True, text=True, timeout=timeout, env=env)


def corpus_texts(copies: int = 4) -> list[str]:
    """Small, varied Python files; each snippet appears under `copies` renamed variants."""
    texts = []
    for i in range(copies):
        for j, s in enumerate(SNIPPETS):
            texts.append(textwrap.dedent(s).lstrip() + f"\n\nVALUE_{i}_{j} = {i * 31 + j}\n")
    return texts


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(corpus_texts(), vocab_size=400)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=97, **TINY_MODEL)).eval()


@pytest.fixture
def corpus_dir(tmp_path):
    """A directory of Python files, enough for every split to get some."""
    root = tmp_path / "src"
    for k, text in enumerate(corpus_texts(copies=6)):
        sub = root / f"pkg{k % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"mod_{k}.py").write_text(text)
    return root
