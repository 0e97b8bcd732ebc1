"""Serving stage: the OpenAI-style completions API, dynamic batching and the web playground.

`create_app(model, tok, ServeConfig(...))` builds the ASGI app; `serve(RUN, cfg)`
runs it under uvicorn (what `codelm serve` calls). See api.py for the routes,
the scheduler is codelm/generate/scheduler.py, guard.py for what the API key protects.
"""

from codelm.serve.api import ServeConfig, create_app
from codelm.serve.server import BackgroundServer, serve

__all__ = ["BackgroundServer", "ServeConfig", "create_app", "serve"]
