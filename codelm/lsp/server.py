"""`codelm lsp`: a language server (pygls 2, LSP 3.18) that shows completions as ghost text.

- `textDocument/inlineCompletion`: automatic requests (trigger kind 2) get one
  suggestion, invoked ones (1) up to `invoked_n`; each item has its range and the
  command `codelm.acceptCompletion` that the client runs when the user takes it;
- `textDocument/completion`: for clients without inline completion, one item whose
  label is the suggestion's first line (a client that has inline completion gets an
  empty list: it shows the ghost text, and a menu item would cost a second generation);
- full and incremental document sync; the workspace is indexed in the background for
  repository context (context.py), and a saved file is indexed again;
- settings from `initializationOptions` or `workspace/didChangeConfiguration`, under
  "codelm" (prompt.py's `LspConfig`, camelCase or snake_case);
- `$/cancelRequest` and a newer request for the same document stop the generation;
- `codelm/acceptCompletion` (notification) or `workspace/executeCommand`, and
  `codelm/stats`: local telemetry (telemetry.py), never sent anywhere.
A position outside a document or a document never opened is an InvalidParams error
(-32602); a failing backend is an InternalError with a one-line message. The server
keeps serving after either. Positions go through pygls' codec: UTF-16 unless the
client offers another encoding.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import JsonRPCNotification
from pygls.workspace import TextDocument

from codelm import __version__
from codelm.errors import CodelmError
from codelm.lsp.completer import Completer, language_of
from codelm.lsp.context import RepoIndex
from codelm.lsp.postprocess import InlineEdit
from codelm.sockets import bind

ACCEPT = "codelm.acceptCompletion"
LABEL_CHARS = 80  # a fallback completion item's label: the first line, this long at most


class _Protocol(LanguageServerProtocol):
    """pygls drops a request whose params do not parse (a negative line, a missing field)
    without an answer, and the client waits forever: answer it InvalidParams instead."""

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException:
            if not ("id" in data and "method" in data):
                raise
            error = JsonRpcInvalidParams(f"invalid params for {data['method']}")
            self._send_response(data["id"], error=error.to_response_error())
            return JsonRPCNotification(method="$/codelm/answered", jsonrpc="2.0", params=None)


def build_server(completer: Completer) -> LanguageServer:
    """A pygls server around `completer`; start it with `start_io()` or `start_tcp()`."""
    sync = types.TextDocumentSyncKind.Incremental
    ls = LanguageServer("codelm", __version__, text_document_sync_kind=sync, protocol_cls=_Protocol)
    tele = completer.telemetry

    @ls.feature(types.INITIALIZE)
    def initialize(params: types.InitializeParams) -> None:
        _configure(ls, completer, params.initialization_options)

    @ls.feature(types.INITIALIZED)
    def initialized(params: types.InitializedParams) -> None:
        root = _root(ls)
        if root is not None and completer.index is None:
            completer.index = RepoIndex(root)
            completer.index.start()

    @ls.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(params: types.DidChangeConfigurationParams) -> None:
        _configure(ls, completer, params.settings)

    @ls.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: types.DidOpenTextDocumentParams) -> None:
        completer.recent.touch(params.text_document.uri, params.text_document.text)

    @ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: types.DidChangeTextDocumentParams) -> None:
        doc = ls.workspace.text_documents.get(unquote(params.text_document.uri))
        if doc is not None:  # pygls applied the change already
            completer.recent.touch(params.text_document.uri, doc.source)

    @ls.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
    def did_save(params: types.DidSaveTextDocumentParams) -> None:
        if completer.index is not None:
            doc = ls.workspace.text_documents.get(unquote(params.text_document.uri))
            completer.index.update_file(params.text_document.uri, doc.source if doc else None)

    @ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: types.DidCloseTextDocumentParams) -> None:
        completer.cache.forget(params.text_document.uri)

    @ls.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(params: types.InlineCompletionParams) -> list[types.InlineCompletionItem]:
        doc, offset = _locate(ls, params.text_document.uri, params.position)
        automatic = params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
        edits = await _edits(completer, doc, offset, automatic)
        return [_inline_item(doc, offset, e, tele.issue()) for e in edits]

    @ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
    async def completion(params: types.CompletionParams) -> types.CompletionList:
        doc, offset = _locate(ls, params.text_document.uri, params.position)
        if ls.client_capabilities.text_document and ls.client_capabilities.text_document.inline_completion:
            # The client shows ghost text: a menu item too would cost a second generation per keystroke.
            return types.CompletionList(is_incomplete=True, items=[])
        edits = await _edits(completer, doc, offset, automatic=True, kind="completion")
        items = [_completion_item(doc, offset, e, tele.issue()) for e in edits[:1]]
        return types.CompletionList(is_incomplete=True, items=items)

    @ls.command(ACCEPT)
    def accept_command(args: Any) -> bool:
        return tele.accept(args[0] if isinstance(args, list) and args else args)

    @ls.feature("codelm/acceptCompletion")
    def accept_notification(params: Any) -> None:
        tele.accept(_field(params, "id"))

    @ls.feature("codelm/stats")
    def stats(params: Any) -> dict[str, Any]:
        index = completer.index.stats() if completer.index is not None else {}
        return tele.snapshot(index=index)

    @ls.feature(types.SHUTDOWN)
    def shutdown(params: Any) -> None:
        if completer.index is not None:
            completer.index.stop()

    return ls


async def _edits(
    completer: Completer, doc: TextDocument, offset: int, automatic: bool, kind: str = "inline"
) -> list[InlineEdit]:
    language = language_of(doc.language_id, doc.uri)
    try:
        return await completer.edits(doc.uri, doc.source, offset, language, automatic, kind)
    except CodelmError as e:
        raise JsonRpcInternalError(f"codelm: {e}") from None


def _configure(ls: LanguageServer, completer: Completer, settings: Any) -> None:
    """Apply a client's settings one by one: a bad or unknown one is reported in the client's
    log and left out, the others apply."""
    settings = _plain(settings)
    if isinstance(settings, dict) and isinstance(settings.get("codelm"), dict):
        settings = settings["codelm"]
    if not isinstance(settings, dict) or not settings:
        return
    cfg, problems = completer.cfg, []
    for key, value in settings.items():
        try:
            cfg = cfg.updated({key: value})
        except CodelmError as e:
            problems.append(str(e))
    completer.configure(cfg)
    if problems:
        message = "codelm: settings left out: " + "; ".join(problems)
        ls.window_log_message(types.LogMessageParams(types.MessageType.Warning, message))


def _plain(value: Any) -> Any:
    """pygls gives unknown JSON objects as named tuples: back to dicts and lists."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _field(params: Any, name: str) -> Any:
    params = _plain(params)
    return params.get(name) if isinstance(params, dict) else None


