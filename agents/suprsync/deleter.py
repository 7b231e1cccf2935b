"""The delete step: local copies removed once their verified copy is old enough.

Only rows in status ``copied`` qualify, i.e. whose remote md5 matched and was committed; the
delay counts from that verification (``copied_at``), not from registration as in socs.
Right before removing a file its signature (size, mtime, inode, ctime) is compared with the
one its md5 was computed from. If they differ, or the row has no full signature (imported
from socs, or older), the file is hashed again: a different md5 than the verified remote
one queues it to be sent again instead of deleted (socs#475, and a file replaced by
different content of the same size and mtime); the same md5 (a chmod, a copy with identical
content) keeps it verified under its new signature, and it is deleted. A file that changes
while it is hashed is not deleted either: it is queued to be sent again.

A file that cannot be removed (permissions) is marked not deletable with the reason, so it
is not retried every loop; a file already gone is recorded as removed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from .files import DeleteResult, LocalFileGone, LocalFileUnreadable, SupRsyncError, local_signature, md5_file
from .ledger import SupRsyncFilesManager

log = logging.getLogger("hpcsync.suprsync")

DELETE_BATCH = 1000


@dataclass
class DeleteReport:
    removed: int = 0
    gone: int = 0
    requeued: int = 0
    kept: int = 0
    busy: int = 0
    #: files hashed again before deletion (their signature had changed or was unknown)
    rehashed: int = 0
    more: bool = False


def delete_files(
    manager: SupRsyncFilesManager,
    archive: str,
    delete_after: float,
    *,
    limit: int = DELETE_BATCH,
    cancel: threading.Event | None = None,
    now: float | None = None,
    local_roots: tuple[str, ...] = (),
) -> DeleteReport:
    """Remove up to ``limit`` local files whose verified copy is older than ``delete_after``.

    With ``local_roots``, a file whose directory is not under one of them (symlinks
    resolved) is never deleted: it is kept, and the row says why (a producer registered a
    path it should not have, e.g. ``/etc/passwd`` or ``/data/../home``)."""
    now = time.time() if now is None else now
    candidates = manager.next_deletions(archive, delete_after, limit, now=now)
    report = DeleteReport(more=len(candidates) >= limit)
    roots = tuple(os.path.realpath(r) for r in local_roots)
    results: list[DeleteResult] = []
    for task, remote_md5 in candidates:
        if cancel is not None and cancel.is_set():
            break
        outside = _outside(task.local_path, roots)
        if outside:
            log.error("%s", outside)
            results.append(DeleteResult(task.id, "kept", error=outside))
            continue
        result, rehashed = _delete_one(task, remote_md5, cancel)
        results.append(result)
        report.rehashed += rehashed
    manager.record_deletions(results)
    field_of = {"removed": "removed", "gone": "gone", "changed": "requeued", "kept": "kept", "busy": "busy"}
    for r in results:
        name = field_of[r.outcome]
        setattr(report, name, getattr(report, name) + 1)
    if results:
        log.info(
            "deleted %d local files (%d already gone, %d changed and queued again, %d not deletable, "
            "%d left for the next loop; %d hashed again first)",
            report.removed, report.gone, report.requeued, report.kept, report.busy, report.rehashed,
        )  # fmt: skip
    return report


def _outside(path: str, roots: tuple[str, ...]) -> str | None:
    """Why ``path`` must not be deleted with ``roots`` configured, or None."""
    if not roots:
        return None
    where = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    if any(where == root or where.startswith(root.rstrip("/") + "/") for root in roots):
        return None
    return f"not deleting {path!r}: it is outside the archive's local roots ({', '.join(roots)})"


def _delete_one(task, remote_md5: str | None, cancel) -> tuple[DeleteResult, bool]:
    """The outcome for one due file, and whether it was hashed again first."""
    path = task.local_path
    try:
        sig = local_signature(path)
    except LocalFileGone:
        return DeleteResult(task.id, "gone", error="local file was already gone when it was due for deletion"), False
    except LocalFileUnreadable as exc:
        # A stale NFS handle or EIO says nothing about whether the file is there: not removed.
        return DeleteResult(task.id, "busy", error=f"{exc}; checked again next time"), False
    except SupRsyncError as exc:  # no longer a regular file: not ours to delete
        return DeleteResult(task.id, "kept", error=str(exc)), False
    fresh = None  # the signature a new md5 equal to the remote one was computed from
    if not task.signature_matches(sig):
        try:
            md5 = md5_file(path, cancel)
            after = local_signature(path)
        except InterruptedError:
            return DeleteResult(task.id, "busy", error="stopped while hashing it before deletion"), True
        except (FileNotFoundError, LocalFileGone):
            return DeleteResult(task.id, "gone", error="local file was gone when it was due for deletion"), True
        except (LocalFileUnreadable, OSError) as exc:
            return DeleteResult(task.id, "busy", error=f"cannot read it to check it before deletion: {exc}"), True
        if after != sig:
            # Written to (or replaced) while it was hashed: not the content that was verified,
            # and neither this md5 nor this signature can be trusted. Sent again (the copier
            # hashes it again; a file still being written costs no attempt there).
            log.warning("%s changed while it was checked before deletion: sending it again", path)
            return DeleteResult(
                task.id, "changed", error="local file changed while it was checked before deletion: sent again"
            ), True
        if md5 != remote_md5:
            log.warning("%s changed after it was copied: sending it again instead of deleting it", path)
            return DeleteResult(
                task.id, "changed", error="local file changed after it was copied: sent again", local_md5sum=md5
            ).set_signature(sig), True
        fresh = sig  # same content (a chmod, an identical copy): still verified
    try:
        os.remove(path)
    except FileNotFoundError:
        return DeleteResult(task.id, "gone", error="local file was already gone when it was due for deletion"), False
    except OSError as exc:
        log.error("cannot delete %s: %s; it will not be tried again", path, exc.strerror or exc)
        result = DeleteResult(task.id, "kept", error=f"cannot delete the local file: {exc.strerror or exc}")
        return result.set_signature(fresh), fresh is not None
    return DeleteResult(task.id, "removed").set_signature(fresh), fresh is not None
