"""The push ledger: one row per (target, API, job) in ``slurmsync_job_pushes``.

Rows are keyed by the target (profile name), the API base URL the jobs are pushed to
(normalised by :func:`normalize_api_url`, keyed by :func:`api_url_hash`) and the job's raw
Slurm id. Two instances of one target pointed at different APIs (``--api-url`` staging vs
production) sharing one database therefore never skip each other's pushes.

Each push is bracketed by committed state (DESIGN, principle 2):

1. **intent** - before a batch's PUTs, every job in it is committed as ``state='pushing'``
   with the hash of the payload about to be sent;
2. **outcome** - after them, each job becomes ``pushed`` (``pushed_hash`` = that hash),
   ``stored_uncharged`` (accepted like ``pushed``, but the server's date rule says it moved
   no usage: see :mod:`.charging`), ``rejected`` (the API refused the data: 4xx; the hash it
   refused stays in ``payload_hash``), ``failed`` (outage, auth) or ``pending`` (never sent
   because the run stopped first).

A re-run skips jobs whose payload hash equals ``pushed_hash`` ("unchanged"), and jobs the
API refused with the very payload they would be sent with again ("rejected earlier"), unless
asked to retry those. A job left ``pushing`` by a crash is simply sent again: the API's PUT
is an upsert that moves usage by the difference between the new and the old amount, so
repeating it charges nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import urlsplit

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from hpcsync.db import Database
from hpcsync.db.dialect import chunked
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

_TABLE = SlurmJobPush.__table__
_INTENT_COLUMNS = ("account", "jobstatus", "amount", "payload_hash", "state", "attempted_at", "error")


#: The ledger's amount column is Numeric(11, 2); a larger amount (which no API accepts
#: either) is kept out of it rather than failing the whole batch on PostgreSQL/MariaDB.
_AMOUNT_LIMIT = Decimal(10) ** 9


def _storable(amount: Decimal | None) -> Decimal | None:
    return amount if amount is not None and abs(amount) < _AMOUNT_LIMIT else None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_api_url(url: str) -> str:
    """The API base URL as the ledger keys it: scheme and host lower-case, no default port,
    no user info, query or fragment, and a path ending in exactly one ``/``.

    ``HTTPS://MyBRC.example.org:443/api`` and ``https://mybrc.example.org/api/`` are the same
    API; ``/api/`` and ``/staging/api/``, or two hosts or ports, are not.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    path = "/" + "/".join(segment for segment in parts.path.split("/") if segment)
    return f"{scheme}://{netloc}{path.rstrip('/')}/"


def api_url_hash(url: str) -> str:
    """16 hex digits of the SHA-256 of the normalised API base URL (the ledger key's API part)."""
    return hashlib.sha256(normalize_api_url(url).encode()).hexdigest()[:16]


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
    #: why the server will store this job without charging it (None: it charges it)
    uncharged: str | None = None


