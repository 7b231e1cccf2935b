"""The SupRsync files ledger: register files, hand out copy batches, record outcomes.

A producer (a pysmurf-monitor-like process) registers files from its own process while a
SupRsync agent copies them::

    >>> from hpcsync.db.suprsync import SupRsyncFilesManager
    >>> srfm = SupRsyncFilesManager("/data/so/dbs/suprsync.db")      # or a database URL
    >>> srfm.add_file("/data/smurf/16750/obs/a.g3", "16750/obs/a.g3", "timestreams")
    >>> srfm.add_files([(local, remote), ...], "timestreams")        # one transaction per 2000

Registration only stats the file (one ``os.stat``: size, mtime, inode, ctime) and commits one
row; the md5 is computed by the agent when it copies the file, and computed again whenever
that signature changed since (socs#475), in particular right before the local file is
deleted. A ``remote_relpath`` that is absolute or climbs out of the remote base
directory with ``..`` is refused with :class:`RemotePathError`.

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
import hashlib
import os
import posixpath
import re
import sqlite3
import stat as statmod
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, Integer, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.orm import Session

from .engine import Database, DatabaseError, open_database
from .models import SupRsyncFile, TimecodeDir, path_hash

#: Rows a file can be in that still need work (they keep a timecode dir from being synced).
UNFINISHED = ("pending", "failed", "missing")
#: Rows whose remote copy was verified.
VERIFIED = ("copied", "removed")
#: Statuses that count as "done" for timecode-dir sync (ignored: an operator gave up on it).
SYNCED_STATES = ("copied", "removed", "ignored")
ALL_STATES = ("pending", "copied", "removed", "failed", "ignored", "missing")

#: Rows per transaction when registering or importing in bulk.
CHUNK = 2000
#: Values per ``IN (...)`` list (well under every backend's bound-parameter limit).
IN_CHUNK = 500
#: A timecode directory with no newer one is complete this many timecodes (~days) later.
DAYS_TO_COMPLETE_TCDIR = 1
MAX_REMOTE_PATH = 4096
_TIMECODE_RE = re.compile(r"^\d{5}$")
_MTIME_TOLERANCE = 1e-6


class SupRsyncError(ValueError):
    """A file cannot be registered as asked (bad path, missing file, bad archive)."""


class RemotePathError(SupRsyncError):
    """A ``remote_relpath`` is absolute, empty or escapes the remote base directory."""


# -- paths, timecodes, checksums -------------------------------------------------------------


def normalize_remote_path(remote_relpath: str | os.PathLike) -> str:
    """The canonical form of a remote path relative to the base dir, or RemotePathError.

    ``a//b/./c`` becomes ``a/b/c``. Absolute paths, ``..`` components, empty paths and NUL
    bytes are refused: the file would land outside ``--remote-basedir``.
    """
    path = os.fspath(remote_relpath)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not path or not path.strip("/"):
        raise RemotePathError(f"remote path {path!r} is empty")
    if "\0" in path:
        raise RemotePathError(f"remote path {path!r} contains a NUL byte")
    if not _is_utf8(path):
        raise RemotePathError(
            f"remote path {path!r} is not valid UTF-8 (undecodable bytes in the name); the ledger keeps paths as text"
        )
    if path.startswith("/"):
        raise RemotePathError(f"remote path {path!r} is absolute; give it relative to the remote base directory")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RemotePathError(f"remote path {path!r} contains '..' and could escape the remote base directory")
    if not parts:
        raise RemotePathError(f"remote path {path!r} names the base directory itself, not a file")
    norm = "/".join(parts)
    if len(norm.encode("utf-8", "surrogateescape")) > MAX_REMOTE_PATH:
        raise RemotePathError(f"remote path is longer than {MAX_REMOTE_PATH} bytes")
    return norm


def _is_utf8(text: str) -> bool:
    """False for names decoded with ``surrogateescape`` from bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_timecode(remote_path: str) -> int | None:
    """The 5-digit timecode of a remote path (its first component), or None."""
    first = split_path(remote_path)[0] if remote_path else ""
    return int(first) if _TIMECODE_RE.match(first) else None


