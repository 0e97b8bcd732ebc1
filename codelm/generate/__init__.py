"""Generation stage: prompts (plain, fill-in-the-middle, instruction), sampling, layered
stop rules, the one decoding engine (rows of a KV cache, stepped together; the server
and every later stage decode through it), best-of-n, the prediction trace, and
inference weights (bf16 / int8).

    from codelm.generate import Prompt, SamplingConfig, StopConfig, complete, load_run
    model, tok = load_run("runs/demo/run")
    print(complete(model, tok, Prompt("def add(a, b):"), SamplingConfig(temperature=0)).text)
"""

from importlib import import_module

# Each name is imported when first used (PEP 562), so that a caller of a torch-free part
# (`whole`, `stopping`: the language server's thin client) never loads torch.
_WHERE = {
    "BestOfReport": "best",
    "best_of": "best",
    "Engine": "engine",
    "Row": "engine",
    "Sampler": "engine",
    "Completion": "generator",
    "Stream": "generator",
    "complete": "generator",
    "generate": "generator",
    "generate_batch": "generator",
    "generate_ids": "generator",
    "load_run": "generator",
    "Prompt": "prompts",
    "SamplingConfig": "config",
    "StopConfig": "stopping",
    "TraceStep": "trace",
    "format_trace": "trace",
    "parses": "whole",
    "syntax_error": "whole",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = sorted(_WHERE)
