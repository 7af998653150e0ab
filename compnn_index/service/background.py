"""Run the service in a background thread of this process (tests, notebooks, tools).

>>> with BackgroundServer(create_app("indexes/demo")) as server:   # doctest: +SKIP
...     httpx.get(server.url + "/health").json()
"""
from __future__ import annotations

import socket
import threading
import time

import uvicorn

from .server import uvicorn_config


class BackgroundServer:
    """Serve an ASGI app with uvicorn on a loopback port from a daemon thread.

    Parameters
    ----------
    app : the ASGI application.
    host : address to bind (loopback by default).
    port : port to bind; 0 picks a free one (read it back from :attr:`port` / :attr:`url`).
    start_timeout : seconds to wait for the server to accept connections.
    server_options : passed to :func:`~compnn_index.service.server.uvicorn_config`
        (``header_timeout``, ``keep_alive``, ...).
    """

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0,
                 log_level: str = "warning", **server_options) -> None:
        self.app = app
        self.host = host
        self.start_timeout = start_timeout
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn_config(app, host=host, port=self.port, log_level=log_level, access_log=False,
                                **server_options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "BackgroundServer":
        """Start serving; returns once the server accepts connections.

        Raises
        ------
        RuntimeError
            If the server did not start within ``start_timeout`` seconds.
        """
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on {self.url} within {self.start_timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
