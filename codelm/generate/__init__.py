"""Generation stage: prompts (plain, fill-in-the-middle, instruction), sampling, layered
stop rules, the one decoding engine (rows of a KV cache, stepped together; the server
and every later stage decode through it), best-of-n, the prediction trace, and
inference weights (bf16 / int8).

    from codelm.generate import Prompt, SamplingConfig, StopConfig, complete, load_run
    model, tok = load_run("runs/demo/run")
    print(complete(model, tok, Prompt("def add(a, b):"), SamplingConfig(temperature=0)).text)
"""

from codelm.generate.best import BestOfReport, best_of
from codelm.generate.engine import Engine, Row, Sampler
from codelm.generate.generator import (
    Completion,
    Stream,
    complete,
    generate,
    generate_batch,
    generate_ids,
    load_run,
)
from codelm.generate.prompts import Prompt
from codelm.generate.sampling import SamplingConfig
from codelm.generate.stopping import StopConfig
from codelm.generate.trace import TraceStep, format_trace
from codelm.generate.whole import parses, syntax_error

__all__ = [
    "BestOfReport",
    "Completion",
    "Engine",
    "Prompt",
    "Row",
    "Sampler",
    "SamplingConfig",
    "StopConfig",
    "Stream",
    "TraceStep",
    "best_of",
    "complete",
    "format_trace",
    "generate",
    "generate_batch",
    "generate_ids",
    "load_run",
    "parses",
    "syntax_error",
]