def _root(ls: LanguageServer) -> Path | None:
    """The workspace folder to index: the first folder, else the root URI; None for none."""
    folders = list(ls.workspace.folders.values())
    uri = folders[0].uri if folders else ls.workspace.root_uri
    if not uri or urlparse(uri).scheme not in ("", "file"):
        return None
    path = Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)
    return path if path.is_dir() else None


def _locate(ls: LanguageServer, uri: str, pos: types.Position) -> tuple[TextDocument, int]:
    """The open document and the offset of `pos` in it; InvalidParams for a document never
    opened or a position outside it."""
    doc = ls.workspace.text_documents.get(unquote(uri))
    if doc is None:
        raise JsonRpcInvalidParams(f"unknown document {uri}: open it (textDocument/didOpen) first")
    lines = doc.lines
    ends_open = not lines or lines[-1].endswith(("\n", "\r"))
    if pos.line < len(lines):
        units = doc.position_codec.client_num_units(lines[pos.line].rstrip("\r\n"))
        inside = pos.character <= units
    else:  # the empty line after a final newline
        inside = pos.line == len(lines) and pos.character == 0 and ends_open
    if not inside:
        raise JsonRpcInvalidParams(f"position {pos.line}:{pos.character} is outside {uri}")
    return doc, doc.offset_at_position(pos)


