"""``session.data`` and error-counter helpers shared by every agent's ops.

ocs-web shows ``session.data`` raw, and every client reply carries it, so it has to stay
small, JSON-safe and timestamped. :class:`OpState` owns one op's ``session.data``: fields
set by the agent, a ``counters`` dict, the ``last_error`` and the ``degraded`` flag, all
updated under a lock (ops run in worker threads while clients read from the reactor).

:class:`StopFlag` is the stopper side of a process op: waits that wake up at once when the
op is asked to stop, so a process stops within a second.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from typing import Any

#: Largest string stored in session.data; longer ones are cut (stderr dumps, tracebacks).
MAX_TEXT = 500
#: Largest list stored in session.data; longer ones keep their last items.
MAX_ITEMS = 50


def json_safe(value: Any, _depth: int = 0) -> Any:
    """A bounded, JSON-safe copy of ``value`` (NaN/inf become None; long text is cut)."""
    if _depth > 6:
        return str(value)[:MAX_TEXT]
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)[-MAX_ITEMS:]
        return [json_safe(v, _depth + 1) for v in items]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)[:MAX_TEXT]


class OpState:
    """The ``session.data`` of one op run.

    ``fields`` are top-level keys (``activity``, ``progress`` …); ``counters`` is created
    when first counted. Every update stamps ``timestamp`` (unix seconds).
    """

    def __init__(self, session: Any, **fields: Any):
        self._session = session
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}
        self.update(**fields)

    @property
    def data(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._data)

    def update(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                self._data[key] = json_safe(value)
            self._publish()

    def count(self, name: str, n: int = 1) -> int:
        """Add ``n`` to ``counters[name]`` and return the new value."""
        with self._lock:
            counters = self._data.setdefault("counters", {})
            counters[name] = counters.get(name, 0) + n
            self._publish()
            return counters[name]

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._data.get("counters", {}))

    def error(self, message: str, *, counter: str | None = None, degraded: bool = True) -> None:
        """Record an error: ``last_error``, one counter, and the ``degraded`` flag."""
        with self._lock:
            self._data["last_error"] = {"message": json_safe(str(message)), "time": time.time()}
            if counter:
                counters = self._data.setdefault("counters", {})
                counters[counter] = counters.get(counter, 0) + 1
            self._publish()
        if degraded:
            self.set_degraded(True)

    def recovered(self) -> None:
        """Clear ``degraded`` after a success (``last_error`` stays for the record)."""
        self.set_degraded(False)

    def set_degraded(self, value: bool) -> None:
        if hasattr(self._session, "degraded"):
            self._session.degraded = bool(value)

    def _publish(self) -> None:
        self._data["timestamp"] = time.time()
        # A fresh dict each time, so a reader never sees one mid-update.
        self._session.data = dict(self._data)


class StopFlag:
    """The stop request of a process op, with waits that wake when it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def event(self) -> threading.Event:
        """The underlying event, for engines and :func:`run_command` ``cancel=``."""
        return self._event

    def stop(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; return True (at once) if a stop was asked for."""
        return self._event.wait(max(0.0, seconds))
