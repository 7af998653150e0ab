"""ASGI middleware of the service: who may ask (:class:`HostGuard`), how much and how slowly
they may send (:class:`BodyLimit`), and the security headers on every answer.

Order (outermost first): SecurityHeaders → HostGuard → BodyLimit → the app. Every refusal is a
JSON ``{"error": ...}`` answer with a 4xx/503 status, sent before the body is read where it can
be (a ``Content-Length`` over the limit is refused at once).
"""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Iterable

import anyio

from .memory import release_memory

#: Headers added to every response (the viewer loads nothing from elsewhere).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}
#: Host names always accepted: the loopback interface's.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,20}")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_TRIM_BYTES = 1 << 20
#: Largest request line plus headers accepted.
MAX_HEADER_BYTES = 16 * 1024


async def send_error(send, status: int, message: str, *, headers: Iterable[tuple[bytes, bytes]] = (),
                     close: bool = True, more_body: bool = False) -> None:
    """Answer ``{"error": message}`` with ``status`` (``Connection: close`` unless ``close=False``).

    ``more_body=True`` sends every byte of the answer but leaves the ASGI response open, so the
    caller can still drain the request body before the connection closes (the client already
    has the whole answer: its ``Content-Length`` is met).
    """
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *headers]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body, "more_body": more_body})