class JobLedger:
    """Ledger rows of one target (a profile name) on one API (its base URL)."""

    def __init__(self, db: Database, target: str, api_url: str):
        self.db = db
        self.target = target
        self.api_url = normalize_api_url(api_url)
        self.api_url_hash = api_url_hash(api_url)

    def _mine(self) -> list:
        """The WHERE terms selecting this target's rows on this API."""
        return [_TABLE.c.target == self.target, _TABLE.c.api_url_hash == self.api_url_hash]

    def already_pushed(self, jobs: Sequence[PreparedJob]) -> set[str]:
        """Ids of the jobs whose current payload the API has already accepted."""
        return self.not_to_send(jobs)[0]

    def not_to_send(self, jobs: Sequence[PreparedJob]) -> tuple[set[str], set[str]]:
        """``(unchanged, rejected_earlier)``: ids of the jobs whose current payload the API
        has already accepted, and of those it refused (4xx) with this very payload."""
        wanted = {j.jobslurmid: j.hash for j in jobs}
        unchanged: set[str] = set()
        rejected: set[str] = set()
        with self.db.session() as s:
            for part in chunked(list(wanted)):
                rows = s.execute(
                    select(_TABLE.c.jobslurmid, _TABLE.c.pushed_hash, _TABLE.c.state, _TABLE.c.payload_hash).where(
                        *self._mine(), _TABLE.c.jobslurmid.in_(part)
                    )
                )
                for job_id, pushed, state, tried in rows:
                    if pushed is not None and pushed == wanted[job_id]:
                        unchanged.add(job_id)
                    elif state == "rejected" and tried == wanted[job_id]:
                        rejected.add(job_id)
        return unchanged, rejected

    def record_intent(self, jobs: Sequence[PreparedJob]) -> None:
        """Commit ``pushing`` for every job of the batch, before any of its PUTs."""
        now = time.time()
        values = {
            j.jobslurmid: {
                "account": j.account, "jobstatus": j.jobstatus, "amount": _storable(j.amount), "payload_hash": j.hash,
                "state": "pushing", "attempted_at": now, "error": None,
            }
            for j in jobs
        }  # fmt: skip
        # Core statements with executemany: the ORM's unit of work cost more than the PUTs.
        for attempt in range(2):
            try:
                with self.db.session() as s:
                    known = self._known_ids(s, list(values))
                    key = {"target": self.target, "api_url_hash": self.api_url_hash, "api_url": self.api_url}
                    new = [{**key, "jobslurmid": k, **v} for k, v in values.items() if k not in known]
                    if new:
                        s.execute(insert(_TABLE), new)
                    old = [{"b_job": k, **{f"v_{c}": x for c, x in v.items()}} for k, v in values.items() if k in known]
                    if old:
                        s.execute(self._update(*_INTENT_COLUMNS), old)
                return
            except IntegrityError:
                # Another run inserted one of these jobs meanwhile; the retry updates it.
                if attempt:
                    raise

    def record_outcomes(
        self, results: Iterable[PushResult], sent: dict[str, str] | None = None, uncharged: dict[str, str] | None = None
    ) -> None:
        """Commit what each PUT of the batch did.

        ``sent`` maps job id -> hash of the payload this run sent; it becomes
        ``pushed_hash``. (Without it, the hash committed with the intent is used - which
        another run pushing the same job meanwhile may have replaced.) ``uncharged`` maps
        the ids of jobs the server stores without charging to why: accepted, they become
        ``stored_uncharged`` with that reason in ``error``.
        """
        now = time.time()
        uncharged = uncharged or {}
        pushed, other = [], []
        for r in results:
            state = STATE_OF_OUTCOME[r.outcome]
            error = r.error
            if state == "pushed" and r.jobslurmid in uncharged:
                state, error = "stored_uncharged", f"stored without charge: {uncharged[r.jobslurmid]}"
            row = {
                "b_job": r.jobslurmid, "v_state": state, "v_http_status": r.http_status,
                "v_error": error[:2000] if error else None,
            }  # fmt: skip
            if r.outcome == "pushed":
                pushed.append({**row, "v_pushed_at": now, **({"v_pushed_hash": sent[r.jobslurmid]} if sent else {})})
            else:
                other.append(row)
        with self.db.session() as s:
            if pushed and sent:
                s.execute(self._update("state", "http_status", "error", "pushed_at", "pushed_hash"), pushed)
            elif pushed:
                stmt = self._update("state", "http_status", "error", "pushed_at")
                s.execute(stmt.values(pushed_hash=_TABLE.c.payload_hash), pushed)
            if other:
                s.execute(self._update("state", "http_status", "error"), other)

    def _known_ids(self, s, ids: list[str]) -> set[str]:
        known: set[str] = set()
        for part in chunked(ids):
            known.update(s.scalars(select(_TABLE.c.jobslurmid).where(*self._mine(), _TABLE.c.jobslurmid.in_(part))))
        return known

    def _update(self, *columns: str):
        """UPDATE of ``columns`` (from ``v_<column>`` parameters) for the job ``b_job``."""
        return (
            update(_TABLE)
            .where(*self._mine(), _TABLE.c.jobslurmid == bindparam("b_job"))
            .values({c: bindparam(f"v_{c}") for c in columns})
        )

    def counts(self) -> dict[str, int]:
        """Rows per state for this target on this API."""
        with self.db.session() as s:
            rows = s.execute(select(_TABLE.c.state, func.count()).where(*self._mine()).group_by(_TABLE.c.state))
            return {state: n for state, n in rows}

    def get(self, jobslurmid: str) -> SlurmJobPush | None:
        with self.db.session() as s:
            return s.scalar(
                select(SlurmJobPush).where(
                    SlurmJobPush.target == self.target,
                    SlurmJobPush.api_url_hash == self.api_url_hash,
                    SlurmJobPush.jobslurmid == jobslurmid,
                )
            )
