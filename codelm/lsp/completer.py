"""From a document and a cursor to the edits an editor shows: the language server's work
without the protocol (server.py speaks LSP around it).

For each request:
1. the suggestion cache (cache.py) answers when it can: the same cursor again, or the
   user typing along a suggestion shown;
2. an automatic request waits `debounce_ms` for the next keystroke; a newer request for
   the same document cancels it (and its generation, at the engine's next step) and it
   answers nothing;
3. the prompt: the document's prefix and suffix and repository context fitted into the
   model's context (prompt.py), one line or several (`allows_multiline`);
4. the backend generates (backend.py): one greedy completion for an automatic request,
   `invoked_n` for an invoked one (the first greedy, the others sampled);
5. post-processing (postprocess.py) makes each into the edit to show, duplicates dropped.
Everything is counted in the telemetry (telemetry.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Protocol

from codelm.data.chunks import Hit, Snippet, layout
from codelm.lsp.backend import Answer, Ask
from codelm.lsp.cache import SuggestionCache
from codelm.lsp.context import RecentFiles, RepoIndex, query_text
from codelm.lsp.postprocess import InlineEdit, allows_multiline, postprocess
from codelm.lsp.prompt import LspConfig, fit
from codelm.lsp.telemetry import Telemetry

CHARS_PER_TOKEN_GUESS = 4  # to guess which of the document's lines the prompt holds
CONTEXT_CACHE = 64  # context blocks kept, by query
# the first definition in a snippet: a function or class, its decorators above it
_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+(\w+)", re.M)


class Backend(Protocol):
    context_tokens: int

    def count(self, text: str) -> int: ...

    async def complete(self, ask: Ask) -> Answer: ...


@dataclass(eq=False)
class _Ticket:
    superseded: bool = False
    task: asyncio.Task | None = None


def language_of(language_id: str | None, uri: str) -> str:
    """postprocess's language: the client's languageId, else the file's extension."""
    if language_id:
        return language_id.lower()
    return "python" if PurePosixPath(uri).suffix in (".py", ".pyi") else "other"