def split_path(path: str) -> list[str]:
    """``'16750/a/b.g3'`` -> ``['16750', 'a', 'b.g3']`` (no empty parts)."""
    return [p for p in posixpath.normpath(path).split("/") if p not in ("", ".")]


class Signature(NamedTuple):
    """What one ``os.stat`` tells about a local file's content without reading it.

    Size and mtime alone miss a file replaced by different content of the same size and
    mtime (``cp -p``, ``rsync -t``, ``mv`` of a file written with the same mtime, a tool
    that resets mtime). The inode changes when the file is replaced and the ctime changes
    on every write, replacement, rename or chmod, and cannot be set by users: any change
    of content changes the signature. ``ino`` is folded into a signed 64-bit value (the
    ledger's BIGINT).
    """

    size: int
    mtime: float
    ino: int
    ctime_ns: int


_INO_WRAP = 1 << 64


def _db_ino(ino: int) -> int:
    """An inode number as a signed 64-bit value (some filesystems use all 64 bits)."""
    return ino - _INO_WRAP if ino >= 1 << 63 else ino


def local_signature(local_path: str) -> Signature:
    """The :class:`Signature` of a regular local file, or SupRsyncError saying what is wrong."""
    try:
        st = os.stat(local_path)
    except FileNotFoundError:
        raise SupRsyncError(f"local file {local_path!r} does not exist") from None
    except OSError as exc:
        raise SupRsyncError(f"cannot stat local file {local_path!r}: {exc.strerror}") from None
    if not statmod.S_ISREG(st.st_mode):
        raise SupRsyncError(f"local path {local_path!r} is not a regular file")
    return Signature(st.st_size, st.st_mtime_ns / 1e9, _db_ino(st.st_ino), st.st_ctime_ns)


def same_signature(
    size: int | None, mtime: float | None, ino: int | None, ctime_ns: int | None, other: Signature
) -> bool:
    """True only if every stored field is known and matches ``other`` (the file now).

    A row missing any field (imported from socs, or written before inode and ctime were
    recorded) never matches: its md5 is recomputed before it is trusted.
    """
    if size is None or mtime is None or ino is None or ctime_ns is None:
        return False
    return (
        size == other.size
        and abs(mtime - other.mtime) < _MTIME_TOLERANCE
        and ino == other.ino
        and ctime_ns == other.ctime_ns
    )


def same_size_and_mtime(size: int | None, mtime: float | None, other: Signature) -> bool:
    """The comparison of rows that lack inode and ctime (re-registration of older rows)."""
    return size == other.size and mtime is not None and abs(mtime - other.mtime) < _MTIME_TOLERANCE


def md5_file(path: str, cancel: threading.Event | None = None, chunk: int = 1 << 20) -> str:
    """Hex md5 of a local file, read in chunks; stops early if ``cancel`` is set."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            if cancel is not None and cancel.is_set():
                raise InterruptedError(f"md5 of {path!r} interrupted by a stop request")
    return digest.hexdigest()


def _abs_local(local_abspath: str | os.PathLike) -> str:
    path = os.fspath(local_abspath)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not path:
        raise SupRsyncError("local path is empty")
    if "\0" in path:
        raise SupRsyncError(f"local path {path!r} contains a NUL byte")
    if not _is_utf8(path):
        raise SupRsyncError(
            f"local path {path!r} is not valid UTF-8 (undecodable bytes in the name); the ledger keeps paths "
            "as text: rename the file to register it"
        )
    return os.path.abspath(path)


def _check_archive(archive: str) -> str:
    if not archive or not isinstance(archive, str) or len(archive) > 64:
        raise SupRsyncError(f"archive name {archive!r} must be a non-empty string of at most 64 characters")
    return archive


def _chunks(seq: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


# -- what the engine gets and gives back ------------------------------------------------------


@dataclass(frozen=True)
class FileTask:
    """One pending file handed to the copier (a plain snapshot, not an ORM row)."""

    id: int
    local_path: str
    remote_path: str
    local_md5sum: str | None
    local_size: int | None
    local_mtime: float | None
    failed_copy_attempts: int
    registered_at: float = 0.0
    local_ino: int | None = None
    local_ctime_ns: int | None = None

    def signature_matches(self, sig: Signature) -> bool:
        """Whether the file's signature now is the one its md5 (if any) was computed from."""
        return same_signature(self.local_size, self.local_mtime, self.local_ino, self.local_ctime_ns, sig)


