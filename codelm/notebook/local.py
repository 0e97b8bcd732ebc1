"""A run in the kernel as the magic's source of candidates (`%codelm_model RUN`).

The run is loaded once (int8 on CPU) and decoded by the one engine in one batch, in
instruction mode (`<|instruction|> ... <|code|>`; an imported instruct model: its chat
template, the code in a fence whose close ends it), the first sample greedy. A cell has
no enclosing block, so the block-end rule is off: the model's end-of-text, a line limit
and the repetition rule end it.
"""

from __future__ import annotations

from codelm.generate.config import SamplingConfig
from codelm.generate.generator import generate_batch, load_run
from codelm.generate.prompts import Prompt
from codelm.generate.stopping import StopConfig
from codelm.notebook.backend import Candidate, cell_of
from codelm.notebook.context import instruction


class LocalModel:
    def __init__(self, run: str, weights: str = "auto"):
        self.name = run
        self.model, self.tok = load_run(run, weights=weights)
        self.context_tokens = self.model.cfg.block_size

    def count(self, text: str) -> int:
        return len(self.tok.encode(text))

    def sample(
        self,
        context: str,
        request: str,
        n: int,
        cfg: SamplingConfig,
        max_lines: int,
        greedy_first: bool = True,
    ) -> list[Candidate]:
        """n candidate cells; the first greedy unless `greedy_first` is off (a benchmark's
        pass@k wants samples drawn alike)."""
        stops = StopConfig(block_end=False, max_lines=max_lines)
        prompt = Prompt("", instruction=instruction(context, request))
        batch = generate_batch(self.model, self.tok, [prompt], cfg, stops, n=n, greedy_first=greedy_first)[0]
        return [Candidate(cell_of(c.text), c.mean_logprob, c.stop_reason) for c in batch]
