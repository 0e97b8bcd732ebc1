"""`codelm lsp` driven by a client that is not ours: tests/lsp_node/client.mjs, a Node script
built on VS Code's own protocol libraries (vscode-jsonrpc, vscode-languageserver-protocol,
pinned in tests/lsp_node/package-lock.json). It runs the same session as the Python
end-to-end test against a tiny run and reports what it saw as JSON; this module asserts the
protocol invariants on that report. Skipped (skipif, with the reason) when node or npm is missing
or node is too old (CI installs them, see .ci/run); fails when `npm ci` fails."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codelm.fsutil import atomic_write_json
from codelm.model import ModelConfig, Transformer
from codelm.model.io import save_weights

NODE_DIR = Path(__file__).resolve().parent / "lsp_node"
REPO = NODE_DIR.parents[1]
MIN_NODE = 18
INLINE_STEPS = (
    "middle_of_function",
    "after_def",
    "suffix_closes_bracket",
    "end_of_line_after_emoji",
    "automatic_after_def",
    "repeat_after_def",
    "after_typing",
)


def _installed() -> bool:
    """Whether node_modules holds exactly the versions package-lock.json pins."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    for where, entry in lock["packages"].items():
        if not where:
            continue
        manifest = NODE_DIR / where / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text()).get("version") != entry["version"]:
            return False
    return True


def _node_missing() -> str | None:
    """Why the Node client cannot run here, or None when node and npm are fit."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return (
            f"no {'node' if node is None else 'npm'} found: install Node.js and npm "
            "(Debian's nodejs and npm) to run the VS Code protocol client test"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    if int(version.strip().lstrip("v").split(".")[0]) < MIN_NODE:
        return f"node {version.strip()} is too old for the VS Code protocol client: needs {MIN_NODE}+"
    return None


NODE_MISSING = _node_missing()
pytestmark = pytest.mark.skipif(NODE_MISSING is not None, reason=NODE_MISSING or "")


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None and npm is not None  # NODE_MISSING said so
    if not _installed():
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0 or not _installed():
            pytest.fail(f"`npm ci` in {NODE_DIR} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return node


@pytest.fixture
def run_dir(tmp_path, tokenizer) -> Path:
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=256)
    ).eval()
    run = tmp_path / "run"
    run.mkdir()
    atomic_write_json(run / "config.json", {"model": model.cfg.to_dict()})
    save_weights(model, run / "model.safetensors")
    tokenizer.save(run / "tokenizer.json")
    return run


def _session(node: str, run: Path, workspace: Path) -> dict:
    workspace.mkdir()
    cmd = [node, str(NODE_DIR / "client.mjs"), "--workspace", str(workspace), "--"]
    cmd += [sys.executable, "-m", "codelm", "lsp", str(run)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"the Node client failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def test_vscode_protocol_client_session(node, run_dir, tmp_path):
    _check_report(_session(node, run_dir, tmp_path / "workspace"))


def _check_report(seen: dict) -> None:
    """The protocol invariants on the client's report (its shape checks have passed)."""
    caps, steps, stats = seen["capabilities"], seen["steps"], seen["stats"]

    # `true` or an options object, `{}` included, announces a provider.
    assert caps.get("inlineCompletionProvider") not in (None, False), caps
    assert caps.get("completionProvider") not in (None, False), caps
    sync = caps["textDocumentSync"]
    assert (sync if isinstance(sync, int) else sync["change"]) == 2
    assert "codelm.acceptCompletion" in caps["executeCommandProvider"]["commands"]

    for name in (*INLINE_STEPS, "superseded"):
        assert "error" not in steps[name], (name, steps[name])
    for name in (*INLINE_STEPS, "superseded", "cancelled"):
        pos = steps[name]["position"]
        for item in steps[name].get("items", []):
            assert isinstance(item["insertText"], str)
            start, end = item["range"]["start"], item["range"]["end"]
            assert start == pos, (name, item)
            assert end["line"] == pos["line"] and end["character"] >= pos["character"], (name, item)

    assert steps["superseded"]["items"] == []
    cancelled = steps["cancelled"]
    assert "items" in cancelled or cancelled["error"]["code"] == -32800, cancelled
    for name in ("outside_document", "past_end_of_line", "unknown_uri"):
        assert steps[name].get("error", {}).get("code") == -32602, (name, steps[name])
    assert len(steps["completion"]["list"]["items"]) <= 1

    # The stats count what this session did: every inline request that got an answer.
    answered = sum("items" in steps[name] for name in (*INLINE_STEPS, "superseded", "cancelled"))
    assert stats["requests"] >= answered, stats
    assert stats["superseded"] >= 1, stats
    if "error" in cancelled:
        assert stats["cancelled"] >= 1, stats
    assert stats["accepted"] >= len(seen["accepted"]), stats
    # `shown` and `latency_ms` count answers with at least one item.
    with_items = sum(bool(steps[name]["items"]) for name in INLINE_STEPS)
    assert stats["shown"] >= with_items, stats
    assert stats["latency_ms"]["n"] >= min(with_items, 1), stats
    assert 0.0 <= stats["accept_rate"] <= 1.0, stats
    assert seen["exit"]["code"] == 0