@dataclass
class CopyResult:
    """The outcome of one file of a batch, recorded by :meth:`SupRsyncFilesManager.record_results`.

    ``outcome``: ``verified`` (remote md5 matched), ``failed`` (copy or check failed: one
    attempt counted), ``missing`` (local file gone: one attempt counted) or ``changed``
    (the file changed while it was copied: nothing counted, it is sent again).
    """

    id: int
    outcome: str
    local_md5sum: str | None = None
    local_size: int | None = None
    local_mtime: float | None = None
    remote_md5sum: str | None = None
    error: str | None = None
    local_ino: int | None = None
    local_ctime_ns: int | None = None

    def set_signature(self, sig: Signature | None) -> CopyResult:
        if sig is not None:
            self.local_size, self.local_mtime, self.local_ino, self.local_ctime_ns = sig
        return self


@dataclass
class DeleteResult:
    """``outcome``: ``removed``, ``gone`` (already deleted), ``changed`` (re-queued), ``kept``
    (not deletable: never tried again) or ``busy`` (a stop request interrupted its check: it
    stays ``copied`` and is checked again next time).

    With ``removed``/``kept`` and a signature, the file was hashed again and its md5 still
    is the verified remote md5: that signature is stored (the file stays verified). With
    ``changed``, the file is queued to be sent again with this md5 and signature (both
    None, i.e. hashed again when copied, if the file changed while it was hashed).
    """

    id: int
    outcome: str
    error: str | None = None
    local_md5sum: str | None = None
    local_size: int | None = None
    local_mtime: float | None = None
    local_ino: int | None = None
    local_ctime_ns: int | None = None

    def set_signature(self, sig: Signature | None) -> DeleteResult:
        if sig is not None:
            self.local_size, self.local_mtime, self.local_ino, self.local_ctime_ns = sig
        return self


@dataclass
class AddReport:
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
class OpenTimecodeDir:
    id: int
    archive_name: str
    timecode: int
    completed: bool
    synced: bool


