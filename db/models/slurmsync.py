"""SlurmSync: the ledger of jobs pushed to a ColdFront/myBRC/myLRC API.

One row per (target, API, job): ``target`` is the profile name and ``api_url`` the API base
URL the job was pushed to (normalised; ``api_url_hash``, the first 16 hex digits of its
SHA-256, is the part of the key). Two instances of one target pointed at different APIs
(staging and production) sharing a database keep separate rows. ``jobslurmid`` is the raw
Slurm job id (``JobIDRaw``). ``payload_hash`` is the hash of the payload last prepared for
the job and ``pushed_hash`` the one the API last accepted: a job is pushed again only when
they differ. The intent (``state='pushing'``) is committed before the PUT and the outcome
after it; since the API's PUT is an upsert that adjusts usage by the difference between the
new and old amounts, repeating a PUT whose outcome was lost charges nothing twice.

``state`` is ``pending``, ``pushing`` (intent committed), ``pushed``, ``stored_uncharged``
(accepted, but the server's date rule kept it from usage; ``error`` says why), ``rejected``
(refused with 4xx; ``payload_hash`` is the payload refused, not sent again unchanged) or
``failed``.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Double, Index, Integer, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class SlurmJobPush(Base):
    __tablename__ = "slurmsync_job_pushes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target: Mapped[str] = mapped_column(String(64))
    api_url_hash: Mapped[str] = mapped_column(String(16))
    api_url: Mapped[str] = mapped_column(Text)
    jobslurmid: Mapped[str] = mapped_column(String(150))
    account: Mapped[str | None] = mapped_column(String(150))
    jobstatus: Mapped[str | None] = mapped_column(String(50))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(11, 2))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    payload_hash: Mapped[str | None] = mapped_column(String(64))
    pushed_hash: Mapped[str | None] = mapped_column(String(64))
    attempted_at: Mapped[float | None] = mapped_column(Double)
    pushed_at: Mapped[float | None] = mapped_column(Double)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("target", "api_url_hash", "jobslurmid", name="uq_slurmsync_job_pushes_target_api_job"),
        Index("ix_slurmsync_job_pushes_target_api_state", "target", "api_url_hash", "state"),
    )
