"""`--shard` (train/shard.py): FSDP2 on CPUs with gloo and 2 processes, which torch 2.13
supports. A sharded run equals one process to the tolerance of the DDP test; its
sharded checkpoints resume on 2 processes and on 1, and export as one weights file;
Muon's gathered step on shards equals its step on whole matrices."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codelm.train.config import TrainConfig
from tests.conftest import TINY_MODEL, TORCHRUN, corpus_texts, torchrun
from tests.test_train import LOOP, _curve

# AdamW in fp32, as in the DDP test: the runs then differ only by the reductions' rounding.
CFG = dict(LOOP, fim_rate=0.0, optimizer="adamw")
CLOSE = 2e-5  # the DDP test's tolerance on train and validation loss

_RUN = """
import sys
from codelm.train.config import TrainConfig
from codelm.train.distributed import leave
from codelm.train.loop import train
cfg = TrainConfig(**CFG)
if sys.argv[2] == "resume":
    train(None, sys.argv[1], cfg, resume=True)
else:
    train(DATA, sys.argv[1], cfg, tokenizer=TOK, model_overrides=TINY)
leave(0)
"""


def _torchrun(script: Path, run: Path | str, mode: str) -> None:
    proc = torchrun([*TORCHRUN, script, run, mode])
    assert proc.returncode == 0, proc.stderr[-4000:]


def _close(a: Path, b: Path) -> bool:
    ca, cb = _curve(a), _curve(b)
    return [r["step"] for r in ca] == [r["step"] for r in cb] and all(
        abs(x[k] - y[k]) < CLOSE for x, y in zip(ca, cb, strict=True) for k in ("train_loss", "val_loss")
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer):
    """One process and 2 sharded processes on the same data, same config."""
    from codelm.data.build import build_dataset
    from codelm.train.loop import train

    root = tmp_path_factory.mktemp("shard")
    for k, text in enumerate(corpus_texts(copies=6)):
        (root / "src" / f"pkg{k % 3}").mkdir(parents=True, exist_ok=True)
        (root / "src" / f"pkg{k % 3}" / f"mod_{k}.py").write_text(text)
    build_dataset([str(root / "src")], root / "data", progress=False)
    tokenizer.save(root / "tok.json")
    train(
        root / "data",
        root / "one",
        TrainConfig(**CFG),
        tokenizer=root / "tok.json",
        model_overrides=TINY_MODEL,
    )
    values = dict(
        DATA=str(root / "data"), TOK=str(root / "tok.json"), CFG={**CFG, "shard": True}, TINY=TINY_MODEL
    )
    script = root / "run.py"
    script.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()) + _RUN)
    _torchrun(script, str(root / "sharded"), "new")
    return root, script


def test_two_sharded_processes_equal_one(runs):
    root, _ = runs
    assert len(_curve(root / "one")) >= 3 and _close(root / "one", root / "sharded")
    names = sorted(p.name for p in (root / "sharded" / "checkpoints" / "step-00000012").iterdir())
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.json"]  # a shard file per process
    one, sharded = (load_file(str(root / r / "model.safetensors")) for r in ("one", "sharded"))
    assert sharded.keys() == one.keys() and all(sharded[k].shape == one[k].shape for k in one)


def test_a_sharded_checkpoint_resumes_on_two_processes_and_on_one(runs):
    from codelm.train.loop import train

    root, script = runs
    for n in (2, 1):
        run = root / f"resumed-on-{n}"
        shutil.copytree(root / "sharded", run)
        shutil.rmtree(run / "checkpoints" / "step-00000012")  # the newest is now step 8
        if n == 2:
            _torchrun(script, str(run), "resume")
        else:
            train(None, run, TrainConfig(**CFG), resume=True)
    assert _curve(root / "resumed-on-2") == _curve(root / "sharded")  # the same shards: exact
    assert _close(root / "resumed-on-1", root / "sharded")


def test_a_sharded_checkpoint_exports_as_one_weights_file(runs, capsys):
    from codelm import cli

    root, _ = runs
    out = root / "step-12.safetensors"
    assert cli.main(["export", str(root / "sharded"), "--format", "safetensors", "--out", str(out)]) == 0
    assert "exported the weights of step-00000012" in capsys.readouterr().out
    exported, saved = load_file(str(out)), load_file(str(root / "sharded" / "model.safetensors"))
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)
    assert cli.main(["export", str(root / "sharded"), "--format", "safetensors", "--checkpoint", "step-9",
                     "--out", str(out)]) == 2  # fmt: skip
    assert "no checkpoint step-9" in capsys.readouterr().err
    for name in ("12", "step-12", "step-00000012"):  # as the trace prints a step, or the folder's name
        assert cli.main(["export", str(root / "sharded"), "--format", "safetensors", "--checkpoint", name,
                         "--out", str(out)]) == 0  # fmt: skip
        assert "exported the weights of step-00000012" in capsys.readouterr().out


_MUON = """
import json, torch, torch.distributed as dist
from codelm.model import ModelConfig, Transformer
from codelm.train import shard
from codelm.train.distributed import leave
from codelm.train.loop import muon_splits
from codelm.train.muon import MuonAdamW

