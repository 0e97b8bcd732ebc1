"""Best-of-n: sample n completions in one batch, drop those that do not parse, keep the
most likely of the rest. A plain completion that does not parse is first cut back
to its longest whole-line start that does (`trim_to_parse`).

The syntax check parses the whole code a completion belongs to: prompt plus
completion, or prefix plus middle plus suffix. The survivors are ranked by mean
token log-probability. The first sample is greedy, so best-of-n never does worse
than greedy decoding on likelihood. If none parses, the most likely of all is
returned, and the report says so. This module does not run the code it ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from codelm.generate.generator import Completion, generate_batch
from codelm.generate.prompts import Prompt
from codelm.generate.sampling import SamplingConfig
from codelm.generate.stopping import DEFAULT_STOPS, StopConfig
from codelm.generate.whole import parses, syntax_error
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer


def trim_to_parse(c: Completion, tok: CodeTokenizer) -> Completion | None:
    """The longest whole-line start of a plain completion that parses and adds a body line.

    A small model often writes a sound first statement and then loses its way
    (an unclosed bracket, a runaway line). Cutting at the last line boundary
    where the code still parses keeps the sound part; the tokens and their
    log-probabilities are cut to match, and the stop reason becomes `parse_trim`.
    FIM completions are never trimmed: their middle must meet the suffix.
    """
    if c.prompt is None or c.prompt.suffix is not None:
        return None
    cuts = [i + 1 for i, ch in enumerate(c.text) if ch == "\n"]
    for cut in reversed(cuts):
        text = c.text[:cut]
        if text.strip() and parses(c.prompt.code(text)):
            kept = 0  # how many tokens it takes to cover the kept text
            while kept < len(c.tokens) and len(tok.decode(c.tokens[:kept])) - len(c.healed) < cut:
                kept += 1
            return replace(
                c, text=text, stop_reason="parse_trim", tokens=c.tokens[:kept], logprobs=c.logprobs[:kept]
            )
    return None


@dataclass
class BestOfReport:
    ranked: list[Completion]  # the candidates that parse, most likely first
    dropped: list[tuple[Completion, str]]  # those that do not, with the parser's complaint

    @property
    def none_parsed(self) -> bool:
        return not self.ranked

    def summary(self) -> str:
        """One line: how many were dropped, and why."""
        n = len(self.ranked) + len(self.dropped)
        if not self.dropped:
            return f"best of {n}: all parse"
        why: dict[str, int] = {}
        for _, err in self.dropped:
            msg = err.split(": ", 1)[-1]
            why[msg] = why.get(msg, 0) + 1
        reasons = "; ".join(f"{k} x{v}" if v > 1 else k for k, v in why.items())
        tail = " (none parsed: showing the most likely)" if not self.ranked else ""
        return f"best of {n}: {len(self.dropped)} dropped for not parsing ({reasons}){tail}"


def best_of(
    model: Transformer,
    tok: CodeTokenizer,
    prompt: str | Prompt,
    n: int,
    cfg: SamplingConfig = SamplingConfig(),
    stops: StopConfig = DEFAULT_STOPS,
    trace: str = "",
) -> tuple[Completion, BestOfReport]:
    """The most likely of `n` samples that parses, and the report of the others."""
    cands = generate_batch(model, tok, [prompt], cfg, stops, n=n, trace=trace, greedy_first=True)[0]
    ranked: list[Completion] = []
    dropped: list[tuple[Completion, str]] = []
    for c in cands:
        err = syntax_error(c.code)
        if err is not None and (trimmed := trim_to_parse(c, tok)) is not None:
            c, err = trimmed, None
        if err is None:
            ranked.append(c)
        else:
            dropped.append((c, err))
    ranked.sort(key=lambda c: c.mean_logprob, reverse=True)
    best = ranked[0] if ranked else max(cands, key=lambda c: c.mean_logprob)
    return best, BestOfReport(ranked, dropped)
