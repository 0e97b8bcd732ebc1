"""One request, start to end: context, n candidates in one batch, checks, the pick.

`suggest` reads the live context (context.py), asks a backend (backend.py) for
`n` candidate cells, checks each against the namespace (checks.py) and ranks the
survivors by mean token log-probability: the most likely survivor is the
suggestion. When none survives, the most likely rejected one is kept with its
reason, for the caller to show, never to insert. `repair_request` is the request
again with the code that failed and its error, for one more try. Nothing here runs
a candidate; the magic (magic.py) does that only when the user asks with `--run`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from codelm.errors import CodelmError
from codelm.generate import SamplingConfig
from codelm.notebook.backend import Candidate
from codelm.notebook.checks import check
from codelm.notebook.context import LAYOUTS, Context, assemble, instruction


@dataclass(frozen=True)
class NotebookConfig:
    n: int = 8  # candidates per request, drawn in one batch
    # The first candidate is greedy; the others need enough spread that one of them can
    # survive when the greedy one fails a check, and code wants a low temperature.
    temperature: float = 0.4
    top_p: float = 0.95
    # A cell is a few lines: a longer budget mostly feeds runaway loops, and on a model with a
    # 512-token context it would halve the room for the live context.
    max_new_tokens: int = 128
    max_lines: int = 30
    # The schema block (imports and frames): 512 tokens hold about 6 frames of 8 columns.
    schema_tokens: int = 512
    history_tokens: int = 256  # the recent cells, newest kept
    history_cells: int = 3
    # How a frame is shown: "comments" (a header and one line per column: name, dtype, nulls,
    # first values), "code" (the constructor of its first rows, dtypes and nulls in comments)
    # or "csv" (pandas-ai's: the dimensions and head() as CSV; for comparison).
    layout: str = "comments"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1 or self.max_lines < 1:
            raise CodelmError("n, max_new_tokens and max_lines must be at least 1")
        if self.temperature < 0:
            raise CodelmError(f"temperature must be >= 0, got {self.temperature}")
        if self.layout not in LAYOUTS:
            raise CodelmError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.schema_tokens < 0 or self.history_tokens < 0 or self.history_cells < 0:
            raise CodelmError("schema_tokens, history_tokens and history_cells must be >= 0")

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, 0, self.top_p, self.max_new_tokens, self.seed)


class Backend(Protocol):
    name: str
    context_tokens: int  # the model's context length

    def count(self, text: str) -> int: ...

    def sample(
        self, context: str, request: str, n: int, cfg: SamplingConfig, max_lines: int
    ) -> list[Candidate]: ...


@dataclass
class Suggestion:
    context: str  # the block put before the request
    left_out: list[str]  # frames that did not fit the schema budget
    ranked: list[Candidate] = field(default_factory=list)  # survivors, most likely first
    rejected: list[tuple[Candidate, str]] = field(default_factory=list)  # most likely first

    @property
    def best(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None

    def summary(self) -> str:
        n = len(self.ranked) + len(self.rejected)
        why = Counter(reason for _, reason in self.rejected)
        reasons = "; ".join(f"{r} x{k}" if k > 1 else r for r, k in why.most_common())
        line = f"{n} candidates, {len(self.ranked)} passed the checks"
        return line + (f"; rejected: {reasons}" if reasons else "")


def _likelihood(c: Candidate) -> float:
    return -math.inf if math.isnan(c.mean_logprob) else c.mean_logprob  # sort is stable: server order


def prompt_parts(
    backend: Backend, ctx: Context | None, request: str, cfg: NotebookConfig
) -> tuple[str, list[str]]:
    """The context block for `request` ("" without a context) and the frames left out.

    A model with a short context gets less: the prompt keeps room for `max_new_tokens`
    (as the engine does, at most half the context), the schema two thirds of what is left.
    """
    if ctx is None:
        return "", []
    room = backend.context_tokens - min(cfg.max_new_tokens, backend.context_tokens // 2)
    left = max(0, room - backend.count(request) - 16)  # 16: the layout's special tokens, with margin
    schema = min(cfg.schema_tokens, left * 2 // 3)
    history = min(cfg.history_tokens, left - schema)
    return assemble(ctx, request, backend.count, schema, history, cfg.layout)


def judge(
    candidates: Sequence[Candidate], namespace: Mapping[str, object], request: str
) -> tuple[list, list]:
    """(survivors, (rejected, reason)), each most likely first."""
    ranked, rejected = [], []
    for c in sorted(candidates, key=_likelihood, reverse=True):
        reason = check(c.code, namespace, request)
        if reason is None:
            ranked.append(c)
        else:
            rejected.append((c, reason))
    return ranked, rejected


def suggest(
    backend: Backend,
    namespace: Mapping[str, object],
    ctx: Context | None,
    request: str,
    cfg: NotebookConfig = NotebookConfig(),
    asked: str | None = None,
) -> Suggestion:
    """The best of `cfg.n` candidates for `request`, checked against `namespace` and against
    what the user `asked` (default: the request; a repair's request also holds the failed code,
    whose names the user did not ask for)."""
    if not request.strip():
        raise CodelmError("empty request: write what the code should do below %%codelm")
    context, left_out = prompt_parts(backend, ctx, request, cfg)
    candidates = backend.sample(context, request, cfg.n, cfg.sampling, cfg.max_lines)
    ranked, rejected = judge(candidates, namespace, request if asked is None else asked)
    return Suggestion(context, left_out, ranked, rejected)


REPAIR_LINES = 8  # of the failed code shown: the error's line is usually among the first


def repair_request(request: str, code: str, error: str) -> str:
    """The request once more, with the code that failed (its first lines) and the error it raised."""
    shown = "\n".join(f"    {line}" for line in code.rstrip("\n").splitlines()[:REPAIR_LINES])
    return f"{request.strip()}\nThis code failed with {error}:\n{shown}\nWrite code that works."


def show_prompt(backend: Backend, ctx: Context | None, request: str, cfg: NotebookConfig) -> str:
    """What the model would read, as text: for `--show-prompt`."""
    context, _ = prompt_parts(backend, ctx, request, cfg)
    return instruction(context, request)
