"""Who may talk to the server: an API key, and a Host check against DNS rebinding.

With an API key set, every path except `/health` needs `Authorization: Bearer
KEY`. A browser cannot add that header when it opens the playground, so
`Basic` credentials whose password is the key are taken too: the browser
asks for them once (any user name) and sends them with the page's own API
calls. Keys are compared in constant time.

What the key protects: the model, the compute, and the playground from other
users and programs that can reach the port. What it does not: the traffic
itself (plain HTTP; the key crosses the wire in the clear, so put a TLS proxy
in front before binding anything but loopback), `/health` (open on purpose: it
tells only whether the model is loaded and how long the queue is), or abuse by
whoever holds the key (there is no rate limit beyond the bounded queue).

When the server listens on a loopback address only, requests must name a
loopback Host (127.0.0.1, localhost, [::1]): a web page on another site that
rebinds its own domain name to 127.0.0.1 is refused, so it cannot read
completions from a local server through the user's browser.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from codelm.serve.schemas import error_body

OPEN_PATHS = ("/health",)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; never a DNS name that merely starts with "127."."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    if header.startswith("["):  # [::1]:8000
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def key_matches(authorization: str, key: str) -> bool:
    """Bearer KEY, or Basic credentials with KEY as the password."""
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode("utf-8"), key.encode("utf-8"))


class Guard:
    """ASGI middleware: Host check (loopback servers) and the API key."""

    def __init__(self, app: ASGIApp, api_key: str | None, loopback_only: bool):
        self.app, self.key, self.loopback_only = app, api_key, loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.loopback_only and not is_loopback(_host_name(headers.get("host", "127.0.0.1"))):
            body = error_body("this server answers only to a loopback Host (127.0.0.1, localhost, [::1])")
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        authorization = headers.get("authorization", "")
        if self.key and scope["path"] not in OPEN_PATHS and not key_matches(authorization, self.key):
            body = error_body(
                "missing or wrong API key: send 'Authorization: Bearer KEY'", "authentication_error"
            )
            response = JSONResponse(body, status_code=401)
            response.headers.append("WWW-Authenticate", 'Bearer realm="codelm"')
            response.headers.append(
                "WWW-Authenticate", 'Basic realm="codelm playground: any user, password = the API key"'
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
