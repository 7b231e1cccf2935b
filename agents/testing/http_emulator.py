"""What every emulator of a remote institution's web API shares: a threaded HTTP/1.1 server
on loopback, started and stopped from tests, or run on its own until SIGINT/SIGTERM.

An emulator subclasses :class:`HttpEmulator` and implements :meth:`HttpEmulator.answer`:
the request in, ``(status, body bytes, headers)`` out (``None`` drops the connection
without an answer, as a crashing proxy would). The rules of the real service live in the
subclass; this module only moves bytes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: ``(status, body, extra headers)``, or None to drop the connection.
Answer = tuple[int, bytes, Mapping[str, str]] | None


class HttpEmulator:
    """Base of the emulators in :mod:`hpcsync.agents.testing`."""

    #: the ``Server`` header
    server_version = "Emulator/1.0"

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes, host: str) -> Answer:
        raise NotImplementedError

    def clear_faults(self) -> None:
        """Answer every request held by an injected fault (overridden by emulators with faults)."""

    def start(self, host: str = "127.0.0.1", port: int = 0):
        server = _Server((host, port), _Handler)
        server.emulator = self
        self._server = server
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-server",
            daemon=True,
        ).start()
        return self

    def stop(self) -> None:
        self.clear_faults()  # held (delayed) requests answer now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (subclasses add their API's path)."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        return self if self.started else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "emulator not started"
        return self._server.server_address[1]

    def serve_until_signalled(self, host: str, port: int, banner: str) -> int:
        """Run as a program: start, print ``banner`` (``{port}`` filled in), serve until
        SIGINT or SIGTERM, stop."""
        self.start(host, port)
        print(banner.format(port=self.port), flush=True)
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        stopped.wait()
        self.stop()
        return 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    emulator: HttpEmulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server behind a proxy offers
    # Headers and body go out in two writes; without TCP_NODELAY the second waits for the
    # client's delayed ACK (40 ms) on every keep-alive request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters; tokens ride in URLs
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (killed, or gave up waiting): nothing to answer

    def version_string(self) -> str:
        return self.server.emulator.server_version  # type: ignore[attr-defined]

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        host = headers.get("host") or f"127.0.0.1:{self.server.server_address[1]}"
        emulator: HttpEmulator = self.server.emulator  # type: ignore[attr-defined]
        try:
            answer = emulator.answer(self.command, self.path, headers, body, host)
        except Exception as exc:  # a bug in the emulator must show as a 500, not a hang
            answer = 500, f'{{"detail": "emulator error: {type(exc).__name__}"}}'.encode(), {}
        if answer is None:
            self.close_connection = True
            return
        status, data, extra = answer
        self.send_response(status)
        extra = {"Content-Type": "application/json", **extra}
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve
