"""Book-keeping log files, as the seed scripts wrote them.

``<op>_<target>.log`` for runs that push (or apply), ``<op>_<target>_debug.log`` for dry
runs, appended to, one line per event in the seed's format
(``%(asctime)s %(levelname)-8s %(message)s``): ``<jobid> COLLECTED : {...}`` in a dry run,
``<jobid> UPDATED : {...}`` after a successful PUT. The API token never reaches these
files: payloads do not contain it, and every line passes through :func:`redact`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from hpcsync.agents.core.secrets import Secret, redact


def log_file_name(operation: str, target: str, dry_run: bool) -> str:
    return f"{operation}_{target}{'_debug' if dry_run else ''}.log"


class BookkeepingLog:
    """One run's log file (opened in append mode, closed by :meth:`close`)."""

    def __init__(self, directory: str | Path, operation: str, target: str, dry_run: bool, token: Secret | None = None):
        self.path = Path(directory).expanduser() / log_file_name(operation, target, dry_run)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._token = token
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._fh = os.fdopen(fd, "a", encoding="utf-8", buffering=1 << 16)

    def write(self, level: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        # One event, one line: a newline inside a name from the API cannot forge a line.
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        line = redact(f"{stamp} {level:<8} {message}", self._token)
        with self._lock:
            self._fh.write(line + "\n")

    def info(self, message: str) -> None:
        self.write("INFO", message)

    def warning(self, message: str) -> None:
        self.write("WARNING", message)

    def error(self, message: str) -> None:
        self.write("ERROR", message)

    def job(self, verb: str, jobslurmid: str, payload: dict) -> None:
        self.info(f"{jobslurmid} {verb} : {json.dumps(payload, sort_keys=True)}")

    def close(self) -> None:
        with self._lock:
            self._fh.close()

    def __enter__(self) -> BookkeepingLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
