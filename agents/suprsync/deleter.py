"""The delete step: local copies removed once their verified copy is old enough.

Only rows in status ``copied`` qualify, i.e. whose remote md5 matched and was committed; the
delay counts from that verification (``copied_at``), not from registration as in socs.
Right before removing a file its size and mtime are compared with the ones its md5 was
computed from; if they differ the file is hashed again and, if its content changed, it is
queued to be sent again instead of deleted (socs#475).

A file that cannot be removed (permissions) is marked not deletable with the reason, so it
is not retried every loop; a file already gone is recorded as removed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from hpcsync.db.suprsync import (
    DeleteResult,
    SupRsyncError,
    SupRsyncFilesManager,
    local_signature,
    md5_file,
    same_signature,
)

log = logging.getLogger("hpcsync.suprsync")

DELETE_BATCH = 1000


@dataclass
class DeleteReport:
    removed: int = 0
    gone: int = 0
    requeued: int = 0
    kept: int = 0
    more: bool = False


def delete_files(
    manager: SupRsyncFilesManager,
    archive: str,
    delete_after: float,
    *,
    limit: int = DELETE_BATCH,
    cancel: threading.Event | None = None,
    now: float | None = None,
) -> DeleteReport:
    """Remove up to ``limit`` local files whose verified copy is older than ``delete_after``."""
    now = time.time() if now is None else now
    candidates = manager.next_deletions(archive, delete_after, limit, now=now)
    report = DeleteReport(more=len(candidates) >= limit)
    results: list[DeleteResult] = []
    for task, remote_md5 in candidates:
        if cancel is not None and cancel.is_set():
            break
        results.append(_delete_one(task, remote_md5, cancel))
    manager.record_deletions(results)
    field_of = {"removed": "removed", "gone": "gone", "changed": "requeued", "kept": "kept"}
    for r in results:
        name = field_of[r.outcome]
        setattr(report, name, getattr(report, name) + 1)
    if results:
        log.info(
            "deleted %d local files (%d already gone, %d changed and queued again, %d not deletable)",
            report.removed, report.gone, report.requeued, report.kept,
        )  # fmt: skip
    return report


def _delete_one(task, remote_md5: str | None, cancel) -> DeleteResult:
    path = task.local_path
    try:
        sig = local_signature(path)
    except SupRsyncError:
        return DeleteResult(task.id, "gone", error="local file was already gone when it was due for deletion")
    if not same_signature(task.local_size, task.local_mtime, sig):
        try:
            md5 = md5_file(path, cancel)
        except (OSError, InterruptedError) as exc:
            return DeleteResult(task.id, "kept", error=f"changed after it was copied and cannot be read: {exc}")
        if md5 != remote_md5:
            log.warning("%s changed after it was copied: sending it again instead of deleting it", path)
            return DeleteResult(
                task.id, "changed", error="local file changed after it was copied: sent again",
                local_md5sum=md5, local_size=sig[0], local_mtime=sig[1],
            )  # fmt: skip
    try:
        os.remove(path)
    except FileNotFoundError:
        return DeleteResult(task.id, "gone", error="local file was already gone when it was due for deletion")
    except OSError as exc:
        log.error("cannot delete %s: %s; it will not be tried again", path, exc.strerror or exc)
        return DeleteResult(task.id, "kept", error=f"cannot delete the local file: {exc.strerror or exc}")
    return DeleteResult(task.id, "removed")
