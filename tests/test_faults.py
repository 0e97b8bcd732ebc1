"""Faults a real process meets: a SIGKILL in the middle of writing a checkpoint, a kill of a
two-process torchrun run, and a disk that fills up under `codelm data build`, `codelm
tokenizer train` and `codelm train`. Each runs in child processes, so the kill and the full
disk are real; each asserts that nothing written before is lost and that the resumed run
equals one that was never interrupted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codelm.train.config import TrainConfig
from tests.conftest import TINY_MODEL, TORCHRUN, torchrun
from tests.test_train import LOOP, _curve, _data


def _script(path: Path, body: str, **values) -> Path:
    """A child-process script: `values` become Python literals at its top."""
    head = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    path.write_text(head + body)
    return path


_KILL_MID_SAVE = """
import os, signal
import codelm.train.checkpoint as checkpoint
from codelm.train.config import TrainConfig
from codelm.train.loop import train

real, written = checkpoint.save_file, []

def dying(tensors, path, *args, **kw):
    real(tensors, path, *args, **kw)
    written.append(path)
    if len(written) == KILL_AFTER:  # between two files of one checkpoint
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint.save_file = dying
train(DATA, RUN, TrainConfig(**CFG), tokenizer=TOK, model_overrides=TINY)
"""


def test_a_kill_in_the_middle_of_a_checkpoint_is_reported_and_the_resume_is_exact(
    tmp_path, corpus_dir, tokenizer, capsys
):
    from codelm.train.loop import train

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    cfg = TrainConfig(**LOOP)  # checkpoints at steps 4, 8 and 12, two files each
    train(data, tmp_path / "a", cfg, tokenizer=tok, model_overrides=TINY_MODEL)
    run = tmp_path / "b"
    script = _script(
        tmp_path / "kill.py", _KILL_MID_SAVE,
        DATA=str(data), RUN=str(run), TOK=str(tok), CFG=LOOP, TINY=TINY_MODEL, KILL_AFTER=3,
    )  # fmt: skip
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == ["step-00000004"]
    (cut,) = ckpts.glob(".step-00000008.*.tmp")  # step 8's weights, without its optimizer
    assert (cut / "model.safetensors").is_file() and not (cut / "optimizer.safetensors").exists()

    capsys.readouterr()
    train(None, run, cfg, resume=True)
    err = capsys.readouterr().err
    assert "checkpoint step-00000008 was cut off while being written" in err
    assert "resuming from step-00000004" in err
    assert not list(ckpts.glob(".*"))  # the cut-off folder is gone
    assert _curve(tmp_path / "a") == _curve(run)
    wa, wb = (load_file(str(r / "model.safetensors")) for r in (tmp_path / "a", run))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


_TORCHRUN = """
import os, signal, sys
import codelm.train.loop as loop
from codelm.train.config import TrainConfig
from codelm.train.distributed import leave

real, calls = loop.train_step, []

def killed(*args, **kw):
    calls.append(1)
    if KILL_AT and len(calls) == KILL_AT and int(os.environ["RANK"]) == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kw)

loop.train_step = killed
cfg = TrainConfig(**CFG)
if sys.argv[2] == "resume":
    loop.train(None, sys.argv[1], cfg, resume=True)
else:
    loop.train(DATA, sys.argv[1], cfg, tokenizer=TOK, model_overrides=TINY)
leave(0)
"""


def _torchrun(script: Path, run: Path, mode: str) -> subprocess.CompletedProcess:
    return torchrun([*TORCHRUN, script, run, mode])


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_run(tmp_path, corpus_dir, tokenizer):
    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    cfg = dict(LOOP, optimizer="adamw")
    common = dict(DATA=str(data), TOK=str(tok), CFG=cfg, TINY=TINY_MODEL)
    whole = _script(tmp_path / "whole.py", _TORCHRUN, KILL_AT=0, **common)
    killed = _script(tmp_path / "killed.py", _TORCHRUN, KILL_AT=7, **common)  # newest checkpoint: 4
    a = _torchrun(whole, tmp_path / "a", "new")
    assert a.returncode == 0, a.stderr[-4000:]
    b = _torchrun(killed, tmp_path / "b", "new")
    assert b.returncode != 0 and "SIGKILL" in b.stderr, b.stderr[-4000:]
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step-00000004"]
    resumed = _torchrun(whole, tmp_path / "b", "resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming from step-00000004" in resumed.stderr
    assert len(_curve(tmp_path / "a")) >= 3 and _curve(tmp_path / "a") == _curve(tmp_path / "b")
    wa, wb = (load_file(str(tmp_path / r / "model.safetensors")) for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _namespaces_work() -> bool:
    """A user and mount namespace (`unshare -rm`) lets a test mount its own small tmpfs."""
    if shutil.which("unshare") is None:
        return False
    probe = "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"
    return subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True).returncode == 0


_DISK_FULL = """
import hashlib, json, os, shutil, subprocess, sys
from pathlib import Path

