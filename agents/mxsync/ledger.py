"""The EPN ledger (``mxsync_epn_transfers``): what was found, what runs, what is done.

It replaces ASSyncy's ``ignore.yml`` (``previouslySynched: [...]``, rewritten by every
transfer thread without a lock) and its in-memory deque of recent successes. Each transfer
is bracketed by committed state (DESIGN, principle 2):

1. **claim** - one conditional UPDATE makes a ``pending`` row ``running`` with this engine
   as ``owner`` and a fresh ``heartbeat_at``; if it touches no row, someone else has the EPN
   (so an EPN is never queued twice, even by two processes sharing the database). A row
   whose owner stopped beating (the agent was killed) can be claimed again after
   ``stale_after`` seconds: the interrupted transfer resumes.
2. **outcome** - ``done`` only with ``verified_at`` (rsync exited 0 and the verification pass
   found the destination complete); ``pending`` again after a failure (``attempts`` counts
   them; ``failed`` once ``max_attempts`` is reached) or after a stop, a lost host or a full
   disk (which are not the EPN's fault and count no attempt). Outcomes only land on rows
   the engine still owns.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import yaml
from sqlalchemy import case, func, select, update

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.files import read_operator_text
from hpcsync.db import Database
from hpcsync.db.dialect import chunked, insert_ignore
from hpcsync.db.models import MxSyncEpnTransfer

from .epns import name_problem, project_for

STATES = ("pending", "running", "done", "failed")
_T = MxSyncEpnTransfer.__table__


def default_scope(beamline: str, destination_root: str) -> str:
    """The ledger scope of one repatriation: ``<beamline>:<destination root>`` (hashed when long)."""
    scope = f"{beamline}:{os.path.normpath(destination_root)}"
    if len(scope) <= 128:
        return scope
    return f"{beamline}:{hashlib.sha256(scope.encode()).hexdigest()[:40]}"


@dataclass(frozen=True)
class FoundEpn:
    """An EPN whose visit has finished, with the project it maps to."""

    epn: str
    project: str
    equipment_id: str | None = None
    visit_end: float | None = None


class EpnLedger:
    """The ledger rows of one scope."""

    def __init__(self, db: Database, scope: str):
        self.db = db
        self.scope = scope

    def _mine(self, *terms):
        return (_T.c.scope == self.scope, *terms)

    # -- what is known -------------------------------------------------------------------------

    def states(self, epns: Sequence[str]) -> dict[str, str]:
        """``{epn: state}`` of those of ``epns`` the ledger has."""
        found: dict[str, str] = {}
        with self.db.session() as s:
            for part in chunked(list(epns)):
                found.update(s.execute(select(_T.c.epn, _T.c.state).where(*self._mine(_T.c.epn.in_(part)))).all())
        return found

    def add_found(self, found: Iterable[FoundEpn]) -> int:
        """Insert new EPNs as ``pending`` (known ones are left as they are); return how many."""
        now = time.time()
        rows = [
            {
                "scope": self.scope,
                "epn": f.epn,
                "project": f.project,
                "equipment_id": f.equipment_id,
                "visit_end": f.visit_end,
                "state": "pending",
                "files": 0,
                "bytes": 0,
                "attempts": 0,
                "found_at": now,
            }
            for f in found
        ]
        if not rows:
            return 0
        with self.db.session() as s:
            before = s.scalar(select(func.count()).select_from(_T).where(*self._mine()))
            insert_ignore(s, _T, rows)
            after = s.scalar(select(func.count()).select_from(_T).where(*self._mine()))
        return after - before

    def pending(self, limit: int = 10_000) -> list[dict]:
        """Pending rows (and stale running ones are the claimer's business), oldest visit first."""
        with self.db.session() as s:
            rows = s.execute(
                select(_T.c.epn, _T.c.project, _T.c.attempts)
                .where(*self._mine(_T.c.state == "pending"))
                .order_by(_T.c.visit_end, _T.c.epn)
                .limit(limit)
            ).mappings()
            return [dict(r) for r in rows]

    def stale_running(self, stale_after: float) -> list[dict]:
        """Running rows whose owner stopped beating ``stale_after`` seconds ago (killed)."""
        with self.db.session() as s:
            rows = s.execute(
                select(_T.c.epn, _T.c.project, _T.c.attempts).where(
                    *self._mine(_T.c.state == "running", _T.c.heartbeat_at < time.time() - stale_after)
                )
            ).mappings()
            return [dict(r) for r in rows]

    def rows(self, state: str | None = None, limit: int = 100) -> list[dict]:
        terms = self._mine() if not state else self._mine(_T.c.state == state)
        with self.db.session() as s:
            rows = s.execute(
                select(
                    _T.c.epn,
                    _T.c.project,
                    _T.c.state,
                    _T.c.files,
                    _T.c.bytes,
                    _T.c.attempts,
                    _T.c.last_error,
                    _T.c.verified_at,
                    _T.c.finished_at,
                )
                .where(*terms)
                .order_by(_T.c.epn)
                .limit(limit)
            ).mappings()
            return [dict(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self.db.session() as s:
            rows = s.execute(select(_T.c.state, func.count()).where(*self._mine()).group_by(_T.c.state)).all()
        return {state: 0 for state in STATES} | dict(rows)

    # -- claim, beat, outcome ------------------------------------------------------------------

    def claim(self, epn: str, owner: str, stale_after: float) -> bool:
        """Make the EPN ``running`` for ``owner``; False if it is not pending (nor stale)."""
        now = time.time()
        claimable = (_T.c.state == "pending") | ((_T.c.state == "running") & (_T.c.heartbeat_at < now - stale_after))
        with self.db.session() as s:
            result = s.execute(
                update(_T)
                .where(*self._mine(_T.c.epn == epn, claimable))
                .values(state="running", owner=owner, heartbeat_at=now, started_at=now, attempts=_T.c.attempts + 1)
            )
            return result.rowcount == 1

    def heartbeat(self, epn: str, owner: str, *, files: int | None = None, nbytes: int | None = None) -> None:
        values: dict = {"heartbeat_at": time.time()}
        if files is not None:
            values["files"] = files
        if nbytes is not None:
            values["bytes"] = nbytes
        with self.db.session() as s:
            s.execute(
                update(_T)
                .where(*self._mine(_T.c.epn == epn, _T.c.owner == owner, _T.c.state == "running"))
                .values(**values)
            )

    def _outcome(self, epn: str, owner: str, **values) -> bool:
        with self.db.session() as s:
            result = s.execute(
                update(_T)
                .where(*self._mine(_T.c.epn == epn, _T.c.owner == owner, _T.c.state == "running"))
                .values(owner=None, finished_at=time.time(), **values)
            )
            return result.rowcount == 1

    def done(self, epn: str, owner: str, *, files: int, nbytes: int) -> bool:
        """Verified complete: ``done`` with ``verified_at``."""
        return self._outcome(
            epn, owner, state="done", files=files, bytes=nbytes, verified_at=time.time(), last_error=None
        )

    def failed(self, epn: str, owner: str, error: str, max_attempts: int) -> bool:
        """A failed attempt: ``pending`` again, or ``failed`` once ``max_attempts`` is reached."""
        state = case((_T.c.attempts >= max_attempts, "failed"), else_="pending")
        return self._outcome(epn, owner, state=state, last_error=error[:2000])

    def released(self, epn: str, owner: str, why: str) -> bool:
        """Not the EPN's fault (stop, host lost, disk full): pending again, the attempt uncounted."""
        return self._outcome(epn, owner, state="pending", attempts=_T.c.attempts - 1, last_error=why[:2000])

    def retry(self, epn: str | None = None) -> int:
        """``failed`` rows (or one EPN, done or failed) back to ``pending`` with no attempts."""
        terms = [_T.c.state == "failed"] if not epn else [_T.c.epn == epn, _T.c.state.in_(("failed", "done"))]
        with self.db.session() as s:
            result = s.execute(
                update(_T).where(*self._mine(*terms)).values(state="pending", attempts=0, verified_at=None, owner=None)
            )
            return result.rowcount

    # -- ignore.yml ----------------------------------------------------------------------------

    def import_ignore(self, path: str, epn_map: dict[str, str]) -> tuple[int, list[str]]:
        """Mark the EPNs of an ASSyncy ``ignore.yml`` done (they were synced by ASSyncy; no
        verification of hpcsync's is claimed: ``verified_at`` stays empty). Returns how
        many were added and the names refused. Nothing is written if the file is bad."""
        text = read_operator_text(path, "ignore file", ConfigError)
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        listed = data.get("previouslySynched") if isinstance(data, dict) else None
        if listed is None:
            listed = []
        if not isinstance(listed, list):
            raise ConfigError(f"{path}: key 'previouslySynched': expected a list of EPNs, got {type(listed).__name__}")
        now = time.time()
        refused, rows = [], []
        for item in listed:
            epn = str(item)
            why = name_problem(epn)
            if why:
                refused.append(f"{epn!r}: {why}")
                continue
            rows.append(
                {
                    "scope": self.scope,
                    "epn": epn,
                    "project": project_for(epn, epn_map),
                    "state": "done",
                    "files": 0,
                    "bytes": 0,
                    "attempts": 0,
                    "found_at": now,
                    "finished_at": now,
                    "last_error": f"imported from {path}; synced by ASSyncy, not verified by hpcsync",
                }
            )
        with self.db.session() as s:
            before = s.scalar(select(func.count()).select_from(_T).where(*self._mine()))
            insert_ignore(s, _T, rows)
            s.execute(
                update(_T)
                .where(*self._mine(_T.c.epn.in_([r["epn"] for r in rows]), _T.c.state != "done"))
                .values(state="done", owner=None, finished_at=now)
            )
            after = s.scalar(select(func.count()).select_from(_T).where(*self._mine()))
        return after - before, refused

    def export_ignore(self, path: str) -> int:
        """Write the done EPNs as an ASSyncy ``ignore.yml`` (atomically); return how many."""
        with self.db.session() as s:
            done = sorted(s.scalars(select(_T.c.epn).where(*self._mine(_T.c.state == "done"))))
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".ignore-", suffix=".yml", dir=directory)
        try:
            with os.fdopen(fd, "w") as fh:
                yaml.safe_dump({"previouslySynched": done}, fh, default_flow_style=False)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return len(done)
