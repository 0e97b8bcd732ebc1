"""The listening socket of `codelm serve` and `codelm lsp --tcp`, bound before a server
starts, so that a port that is taken is a one-line error at start (exit 2).

uvicorn takes the bound socket (port 0 then picks a free port whose number the caller
can read). pygls binds its own inside its thread, where a taken port was a traceback
in that thread and exit status 0; `codelm lsp` binds first to find out, closes, and
pygls binds again at once (SO_REUSEADDR, so the closed probe does not hold the port).
"""

from __future__ import annotations

import socket

from codelm.errors import CodelmError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or a CodelmError naming both."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CodelmError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock
