"""`codelm lsp` end to end over stdio, driven by pytest-lsp's client (pygls' LanguageClient),
initialized with the capabilities that VS Code and Neovim send.

Two kinds of server:
- a tiny random run in this process's image (`codelm lsp RUN`): the protocol, the shapes,
  errors, cancellation, the stats;
- `codelm lsp --server URL` against a scripted OpenAI-style server (a thread here), whose
  completions the test chooses: what post-processing, the cache, cancellation and
  superseding do with known text, and whether a cancel closes the stream.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from lsprotocol import types as t
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, client_capabilities

from codelm.model import ModelConfig, Transformer

CLIENTS = ["visual-studio-code", "neovim@v0.11.0"]
AUTO = t.InlineCompletionContext(t.InlineCompletionTriggerKind.Automatic)
INVOKED = t.InlineCompletionContext(t.InlineCompletionTriggerKind.Invoked)


@pytest.fixture(scope="module")
def lsp_run(tmp_path_factory, tokenizer):
    from codelm.fsutil import atomic_write_json
    from codelm.model.io import save_weights

    root = tmp_path_factory.mktemp("lsp_run")
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=256)
    )
    atomic_write_json(root / "config.json", {"model": model.cfg.to_dict()})
    save_weights(model, root / "model.safetensors")
    tokenizer.save(root / "tokenizer.json")
    return str(root)


class Scripted:
    """An OpenAI-style completions server whose answer `reply(body)` picks; it streams one
    character per chunk, `delay` seconds apart, and notes when a client hung up."""

    def __init__(self, reply, delay: float = 0.0):
        self.reply, self.delay = reply, delay
        self.bodies: list[dict] = []
        self.hangups: list[tuple[float, int]] = []  # (time, chunks sent) per stream cut short
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                card = {"id": "scripted", "object": "model", "owned_by": "test", "context_length": 2048}
                self._send(200, json.dumps({"object": "list", "data": [card]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                scripted.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                sent = 0
                try:
                    for ch in scripted.reply(body):
                        chunk = {"choices": [{"index": 0, "text": ch, "finish_reason": None}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        sent += 1
                        time.sleep(scripted.delay)
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    scripted.hangups.append((time.monotonic(), sent))

            def _send(self, code: int, data: bytes):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Scripted:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()


async def start(command: list[str], caps: str = "visual-studio-code", options: dict | None = None, root=None):
    client = await ClientServerConfig(
        server_command=[sys.executable, "-m", "codelm", "lsp", *command]
    ).start()
    params = t.InitializeParams(capabilities=client_capabilities(caps), initialization_options=options)
    if root is not None:
        params.root_uri = root.as_uri()
    result = await client.initialize_session(params)
    return client, result


def open_doc(client, uri: str, text: str) -> None:
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, "python", 1, text)))


def type_text(client, uri: str, version: int, line: int, character: int, text: str) -> None:
    at = t.Position(line, character)
    change = t.TextDocumentContentChangePartial(range=t.Range(at, at), text=text)
    params = t.DidChangeTextDocumentParams(
        t.VersionedTextDocumentIdentifier(version=version, uri=uri), [change]
    )
    client.text_document_did_change(params)


def inline(client, uri: str, line: int, character: int, context=AUTO, msg_id: str | None = None):
    """The request, sent at once (pytest-lsp's client sends only when its coroutine runs)."""
    params = t.InlineCompletionParams(context, t.TextDocumentIdentifier(uri), t.Position(line, character))
    return asyncio.ensure_future(
        client.protocol.send_request_async(t.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id)
    )


async def stats(client) -> dict:
    return plain(await client.protocol.send_request_async("codelm/stats", {}))


def plain(o):
    """pygls' client gives JSON objects as named tuples: back to dicts."""
    if hasattr(o, "_asdict"):
        return {k: plain(v) for k, v in o._asdict().items()}
    return o


def applied(text: str, item: t.InlineCompletionItem) -> str:
    """`text` with the item's insertText over its range (ASCII text: UTF-16 units are characters)."""
    lines = text.split("\n")
    r = item.range
    start = sum(len(x) + 1 for x in lines[: r.start.line]) + r.start.character
    end = sum(len(x) + 1 for x in lines[: r.end.line]) + r.end.character
    return text[:start] + item.insert_text + text[end:]


# --- a model in the server's process ----------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("caps", CLIENTS)
async def test_the_server_announces_inline_completion_and_answers_in_a_function(lsp_run, caps, tmp_path):
    (tmp_path / "util.py").write_text("def helper(x):\n    return x + 1\n")
    client, result = await start([lsp_run], caps, root=tmp_path)
    try:
        caps_ = result.capabilities
        assert caps_.inline_completion_provider
        assert caps_.completion_provider is not None
        assert caps_.text_document_sync.change == t.TextDocumentSyncKind.Incremental
        assert "codelm.acceptCompletion" in caps_.execute_command_provider.commands
        uri = (tmp_path / "a.py").as_uri()
        text = "def f(x):\n    y = x + 1\n    \n    return y\n"
        open_doc(client, uri, text)
        for line, ch, ctx in [
            (2, 4, AUTO),
            (0, 9, AUTO),
            (1, 9, INVOKED),
        ]:  # mid-function, after def, mid-line
            items = await inline(client, uri, line, ch, ctx)
            for item in items:
                assert isinstance(item.insert_text, str) and item.insert_text.strip()
                assert (item.range.start.line, item.range.start.character) == (line, ch)
                assert item.range.end.line == line and item.range.end.character >= ch
                assert item.command.command == "codelm.acceptCompletion"
        fallback = await client.text_document_completion_async(
            t.CompletionParams(t.TextDocumentIdentifier(uri), t.Position(2, 4))
        )
        assert fallback.is_incomplete and len(fallback.items) <= 1
        s = await stats(client)
        assert s["requests"] == 4 and s["automatic"] == 3 and s["invoked"] == 1
        assert s["errors"] == 0 and s["index"]["files"] >= 1
    finally:
        await client.shutdown_session()


@pytest.mark.asyncio
async def test_bad_positions_and_unknown_documents_are_invalid_params_and_the_server_goes_on(lsp_run):
    client, _ = await start([lsp_run])
    try:
        uri = "file:///tmp/codelm-lsp-test/b.py"
        open_doc(client, uri, "x = 1\ny = 2\n")
        for line, ch in [(5, 0), (0, 99), (-1, 0)]:
            pos = object.__new__(t.Position)  # lsprotocol's own check refuses -1 before it is sent
            object.__setattr__(pos, "line", line)
            object.__setattr__(pos, "character", ch)
            with pytest.raises(JsonRpcException) as e:
                await client.text_document_inline_completion_async(
                    t.InlineCompletionParams(AUTO, t.TextDocumentIdentifier(uri), pos)
                )
            assert e.value.code == -32602
        with pytest.raises(JsonRpcException) as e:
            await inline(client, "file:///tmp/codelm-lsp-test/never-opened.py", 0, 0)
        assert e.value.code == -32602 and "open it" in e.value.message
        assert isinstance(await inline(client, uri, 2, 0), list)  # the line after the last newline
    finally:
        await client.shutdown_session()


@pytest.mark.asyncio
async def test_a_cancelled_request_is_an_error_and_counted(lsp_run):
    # A long debounce holds the request, so the cancel surely arrives while it waits.
    client, _ = await start([lsp_run], options={"codelm": {"debounceMs": 3000}})
    try:
        uri = "file:///tmp/codelm-lsp-test/c.py"
        open_doc(client, uri, "def f(x):\n    \n")
        fut = inline(client, uri, 1, 4, msg_id="to-cancel")
        while (await stats(client))["requests"] < 1:  # the server is handling it (in its debounce)
            await asyncio.sleep(0.05)
        client.protocol.notify("$/cancelRequest", t.CancelParams(id="to-cancel"))
        with pytest.raises(JsonRpcException) as e:
            await asyncio.wait_for(fut, 10)
        assert e.value.code == -32800
        s = await stats(client)
        assert s["cancelled"] == 1 and s["model_calls"] == 0
    finally:
        await client.shutdown_session()


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path):
    import subprocess

    p = subprocess.run([sys.executable, "-m", "codelm", "lsp", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not a run directory" in p.stderr


# --- a scripted completions server ------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_suffix_that_closes_the_bracket_is_not_typed_twice(tmp_path):
    with Scripted(lambda body: "x, 2))") as srv:
        client, _ = await start(["--server", srv.url])
        try:
            uri = (tmp_path / "d.py").as_uri()
            open_doc(client, uri, "print(max())\n")
            [item] = await inline(client, uri, 0, 10)
            assert applied("print(max())\n", item) == "print(max(x, 2))\n"
            assert item.range.end.character == 12  # the two closers are replaced, not repeated
            assert srv.bodies[0]["suffix"] == "))\n" and srv.bodies[0]["prompt"].endswith("print(max(")
        finally:
            await client.shutdown_session()


def _maps_of(command_part: str) -> str:
    """/proc/PID/maps of the one process whose command line holds `command_part`."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if command_part in cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"):
                return (cmdline.parent / "maps").read_text()
        except OSError:
            continue
    raise AssertionError(f"no process runs {command_part!r}")


@pytest.mark.asyncio
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_the_thin_client_never_loads_torch(tmp_path):
    """`codelm lsp --server URL` answers without torch in its process (its imports take
    0.4 s and 50 MB, where torch alone took 1.8 s and 250 MB)."""
    with Scripted(lambda body: "return x * 2\n") as srv:
        client, _ = await start(["--server", srv.url], options={"codelm": {"debounceMs": 0}})
        try:
            uri = (tmp_path / "e.py").as_uri()
            open_doc(client, uri, "def f(x):\n    \n")
            [item] = await inline(client, uri, 1, 4)
            assert item.insert_text == "return x * 2"
            assert "libtorch" not in _maps_of(f"lsp --server {srv.url}")
        finally:
            await client.shutdown_session()


@pytest.mark.asyncio
async def test_typing_along_a_suggestion_is_answered_from_the_cache(tmp_path):
    with Scripted(lambda body: "return x * 2\n") as srv:
        client, _ = await start(["--server", srv.url], options={"codelm": {"debounceMs": 0}})
        try:
            uri = (tmp_path / "e.py").as_uri()
            open_doc(client, uri, "def f(x):\n    \n")
            [first] = await inline(client, uri, 1, 4)
            assert first.insert_text == "return x * 2"
            type_text(client, uri, 2, 1, 4, "ret")
            [along] = await inline(client, uri, 1, 7)
            assert along.insert_text == "urn x * 2" and along.range.start.character == 7
            type_text(client, uri, 3, 1, 7, "x")  # off the suggestion: the model is asked again
            await inline(client, uri, 1, 8)
            s = await stats(client)
            assert s["cache_hits"] == 1 and len(srv.bodies) == 2
            client.protocol.notify("codelm/acceptCompletion", {"id": along.command.arguments[0]})
            await client.workspace_execute_command_async(
                t.ExecuteCommandParams("codelm.acceptCompletion", first.command.arguments)
            )
            s = await stats(client)
            assert s["accepted"] == 2 and s["shown"] == 3 and s["accept_rate"] == round(2 / 3, 4)
        finally:
            await client.shutdown_session()


@pytest.mark.asyncio
async def test_cancel_and_supersede_close_the_stream_and_stop_the_generation(tmp_path):
    with Scripted(lambda body: "y" * 400, delay=0.01) as srv:
        client, _ = await start(["--server", srv.url], options={"codelm": {"debounceMs": 0}})
        try:
            uri = (tmp_path / "f.py").as_uri()
            open_doc(client, uri, "value = \n")
            first = inline(client, uri, 0, 8)
            await asyncio.sleep(0.3)  # streaming
            type_text(client, uri, 2, 0, 8, "1")
            second = inline(client, uri, 0, 9, msg_id="second")
            assert await asyncio.wait_for(first, 10) == []  # superseded by typing
            await asyncio.sleep(0.3)
            cancelled_at = time.monotonic()
            client.protocol.notify("$/cancelRequest", t.CancelParams(id="second"))
            with pytest.raises(JsonRpcException) as e:
                await asyncio.wait_for(second, 10)
            assert e.value.code == -32800
            deadline = time.monotonic() + 5
            while len(srv.hangups) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(srv.hangups) == 2  # both streams were closed, long before their 4 s
            assert srv.hangups[1][0] - cancelled_at < 1.0 and srv.hangups[1][1] < 200
            s = await stats(client)
            assert s["superseded"] == 1 and s["cancelled"] == 1
        finally:
            await client.shutdown_session()


@pytest.mark.parametrize("source", ["run", "server"])
def test_a_taken_tcp_port_is_one_line_before_the_model_loads(lsp_run, source, capsys, monkeypatch):
    """pygls binds in its own thread: a taken port was a traceback there and exit status 0."""
    import socket

    from codelm import cli

    def never(*_args, **_kwargs):
        raise AssertionError("loaded or connected before the port was checked")

    monkeypatch.setattr("codelm.generate.generator.load_run", never)
    monkeypatch.setattr("codelm.lsp.backend.RemoteBackend.start", never)
    given = [lsp_run] if source == "run" else ["--server", "http://127.0.0.1:9"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["lsp", *given, "--tcp", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"codelm: error: cannot listen on 127.0.0.1:{port}: ") and err.count("\n") == 1


def test_tcp_listens_on_loopback_and_speaks_the_protocol(lsp_run):
    import socket
    import subprocess

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "codelm", "lsp", lsp_run, "--tcp", str(port)], stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not listen"
                time.sleep(0.1)
        with conn:
            body = json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}}
            )
            conn.sendall(f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            data = b""
            while b"inlineCompletionProvider" not in data:
                chunk = conn.recv(65536)
                assert chunk, data
                data += chunk
    finally:
        proc.kill()
        proc.wait()
