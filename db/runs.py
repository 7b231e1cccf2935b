"""The run ledger (``agent_runs``) and resumable cursors (``sync_cursors``).

Every op or CLI job that changes something records a run: a row committed when it starts
(status ``running``) and updated when it ends (``succeeded``, ``failed`` or ``stopped``),
with a small JSON summary. A crash leaves ``running`` with no ``finished_at``, which is
what an operator needs to see.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from .engine import Database
from .models import AgentRun, SyncCursor


class RunRecord:
    """Handle on a running :class:`AgentRun` row; set :attr:`summary` as the run goes."""

    def __init__(self, run_id: int):
        self.id = run_id
        self.summary: dict[str, Any] = {}
        self.status = "succeeded"
        self.message: str | None = None


@contextlib.contextmanager
def record_run(
    db: Database,
    *,
    agent_class: str,
    instance_id: str,
    operation: str,
    dry_run: bool = False,
) -> Iterator[RunRecord]:
    """Bracket a job with an ``agent_runs`` row (intent before, outcome after).

    An exception marks the run ``failed`` with its message and is re-raised.
    """
    with db.session() as s:
        row = AgentRun(
            agent_class=agent_class,
            instance_id=instance_id,
            operation=operation,
            started_at=time.time(),
            status="running",
            dry_run=dry_run,
        )
        s.add(row)
        s.flush()
        record = RunRecord(row.id)
    try:
        yield record
    except BaseException as exc:
        record.status = "stopped" if isinstance(exc, KeyboardInterrupt) else "failed"
        record.message = str(exc)[:2000] or type(exc).__name__
        raise
    finally:
        with db.session() as s:
            row = s.get(AgentRun, record.id)
            row.finished_at = time.time()
            row.status = record.status
            row.message = record.message
            row.summary = json.dumps(record.summary, default=str, sort_keys=True)


def recent_runs(db: Database, instance_id: str, operation: str | None = None, limit: int = 10) -> list[AgentRun]:
    with db.session() as s:
        q = select(AgentRun).where(AgentRun.instance_id == instance_id)
        if operation:
            q = q.where(AgentRun.operation == operation)
        return list(s.scalars(q.order_by(AgentRun.started_at.desc()).limit(limit)))


def get_cursor(db: Database, scope: str, name: str) -> Any | None:
    """The JSON value saved by :func:`set_cursor`, or None."""
    with db.session() as s:
        row = s.scalar(select(SyncCursor).where(SyncCursor.scope == scope, SyncCursor.name == name))
        return None if row is None else json.loads(row.value)


def set_cursor(db: Database, scope: str, name: str, value: Any | None) -> None:
    """Save (or, with ``None``, clear) where a job must resume."""
    with db.session() as s:
        row = s.scalar(select(SyncCursor).where(SyncCursor.scope == scope, SyncCursor.name == name))
        if value is None:
            if row is not None:
                s.delete(row)
            return
        if row is None:
            row = SyncCursor(scope=scope, name=name, value="", updated_at=0.0)
            s.add(row)
        row.value = json.dumps(value, sort_keys=True)
        row.updated_at = time.time()
