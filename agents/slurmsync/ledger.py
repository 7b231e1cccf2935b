"""The push ledger: one row per (target, job) in ``slurmsync_job_pushes``.

Each push is bracketed by committed state (DESIGN, principle 2):

1. **intent** - before a batch's PUTs, every job in it is committed as ``state='pushing'``
   with the hash of the payload about to be sent;
2. **outcome** - after them, each job becomes ``pushed`` (``pushed_hash`` = that hash),
   ``rejected`` (the API refused the data: 4xx), ``failed`` (outage, auth) or ``pending``
   (never sent because the run stopped first).

A re-run skips jobs whose payload hash equals ``pushed_hash``. A job left ``pushing`` by a
crash is simply sent again: the API's PUT is an upsert that moves usage by the difference
between the new and the old amount, so repeating it charges nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from hpcsync.db import Database
from hpcsync.db.models import SlurmJobPush

from .coldfront import PushResult

#: Ledger state of each push outcome.
STATE_OF_OUTCOME = {
    "pushed": "pushed",
    "rejected": "rejected",
    "unavailable": "failed",
    "auth": "failed",
    "skipped": "pending",
}

# IN-lists stay well under every backend's parameter limit.
_QUERY_CHUNK = 500


def payload_hash(payload: dict) -> str:
    """A stable hash of a job payload (keys sorted, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class PreparedJob:
    """A job ready to push: its API payload and that payload's hash."""

    jobslurmid: str
    account: str
    jobstatus: str
    amount: Decimal
    payload: dict
    hash: str


class JobLedger:
    """Ledger rows of one target (a profile name)."""

    def __init__(self, db: Database, target: str):
        self.db = db
        self.target = target

    def already_pushed(self, jobs: Sequence[PreparedJob]) -> set[str]:
        """Ids of the jobs whose current payload the API has already accepted."""
        wanted = {j.jobslurmid: j.hash for j in jobs}
        done: set[str] = set()
        ids = list(wanted)
        with self.db.session() as s:
            for first in range(0, len(ids), _QUERY_CHUNK):
                rows = s.execute(
                    select(SlurmJobPush.jobslurmid, SlurmJobPush.pushed_hash).where(
                        SlurmJobPush.target == self.target,
                        SlurmJobPush.jobslurmid.in_(ids[first : first + _QUERY_CHUNK]),
                    )
                )
                done.update(job_id for job_id, pushed in rows if pushed is not None and pushed == wanted[job_id])
        return done

    def record_intent(self, jobs: Sequence[PreparedJob]) -> None:
        """Commit ``pushing`` for every job of the batch, before any of its PUTs."""
        now = time.time()

        def apply(row: SlurmJobPush, job: PreparedJob) -> None:
            row.account = job.account
            row.jobstatus = job.jobstatus
            row.amount = job.amount
            row.payload_hash = job.hash
            row.state = "pushing"
            row.attempted_at = now
            row.error = None

        self._upsert({j.jobslurmid: j for j in jobs}, apply)

    def record_outcomes(self, results: Iterable[PushResult]) -> None:
        """Commit what each PUT of the batch did."""
        now = time.time()
        by_id = {r.jobslurmid: r for r in results}

        def apply(row: SlurmJobPush, result: PushResult) -> None:
            row.state = STATE_OF_OUTCOME[result.outcome]
            row.http_status = result.http_status
            row.error = result.error[:2000] if result.error else None
            if result.outcome == "pushed":
                row.pushed_hash = row.payload_hash
                row.pushed_at = now

        self._upsert(by_id, apply)

    def _upsert(self, items: dict, apply) -> None:
        # Portable upsert (SQLite, PostgreSQL, MariaDB): update the rows that exist, insert
        # the rest, in one transaction. Two runs racing on a new job id collide on the unique
        # key; the second attempt then finds the row and updates it.
        for attempt in range(2):
            try:
                with self.db.session() as s:
                    ids = list(items)
                    existing: dict[str, SlurmJobPush] = {}
                    for first in range(0, len(ids), _QUERY_CHUNK):
                        rows = s.scalars(
                            select(SlurmJobPush).where(
                                SlurmJobPush.target == self.target,
                                SlurmJobPush.jobslurmid.in_(ids[first : first + _QUERY_CHUNK]),
                            )
                        )
                        existing.update((row.jobslurmid, row) for row in rows)
                    for job_id, item in items.items():
                        row = existing.get(job_id)
                        if row is None:
                            row = SlurmJobPush(target=self.target, jobslurmid=job_id, state="pending")
                            s.add(row)
                        apply(row, item)
                return
            except IntegrityError:
                if attempt:
                    raise

    def counts(self) -> dict[str, int]:
        """Rows per state for this target."""
        with self.db.session() as s:
            rows = s.execute(
                select(SlurmJobPush.state, func.count())
                .where(SlurmJobPush.target == self.target)
                .group_by(SlurmJobPush.state)
            )
            return {state: n for state, n in rows}

    def get(self, jobslurmid: str) -> SlurmJobPush | None:
        with self.db.session() as s:
            return s.scalar(
                select(SlurmJobPush).where(SlurmJobPush.target == self.target, SlurmJobPush.jobslurmid == jobslurmid)
            )
