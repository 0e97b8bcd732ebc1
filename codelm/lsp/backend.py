"""Where the editor's completions come from, and what a request to it holds.

- `Ask` and `Answer`: one completion request as the language server makes it, and what
  comes back.
- `RemoteBackend`: any OpenAI-style `/v1/completions` endpoint that takes a `suffix`
  (`codelm serve`, llama.cpp's server, vLLM), streamed. Its tokenizer is not ours, so
  prompt sizes are estimated (`CHARS_PER_TOKEN`) on the safe side. Cancelling the task
  awaiting `complete` closes the stream (`codelm serve` then drops the rows).
- The model in this process is `lsp/local.py`'s `LocalBackend`.

Nothing here imports torch or the model: `codelm lsp --server URL` is a thin client
(its imports take 0.4 s and 50 MB, where torch alone took 1.8 s and 250 MB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from codelm.errors import CodelmError

CHARS_PER_TOKEN = 2.5  # a remote model's tokens are estimated; code averages 3-4 characters a token
REMOTE_CONTEXT = 2048  # a remote model's context when its /v1/models does not say


@dataclass(frozen=True)
class Ask:
    """One completion request, as the language server makes it."""

    prefix: str  # the prompt's prefix part: repository context, then the document before the cursor
    suffix: str  # the document after the cursor, as kept
    code_before: str  # the document before the cursor (kept part): block end is read from it
    multiline: bool
    max_tokens: int
    max_lines: int
    temperatures: tuple[float, ...] = (0.0,)  # one completion per temperature
    seed: int = 0


@dataclass(frozen=True)
class Answer:
    texts: list[str]
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values were reused (local only)
    completion_tokens: int = 0


class RemoteBackend:
    """An OpenAI-style completions server, streamed; `start()` reads its model and context."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 60.0):
        self.url, self.model, self.timeout = url.rstrip("/"), model, timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.context_tokens = REMOTE_CONTEXT
        self.codelm = False  # a codelm server takes SPM order and block-end stops
        self._client: Any = None  # made in the event loop that uses it

    def _http(self) -> Any:
        import httpx

        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout)

    def count(self, text: str) -> int:
        return int(len(text) / CHARS_PER_TOKEN) + 1

    async def start(self) -> None:
        """Ask /v1/models which model to name and how long its context is; a server that
        does not answer is a one-line error."""
        try:
            async with self._http() as client:
                r = await client.get("/v1/models")
                r.raise_for_status()
                cards = r.json().get("data") or []
        except Exception as e:
            raise CodelmError(f"cannot reach the completions server at {self.url}: {e}") from None
        card = next((c for c in cards if self.model in (None, c.get("id"))), None)
        if card is None:
            names = ", ".join(str(c.get("id")) for c in cards) or "none"
            raise CodelmError(f"the server at {self.url} has no model {self.model!r} (it has: {names})")
        self.model = self.model or card.get("id")
        self.codelm = card.get("owned_by") == "codelm"
        for key in ("context_length", "max_model_len", "n_ctx"):
            if isinstance(card.get(key), int) and card[key] > 0:
                self.context_tokens = card[key]
                break

    async def complete(self, ask: Ask) -> Answer:
        """One streamed request (n = the temperatures; sampled ones share the highest);
        cancelling the awaiting task closes the stream, and the server stops generating."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": ask.prefix,
            "suffix": ask.suffix,
            "max_tokens": ask.max_tokens,
            "temperature": max(ask.temperatures),
            "n": len(ask.temperatures),
            "stream": True,
            "seed": ask.seed,
        }
        if not ask.multiline:
            body["stop"] = ["\n"]
        if self.codelm:
            body.update(
                fim_order="spm", stop_at_block_end=ask.multiline, stop_on_repetition=True, trim_to_parse=True
            )
        texts = [""] * len(ask.temperatures)
        if self._client is None:
            self._client = self._http()
        async with self._client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                detail = (await r.aread()).decode("utf-8", "replace")[:300]
                raise CodelmError(f"the completions server answered {r.status_code}: {detail}")
            async for line in r.aiter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                for choice in json.loads(line[5:]).get("choices", []):
                    i = choice.get("index", 0)
                    if 0 <= i < len(texts):
                        texts[i] += choice.get("text") or ""
        return Answer(texts)