dist.init_process_group("gloo")
models = []
for sharded in (False, True):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, **TINY))
    if sharded:
        shard.apply(model, torch.device("cpu"))
    hidden = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    opt = MuonAdamW([{"params": hidden, "muon": True, "lr_scale": 10.0, "weight_decay": 0.1}],
                    lr=3e-3, ns_dtype=torch.float32, splits=muon_splits(model))  # per head
    for step in range(3):
        torch.manual_seed(100 + step)  # the same tokens on both processes: the same gradient
        model(torch.randint(0, 97, (2, 16))).float().square().mean().backward()
        opt.step()
        opt.zero_grad()
    whole = {n: (p.full_tensor() if sharded else p).detach().clone() for n, p in model.named_parameters()}
    models.append(whole)
torch.manual_seed(0)
start = dict(Transformer(ModelConfig(vocab_size=97, **TINY)).named_parameters())
plain, sharded = models
hidden = [n for n in plain if n.startswith("blocks.") and plain[n].dim() == 2]
diff = max((plain[n] - sharded[n]).abs().max().item() for n in hidden)
moved = min((plain[n] - start[n]).abs().max().item() for n in hidden)
if dist.get_rank() == 0:
    print(json.dumps({"max_diff": diff, "min_moved": moved}))
dist.destroy_process_group()
leave(0)
"""


def test_muon_on_shards_equals_muon_on_whole_matrices(tmp_path):
    script = tmp_path / "muon.py"
    script.write_text(f"TINY = {TINY_MODEL!r}\n" + _MUON)
    proc = torchrun([*TORCHRUN, script])
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    got = json.loads(line)
    # fp32 Newton-Schulz both ways. The sharded forward and backward round a few sums in
    # another order (1e-7), and the iteration multiplies small singular values by up to
    # 3.4445^5 = 480: 3.5e-5 after 3 steps, 0.2% of how far the weights moved. A row of
    # another process's shard applied here would be off by as much as the step itself.
    assert got["max_diff"] < 0.01 * got["min_moved"]


@pytest.mark.parametrize("mode", ["ddp", "shard"])
def test_the_training_bench_runs_both_engines_on_two_processes(mode, tmp_path):
    """bench/train.py --parallel, on CPUs as it would run on GPUs: it relaunches itself under
    torchrun, steps codelm and transformers on 2 processes, and (DDP) finds the replicas equal."""
    pytest.importorskip("transformers", reason="the bench's peer")
    bench = Path(__file__).resolve().parents[1] / "bench" / "train.py"
    out = tmp_path / "bench.json"
    args = ["--preset", "tiny", "--vocab", "256", "--batch", "2", "--seq", "32", "--reps", "1"]
    cmd = [sys.executable, str(bench), *args, "--parallel", mode, "--json", str(out)]
    proc = torchrun(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world"] == 2 and got["parallel"] == mode
    assert set(got["engines"]) == {"codelm", "transformers"}
    assert got.get("replicas_agree", mode == "shard") is True  # FSDP has no replicas to compare