# ---------------------------------------------------------------------------- host and origin
def host_name(value: str) -> str:
    """The host name of a ``Host`` header or URL authority (port and brackets removed, lower case)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class HostGuard:
    """ASGI middleware: a Host allow-list, and no cross-origin state-changing requests.

    - ``Host`` must name one of ``allowed`` (loopback names are always allowed; ``"*"`` allows
      any): a DNS-rebinding page whose name resolves to 127.0.0.1 is refused (400).
    - Request line and headers over ``max_header_bytes`` are refused (431).
    - Requests other than GET/HEAD/OPTIONS are refused (403) when the browser says they come
      from another site (``Sec-Fetch-Site`` other than ``same-origin``/``none``) or carry an
      ``Origin`` that is neither this server's own (the ``Host`` it was reached by) nor one of
      the explicitly allowed host names (a reverse proxy's public name).
    """

    def __init__(self, app, allowed: Iterable[str] = (), *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_header_bytes = int(max_header_bytes)
        extra = {host_name(h) for h in allowed if h and h.strip()}
        self.any_host = "*" in extra
        self.explicit = frozenset(extra - {"*"})
        self.allowed = frozenset(self.explicit | set(LOOPBACK_HOSTS))

    def host_allowed(self, host: str) -> bool:
        name = host_name(host)
        if self.any_host or name in self.allowed:
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def _cross_origin(self, headers: dict[bytes, bytes]) -> str | None:
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
        if site and site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site: {site}"
        origin = headers.get(b"origin")
        if origin is None:
            return None
        text = origin.decode("latin-1").strip()
        authority = text.split("://", 1)[1] if "://" in text else ""
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if authority and (authority.lower() == host or host_name(authority) in self.explicit):
            return None
        return f"Origin: {text[:80]}"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("headers") or []
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + \
            sum(len(k) + len(v) + 4 for k, v in raw)
        if size > self.max_header_bytes:
            await send_error(send, 431, f"Request headers too large: {size} bytes; the limit is "
                                        f"{self.max_header_bytes}")
            return
        headers = dict(raw)
        host = headers.get(b"host")
        if host is not None and not self.host_allowed(host.decode("latin-1")):
            shown = host.decode("latin-1")[:80]
            await send_error(send, 400, f"Host {shown!r} is not served here; this server answers "
                                        f"{', '.join(sorted(self.allowed))} (start it with "
                                        "--allow-host NAME to add a name)")
            return
        if scope["method"] not in _SAFE_METHODS:
            why = self._cross_origin(headers)
            if why is not None:
                await send_error(send, 403, f"Cross-origin {scope['method']} refused ({why}); "
                                            "send it from this server's own pages, or name the "
                                            "origin's host with --allow-host")
                return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------- request bodies
class BodyLimit:
    """ASGI middleware: bounded, timely request bodies, read before the app sees them.

    - A ``Content-Length`` over ``max_bytes`` is answered 413 at once, before any body byte is
      read; a body that grows past it while streaming (chunked) is answered 413 when it does.
    - The whole body must arrive within ``read_timeout`` seconds of the headers, else 408.
    - All bodies being read or held by requests in progress share ``max_buffered`` bytes; a
      request that would exceed them is answered 503 with ``Retry-After`` (bounded memory under
      a flood of large uploads).

    After a refusal the rest of the body is drained for a moment (at most ``drain_seconds``,
    ``16 * max_bytes`` bytes) with the answer already sent, so the client can read it before
    the connection closes.
    """

    def __init__(self, app, max_bytes: int, *, read_timeout: float = 30.0,
                 max_buffered: int | None = None, drain_seconds: float = 2.0) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.read_timeout = float(read_timeout)
        self.max_buffered = int(max_buffered) if max_buffered is not None else max(4 * self.max_bytes, 32 << 20)
        self.drain_seconds = float(drain_seconds)
        self.buffered = 0  # bytes held by bodies in progress (event-loop thread only)

    async def _refuse(self, send, receive, status: int, message: str, headers=(), *,
                      drain: bool = True) -> None:
        await send_error(send, status, message, headers=headers, more_body=True)
        # (a client waiting for "100 Continue" has sent nothing: reading would invite the body)
        with anyio.move_on_after(self.drain_seconds if drain else 0):
            seen = 0
            while seen <= 16 * self.max_bytes:
                msg = await receive()
                if msg["type"] != "http.request" or not msg.get("more_body", False):
                    break
                seen += len(msg.get("body", b""))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _too_large(self, got: str) -> str:
        return f"Request body too large: {got}; the limit is {self.max_bytes} bytes (max_upload_bytes)"

    def _busy(self) -> str:
        return (f"Too many request bodies in progress ({self.max_buffered} bytes buffered); "
                "retry shortly")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        declared_n = int(declared) if declared is not None and _CONTENT_LENGTH.fullmatch(declared) else None
        drain = headers.get(b"expect", b"").lower() != b"100-continue"
        if declared_n is not None and declared_n > self.max_bytes:
            await self._refuse(send, receive, 413, self._too_large(f"Content-Length {declared_n}"),
                               drain=drain)
            return
        reserved = declared_n or 0
        if self.buffered + reserved > self.max_buffered:
            await self._refuse(send, receive, 503, self._busy(), headers=[(b"retry-after", b"1")],
                               drain=drain)
            return
        self.buffered += reserved
        try:
            body = await self._read(scope, receive, send, reserved)
            if body is None:
                return
            self.buffered += len(body) - reserved
            reserved = len(body)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: waits for the client's disconnect

            await self.app(scope, replay, send)
        finally:
            self.buffered -= reserved
            if reserved >= _TRIM_BYTES and self.buffered == 0:
                release_memory()  # the last large body of a burst is gone: trim the heap

    async def _read(self, scope, receive, send, reserved: int) -> bytes | None:
        """The whole body, or None once a refusal was sent (or the client left)."""
        chunks, total = [], 0
        extra = 0  # bytes beyond the reservation, counted against the shared budget
        refusal: tuple | None = None
        try:
            with anyio.move_on_after(self.read_timeout) as timer:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > self.max_bytes:
                        refusal = (413, self._too_large(f"more than {self.max_bytes} bytes sent"), ())
                        break
                    grow = max(0, total - reserved) - extra
                    if grow:
                        if self.buffered + grow > self.max_buffered:
                            refusal = (503, self._busy(), [(b"retry-after", b"1")])
                            break
                        self.buffered += grow
                        extra += grow
                    if chunk:
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
            if timer.cancelled_caught:
                await send_error(send, 408, f"The request body did not arrive within "
                                            f"{self.read_timeout:g} s ({total} bytes received)")
                return None
            if refusal is not None:
                chunks.clear()
                await self._refuse(send, receive, *refusal)
                return None
        finally:
            self.buffered -= extra
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class SecurityHeaders:
    """ASGI middleware: add :data:`SECURITY_HEADERS` (CSP, nosniff, …) to every response."""

    def __init__(self, app) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)
