"""``compnn serve`` as a user starts it: the console script in a subprocess on a free loopback
port, waited for until ``/health`` answers, stopped with Ctrl-C (SIGINT) at the end.

Tests that probe the service (the viewer, the hostile-input sweep, the README) use this rather
than the app factory, so what they check is the command line's server.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
TRACEBACK = "Traceback (most recent call last)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CliServer:
    """``with CliServer(store, "--workers", "2") as srv:`` — ``srv.url``, ``srv.port``,
    ``srv.pid``, ``srv.seconds_to_health`` (start of the process to the first 200 of /health),
    ``srv.output`` (stdout + stderr, after the exit)."""

    def __init__(self, index: str | Path, *args: str, timeout: float = 60.0, cwd: str | Path | None = None,
                 env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [str(BIN / "compnn"), "serve", str(index), "--port", str(self.port), *map(str, args)]
        self.timeout, self.cwd = timeout, cwd
        self.env = env or {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc: subprocess.Popen | None = None
        self.seconds_to_health: float | None = None
        self.output = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> "CliServer":
        t0 = time.perf_counter()
        self._log = tempfile.TemporaryFile("w+")  # a file, not a pipe: access logs never block it
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, text=True)
        while time.perf_counter() - t0 < self.timeout and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    self.seconds_to_health = time.perf_counter() - t0
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{' '.join(self.argv)}: /health did not answer within {self.timeout:.0f} s "
                           f"(exit status {self.proc.returncode}):\n{self.output[-3000:]}")

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; the exit status (killed after 20 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.seek(0)
            self.output = self._log.read()
            self._log.close()
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
