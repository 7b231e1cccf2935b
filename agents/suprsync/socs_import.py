"""One-shot import of a socs SupRsync SQLite database into the hpcsync ledger.

socs kept its files in ``supersync_v0`` and its timecode dirs in ``timecode_dirs_v0``. This
module reads them (read-only), maps each row to an hpcsync status, and writes through the
ledger (:mod:`.ledger`); it runs no query on hpcsync's tables itself.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hpcsync.db.dialect import chunked
from hpcsync.db.engine import Database
from hpcsync.db.models import path_hash

from .files import RemotePathError, SupRsyncError, check_timecode, normalize_remote_path
from .ledger import CHUNK, VERIFIED, ImportedTimecodeDir, SupRsyncFilesManager


@dataclass
class ImportReport:
    """What :func:`import_socs_database` did (``as_dict`` for the CLI's JSON)."""

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
        latest, old_ids = _latest_rows(src, archive, report)
        rows = []
        for (arch, remote), socs_row in latest.items():
            row = _ledger_row(arch, remote, socs_row, max_copy_attempts)
            report.by_status[row["status"]] = report.by_status.get(row["status"], 0) + 1
            rows.append(row)
        for part in chunked(rows, CHUNK):
            imported, known = manager.import_rows(part)
            report.imported += imported
            report.already_known += known
        if "timecode_dirs_v0" in tables:
            report.timecode_dirs = manager.import_timecode_dirs(_timecode_dirs(src, old_ids, archive))
    finally:
        src.close()
    return report


def _latest_rows(
    src: sqlite3.Connection, archive: str | None, report: ImportReport
) -> tuple[dict[tuple[str, str], tuple], dict[int, tuple[str, str]]]:
    """The newest socs row per ``(archive, normalized remote path)``, and every socs id's key.

    Rows with a remote path that would leave the base directory are refused (listed in
    ``report``); a path seen twice counts as a duplicate.
    """
    cols = {r[1] for r in src.execute("PRAGMA table_info(supersync_v0)")}
    ignore = '"ignore"' if "ignore" in cols else "0"  # older socs tables have no ignore column
    where = "WHERE archive_name = ?" if archive else ""
    args = (archive,) if archive else ()
    query = (
        "SELECT id, local_path, local_md5sum, archive_name, remote_path, timestamp, remote_md5sum, copied, "
        f"removed, failed_copy_attempts, deletable, {ignore} FROM supersync_v0 {where} ORDER BY id"
    )
    latest: dict[tuple[str, str], tuple] = {}
    old_ids: dict[int, tuple[str, str]] = {}
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
        latest[key] = row  # ordered by id: the newest row wins, like a re-registration would
        old_ids[row[0]] = key
    return latest, old_ids


def _ledger_row(archive: str, remote: str, socs_row: tuple, max_copy_attempts: int) -> dict[str, Any]:
    """The hpcsync ledger row for one socs row (see :func:`import_socs_database`)."""
    (_id, local, lmd5, _a, _rp, ts, rmd5, copied, removed, attempts, deletable, ignore) = socs_row
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
    # socs hashed the file once, at registration, and never again (socs#475): its signature
    # then (size, mtime, inode, ctime) is unknown, so none is recorded. The copier and the
    # deleter hash a file without a matching signature before trusting its md5.
    return {
        "archive_name": archive,
        "local_path": local,
        "remote_path": remote,
        "remote_path_hash": path_hash(remote),
        "timecode": check_timecode(remote),
        "status": status,
        "local_md5sum": lmd5 if status != "pending" else None,
        "local_size": None,
        "local_mtime": None,
        "local_ino": None,
        "local_ctime_ns": None,
        "registered_at": float(ts or 0.0),
        "remote_md5sum": rmd5,
        "copied_at": (copied or ts) if status in VERIFIED else None,
        "removed_at": (removed or copied or ts) if status == "removed" else None,
        "failed_copy_attempts": attempts,
        "deletable": bool(deletable) if deletable is not None else True,
        "last_error": "imported from socs" if status == "failed" else None,
    }


def _timecode_dirs(
    src: sqlite3.Connection, old_ids: dict[int, tuple[str, str]], archive: str | None
) -> Iterator[ImportedTimecodeDir]:
    """socs's timecode dirs (of ``archive``, if given); a finalization file is named by the
    ``(archive, remote_path)`` of its socs row, when that row was imported."""
    where = "WHERE archive_name = ?" if archive else ""
    args = (archive,) if archive else ()
    q = f"SELECT timecode, archive_name, completed, synced, finalized, finalize_file_id FROM timecode_dirs_v0 {where}"
    for tc, arch, completed, synced, finalized, fid in src.execute(q, args):
        if tc is None or arch is None:
            continue
        yield ImportedTimecodeDir(
            archive_name=arch,
            timecode=int(tc),
            completed=bool(completed),
            synced=bool(synced),
            finalized=bool(finalized),
            finalize_file=old_ids.get(fid) if fid is not None else None,
        )


__all__ = ["ImportReport", "import_socs_database"]
