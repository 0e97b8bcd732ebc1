"""Running the app under uvicorn: `codelm serve` (HTTP in a thread, the model's scheduler in
the main thread, where torch runs fastest) or wholly in a thread (tests, bench).

The listening socket is bound before uvicorn starts (`codelm.sockets.bind`), so a port
that is taken is a one-line `CodelmError` and port 0 picks a free port whose number the
caller can read.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from codelm.serve.api import ServeConfig, create_app
from codelm.serve.guard import is_loopback
from codelm.sockets import bind


def _server(app: FastAPI, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2, lifespan="on")
    return uvicorn.Server(config)


def serve(
    run: str | Path, cfg: ServeConfig = ServeConfig(), device: str = "cpu", weights: str = "auto"
) -> None:
    """Load RUN once (`weights` as in codelm.generate.quantize) and serve it until interrupted."""
    from codelm.generate.generator import load_run
    from codelm.generate.quantize import describe

    sock = bind(cfg.host, cfg.port)  # a taken port: one line before the model loads
    model, tok = load_run(str(run), device, weights)
    app = create_app(model, tok, cfg, name=Path(run).resolve().name, scheduler_thread=False)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    auth = access_note(cfg.api_key, host)
    server = _server(app, "warning")
    # HTTP in a thread, the model in the main thread (see Scheduler.run: torch is faster there).
    web = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="codelm-http", daemon=True)

    def started() -> None:
        web.start()
        print(f"codelm: {describe(model)}", file=sys.stderr)
        print(
            f"codelm: serving {run} at {url}  (playground: {url}/, API: {url}/v1/completions"
            f" and /v1/chat/completions, {auth})",
            file=sys.stderr,
        )

    sched = app.state.service.sched
    try:
        sched.run(on_start=started)
    except KeyboardInterrupt:
        pass
    finally:
        sched.stop()
        server.should_exit = True
        web.join(timeout=5)


def access_note(api_key: str | None, host: str) -> str:
    """Who can use the server, for its start line: beyond loopback without a key, anyone who
    reaches the port (the completions, the compute), which `--host 0.0.0.0` alone gives."""
    if api_key:
        return "API key required"
    if is_loopback(host):
        return "no API key"
    return "no API key: anyone who reaches this port can use the model; give --api-key KEY"


class BackgroundServer:
    """uvicorn in a daemon thread on 127.0.0.1 and a free port: `with BackgroundServer(app) as url:`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", log_level: str = "warning"):
        self.sock = bind(host, 0)
        self.server = _server(app, log_level)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