class Completer:
    def __init__(
        self,
        backend: Backend,
        cfg: LspConfig = LspConfig(),
        telemetry: Telemetry | None = None,
        index: RepoIndex | None = None,
    ):
        self.backend, self.cfg = backend, cfg
        self.telemetry = telemetry or Telemetry()
        self.index = index
        self.recent = RecentFiles()
        self.cache = SuggestionCache()
        self._pending: dict[tuple[str, str], _Ticket] = {}  # (uri, kind) -> the request running
        self._contexts: OrderedDict[tuple, str] = OrderedDict()
        self._seed = 0

    def configure(self, cfg: LspConfig) -> None:
        self.cfg = cfg
        self.cache.forget()  # suggestions made under the old settings
        self._contexts.clear()

    async def edits(
        self, uri: str, text: str, offset: int, language: str, automatic: bool = True, kind: str = "inline"
    ) -> list[InlineEdit]:
        """The edits for a cursor at `offset` of `text`. Cancelling the awaiting task stops the
        generation; a newer request of the same `kind` for `uri` makes this one answer []."""
        tele, start = self.telemetry, time.perf_counter()
        tele.add("requests")
        tele.add("automatic" if automatic else "invoked")
        prefix, suffix = text[:offset], text[offset:]
        ticket = self._supersede((uri, kind))
        try:
            edits = self.cache.get(uri, prefix, suffix) if automatic else None
            if edits is not None:
                tele.add("cache_hits")
            else:
                if automatic and self.cfg.debounce_ms:
                    await asyncio.sleep(self.cfg.debounce_ms / 1000)
                edits = await self._generate(uri, prefix, suffix, language, automatic)
                tele.add("model_calls")
                if edits:
                    tele.time("model_latency_ms", 1000 * (time.perf_counter() - start))
                self.cache.put(uri, prefix, suffix, edits)
            if edits:
                tele.add("shown")
                tele.time("latency_ms", 1000 * (time.perf_counter() - start))
            else:
                tele.add("empty")
            return edits
        except asyncio.CancelledError:
            if ticket.superseded:
                tele.add("superseded")
                return []
            tele.add("cancelled")
            raise
        except Exception:
            tele.add("errors")
            raise
        finally:
            if self._pending.get((uri, kind)) is ticket:
                del self._pending[(uri, kind)]

    def _supersede(self, key: tuple[str, str]) -> _Ticket:
        old = self._pending.get(key)
        if old is not None and old.task is not None and not old.task.done():
            old.superseded = True
            old.task.cancel()
        ticket = _Ticket(task=asyncio.current_task())
        self._pending[key] = ticket
        return ticket

    async def _generate(
        self, uri: str, prefix: str, suffix: str, language: str, automatic: bool
    ) -> list[InlineEdit]:
        cfg, backend = self.cfg, self.backend
        multiline = allows_multiline(prefix, suffix, language)
        budget = backend.context_tokens - min(cfg.max_tokens, backend.context_tokens // 2)
        context = None
        if cfg.context and self.index is not None:
            context = lambda tokens: self._context(uri, prefix, suffix, tokens, budget)  # noqa: E731
        fitted = fit(prefix, suffix, budget, backend.count, context, cfg)
        n = 1 if automatic else cfg.invoked_n
        temperatures = (cfg.temperature,) + (max(cfg.invoked_temperature, cfg.temperature),) * (n - 1)
        self._seed += n  # candidate i is seeded seed + i: no seed comes back in a later invocation
        ask = Ask(fitted.text, fitted.suffix, fitted.prefix, multiline, cfg.max_tokens, cfg.max_lines)
        answer = await backend.complete(replace(ask, temperatures=temperatures, seed=self._seed))
        self.telemetry.add("prompt_tokens", answer.prompt_tokens)
        self.telemetry.add("cached_tokens", answer.cached_tokens)
        edits: list[InlineEdit] = []
        for raw in answer.texts:
            edit = postprocess(prefix, suffix, raw, multiline, language)
            if edit is not None and edit not in edits:
                edits.append(edit)
        return edits

    def _context(self, uri: str, prefix: str, suffix: str, tokens: int, budget: int) -> str:
        """Repository context for a cursor at the end of `prefix`, within `tokens`. It is asked
        with the complete lines before the cursor, so it stays the same while the user types
        on a line; snippets of this document that the prompt likely holds are left out."""
        done = prefix[: prefix.rfind("\n") + 1]
        line = done.count("\n")
        above = prefix[-budget * CHARS_PER_TOKEN_GUESS :].count("\n")
        below = suffix[: int(budget * self.cfg.suffix_share) * CHARS_PER_TOKEN_GUESS].count("\n")
        query = query_text(done)
        key = (uri, line, hash(query), tokens, above, below)
        if key in self._contexts:
            self._contexts.move_to_end(key)
            return self._contexts[key]
        block = ""
        if query.strip():
            exclude = (uri, line - above, line + below + 1)
            stubs = self.index.declarations(query, self.cfg.context_declarations, exclude=uri)
            hits = self.index.search(query, self.cfg.context_snippets, exclude=exclude, recent=self.recent)
            hits = [Hit(s, 0.0) for s in stubs] + [h for h in hits if not _declared(h.snippet, stubs)]
            block = layout(hits, tokens, self.backend.count)
        self._contexts[key] = block
        while len(self._contexts) > CONTEXT_CACHE:
            self._contexts.popitem(last=False)
        return block


def _declared(snippet: Snippet, stubs: list[Snippet]) -> bool:
    """Whether a retrieved snippet is the definition that one of the stubs already shows."""
    found = _DEF.search(snippet.text)
    return found is not None and any(
        s.path == snippet.path and (m := _DEF.search(s.text)) is not None and m[1] == found[1] for s in stubs
    )