def _range(doc: TextDocument, offset: int, e: InlineEdit) -> types.Range:
    """The client-unit range of an edit that starts at the cursor (`offset`)."""
    if e.end[0] == e.start[0]:
        end = offset + e.end[1] - e.start[1]
    else:
        end = sum(len(line) for line in doc.lines[: e.end[0]]) + e.end[1]
    return types.Range(doc.client_position_at_offset(offset), doc.client_position_at_offset(end))


def _command(sid: str) -> types.Command:
    return types.Command(title="codelm: suggestion accepted", command=ACCEPT, arguments=[sid])


def _inline_item(doc: TextDocument, offset: int, e: InlineEdit, sid: str) -> types.InlineCompletionItem:
    return types.InlineCompletionItem(insert_text=e.text, range=_range(doc, offset, e), command=_command(sid))


def _completion_item(doc: TextDocument, offset: int, e: InlineEdit, sid: str) -> types.CompletionItem:
    first = next((line.strip() for line in e.text.split("\n") if line.strip()), e.text)
    return types.CompletionItem(
        label=first[:LABEL_CHARS],
        kind=types.CompletionItemKind.Snippet,
        detail="codelm",
        sort_text="0",
        text_edit=types.TextEdit(_range(doc, offset, e), e.text),
        insert_text_format=types.InsertTextFormat.PlainText,
        command=_command(sid),
    )


class _Quiet(logging.Filter):
    """pygls logs every error response with its traceback; a bad request from the client
    (InvalidParams) is answered as such and needs no traceback in the server's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(("Unable to deserialize message", "Ignoring notification for unknown")):
            return False  # answered InvalidParams by _Protocol
        return not (record.exc_info and isinstance(record.exc_info[1], JsonRpcInvalidParams))


def _logging() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pygls.protocol.json_rpc").addFilter(_Quiet())


def _listen(ls: LanguageServer, tcp: int | None) -> None:
    """Speak LSP on stdio or on 127.0.0.1:`tcp` until the client exits. Anything printed goes to
    stderr: stdout carries the protocol."""
    if tcp is not None:
        print(f"codelm lsp: listening on 127.0.0.1:{tcp}", file=sys.stderr, flush=True)
        ls.start_tcp("127.0.0.1", tcp)
        return
    out = sys.stdout.buffer
    sys.stdout = sys.stderr
    ls.start_io(sys.stdin.buffer, out)


def run_local(run: str | Path, tcp: int | None = None, weights: str = "auto", device: str = "cpu") -> None:
    """`codelm lsp RUN`: the model loaded once and kept warm; the protocol in a thread, the
    model's scheduler in the main thread (torch is faster there)."""
    from codelm.generate.generator import load_run
    from codelm.generate.quantize import describe
    from codelm.lsp.local import LocalBackend
    from codelm.lsp.telemetry import Telemetry

    if tcp is not None:
        bind("127.0.0.1", tcp).close()  # a taken port: one line now, before the model loads
    model, tok = load_run(str(run), device, weights)
    tele = Telemetry()
    backend = LocalBackend(model, tok, on_stopped=lambda ms: tele.time("cancel_stop_ms", ms))
    backend.warm_up()
    ls = build_server(Completer(backend, telemetry=tele))
    _logging()
    print(f"codelm lsp: {run} ({describe(model)})", file=sys.stderr, flush=True)

    def protocol() -> None:
        try:
            _listen(ls, tcp)
        finally:
            backend.stop()

    thread = threading.Thread(target=protocol, name="codelm-lsp", daemon=True)
    with contextlib.suppress(KeyboardInterrupt):
        backend.run(on_start=thread.start)


def run_remote(
    url: str, api_key: str | None = None, model: str | None = None, tcp: int | None = None
) -> None:
    """`codelm lsp --server URL`: completions from an OpenAI-style completions server."""
    import asyncio

    from codelm.lsp.backend import RemoteBackend

    if tcp is not None:
        bind("127.0.0.1", tcp).close()
    backend = RemoteBackend(url, api_key, model)
    asyncio.run(backend.start())
    ls = build_server(Completer(backend))
    _logging()
    print(f"codelm lsp: completing through {url} (model {backend.model})", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        _listen(ls, tcp)
