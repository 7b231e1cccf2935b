"""Tables every agent uses: the run ledger and resumable cursors."""

from __future__ import annotations

from sqlalchemy import Boolean, Double, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class AgentRun(Base):
    """One run of one op (or CLI job): what ran, when, with what outcome.

    ``summary`` is a small JSON document of the run's figures (what ``session.data``
    showed at the end), so an operator can see past runs after the session is gone.
    """

    __tablename__ = "agent_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_class: Mapped[str] = mapped_column(String(64))
    instance_id: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[float] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double)
    status: Mapped[str] = mapped_column(String(16), default="running")
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    message: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_agent_runs_instance_op_started", "instance_id", "operation", "started_at"),)


class SyncCursor(Base):
    """Where a long job stopped and must resume (a page, a project, a job id …)."""

    __tablename__ = "sync_cursors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (UniqueConstraint("scope", "name", name="uq_sync_cursors_scope_name"),)
