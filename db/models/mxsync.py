"""MxSync's EPN ledger and EpnAlert's alert ledger.

``mxsync_epn_transfers``: one row per (scope, EPN). ``scope`` names one repatriation (a
beamline's source and a destination root, see :func:`hpcsync.agents.mxsync.ledger.default_scope`),
so two instances sharing a database never mix their EPNs. ``state`` is ``pending`` (found,
to transfer), ``running`` (a transfer owns it: ``owner`` and ``heartbeat_at``), ``done``
(rsync exited 0 **and** the verification pass found the destination complete:
``verified_at``) or ``failed`` (``max_attempts`` reached; ``retry`` makes it pending). The
loop's queries are led by (scope, state).

``epnalert_alerts``: one row per (scope, EPN) alerted: when it was first and last mailed,
how often, so an EPN is mailed once and again only after the reminder interval.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Double, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class MxSyncEpnTransfer(Base):
    __tablename__ = "mxsync_epn_transfers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(128))
    epn: Mapped[str] = mapped_column(String(64))
    project: Mapped[str | None] = mapped_column(String(128))
    equipment_id: Mapped[str | None] = mapped_column(String(32))
    visit_end: Mapped[float | None] = mapped_column(Double)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    owner: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[float | None] = mapped_column(Double)
    files: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    found_at: Mapped[float] = mapped_column(Double)
    started_at: Mapped[float | None] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double)
    verified_at: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (
        UniqueConstraint("scope", "epn", name="uq_mxsync_epn_transfers_scope_epn"),
        Index("ix_mxsync_epn_transfers_scope_state", "scope", "state"),
    )


class EpnAlertAlert(Base):
    __tablename__ = "epnalert_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(128))
    epn: Mapped[str] = mapped_column(String(64))
    first_alerted_at: Mapped[float] = mapped_column(Double)
    last_alerted_at: Mapped[float] = mapped_column(Double)
    times_alerted: Mapped[int] = mapped_column(Integer, default=1)
    recipients: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("scope", "epn", name="uq_epnalert_alerts_scope_epn"),
        Index("ix_epnalert_alerts_scope_last", "scope", "last_alerted_at"),
    )