# -- the manager ------------------------------------------------------------------------------


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
        archive = _check_archive(archive)
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
        local = _abs_local(local)
        remote = normalize_remote_path(remote)
        sig = local_signature(local)
        if md5 is not None and not re.fullmatch(r"[0-9a-f]{32}", md5):
            raise SupRsyncError(f"local_md5sum {md5!r} of {local!r} is not 32 lowercase hex digits")
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
            existing: dict[str, Any] = {}
            for part in _chunks(list(by_hash), IN_CHUNK):
                q = select(
                    t.c.id, t.c.remote_path_hash, t.c.local_path, t.c.local_size, t.c.local_mtime, t.c.local_ino,
                    t.c.local_ctime_ns, t.c.status,
                ).where(t.c.archive_name == archive, t.c.remote_path_hash.in_(part))  # fmt: skip
                for row in s.execute(q):
                    existing[row.remote_path_hash] = row
            new = [r for h, r in by_hash.items() if h not in existing]
            requeue = []
            for h, old in existing.items():
                r = by_hash[h]
                sig = Signature(r["local_size"], r["local_mtime"], r["local_ino"], r["local_ctime_ns"])
                if old.local_ino is None or old.local_ctime_ns is None:
                    # An older row without inode and ctime: it stays as it is when size and
                    # mtime match; its unknown identity makes the copier and the deleter
                    # hash the file again before trusting its md5.
                    same = same_size_and_mtime(old.local_size, old.local_mtime, sig)
                else:
                    same = same_signature(old.local_size, old.local_mtime, old.local_ino, old.local_ctime_ns, sig)
                unchanged = old.local_path == r["local_path"] and same
                if unchanged:
                    report.unchanged += 1
                    report.ids.append(old.id)
                    continue
                requeue.append({"b_id": old.id, **{k: r[k] for k in ("local_path", "local_md5sum", "local_size")},
                                "b_mtime": r["local_mtime"], "b_ino": r["local_ino"], "b_ctime": r["local_ctime_ns"],
                                "b_deletable": r["deletable"]})  # fmt: skip
                report.ids.append(old.id)
            if new:
                _insert_ignore(s, SupRsyncFile, new)
                report.added += len(new)
            if new and want_ids:
                ids = {}
                for part in _chunks([r["remote_path_hash"] for r in new], IN_CHUNK):
                    q = select(t.c.remote_path_hash, t.c.id).where(
                        t.c.archive_name == archive, t.c.remote_path_hash.in_(part)
                    )
                    ids.update(dict(s.execute(q).all()))
                report.ids.extend(ids[r["remote_path_hash"]] for r in new)
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
                        last_error="registered again with a changed local file: it will be sent again",
                    ),
                    requeue,
                )
                report.requeued += len(requeue)
            tcs = {r["timecode"] for r in rows if r["timecode"] is not None}
            if tcs:
                self._ensure_tcdirs(s, archive, tcs)

    # -- socs's query surface ----------------------------------------------------------------

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
        with self.session() as s:
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
        with self.session() as s:
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
        with self.session() as s:
            return list(s.scalars(q))

    def known_remote_paths(self, archive: str, remote_paths: Iterable[str]) -> set[str]:
        """Which of ``remote_paths`` (normalized) are already registered in ``archive``."""
        paths = {normalize_remote_path(p) for p in remote_paths}
        hashes = {path_hash(p): p for p in paths}
        found: set[str] = set()
        t = SupRsyncFile.__table__
        with self.session() as s:
            for part in _chunks(list(hashes), IN_CHUNK):
                q = select(t.c.remote_path_hash).where(t.c.archive_name == archive, t.c.remote_path_hash.in_(part))
                found.update(hashes[h] for h in s.scalars(q))
        return found

    def get_finalized_until(self, archive: str, now: float | None = None) -> float:
        """Registration time of the oldest unfinished, non-ignored file minus 1 s; else now.

        Every file registered before this time is copied (or ignored by an operator).
        """
        with self.session() as s:
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
        with self.session() as s:
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
        with self.session() as s:
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
        with self.session() as s:
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
                for part in _chunks(list(ids), IN_CHUNK):
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
        with self.session() as s:
            return [FileTask(*row) for row in s.execute(q)]

    def _known_hashes(self, s: Session, archive: str, hashes: Sequence[str]) -> set[str]:
        t = SupRsyncFile.__table__
        found: set[str] = set()
        for part in _chunks(list(hashes), IN_CHUNK):
            q = select(t.c.remote_path_hash).where(t.c.archive_name == archive, t.c.remote_path_hash.in_(part))
            found.update(s.scalars(q))
        return found

    def has_pending(self, archive: str) -> bool:
        t = SupRsyncFile.__table__
        with self.session() as s:
            q = select(t.c.id).where(t.c.archive_name == archive, t.c.status == "pending").limit(1)
            return s.scalar(q) is not None

    def mark_attempt_started(self, ids: Sequence[int], now: float | None = None) -> None:
        """Commit the intent: these files are being copied now (``last_attempt_at``)."""
        t = SupRsyncFile.__table__
        now = time.time() if now is None else now
        with self.session() as s:
            for part in _chunks(list(ids), IN_CHUNK):
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
        unknown = {r.outcome for r in results} - {"verified", "failed", "missing", "changed"}
        if unknown:
            raise ValueError(f"unknown copy outcomes {sorted(unknown)}")
        with self.session() as s:
            if verified:
                s.execute(
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
                s.execute(
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
                s.execute(
                    update(t)
                    .where(t.c.id == bindparam("b_id"), owned)
                    .values(local_md5sum=None, last_attempt_at=now, last_error=bindparam("b_error")),
                    [{"b_id": r.id, "b_error": r.error or "changed while being copied"} for r in changed],
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
            _insert_ignore(s, TimecodeDir, rows)

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
        with self.session() as s:
            return [OpenTimecodeDir(*row) for row in s.execute(q)]

    def newest_timecode(self, archive: str) -> int | None:
        with self.session() as s:
            return s.scalar(select(func.max(TimecodeDir.timecode)).where(TimecodeDir.archive_name == archive))

    def timecode_dir_unsynced(self, archive: str, timecode: int) -> int:
        """How many files of the dir still need work (pending, failed, missing)."""
        f = SupRsyncFile
        with self.session() as s:
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
        with self.session() as s:
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
            _insert_ignore(s, SupRsyncFile, [row])
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
        from hpcsync.agents.suprsync.timecodes import update_timecode_dirs

        return update_timecode_dirs(self, archive, file_root, sync_id, now=now)


def _insert_ignore(s: Session, model, rows: list[dict[str, Any]]) -> None:
    """INSERT rows, skipping those that hit a unique constraint (a concurrent producer)."""
    name = s.get_bind().dialect.name
    model = getattr(model, "__table__", model)  # Core insert: no ORM bookkeeping per row
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert

        stmt = dialect_insert(model).on_conflict_do_nothing()
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert

        stmt = dialect_insert(model).on_conflict_do_nothing()
    elif name in ("mysql", "mariadb"):
        stmt = insert(model).prefix_with("IGNORE")
    else:  # pragma: no cover - other backends are not supported
        stmt = insert(model)
    s.execute(stmt, rows)


# -- one-shot import of a socs SupRsync SQLite database ----------------------------------------


@dataclass
class ImportReport:
    files: int = 0
    imported: int = 0
    already_known: int = 0
    duplicates: int = 0
    refused: list[str] = field(default_factory=list)
    timecode_dirs: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "imported": self.imported,
            "already_known": self.already_known,
            "duplicates": self.duplicates,
            "refused": len(self.refused),
            "timecode_dirs": self.timecode_dirs,
            "by_status": dict(self.by_status),
        }


def import_socs_database(
    socs_db_path: str | os.PathLike,
    target: SupRsyncFilesManager | Database | str,
    *,
    max_copy_attempts: int = 5,
    archive: str | None = None,
) -> ImportReport:
    """Copy the ``supersync_v0`` and ``timecode_dirs_v0`` tables of a socs SupRsync SQLite
    database into the hpcsync ledger. Safe to run twice: known remote paths are skipped.

    Status mapping: ``removed`` set -> ``removed``; ``ignore`` -> ``ignored``; md5s equal ->
    ``copied`` (delete-after then counts from socs's ``copied`` time); attempts at
    ``max_copy_attempts`` -> ``failed``; otherwise ``pending`` (hashed again when copied).
    socs allowed one remote path twice: the newest row wins. Rows whose remote path is
    absolute or contains ``..`` are refused and listed in the report.
    """
    manager = target if isinstance(target, SupRsyncFilesManager) else SupRsyncFilesManager(target)
    path = os.fspath(socs_db_path)
    if not os.path.isfile(path):
        raise SupRsyncError(f"socs database {path!r} does not exist")
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    report = ImportReport()
    try:
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "supersync_v0" not in tables:
            raise SupRsyncError(f"{path!r} has no supersync_v0 table: not a socs SupRsync database")
        cols = {r[1] for r in src.execute("PRAGMA table_info(supersync_v0)")}
        ignore_col = "ignore" if "ignore" in cols else "0"
        where = "WHERE archive_name = ?" if archive else ""
        args = (archive,) if archive else ()
        # Newest row per (archive, remote_path) wins, like a re-registration would.
        latest: dict[tuple[str, str], tuple] = {}
        old_ids: dict[int, tuple[str, str]] = {}
        query = (
            "SELECT id, local_path, local_md5sum, archive_name, remote_path, timestamp, remote_md5sum, copied, "
            f'removed, failed_copy_attempts, deletable, "{ignore_col}" FROM supersync_v0 {where} ORDER BY id'
            if ignore_col == "ignore"
            else "SELECT id, local_path, local_md5sum, archive_name, remote_path, timestamp, remote_md5sum, copied, "
            f"removed, failed_copy_attempts, deletable, 0 FROM supersync_v0 {where} ORDER BY id"
        )
        for row in src.execute(query, args):
            report.files += 1
            try:
                remote = normalize_remote_path(row[4])
            except RemotePathError as exc:
                report.refused.append(f"socs id {row[0]}: {exc}")
                continue
            key = (row[3], remote)
            if key in latest:
                report.duplicates += 1
            latest[key] = row
            old_ids[row[0]] = key
        rows = []
        for (arch, remote), r in latest.items():
            (_id, local, lmd5, _a, _rp, ts, rmd5, copied, removed, attempts, deletable, ignore) = r
            attempts = int(attempts or 0)
            if removed is not None:
                status = "removed"
            elif ignore:
                status = "ignored"
            elif lmd5 and lmd5 == rmd5:
                status = "copied"
            elif attempts >= max_copy_attempts:
                status = "failed"
            else:
                status = "pending"
            # socs hashed the file once, at registration, and never again (socs#475): its
            # signature then (size, mtime, inode, ctime) is unknown, so none is recorded. The
            # copier and the deleter hash a file without a matching signature before
            # trusting its md5.
            size = mtime = None
            rows.append({"local_ino": None, "local_ctime_ns": None,
                "archive_name": arch, "local_path": local, "remote_path": remote,
                "remote_path_hash": path_hash(remote), "timecode": check_timecode(remote), "status": status,
                "local_md5sum": lmd5 if status != "pending" else None, "local_size": size, "local_mtime": mtime,
                "registered_at": float(ts or 0.0), "remote_md5sum": rmd5,
                "copied_at": (copied or ts) if status in VERIFIED else None,
                "removed_at": (removed or copied or ts) if status == "removed" else None,
                "failed_copy_attempts": attempts,
                "deletable": bool(deletable) if deletable is not None else True,
                "last_error": "imported from socs" if status == "failed" else None,
            })  # fmt: skip
            report.by_status[status] = report.by_status.get(status, 0) + 1
        for part in _chunks(rows, CHUNK):
            by_archive: dict[str, list[dict]] = {}
            for r in part:
                by_archive.setdefault(r["archive_name"], []).append(r)
            with manager.session() as s:
                for arch, items in by_archive.items():
                    known = manager._known_hashes(s, arch, [r["remote_path_hash"] for r in items])
                    fresh = [r for r in items if r["remote_path_hash"] not in known]
                    report.already_known += len(items) - len(fresh)
                    if fresh:
                        _insert_ignore(s, SupRsyncFile, fresh)
                        report.imported += len(fresh)
                    tcs = {r["timecode"] for r in items if r["timecode"] is not None}
                    manager._ensure_tcdirs(s, arch, tcs)
        if "timecode_dirs_v0" in tables:
            report.timecode_dirs = _import_tcdirs(src, manager, old_ids, archive)
    finally:
        src.close()
    return report


def _import_tcdirs(src, manager: SupRsyncFilesManager, old_ids: dict[int, tuple[str, str]], archive) -> int:
    n = 0
    where = "WHERE archive_name = ?" if archive else ""
    args = (archive,) if archive else ()
    q = f"SELECT timecode, archive_name, completed, synced, finalized, finalize_file_id FROM timecode_dirs_v0 {where}"
    with manager.session() as s:
        for tc, arch, completed, synced, finalized, fid in src.execute(q, args):
            if tc is None or arch is None:
                continue
            manager._ensure_tcdirs(s, arch, [int(tc)])
            file_id = None
            if fid is not None and fid in old_ids:
                a, remote = old_ids[fid]
                file_id = s.scalar(
                    select(SupRsyncFile.id).where(
                        SupRsyncFile.archive_name == a, SupRsyncFile.remote_path_hash == path_hash(remote)
                    )
                )
            s.execute(
                update(TimecodeDir)
                .where(TimecodeDir.archive_name == arch, TimecodeDir.timecode == int(tc))
                .values(
                    completed=bool(completed), synced=bool(synced), finalized=bool(finalized),
                    finalize_file_id=file_id,
                )
            )  # fmt: skip
            n += 1
    return n


__all__ = [
    "AddReport",
    "CopyResult",
    "DatabaseError",
    "DeleteResult",
    "FileTask",
    "ImportReport",
    "RemotePathError",
    "Signature",
    "SupRsyncError",
    "SupRsyncFile",
    "SupRsyncFilesManager",
    "TimecodeDir",
    "check_timecode",
    "import_socs_database",
    "local_signature",
    "md5_file",
    "normalize_remote_path",
    "same_signature",
    "split_path",
]
