"""Real services on free loopback ports, in temporary directories, stopped by PID.

Each ``start_*`` function returns a handle with the service's address and a ``stop()``.
A service that does not come up raises :class:`ServiceError` with the tail of its log:
the test run fails, it never skips.
"""

from __future__ import annotations

import socket
from pathlib import Path


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: str | Path, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
