"""uvicorn's h11 protocol with a deadline on request headers, and JSON answers to bad HTTP.

uvicorn times out idle keep-alive connections (``timeout_keep_alive``), but not a connection
that never sends a request, nor one that sends its headers a byte every few seconds (each byte
cancels the keep-alive timer): 300 such connections would be held forever. Here every request's
headers must be complete within ``header_timeout`` seconds of its first byte (or of the
connection, for the first request); otherwise the connection is answered 408 and closed. The
body's own deadline is :class:`~compnn_index.service.middleware.BodyLimit`'s.

Unparseable requests (and headers over ``h11_max_incomplete_event_size``) get uvicorn's 400,
but as ``{"error": ...}`` JSON like every other refusal of the service.
"""
from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Default seconds to send a request's headers.
HEADER_TIMEOUT = 10.0


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` plus a request-header deadline (``config.compnn_header_timeout``)."""

    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = float(getattr(config, "compnn_header_timeout", HEADER_TIMEOUT))
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of the current request's headers received

    # -- the header deadline
    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._partial:
            self.transport.write(_raw_error(408, "Request Timeout",
                                            f"Request headers not received within {self.header_timeout:g} s"))
        self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._partial = True
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()
            self._partial = False

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- JSON for protocol errors
    def send_400_response(self, msg: str) -> None:
        self._disarm()
        try:
            self.transport.write(_raw_error(400, "Bad Request", f"{msg} (not valid HTTP/1.1, or "
                                                                "headers too large)"))
        finally:
            self.transport.close()
