"""Where the magic's candidates come from, and what a candidate is.

Both sources take the context block and the request and return n candidate cells with
their mean token log-probability, which ranks the survivors of the checks.
- `RemoteModel`: `/v1/completions` of `codelm serve`, llama.cpp's server or vLLM. `codelm
  serve` (its `/v1/models` says `owned_by: codelm`) takes the instruction as such, and
  the repetition penalty and DRY that a local run decodes with; any other server gets
  the request as base code models read it (the context, then the request as `#`
  comments) and keeps its own sampling defaults. A remote model's tokens are counted
  as characters / 2.5, on the safe side.
- A run in the kernel is notebook/local.py's `LocalModel`.

Nothing here imports torch: with `%codelm_model --server URL` the kernel never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from codelm.errors import CodelmError
from codelm.generate.config import SamplingConfig
from codelm.notebook.context import instruction
from codelm.tokenizer.roles import comment_block

CHARS_PER_TOKEN = 2.5  # a remote model's tokens are estimated; code averages 3-4 characters a token
REMOTE_CONTEXT = 2048  # a remote model's context when its /v1/models does not say


@dataclass(frozen=True)
class Candidate:
    code: str
    mean_logprob: float  # nan when the server gave no log-probabilities
    stop_reason: str


def cell_of(text: str) -> str:
    """A candidate's text as a cell: blank lines around it dropped, one final newline."""
    return text.strip("\n") + "\n" if text.strip() else ""


class RemoteModel:
    def __init__(
        self, url: str, model: str | None = None, api_key: str | None = None, timeout_s: float = 120
    ):
        self.url = url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        try:
            listed = self.client.get("/v1/models").raise_for_status().json().get("data", [])
        except (httpx.HTTPError, ValueError) as e:
            raise CodelmError(f"cannot reach a completions server at {self.url}: {e}") from None
        first = listed[0] if listed else {}
        self.model = model or first.get("id", "")
        self.ours = first.get("owned_by") == "codelm"  # codelm serve takes `instruction` itself
        said = [first.get(k) for k in ("context_length", "max_model_len", "n_ctx")]
        self.context_tokens = next((int(v) for v in said if isinstance(v, int) and v > 0), REMOTE_CONTEXT)
        self.name = f"{self.url} ({self.model or 'default model'})"

    def count(self, text: str) -> int:
        return int(len(text) / CHARS_PER_TOKEN) + 1

    def sample(
        self, context: str, request: str, n: int, cfg: SamplingConfig, max_lines: int
    ) -> list[Candidate]:
        body: dict = {"model": self.model, "n": n, "temperature": cfg.temperature, "top_p": cfg.top_p}
        body.update(max_tokens=cfg.max_new_tokens, logprobs=1, seed=cfg.seed)
        if self.ours:  # codelm serve: the instruction, and the penalties the local model decodes with
            body.update(prompt="", instruction=instruction(context, request))
            body.update(repetition_penalty=cfg.repetition_penalty, dry_multiplier=cfg.dry_multiplier)
            body.update(dry_base=cfg.dry_base, dry_allowed_length=cfg.dry_allowed_length)
        else:
            body["prompt"] = (context + "\n" if context else "") + comment_block(request)
        try:
            choices = self.client.post("/v1/completions", json=body).raise_for_status().json()["choices"]
        except (httpx.HTTPError, ValueError, KeyError) as e:
            raise CodelmError(f"completion request to {self.url} failed: {e}") from None
        out = []
        for c in choices:
            lps = [x for x in ((c.get("logprobs") or {}).get("token_logprobs") or []) if x is not None]
            mean = sum(lps) / len(lps) if lps else float("nan")
            text = "\n".join(c.get("text", "").splitlines()[:max_lines])
            out.append(Candidate(cell_of(text), mean, c.get("finish_reason") or ""))
        return out
