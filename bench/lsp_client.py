"""The LSP client of bench/lsp.py: JSON-RPC 2.0 over a server's stdio, and the plumbing of
one session (initialize, warm up, wait for the repository index, shut down).

Written here rather than taken from a library so that the bench times what an editor's
client would see: each response's arrival is stamped as it is read.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

WARM_UP = "import os\n\n\ndef read_lines(path):\n    with open(path) as f:\n        "


class Rpc:
    """JSON-RPC 2.0 over a server's stdio with LSP's Content-Length framing. A response
    resolves its request's future to (perf_counter at arrival, message); requests from the
    server get null, workspace/configuration the `settings` of the sections asked."""

    def __init__(self, proc: asyncio.subprocess.Process, settings: dict):
        self.proc, self.settings = proc, settings
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.reader = asyncio.create_task(self._read())

    def _send(self, msg: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **msg}).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def notify(self, method: str, params: object = None) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: object = None) -> tuple[int, asyncio.Future]:
        if self.reader.done():
            raise RuntimeError("the server closed its output")
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        self._send({"id": self.next_id, "method": method, "params": params})
        return self.next_id, fut

    async def call(self, method: str, params: object = None, timeout: float = 60) -> object:
        _, fut = self.request(method, params)
        _, msg = await asyncio.wait_for(fut, timeout)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result")

    def _answer(self, msg: dict) -> object:
        if msg["method"] == "workspace/configuration":
            return [self.settings if i.get("section") == "codelm" else None for i in msg["params"]["items"]]
        return None

    async def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        try:
            while True:
                size = None
                while line := (await out.readline()).strip():
                    key, _, value = line.decode().partition(":")
                    if key.strip().lower() == "content-length":
                        size = int(value)
                if size is None:
                    raise EOFError("the server closed its output")
                msg = json.loads(await out.readexactly(size))
                arrived = time.perf_counter()
                if "method" in msg:
                    if "id" in msg:
                        self._send({"id": msg["id"], "result": self._answer(msg)})
                    continue
                fut = self.pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result((arrived, msg))
        except (EOFError, asyncio.IncompleteReadError, ValueError) as e:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(RuntimeError(f"server gone: {e}"))


def initialize_params(root: Path, settings: dict) -> dict:
    caps = {
        "general": {"positionEncodings": ["utf-16"]},
        "textDocument": {"synchronization": {"didSave": False}, "inlineCompletion": {}},
        "workspace": {"configuration": True, "didChangeConfiguration": {}, "workspaceFolders": True},
    }
    return {
        "processId": os.getpid(),
        "clientInfo": {"name": "codelm-bench"},
        "rootUri": root.as_uri(),
        "workspaceFolders": [{"uri": root.as_uri(), "name": root.name}],
        "capabilities": caps,
        "initializationOptions": {"codelm": settings},
    }


async def warm_up(rpc: Rpc, root: Path) -> None:
    """Two completions in a scratch document: the model loaded, its kernels run once."""
    uri = (root / "_codelm_bench_warm_up.py").as_uri()
    doc = {"uri": uri, "languageId": "python", "version": 0, "text": WARM_UP}
    rpc.notify("textDocument/didOpen", {"textDocument": doc})
    end = {"line": WARM_UP.count("\n"), "character": len(WARM_UP.rsplit("\n", 1)[-1])}
    for kind in (1, 2):
        params = {"textDocument": {"uri": uri}, "position": end, "context": {"triggerKind": kind}}
        await rpc.call("textDocument/inlineCompletion", params, timeout=600)
    rpc.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


async def wait_index(rpc: Rpc, limit: float = 300) -> tuple[dict, float]:
    """The server's index once its size held still for 1.5 s (or after `limit` seconds)."""
    t0, seen = time.perf_counter(), []
    while time.perf_counter() - t0 < limit:
        stats = await rpc.call("codelm/stats")
        seen.append(json.dumps(stats.get("index", {}), sort_keys=True))
        if len(seen) >= 4 and len(set(seen[-4:])) == 1:
            break
        await asyncio.sleep(0.5)
    return stats.get("index", {}), time.perf_counter() - t0


async def stop(rpc: Rpc, proc: asyncio.subprocess.Process) -> None:
    try:
        await rpc.call("shutdown", None, timeout=10)
        rpc.notify("exit")
        await asyncio.wait_for(proc.wait(), 10)
    except (TimeoutError, RuntimeError, ConnectionError):
        pass
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    rpc.reader.cancel()
