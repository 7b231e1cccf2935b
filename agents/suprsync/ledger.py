"""The SupRsync ledger: register files, hand out copy batches, record outcomes, keep
timecode directories. Every query SupRsync runs on its tables is here.

A producer (a pysmurf-monitor-like process) registers files from its own process while a
SupRsync agent copies them (``hpcsync.db.suprsync`` re-exports the class for socs's
producers)::

    >>> from hpcsync.agents.suprsync.ledger import SupRsyncFilesManager
    >>> srfm = SupRsyncFilesManager("/data/so/dbs/suprsync.db")      # or a database URL
    >>> srfm.add_file("/data/smurf/16750/obs/a.g3", "16750/obs/a.g3", "timestreams")
    >>> srfm.add_files([(local, remote), ...], "timestreams")        # one transaction per 2000

Registration only stats the file (one ``os.stat``: size, mtime, inode, ctime) and commits one
row; the md5 is computed by the agent when it copies the file, and computed again whenever
that signature changed since (socs#475), in particular right before the local file is
deleted. A ``remote_relpath`` that is absolute or climbs out of the remote base
directory with ``..`` is refused with :class:`~.files.RemotePathError`.

Registering a remote path that is already known is an upsert: the same local file
unchanged is a no-op; a changed (or different) local file sends the new content again.

Every query the agent runs each loop is an index seek on ``(archive_name, status, ...)``
and touches only unfinished rows, so an idle loop over a ledger of a million copied files
costs milliseconds. Every method runs in its own short transaction (SQLite ``BEGIN
IMMEDIATE`` with a busy timeout, see :mod:`hpcsync.db.engine`), so producers, agents and
operator commands share one ledger without "database is locked".
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, Integer, and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session

from hpcsync.db.dialect import chunked, execute_many, insert_ignore
from hpcsync.db.engine import Database, open_database
from hpcsync.db.models import FILE_STATES, SupRsyncFile, TimecodeDir, path_hash

from .files import (
    CopyResult,
    DeleteResult,
    FileTask,
    Signature,
    SupRsyncError,
    absolute_local_path,
    check_archive_name,
    check_md5,
    check_timecode,
    local_signature,
    normalize_remote_path,
    same_signature,
    same_size_and_mtime,
    split_path,
)
from .timecodes import update_timecode_dirs

#: Every status a file row can have (see :mod:`hpcsync.db.models.suprsync`).
ALL_STATES = FILE_STATES
#: Rows a file can be in that still need work (they keep a timecode dir from being synced).
UNFINISHED = ("pending", "failed", "missing")
#: Rows whose remote copy was verified.
VERIFIED = ("copied", "removed")
#: Statuses that count as "done" for timecode-dir sync (ignored: an operator gave up on it).
SYNCED_STATES = ("copied", "removed", "ignored")

#: Rows per transaction when registering or importing in bulk.
CHUNK = 2000


@dataclass
class AddReport:
    """What :meth:`SupRsyncFilesManager.add_files` did: rows added, re-queued (a changed
    local file) and unchanged; with ``want_ids``, the row id of every entry."""

    added: int = 0
    requeued: int = 0
    unchanged: int = 0
    ids: list[int] = field(default_factory=list)
    #: with ``skip_bad``: one message per entry that could not be registered
    refused: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"added": self.added, "requeued": self.requeued, "unchanged": self.unchanged,
                "refused": len(self.refused)}  # fmt: skip


@dataclass(frozen=True)
class ImportedTimecodeDir:
    """A timecode dir as another ledger (socs) recorded it; ``finalize_file`` is the
    ``(archive, remote_path)`` of its finalization file, if any."""

    archive_name: str
    timecode: int
    completed: bool
    synced: bool
    finalized: bool
    finalize_file: tuple[str, str] | None = None


@dataclass(frozen=True)
class OpenTimecodeDir:
    """A timecode dir not finalized yet (what :mod:`.timecodes` moves forward)."""

    id: int
    archive_name: str
    timecode: int
    completed: bool
    synced: bool


# -- the manager ------------------------------------------------------------------------------


def _is_our_insert(row: Any, ours: dict[str, Any]) -> bool:
    return (row.local_path, row.local_size, row.local_ino, row.local_ctime_ns, row.registered_at) == (
        ours["local_path"],
        ours["local_size"],
        ours["local_ino"],
        ours["local_ctime_ns"],
        ours["registered_at"],
    )


class SupRsyncFilesManager:
    """Access to the SupRsync files and timecode-dir tables of one hpcsync database.

    :param db: a :class:`~hpcsync.db.Database`, a database URL, or a SQLite file path
        (socs's ``db_path``). The schema is migrated when opened by URL or path.
    """

    def __init__(
        self, db: Database | str | os.PathLike, *, echo: bool = False, pool_size: int = 5, max_overflow: int = 10
    ):
        if isinstance(db, Database):
            self.db = db
        else:
            self.db = open_database(os.fspath(db), echo=echo, pool_size=pool_size, max_overflow=max_overflow)
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._counted_upto = 0
        self._counted_at = 0.0

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with self.db.session() as s:
            yield s

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction (deferred on SQLite: never blocks producers)."""
        with self.db.reading() as s:
            yield s

    def dispose(self) -> None:
        self.db.dispose()

    # -- registration ------------------------------------------------------------------------

    def add_file(
        self,
        local_abspath: str | os.PathLike,
        remote_relpath: str | os.PathLike,
        archive: str,
        deletable: bool = True,
        local_md5sum: str | None = None,
        timestamp: float | None = None,
    ) -> SupRsyncFile:
        """Register one file for copying to ``<remote_basedir>/<remote_relpath>``.

        Stats the file (it must exist) and commits one row, plus the timecode dir of the
        remote path. ``local_md5sum`` is optional: without it the agent hashes the file when
        it copies it. Returns the (detached) row.
        """
        report = self.add_files(
            [(local_abspath, remote_relpath, local_md5sum)],
            archive,
            deletable=deletable,
            timestamp=timestamp,
            want_ids=True,
        )
        with self.session() as s:
            return s.get(SupRsyncFile, report.ids[0])

    def add_files(
        self,
        entries: Iterable[tuple | dict],
        archive: str,
        deletable: bool = True,
        timestamp: float | None = None,
        *,
        want_ids: bool = False,
        skip_bad: bool = False,
    ) -> AddReport:
        """Register many files: ``entries`` are ``(local_abspath, remote_relpath[, md5])``
        tuples or dicts with those keys. One transaction per 2000 files. With ``want_ids``
        the report lists the row id of every entry (one more query per chunk).

        Every entry is checked (file exists, remote path stays inside the base directory)
        before anything is written; one bad entry raises and registers nothing of its chunk.
        With ``skip_bad`` a bad entry is left out instead and its reason is listed in
        ``report.refused`` (a tree walk registers everything it can).
        """
        archive = check_archive_name(archive)
        report = AddReport()
        prepared: list[dict[str, Any]] = []
        for entry in entries:
            try:
                prepared.append(self._prepare(entry, archive, deletable, timestamp))
            except SupRsyncError as exc:
                if not skip_bad:
                    raise
                report.refused.append(str(exc))
                continue
            if len(prepared) >= CHUNK:
                self._add_chunk(prepared, archive, report, want_ids)
                prepared = []
        if prepared:
            self._add_chunk(prepared, archive, report, want_ids)
        return report

    @staticmethod
    def _prepare(entry, archive: str, deletable: bool, timestamp: float | None) -> dict[str, Any]:
        if isinstance(entry, dict):
            local = entry.get("local_abspath") or entry.get("local_path")
            remote = entry.get("remote_relpath") or entry.get("remote_path")
            md5 = entry.get("local_md5sum")
            deletable = entry.get("deletable", deletable)
        else:
            local, remote, *rest = entry
            md5 = rest[0] if rest else None
        if local is None or remote is None:
            raise SupRsyncError(f"entry {entry!r} needs a local path and a remote path")
        local = absolute_local_path(local)
        remote = normalize_remote_path(remote)
        sig = local_signature(local)
        check_md5(md5, local)
        return {
            "archive_name": archive,
            "local_path": local,
            "remote_path": remote,
            "remote_path_hash": path_hash(remote),
            "timecode": check_timecode(remote),
            "status": "pending",
            "local_md5sum": md5,
            "local_size": sig.size,
            "local_mtime": sig.mtime,
            "local_ino": sig.ino,
            "local_ctime_ns": sig.ctime_ns,
            "registered_at": time.time() if timestamp is None else float(timestamp),
            "failed_copy_attempts": 0,
            "deletable": bool(deletable),
        }

    def _add_chunk(self, rows: list[dict[str, Any]], archive: str, report: AddReport, want_ids: bool) -> None:
        by_hash = {r["remote_path_hash"]: r for r in rows}  # the last entry for a path wins
        t = SupRsyncFile.__table__
        with self.session() as s:
            existing = self._rows_by_hash(s, archive, list(by_hash))
            new = [r for h, r in by_hash.items() if h not in existing]
            requeue: list[dict[str, Any]] = []
            if new and s.get_bind().dialect.name == "sqlite":
                # BEGIN IMMEDIATE: no other writer since we looked; every row is ours.
                insert_ignore(s, SupRsyncFile, new)
                report.added += len(new)
                if want_ids:
                    landed = self._rows_by_hash(s, archive, [r["remote_path_hash"] for r in new])
                    report.ids.extend(landed[r["remote_path_hash"]].id for r in new)
            elif new:
                insert_ignore(s, SupRsyncFile, new)
                # Another producer may have registered some of these paths since we looked:
                # the insert skipped them. Read them back, locked, and treat theirs as
                # registered before ours (the last registration wins, and says so).
                landed = self._rows_by_hash(s, archive, [r["remote_path_hash"] for r in new], lock=True)
                for r in new:
                    row = landed[r["remote_path_hash"]]
                    if _is_our_insert(row, r):
                        report.added += 1
                        if want_ids:
                            report.ids.append(row.id)
                    else:
                        self._compare(row, r, report, requeue, raced=True)
            for h, old in existing.items():
                self._compare(old, by_hash[h], report, requeue)
            if requeue:
                s.execute(
                    update(t)
                    .where(t.c.id == bindparam("b_id"))
                    .values(
                        local_path=bindparam("local_path"),
                        local_md5sum=bindparam("local_md5sum"),
                        local_size=bindparam("local_size"),
                        local_mtime=bindparam("b_mtime"),
                        local_ino=bindparam("b_ino"),
                        local_ctime_ns=bindparam("b_ctime"),
                        deletable=bindparam("b_deletable"),
                        status="pending",
                        remote_md5sum=None,
                        copied_at=None,
                        removed_at=None,
                        failed_copy_attempts=0,
                        last_attempt_at=None,  # a batch in flight no longer owns the row
                        last_error=bindparam("b_why"),
                    ),
                    requeue,
                )
                report.requeued += len(requeue)
            tcs = {r["timecode"] for r in rows if r["timecode"] is not None}
            if tcs:
                self._ensure_tcdirs(s, archive, tcs)

    # -- socs's query surface ----------------------------------------------------------------

    @staticmethod
    def _rows_by_hash(s: Session, archive: str, hashes: Sequence[str], *, lock: bool = False) -> dict[str, Any]:
        t = SupRsyncFile.__table__
        found: dict[str, Any] = {}
        for part in chunked(hashes):
            q = select(
                t.c.id, t.c.remote_path_hash, t.c.local_path, t.c.local_size, t.c.local_mtime, t.c.local_ino,
                t.c.local_ctime_ns, t.c.status, t.c.registered_at,
            ).where(t.c.archive_name == archive, t.c.remote_path_hash.in_(part))  # fmt: skip
            if lock:  # a locking read sees rows committed since this transaction began (MariaDB)
                q = q.with_for_update()
            for row in s.execute(q):
                found[row.remote_path_hash] = row
        return found

    @staticmethod
    def _compare(old: Any, r: dict[str, Any], report: AddReport, requeue: list, *, raced: bool = False) -> None:
        """A path registered already: unchanged if it is the same local file as before,
        else queued to be sent again with the new file (the last registration wins)."""
        sig = Signature(r["local_size"], r["local_mtime"], r["local_ino"], r["local_ctime_ns"])
        if old.local_ino is None or old.local_ctime_ns is None:
            # An older row without inode and ctime: it stays as it is when size and
            # mtime match; its unknown identity makes the copier and the deleter
            # hash the file again before trusting its md5.
            same = same_size_and_mtime(old.local_size, old.local_mtime, sig)
        else:
            same = same_signature(old.local_size, old.local_mtime, old.local_ino, old.local_ctime_ns, sig)
        report.ids.append(old.id)
        if old.local_path == r["local_path"] and same:
            report.unchanged += 1
            return
        why = (
            "registered at the same time by another producer with another local file: this registration replaced it"
            if raced
            else "registered again with a changed local file: it will be sent again"
        )
        requeue.append({"b_id": old.id, **{k: r[k] for k in ("local_path", "local_md5sum", "local_size")},
                        "b_mtime": r["local_mtime"], "b_ino": r["local_ino"], "b_ctime": r["local_ctime_ns"],
                        "b_deletable": r["deletable"], "b_why": why})  # fmt: skip

    def get_copyable_files(
        self, archive: str, max_copy_attempts: int | None = None, num_files: int | None = None
    ) -> list[SupRsyncFile]:
        """Pending files of ``archive`` (oldest first), at most ``num_files`` of them."""
        q = select(SupRsyncFile).where(SupRsyncFile.archive_name == archive, SupRsyncFile.status == "pending")
        if max_copy_attempts is not None:
            q = q.where(SupRsyncFile.failed_copy_attempts < max_copy_attempts)
        q = q.order_by(SupRsyncFile.registered_at, SupRsyncFile.id)
        if num_files is not None:
            q = q.limit(num_files)
        with self.reading() as s:
            return list(s.scalars(q))

    def get_deletable_files(
        self, archive: str, delete_after: float, now: float | None = None, limit: int | None = None
    ) -> list[SupRsyncFile]:
        """Verified, deletable files whose verified copy is older than ``delete_after`` s."""
        cutoff = (time.time() if now is None else now) - float(delete_after)
        q = (
            select(SupRsyncFile)
            .where(
                SupRsyncFile.archive_name == archive,
                SupRsyncFile.status == "copied",
                SupRsyncFile.deletable.is_(True),
                SupRsyncFile.copied_at <= cutoff,
            )
            .order_by(SupRsyncFile.copied_at)
        )
        if limit is not None:
            q = q.limit(limit)
        with self.reading() as s:
            return list(s.scalars(q))

    def get_known_files(
        self, archive: str, min_ctime: float | None = None, limit: int | None = None
    ) -> list[SupRsyncFile]:
        """All files of ``archive`` registered after ``min_ctime`` (oldest first)."""
        q = select(SupRsyncFile).where(SupRsyncFile.archive_name == archive)
        if min_ctime is not None:
            q = q.where(SupRsyncFile.registered_at > min_ctime)
        q = q.order_by(SupRsyncFile.registered_at, SupRsyncFile.id)
        if limit is not None:
            q = q.limit(limit)
        with self.reading() as s:
            return list(s.scalars(q))

    def known_remote_paths(self, archive: str, remote_paths: Iterable[str]) -> set[str]:
        """Which of ``remote_paths`` (normalized) are already registered in ``archive``."""
        paths = {normalize_remote_path(p) for p in remote_paths}
        hashes = {path_hash(p): p for p in paths}
        found: set[str] = set()
        t = SupRsyncFile.__table__
        with self.reading() as s:
            for part in chunked(list(hashes)):
                q = select(t.c.remote_path_hash).where(t.c.archive_name == archive, t.c.remote_path_hash.in_(part))
                found.update(hashes[h] for h in s.scalars(q))
        return found

    def get_finalized_until(self, archive: str, now: float | None = None) -> float:
        """Registration time of the oldest unfinished, non-ignored file minus 1 s; else now.

        Every file registered before this time is copied (or ignored by an operator).
        """
        with self.reading() as s:
            return self._finalized_until(s, archive, now)

    def _finalized_until(self, s: Session, archive: str, now: float | None) -> float:
        c = SupRsyncFile.registered_at
        oldest = [
            s.scalar(select(func.min(c)).where(SupRsyncFile.archive_name == archive, SupRsyncFile.status == st))
            for st in UNFINISHED
        ]
        oldest = [o for o in oldest if o is not None]
        return min(oldest) - 1 if oldest else (time.time() if now is None else now)

    def get_archive_stats(self, archive: str, now: float | None = None) -> dict[str, Any]:
        """socs's archive stats, from index seeks (no scan of the archive's rows).

        ``{finalized_until, num_files, uncopied_files, failed_files, last_file_added,
        last_file_copied}``. ``uncopied_files`` counts pending, failed and missing files;
        ``failed_files`` those of them that reached the attempt limit.
        """
        f = SupRsyncFile
        with self.reading() as s:
            per_status = {
                st: s.scalar(select(func.count()).select_from(f).where(f.archive_name == archive, f.status == st))
                for st in UNFINISHED
            }
            newest = None
            for st in ALL_STATES:
                ts = s.scalar(select(func.max(f.registered_at)).where(f.archive_name == archive, f.status == st))
                if ts is not None and (newest is None or ts > newest[1]):
                    newest = (st, ts)
            last_added = ""
            if newest:
                last_added = s.scalar(
                    select(f.local_path)
                    .where(f.archive_name == archive, f.status == newest[0], f.registered_at == newest[1])
                    .limit(1)
                )
            copied = None
            for st in VERIFIED:
                for deletable in (True, False):
                    ts = s.scalar(
                        select(func.max(f.copied_at)).where(
                            f.archive_name == archive, f.status == st, f.deletable.is_(deletable)
                        )
                    )
                    if ts is not None and (copied is None or ts > copied[2]):
                        copied = (st, deletable, ts)
            last_copied = ""
            if copied:
                last_copied = s.scalar(
                    select(f.local_path)
                    .where(
                        f.archive_name == archive,
                        f.status == copied[0],
                        f.deletable.is_(copied[1]),
                        f.copied_at == copied[2],
                    )
                    .limit(1)
                )
            finalized_until = self._finalized_until(s, archive, now)
            num_files = self._num_files(s, archive)
        return {
            "finalized_until": finalized_until,
            "num_files": num_files,
            "uncopied_files": sum(per_status.values()),
            "failed_files": per_status["failed"] + per_status["missing"],
            "last_file_added": last_added or "",
            "last_file_copied": last_copied or "",
        }

    #: A full recount of rows per archive at most this often (catches rows committed out of
    #: id order on PostgreSQL/MariaDB); in between, only rows with a newer id are counted.
    RECOUNT_INTERVAL = 600.0

    def _num_files(self, s: Session, archive: str) -> int:
        t = SupRsyncFile.__table__
        with self._counts_lock:
            now = time.monotonic()
            if not self._counted_at or now - self._counted_at > self.RECOUNT_INTERVAL:
                top = s.scalar(select(func.max(t.c.id))) or 0
                rows = s.execute(
                    select(t.c.archive_name, func.count()).where(t.c.id <= top).group_by(t.c.archive_name)
                ).all()
                self._counts = dict(rows)
                self._counted_upto, self._counted_at = top, now
            else:
                top = s.scalar(select(func.max(t.c.id))) or 0
                if top > self._counted_upto:
                    # Only the id range is filtered, so every backend walks the new rows only.
                    rows = s.execute(
                        select(t.c.archive_name, func.count())
                        .where(t.c.id > self._counted_upto, t.c.id <= top)
                        .group_by(t.c.archive_name)
                    ).all()
                    for name, n in rows:
                        self._counts[name] = self._counts.get(name, 0) + n
                    self._counted_upto = top
            return int(self._counts.get(archive, 0))

    # -- operator views and actions ----------------------------------------------------------

    def status_summary(self, archive: str | None = None) -> dict[str, dict[str, Any]]:
        """``{archive: {pending: n, copied: n, ..., total: n, oldest_pending: ts|None}}``.

        Counts every row of the archive (an index-only scan): for operator commands, not
        for the agent's loop.
        """
        f = SupRsyncFile
        q = select(f.archive_name, f.status, func.count(), func.min(f.registered_at)).group_by(f.archive_name, f.status)
        if archive is not None:
            q = q.where(f.archive_name == archive)
        out: dict[str, dict[str, Any]] = {}
        with self.reading() as s:
            for name, st, n, oldest in s.execute(q):
                entry = out.setdefault(name, {k: 0 for k in ALL_STATES} | {"total": 0, "oldest_pending": None})
                entry[st] = int(n)
                entry["total"] += int(n)
                if st == "pending":
                    entry["oldest_pending"] = oldest
            tq = select(TimecodeDir.archive_name, TimecodeDir.finalized, func.count()).group_by(
                TimecodeDir.archive_name, TimecodeDir.finalized
            )
            if archive is not None:
                tq = tq.where(TimecodeDir.archive_name == archive)
            for name, finalized, n in s.execute(tq):
                entry = out.setdefault(name, {k: 0 for k in ALL_STATES} | {"total": 0, "oldest_pending": None})
                key = "timecode_dirs_finalized" if finalized else "timecode_dirs_open"
                entry[key] = entry.get(key, 0) + int(n)
        return out

    def list_files(
        self,
        archive: str | None = None,
        statuses: Sequence[str] = ("failed", "missing"),
        *,
        with_errors: bool = False,
        limit: int = 50,
        path_like: str | None = None,
    ) -> list[SupRsyncFile]:
        """Files in ``statuses``; ``with_errors`` adds pending files whose last try failed
        (md5 mismatches that will be retried)."""
        f = SupRsyncFile
        cond = f.status.in_(list(statuses))
        if with_errors:
            cond = or_(cond, and_(f.status == "pending", f.failed_copy_attempts > 0))
        q = select(f).where(cond)
        if archive is not None:
            q = q.where(f.archive_name == archive)
        if path_like:
            q = q.where(or_(f.local_path.like(path_like), f.remote_path.like(path_like)))
        q = q.order_by(f.id).limit(limit)
        with self.reading() as s:
            return list(s.scalars(q))

    def retry_files(
        self,
        archive: str,
        ids: Sequence[int] | None = None,
        statuses: Sequence[str] = ("failed", "missing"),
        dry_run: bool = False,
    ) -> int:
        """Give files that hit the attempt limit (or were ignored) fresh attempts (socs#506).

        ``ids`` selects files; without it every file of ``archive`` in ``statuses``.
        Returns how many files are (or, with ``dry_run``, would be) pending again.
        """
        return self._set_status(
            archive, ids, statuses, dry_run,
            values={"status": "pending", "failed_copy_attempts": 0,
                    "last_error": "retry requested by an operator"},
        )  # fmt: skip

    def ignore_files(
        self,
        archive: str,
        ids: Sequence[int] | None = None,
        statuses: Sequence[str] = ("failed", "missing"),
        dry_run: bool = False,
    ) -> int:
        """Mark files ``ignored``: never copied, and no longer holding back timecode dirs."""
        return self._set_status(
            archive, ids, statuses, dry_run, values={"status": "ignored", "last_error": "ignored by an operator"}
        )

    def _set_status(self, archive, ids, statuses, dry_run, values) -> int:
        bad = set(statuses) - set(ALL_STATES)
        if bad:
            raise SupRsyncError(f"unknown file status {sorted(bad)}; known: {', '.join(ALL_STATES)}")
        f = SupRsyncFile.__table__
        cond = [f.c.archive_name == archive, f.c.status.in_(list(statuses))]
        n = 0
        with self.session() as s:
            if ids:
                for part in chunked(list(ids)):
                    where = and_(*cond, f.c.id.in_(part))
                    if dry_run:
                        n += s.scalar(select(func.count()).select_from(f).where(where))
                    else:
                        n += s.execute(update(f).where(where).values(**values)).rowcount
            elif dry_run:
                n = s.scalar(select(func.count()).select_from(f).where(*cond))
            else:
                n = s.execute(update(f).where(*cond).values(**values)).rowcount
        return int(n)

    # -- what the copy loop uses -------------------------------------------------------------

    def next_batch(self, archive: str, limit: int, after: tuple[float, int] | None = None) -> list[FileTask]:
        """The oldest ``limit`` pending files of ``archive`` (index seek).

        ``after`` = ``(registered_at, id)`` of the last file of the previous batch: keyset
        pagination, so a batch still being verified is not handed out twice.
        """
        t = SupRsyncFile.__table__
        q = (
            select(t.c.id, t.c.local_path, t.c.remote_path, t.c.local_md5sum, t.c.local_size, t.c.local_mtime,
                   t.c.failed_copy_attempts, t.c.registered_at, t.c.local_ino, t.c.local_ctime_ns)
            .where(t.c.archive_name == archive, t.c.status == "pending")
            .order_by(t.c.registered_at, t.c.id)
            .limit(int(limit))
        )  # fmt: skip
        if after is not None:
            ts, last_id = after
            q = q.where(or_(t.c.registered_at > ts, and_(t.c.registered_at == ts, t.c.id > last_id)))
        with self.reading() as s:
            return [FileTask(*row) for row in s.execute(q)]

    def _known_hashes(self, s: Session, archive: str, hashes: Sequence[str]) -> set[str]:
        t = SupRsyncFile.__table__
        found: set[str] = set()
        for part in chunked(list(hashes)):
            q = select(t.c.remote_path_hash).where(t.c.archive_name == archive, t.c.remote_path_hash.in_(part))
            found.update(s.scalars(q))
        return found

    def has_pending(self, archive: str) -> bool:
        t = SupRsyncFile.__table__
        with self.reading() as s:
            q = select(t.c.id).where(t.c.archive_name == archive, t.c.status == "pending").limit(1)
            return s.scalar(q) is not None

    def mark_attempt_started(self, ids: Sequence[int], now: float | None = None) -> None:
        """Commit the intent: these files are being copied now (``last_attempt_at``)."""
        t = SupRsyncFile.__table__
        now = time.time() if now is None else now
        with self.session() as s:
            for part in chunked(list(ids)):
                s.execute(update(t).where(t.c.id.in_(part)).values(last_attempt_at=now))

    def record_results(
        self,
        results: Sequence[CopyResult],
        max_copy_attempts: int,
        now: float | None = None,
        attempt_started: float | None = None,
    ) -> None:
        """Commit the outcome of a batch in its own transaction.

        Verified files become ``copied`` (``copied_at`` = now). A failed or missing file
        gets one more attempt counted; at ``max_copy_attempts`` it becomes ``failed`` (or
        ``missing``) and is no longer tried. Only rows still ``pending`` are touched, so an
        operator's ``ignore`` during the batch stands; with ``attempt_started`` (the time
        given to :meth:`mark_attempt_started`) only rows still owned by this attempt, so a
        file registered again while it was copied keeps its new registration.
        """
        t = SupRsyncFile.__table__
        now = time.time() if now is None else now
        owned = t.c.status == "pending"
        if attempt_started is not None:
            owned = and_(owned, t.c.last_attempt_at == float(attempt_started))
        verified = [r for r in results if r.outcome == "verified"]
        failed = [r for r in results if r.outcome in ("failed", "missing")]
        changed = [r for r in results if r.outcome == "changed"]
        deferred = [r for r in results if r.outcome == "deferred"]
        unknown = {r.outcome for r in results} - {"verified", "failed", "missing", "changed", "deferred"}
        if unknown:
            raise ValueError(f"unknown copy outcomes {sorted(unknown)}")
        with self.session() as s:
            if verified:
                execute_many(
                    s,
                    update(t)
                    .where(t.c.id == bindparam("b_id"), owned)
                    .values(
                        status="copied", copied_at=now, last_attempt_at=now, last_error=None,
                        remote_md5sum=bindparam("b_remote"), local_md5sum=bindparam("b_md5"),
                        local_size=bindparam("b_size"), local_mtime=bindparam("b_mtime"),
                        local_ino=bindparam("b_ino"), local_ctime_ns=bindparam("b_ctime"),
                    ),
                    [{"b_id": r.id, "b_remote": r.remote_md5sum, "b_md5": r.local_md5sum,
                      "b_size": r.local_size, "b_mtime": r.local_mtime, "b_ino": r.local_ino,
                      "b_ctime": r.local_ctime_ns} for r in verified],
                )  # fmt: skip
            if failed:
                attempts = t.c.failed_copy_attempts + 1
                execute_many(
                    s,
                    update(t)
                    .where(t.c.id == bindparam("b_id"), owned)
                    .values(
                        failed_copy_attempts=attempts,
                        status=case((attempts >= int(max_copy_attempts), bindparam("b_final")), else_="pending"),
                        last_attempt_at=now,
                        last_error=bindparam("b_error"),
                        remote_md5sum=bindparam("b_remote"),
                        local_md5sum=func.coalesce(bindparam("b_md5"), t.c.local_md5sum),
                        local_size=func.coalesce(bindparam("b_size", type_=Integer), t.c.local_size),
                        local_mtime=func.coalesce(bindparam("b_mtime", type_=t.c.local_mtime.type), t.c.local_mtime),
                        local_ino=func.coalesce(bindparam("b_ino", type_=BigInteger), t.c.local_ino),
                        local_ctime_ns=func.coalesce(bindparam("b_ctime", type_=BigInteger), t.c.local_ctime_ns),
                    ),
                    [{"b_id": r.id, "b_final": "missing" if r.outcome == "missing" else "failed",
                      "b_error": (r.error or "copy failed")[:2000], "b_remote": r.remote_md5sum,
                      "b_md5": r.local_md5sum, "b_size": r.local_size, "b_mtime": r.local_mtime,
                      "b_ino": r.local_ino, "b_ctime": r.local_ctime_ns} for r in failed],
                )  # fmt: skip
            if changed:
                execute_many(
                    s,
                    update(t)
                    .where(t.c.id == bindparam("b_id"), owned)
                    .values(local_md5sum=None, last_attempt_at=now, last_error=bindparam("b_error")),
                    [{"b_id": r.id, "b_error": r.error or "changed while being copied"} for r in changed],
                )
            if deferred:
                execute_many(
                    s,
                    update(t)
                    .where(t.c.id == bindparam("b_id"), owned)
                    .values(last_attempt_at=now, last_error=bindparam("b_error")),
                    [{"b_id": r.id, "b_error": r.error or "local file could not be looked at"} for r in deferred],
                )

    def next_deletions(
        self, archive: str, delete_after: float, limit: int, now: float | None = None
    ) -> list[tuple[FileTask, str | None]]:
        """``(task, remote_md5sum)`` of verified, deletable files whose verified copy is
        older than ``delete_after``."""
        t = SupRsyncFile.__table__
        cutoff = (time.time() if now is None else now) - float(delete_after)
        q = (
            select(t.c.id, t.c.local_path, t.c.remote_path, t.c.local_md5sum, t.c.local_size, t.c.local_mtime,
                   t.c.failed_copy_attempts, t.c.registered_at, t.c.local_ino, t.c.local_ctime_ns, t.c.remote_md5sum)
            .where(t.c.archive_name == archive, t.c.status == "copied", t.c.deletable.is_(True),
                   t.c.copied_at <= cutoff)
            .order_by(t.c.copied_at)
            .limit(int(limit))
        )  # fmt: skip
        with self.session() as s:
            return [(FileTask(*row[:10]), row[10]) for row in s.execute(q)]

    def record_deletions(self, results: Sequence[DeleteResult], now: float | None = None) -> None:
        t = SupRsyncFile.__table__
        now = time.time() if now is None else now
        removed = [r for r in results if r.outcome in ("removed", "gone")]
        changed = [r for r in results if r.outcome == "changed"]
        kept = [r for r in results if r.outcome == "kept"]
        # Hashed again and still the verified content: the new signature is the one to trust.
        resigned = [r for r in results if r.outcome in ("removed", "kept") and r.local_ctime_ns is not None]
        unknown = {r.outcome for r in results} - {"removed", "gone", "changed", "kept", "busy"}
        if unknown:
            raise ValueError(f"unknown delete outcomes {sorted(unknown)}")
        with self.session() as s:
            if resigned:
                s.execute(
                    update(t)
                    .where(t.c.id == bindparam("b_id"), t.c.status == "copied")
                    .values(local_size=bindparam("b_size"), local_mtime=bindparam("b_mtime"),
                            local_ino=bindparam("b_ino"), local_ctime_ns=bindparam("b_ctime")),
                    [{"b_id": r.id, "b_size": r.local_size, "b_mtime": r.local_mtime, "b_ino": r.local_ino,
                      "b_ctime": r.local_ctime_ns} for r in resigned],
                )  # fmt: skip
            if removed:
                s.execute(
                    update(t)
                    .where(t.c.id == bindparam("b_id"), t.c.status == "copied")
                    .values(status="removed", removed_at=now, last_error=bindparam("b_error")),
                    [{"b_id": r.id, "b_error": r.error} for r in removed],
                )
            if changed:
                s.execute(
                    update(t)
                    .where(t.c.id == bindparam("b_id"), t.c.status == "copied")
                    .values(
                        status="pending", copied_at=None, remote_md5sum=None, failed_copy_attempts=0,
                        local_md5sum=bindparam("b_md5"), local_size=bindparam("b_size"),
                        local_mtime=bindparam("b_mtime"), local_ino=bindparam("b_ino"),
                        local_ctime_ns=bindparam("b_ctime"), last_error=bindparam("b_error"),
                    ),
                    [{"b_id": r.id, "b_md5": r.local_md5sum, "b_size": r.local_size, "b_mtime": r.local_mtime,
                      "b_ino": r.local_ino, "b_ctime": r.local_ctime_ns, "b_error": r.error} for r in changed],
                )  # fmt: skip
            if kept:
                # Not deletable by us (permissions): stop trying, keep the reason for operators.
                s.execute(
                    update(t)
                    .where(t.c.id == bindparam("b_id"), t.c.status == "copied")
                    .values(deletable=False, last_error=bindparam("b_error")),
                    [{"b_id": r.id, "b_error": r.error} for r in kept],
                )

    # -- timecode directories ----------------------------------------------------------------

    def _ensure_tcdirs(self, s: Session, archive: str, timecodes: Iterable[int]) -> None:
        rows = [
            {"archive_name": archive, "timecode": int(tc), "completed": False, "synced": False, "finalized": False}
            for tc in sorted(set(timecodes))
        ]
        if rows:
            insert_ignore(s, TimecodeDir, rows)

    def create_timecode_dir(self, archive: str, timecode: int) -> None:
        with self.session() as s:
            self._ensure_tcdirs(s, archive, [timecode])

    def create_all_timecode_dirs(self, archive: str, min_ctime: float | None = None) -> int:
        """Create the timecode dirs of files registered after ``min_ctime`` that have none
        (rows written by tools that bypass :meth:`add_file`). Returns how many were created."""
        f = SupRsyncFile
        q = select(f.timecode).where(f.archive_name == archive, f.timecode.is_not(None)).distinct()
        if min_ctime is not None:
            q = q.where(f.registered_at > min_ctime)
        with self.session() as s:
            tcs = set(s.scalars(q))
            have = set(s.scalars(select(TimecodeDir.timecode).where(TimecodeDir.archive_name == archive)))
            self._ensure_tcdirs(s, archive, tcs - have)
        return len(tcs - have)

    def open_timecode_dirs(self, archive: str) -> list[OpenTimecodeDir]:
        """Timecode dirs of ``archive`` not finalized yet (oldest first)."""
        d = TimecodeDir
        q = (
            select(d.id, d.archive_name, d.timecode, d.completed, d.synced)
            .where(d.archive_name == archive, d.finalized.is_(False))
            .order_by(d.timecode)
        )
        with self.reading() as s:
            return [OpenTimecodeDir(*row) for row in s.execute(q)]

    def newest_timecode(self, archive: str) -> int | None:
        with self.reading() as s:
            return s.scalar(select(func.max(TimecodeDir.timecode)).where(TimecodeDir.archive_name == archive))

    def timecode_dir_unsynced(self, archive: str, timecode: int) -> int:
        """How many files of the dir still need work (pending, failed, missing)."""
        f = SupRsyncFile
        with self.reading() as s:
            return sum(
                s.scalar(
                    select(func.count())
                    .select_from(f)
                    .where(f.archive_name == archive, f.timecode == timecode, f.status == st)
                )
                for st in UNFINISHED
            )

    def set_timecode_dir_state(self, tcdir_id: int, *, completed: bool | None = None, synced: bool | None = None):
        values = {k: v for k, v in (("completed", completed), ("synced", synced)) if v is not None}
        if values:
            with self.session() as s:
                s.execute(update(TimecodeDir).where(TimecodeDir.id == tcdir_id).values(**values))

    def timecode_dir_summary(self, archive: str, timecode: int) -> tuple[int, list[str]]:
        """``(num_files, subdirs)`` of one timecode dir of ``archive`` (for finalization)."""
        f = SupRsyncFile
        subdirs: set[str] = set()
        n = 0
        with self.reading() as s:
            for path in s.scalars(select(f.remote_path).where(f.archive_name == archive, f.timecode == timecode)):
                n += 1
                parts = split_path(path)
                if len(parts) > 2:
                    subdirs.add(parts[1])
        return n, sorted(subdirs)

    def register_finalization(
        self, tcdir_id: int, local_path: str, remote_path: str, archive: str, now: float, write: Any = None
    ) -> int:
        """In one transaction: register the finalization file and mark the dir finalized.

        ``write`` (optional) is called inside the transaction before it commits, so the
        file exists on disk whenever its row does.
        """
        row = self._prepare((local_path, remote_path), archive, True, now) if write is None else None
        with self.session() as s:
            if write is not None:
                write()
                row = self._prepare((local_path, remote_path), archive, True, now)
            insert_ignore(s, SupRsyncFile, [row])
            file_id = s.scalar(
                select(SupRsyncFile.id).where(
                    SupRsyncFile.archive_name == archive, SupRsyncFile.remote_path_hash == row["remote_path_hash"]
                )
            )
            if row["timecode"] is not None:
                self._ensure_tcdirs(s, archive, [row["timecode"]])
            s.execute(
                update(TimecodeDir)
                .where(TimecodeDir.id == tcdir_id)
                .values(finalized=True, finalized_at=now, finalize_file_id=file_id, completed=True, synced=True)
            )
        return int(file_id)

    def update_all_timecode_dirs(self, archive: str, file_root: str, sync_id: str, now: float | None = None):
        """socs's entry point: complete, sync-check and finalize the archive's open dirs.

        See :func:`hpcsync.agents.suprsync.timecodes.update_timecode_dirs`.
        """
        return update_timecode_dirs(self, archive, file_root, sync_id, now=now)

    # -- rows imported from another ledger (socs) --------------------------------------------

    def import_rows(self, rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Insert complete ``suprsync_files`` rows whose remote path is not known yet in its
        archive, and their timecode dirs, in one transaction.

        Returns ``(inserted, already_known)``. Used by
        :func:`~hpcsync.agents.suprsync.socs_import.import_socs_database`, one call per chunk.
        """
        by_archive: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_archive.setdefault(r["archive_name"], []).append(r)
        inserted = already_known = 0
        with self.session() as s:
            for archive, items in by_archive.items():
                known = self._known_hashes(s, archive, [r["remote_path_hash"] for r in items])
                fresh = [r for r in items if r["remote_path_hash"] not in known]
                already_known += len(items) - len(fresh)
                if fresh:
                    insert_ignore(s, SupRsyncFile, fresh)
                    inserted += len(fresh)
                self._ensure_tcdirs(s, archive, {r["timecode"] for r in items if r["timecode"] is not None})
        return inserted, already_known

    def import_timecode_dirs(self, dirs: Iterable[ImportedTimecodeDir]) -> int:
        """Create or update timecode dirs as another ledger recorded them, in one
        transaction; a finalization file is looked up by its remote path. Returns how many."""
        n = 0
        with self.session() as s:
            for d in dirs:
                self._ensure_tcdirs(s, d.archive_name, [d.timecode])
                file_id = None
                if d.finalize_file is not None:
                    archive, remote = d.finalize_file
                    file_id = s.scalar(
                        select(SupRsyncFile.id).where(
                            SupRsyncFile.archive_name == archive, SupRsyncFile.remote_path_hash == path_hash(remote)
                        )
                    )
                s.execute(
                    update(TimecodeDir)
                    .where(TimecodeDir.archive_name == d.archive_name, TimecodeDir.timecode == d.timecode)
                    .values(completed=d.completed, synced=d.synced, finalized=d.finalized, finalize_file_id=file_id)
                )
                n += 1
        return n


__all__ = [
    "ALL_STATES",
    "CHUNK",
    "UNFINISHED",
    "VERIFIED",
    "AddReport",
    "ImportedTimecodeDir",
    "OpenTimecodeDir",
    "SupRsyncFilesManager",
]
