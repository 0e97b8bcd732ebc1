"""Evaluation with a model: intrinsic metrics, the n-gram baseline, line completion, `codelm eval`."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from codelm.evaluate.intrinsic import IntrinsicConfig, copy_gain, intrinsic_metrics
from codelm.evaluate.line_completion import LineConfig, Position, body_lines, sample_positions, score
from codelm.evaluate.ngram import NGramModel
from codelm.model import ModelConfig, Transformer
from tests.conftest import TINY_MODEL


def test_uniform_model_has_loss_log_vocab_and_consistent_bits_per_byte(tokenizer):
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **TINY_MODEL)).eval()
    with torch.no_grad():
        model.head.weight.zero_()  # tied: logits are all zero, every token has probability 1/V
    texts = ["def f(x):\n    return x + 1\n", "x = [1, 2, 3]\n" * 30]
    m = intrinsic_metrics(model, tokenizer, texts, IntrinsicConfig(max_tokens=10_000))
    assert math.isclose(m.loss, math.log(tokenizer.vocab_size), rel_tol=1e-5)
    assert math.isclose(m.bits_per_byte, m.loss * m.tokens / math.log(2) / m.bytes, rel_tol=1e-9)
    assert m.bytes == sum(len(t.encode()) for t in texts) and m.documents == 2
    assert m.tokens == sum(len(tokenizer.encode(t)) + 1 for t in texts) - 1


class _Copier(Transformer):
    """Predicts, from position `lag` - 1 on, the token `lag` - 1 places back with certainty:
    a perfect induction head over copies of length `lag`; uniform before that."""

    def __init__(self, lag: int):
        super().__init__(ModelConfig(vocab_size=97, **TINY_MODEL))
        self.lag = lag

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.cfg.vocab_size)
        src = idx[:, : T - self.lag + 1]  # the token that came after the previous occurrence
        logits[:, self.lag - 1 :].scatter_(-1, src[..., None], 50.0)
        return logits


def test_copy_gain_is_what_a_model_saves_on_a_repeated_span():
    uniform = Transformer(ModelConfig(vocab_size=97, **TINY_MODEL)).train()
    with torch.no_grad():
        uniform.head.weight.zero_()
    assert copy_gain(uniform) == 0.0
    assert uniform.training  # left as it was found
    # A perfect copier saves all of log V on the second copy, and nothing on the first.
    assert math.isclose(copy_gain(_Copier(20), span=20), math.log(97), rel_tol=1e-4)
    # A span longer than half the context is cut to fit both copies: 32 of TINY_MODEL's 64.
    assert math.isclose(copy_gain(_Copier(32), span=48), math.log(97), rel_tol=1e-4)
    assert copy_gain(_Copier(48), span=48) < 0  # a copier looking too far back is confidently wrong


def test_ngram_predicts_seen_continuations_and_backs_off():
    seq = np.array([1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3, 4, 9, 9], dtype=np.uint16)
    ng = NGramModel(seq, order=3)
    assert ng.predict([2, 3]) == 4  # seen twice after (2, 3), against 5 once
    assert ng.predict([7, 3]) == 4  # unseen (7, 3): backs off to (3,) -> 4
    assert ng.predict([42]) == 1  # unigram: 1, 2, 3 tie at 3 counts; the smallest id wins
    assert ng.complete_line([1, 2], lambda t: t == 5, max_tokens=3) == [3, 4, 1]


def test_positions_are_code_lines_inside_function_bodies():
    text = "import os\n\n\ndef f(x):\n    # a comment\n    y = x + 1\n\n    return y\n\nZ = 3\n"
    assert body_lines(text) == [5, 7]
    pos = sample_positions([text], LineConfig(positions=10, per_file=5))
    assert [p.line for p in pos] == ["    y = x + 1", "    return y"]
    assert pos[0].context == "import os\n\n\ndef f(x):\n    # a comment\n    "  # up to the code
    assert body_lines("def broken(:\n") == []


def test_line_scores():
    pos = [Position("", "    return x"), Position("", "y = 1")]
    s = score(["return x", "y = 2"], pos)
    assert s.exact_match == 0.5 and 0.5 < s.edit_similarity < 1.0


def test_codelm_eval_end_to_end(tmp_path, corpus_dir, tokenizer, capsys):
    from codelm.cli import main
    from codelm.data.build import build_dataset
    from codelm.train.config import TrainConfig
    from codelm.train.loop import train

    data = tmp_path / "data"
    build_dataset([str(corpus_dir)], data)
    tokenizer.save(tmp_path / "tok.json")
    cfg = TrainConfig(max_steps=6, epochs=0, batch_size=4, evals=1, dtype="fp32", fim_rate=0.0)
    train(data, tmp_path / "run", cfg, tokenizer=tmp_path / "tok.json", model_overrides=TINY_MODEL)
    problems = tmp_path / "p.jsonl"
    problems.write_text(
        json.dumps(
            {
                "task_id": "t/0",
                "prompt": "def add(a, b):\n",
                "entry_point": "add",
                "test": "def check(c):\n    assert c(1, 2) == 3\n",
            }
        )
        + "\n"
    )
    out = tmp_path / "report.json"
    args = ["eval", str(tmp_path / "run"), "--data", str(data), "--problems", str(problems)]
    assert main([*args, "--samples", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (
        report["intrinsic"]["tokens"] > 0 and 0 <= report["intrinsic"]["top1"] <= report["intrinsic"]["top5"]
    )
    assert set(report["line_completion"]) == {"model", "ngram"}
    assert report["pass_at_k"]["problems"] == 1 and 0.0 <= report["pass_at_k"]["pass@1"] <= 1.0
    assert "bits per byte" in capsys.readouterr().out
    # Reproducible from its seed.
    assert main([*args, "--samples", "2", "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["intrinsic"] == report["intrinsic"] and again["line_completion"] == report["line_completion"]
    assert again["pass_at_k"]["pass@1"] == report["pass_at_k"]["pass@1"]
    # A run imported from a Hugging Face folder names no DATA: without --data it gets pass@k
    # alone, here on an MBPP-format line, asked in instruction mode.
    from codelm.interop.hf import export_hf, import_hf

    export_hf(tmp_path / "run", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "elsewhere")
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(
        json.dumps({"task_id": 7, "text": "Add a and b.", "test_list": ["assert add(1, 2) == 3"]})
    )
    only = ["eval", str(tmp_path / "elsewhere"), "--problems", str(mbpp), "--samples", "2"]
    assert main([*only, "--json", str(tmp_path / "only.json")]) == 0
    report = json.loads((tmp_path / "only.json").read_text())
    assert report["data"] is None and "intrinsic" not in report and "line_completion" not in report
    assert report["pass_at_k"]["problems"] == 1
    capsys.readouterr()
    assert main([*only[:-1], "0"]) == 2
    err = capsys.readouterr().err
    assert "names no DATA it was trained on: give --data" in err and len(err.strip().splitlines()) == 1


def test_held_out_folder_is_read_like_a_corpus_directory(tmp_path):
    from codelm.evaluate.report import held_out_texts

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("def a():\n    return 1\n")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (tmp_path / ".venv" / "lib" / "b.py").write_text("def b():\n    return 2\n")
    texts, label = held_out_texts(str(tmp_path), "test")
    assert texts == ["def a():\n    return 1\n"] and label == str(tmp_path)