M = Path(MNT)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", MNT], check=True)
seen = {}


def codelm(*args):
    p = subprocess.run([sys.executable, "-m", "codelm", *map(str, args)], capture_output=True, text=True)
    return {"rc": p.returncode, "err": p.stderr.strip()}


def fill(leave):  # a file that takes all but `leave` bytes of the tmpfs
    st = os.statvfs(MNT)
    with open(M / "filler", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(st.f_bavail * st.f_frsize - leave, 1))


def digests(root):
    return {str(p.relative_to(M)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "filler"}


def du(root):
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def stray():  # temporary files or folders left behind
    return sorted(str(p.relative_to(M)) for p in M.rglob(".*"))


seen["build"] = codelm("data", "build", CORPUS, "--out", M / "data")
before = digests(M / "data")
fill(4096)
seen["rebuild_full"] = codelm("data", "build", CORPUS, "--out", M / "data")
seen["new_full"] = codelm("data", "build", CORPUS, "--out", M / "data2")
seen["data_kept"] = digests(M / "data") == before
seen["data2_absent"] = not (M / "data2").exists()
(M / "filler").unlink()

seen["tok"] = codelm("tokenizer", "train", M / "data", "--vocab-size", 300, "--out", M / "tok.json")
before = digests(M)
fill(4096)
seen["retok_full"] = codelm("tokenizer", "train", M / "data", "--vocab-size", 400, "--out", M / "tok.json")
seen["tok_kept"] = digests(M) == before
(M / "filler").unlink()
seen["stray_before_train"] = stray()

train = ["train", "--data", M / "data", "--tokenizer", M / "tok.json", *TRAIN]
seen["ref"] = codelm(*train, "--out", M / "ref")
assert seen["ref"]["rc"] == 0, seen
seen["ref_metrics"] = (M / "ref" / "metrics.jsonl").read_text()
ckpt = du(M / "ref" / "checkpoints" / "step-00000004")
room = du(M / "ref") - ckpt // 2  # everything but half of the second checkpoint
shutil.rmtree(M / "ref")
fill(room)
seen["train_full"] = codelm(*train, "--out", M / "run")
seen["ckpts_after_full"] = sorted(p.name for p in (M / "run" / "checkpoints").iterdir())
seen["stray_after_full"] = stray()
from codelm.model.io import load_model  # checks the weights' sha256

seen["weights_whole"] = load_model(M / "run").num_params() > 0
(M / "filler").unlink()
seen["resume"] = codelm("train", "--out", M / "run", "--resume")
seen["run_metrics"] = (M / "run" / "metrics.jsonl").read_text()
print(json.dumps(seen))
"""


def _without_times(metrics: str) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in metrics.splitlines()]


def _one_line_no_space(result: dict, path: str) -> None:
    err = result["err"]
    assert result["rc"] == 2 and "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("codelm: error: no space left on device writing ") and path in last, err


@pytest.mark.skipif(not _namespaces_work(), reason="needs `unshare -rm` (user and mount namespaces)")
def test_a_full_disk_is_one_line_loses_nothing_and_training_resumes(tmp_path, corpus_dir):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # AdamW: its checkpoint (weights and two moments) is three times the weights, so half of
    # it is more than the weights' own temporary copy and the first save to fail is step 8's.
    train = "--preset tiny --max-steps 8 --checkpoint-every 4 --batch-size 4 --seq-len 64"
    train += " --dtype fp32 --optimizer adamw --seed 1"
    script = _script(
        tmp_path / "full.py", _DISK_FULL, MNT=str(mnt), CORPUS=str(corpus_dir), TRAIN=train.split()
    )
    proc = subprocess.run(
        ["unshare", "-rm", sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)
    m = str(mnt)
    assert seen["build"]["rc"] == 0 and seen["tok"]["rc"] == 0 and seen["ref"]["rc"] == 0
    _one_line_no_space(seen["rebuild_full"], f"{m}/data")
    _one_line_no_space(seen["new_full"], f"{m}/data2")
    assert seen["data_kept"] and seen["data2_absent"]
    _one_line_no_space(seen["retok_full"], f"{m}/tok.json")
    assert seen["tok_kept"] and seen["stray_before_train"] == []

    _one_line_no_space(seen["train_full"], f"{m}/run/checkpoints/step-00000008")
    assert f"codelm train --out {m}/run --resume" in seen["train_full"]["err"]
    assert seen["ckpts_after_full"] == ["step-00000004"] and seen["stray_after_full"] == []
    assert seen["weights_whole"]
    assert seen["resume"]["rc"] == 0, seen["resume"]["err"]
    assert _without_times(seen["run_metrics"]) == _without_times(seen["ref_metrics"])
