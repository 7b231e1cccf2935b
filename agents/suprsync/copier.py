"""The copy step: one batch of pending files sent, verified by md5, and recorded.

For each batch:

1. the oldest ``files_per_batch`` pending files are read (an index seek) and the intent is
   committed (``last_attempt_at``);
2. each local file is stat'ed; a vanished file is one failed attempt (counted once); the md5
   is computed now if the file has none yet or its signature (size, mtime, inode, ctime)
   changed since it was hashed or registered (socs#475);
3. one ``put`` sends the batch and one ``checksum`` checks it on the destination (through a
   :class:`~hpcsync.agents.core.transfer.Backend`: with rsync/ssh, one rsync and one md5sum);
4. the outcome is committed in its own transaction: matching md5 -> ``copied``; anything
   else -> one more failed attempt, ``failed`` at the limit. A failed transfer still counts the
   attempts of the files it did not deliver, and never blocks the files it did.

Only when the destination cannot be reached at all (it cannot be connected to, or the
checksum does not answer) is nothing counted: that is the remote's fault, not the files'. The loop reports
it, sets ``degraded`` and tries again later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hpcsync.agents.core.process import CommandCancelled
from hpcsync.agents.core.transfer import (
    Backend,
    DestinationFull,
    Item,
    PreparedPut,
    RemoteUnreachable,
    TransferOutcome,
)

from .files import (
    CopyResult,
    LocalFileGone,
    LocalFileUnreadable,
    Signature,
    SupRsyncError,
    local_signature,
    md5_file,
    racily_clean,
)
from .ledger import SupRsyncFilesManager

log = logging.getLogger("hpcsync.suprsync")

#: Files per batch. One put and one checksum per batch (with rsync/ssh: one rsync and one
#: md5sum) cost ~50 ms of start-up and file-list exchange, which dominates small files; the
#: byte cap below keeps big-file batches short.
DEFAULT_FILES_PER_BATCH = 5000
#: A batch also ends once its files add up to this many bytes (at least one file is sent).
DEFAULT_MAX_BATCH_BYTES = 4 * 1024**3
DEFAULT_MAX_COPY_ATTEMPTS = 5
#: Sending a batch may take this long plus 1 s per MB when ``--copy-timeout`` is not set.
DEFAULT_COPY_TIMEOUT = 300.0
COPY_SECONDS_PER_BYTE = 1 / 1e6
#: A remote command may take this long when ``--cmd-timeout`` is not set ...
DEFAULT_CMD_TIMEOUT = 60.0
#: ... plus 1 s per 100 MB it has to checksum (always added: md5 time grows with data).
MD5_SECONDS_PER_BYTE = 1 / 100e6
#: How many files of a batch ``last_copy['files']`` lists in session.data.
REPORTED_FILES = 20


def _cap_bytes(tasks: list, max_bytes: int) -> list:
    """The leading tasks whose registered sizes fit in ``max_bytes`` (always the first)."""
    total = 0
    for n, task in enumerate(tasks):
        total += task.local_size or 0
        if n and total > max_bytes:
            return tasks[:n]
    return tasks


@dataclass
class CopySettings:
    archive: str
    max_copy_attempts: int = DEFAULT_MAX_COPY_ATTEMPTS
    files_per_batch: int = DEFAULT_FILES_PER_BATCH
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    copy_timeout: float | None = None
    cmd_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.max_copy_attempts is None or self.max_copy_attempts < 1:
            raise ValueError("max copy attempts must be at least 1")
        if self.files_per_batch is None:
            self.files_per_batch = DEFAULT_FILES_PER_BATCH
        if self.files_per_batch < 1:
            raise ValueError("files per batch must be at least 1")
        if self.max_batch_bytes is None:
            self.max_batch_bytes = DEFAULT_MAX_BATCH_BYTES
        if self.max_batch_bytes < 1:
            raise ValueError("max batch size must be positive")
        for name in ("copy_timeout", "cmd_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name.replace('_', ' ')} must be positive")

    def put_timeout(self, nbytes: int) -> float:
        if self.copy_timeout is not None:
            return float(self.copy_timeout)
        return DEFAULT_COPY_TIMEOUT + nbytes * COPY_SECONDS_PER_BYTE

    def md5_timeout(self, nbytes: int) -> float:
        base = DEFAULT_CMD_TIMEOUT if self.cmd_timeout is None else float(self.cmd_timeout)
        return base + nbytes * MD5_SECONDS_PER_BYTE


@dataclass
class BatchReport:
    """What one batch did; ``as_session()`` is socs's ``last_copy``."""

    start_time: float
    stop_time: float | None = None
    files: list[tuple[str, bool]] = field(default_factory=list)
    size: int = 0
    verified: int = 0
    failed: int = 0
    missing: int = 0
    changed: int = 0
    #: files that could not be looked at now (stale NFS handle, EIO ...): still pending
    deferred: int = 0
    bytes: int = 0
    error: str | None = None
    unreachable: bool = False
    timed_out: bool = False
    transfer_failed: bool = False
    stopped: bool = False
    full: bool = False

    @property
    def rate(self) -> float:
        elapsed = (self.stop_time or self.start_time) - self.start_time
        return self.verified / elapsed if elapsed > 0 else 0.0

    def as_session(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "start_time": self.start_time,
            "stop_time": self.stop_time,
            "files": [list(f) for f in self.files[:REPORTED_FILES]],
            "num_files": self.size,
            "verified": self.verified,
            "failed": self.failed + self.missing,
            "bytes": self.bytes,
        }
        if self.error:
            data["error"] = self.error
        return data


@dataclass
class _Sent:
    """A batch picked and hashed (stage one), then sent, then checked (stage two)."""

    report: BatchReport
    tasks: list
    results: list[CopyResult]
    sendable: list
    #: the backend's staging of ``sendable``, done while the previous batch is sent
    prepared: PreparedPut | None = None
    put: Any = None
    #: the destination filled up during the transfer: what arrived is checked and recorded
    full: str | None = None


#: Files in the first batch of a copy step (see :meth:`Copier.copy_batches`).
FIRST_BATCH = 500


class Copier:
    """Copies batches of one archive's pending files through a :class:`Backend`.

    :meth:`copy_batches` pipelines: while batch N is sent, batch N+1 is picked and hashed
    and batch N-1 is checked on the destination and its outcome committed. Batches are
    taken with keyset pagination, so a batch in flight is never handed out twice.
    """

    def __init__(
        self,
        manager: SupRsyncFilesManager,
        backend: Backend,
        settings: CopySettings,
        cancel: threading.Event | None = None,
    ):
        self.manager = manager
        self.backend = backend
        self.settings = settings
        self.cancel = cancel or threading.Event()
        #: ids of files hashed so soon after their last change that their signature is not trusted
        self._racy: set[int] = set()
        #: stagings made by the backend and not yet released (see :meth:`_release_all`)
        self._staged: set[PreparedPut] = set()

    def copy_batch(self) -> BatchReport:
        """Pick, send, check and record one batch (no pipelining)."""
        try:
            sent = self._pick(None)
            self._put(sent)
            return self._check(sent)
        finally:
            self._release_all()

    def copy_batches(self, max_seconds: float, prepare: Callable[[], None] | None = None) -> list[BatchReport]:
        """Copy full batches back to back for up to ``max_seconds``, over one connection.

        ``prepare`` runs on that connection before the first batch is sent, while it is
        being hashed (the engine's clean-up after a killed run).

        Three stages overlap: while batch N is sent (this thread), batch N+1 is picked and
        hashed and batch N-1 is checked on the destination and recorded (two worker
        threads). Stops after a batch that was not full, a stop request, or an unreachable
        destination; a batch picked but not sent then is simply left pending.
        """
        try:
            return self._copy_batches(time.monotonic() + max_seconds, prepare)
        finally:
            self._release_all()

    def _copy_batches(self, deadline: float, prepare: Callable[[], None] | None) -> list[BatchReport]:
        reports: list[BatchReport] = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="suprsync-copy") as pool:
            # The first batch is small: nothing overlaps its hashing, sending and checking,
            # so a full-size one would keep the pipeline empty that much longer.
            picking = pool.submit(self._pick, None, min(self.settings.files_per_batch, FIRST_BATCH))
            checking = None
            try:
                with self.backend.connection(cancel=self.cancel):
                    if prepare is not None:
                        prepare()
                    while True:
                        sent = picking.result()
                        picking = None
                        if not sent.tasks:
                            break
                        more = sent.report.full and not sent.report.stopped and time.monotonic() < deadline
                        if more:
                            last = sent.tasks[-1]
                            picking = pool.submit(self._pick, (last.registered_at, last.id))
                        self._put(sent)
                        if checking is not None:
                            reports.append(checking.result())
                            checking = None
                            if reports[-1].unreachable or reports[-1].stopped:
                                break  # the batch just sent is checked next time
                        if sent.report.unreachable or sent.report.stopped or not more or self.cancel.is_set():
                            reports.append(self._check(sent))
                            break
                        checking = pool.submit(self._check, sent)
                    if checking is not None:
                        reports.append(checking.result())
            except RemoteUnreachable as exc:  # the connection itself could not be made
                if checking is not None:
                    reports.append(checking.result())
                report = BatchReport(start_time=time.time(), stop_time=time.time(), error=str(exc), unreachable=True)
                reports.append(report)
                log.warning("%s; pending files are tried again later", exc)
            finally:
                if picking is not None:
                    picking.cancel()
        return reports

    # -- stage one: pick and hash; then send -------------------------------------------------------

    def _pick(self, after, limit: int | None = None) -> _Sent:
        s = self.settings
        limit = limit or s.files_per_batch
        report = BatchReport(start_time=time.time())
        tasks = self.manager.next_batch(s.archive, limit, after=after)
        report.full = len(tasks) >= limit
        kept = _cap_bytes(tasks, s.max_batch_bytes)
        if len(kept) < len(tasks):
            tasks, report.full = kept, True  # the rest follows in the next batch
        report.size = len(tasks)
        sent = _Sent(report, tasks, [], [])
        if not tasks:
            return sent
        self.manager.mark_attempt_started([t.id for t in tasks], report.start_time)
        for task in tasks:
            if self.cancel.is_set():
                report.stopped = True
                break
            outcome = self._prepare(task)
            if isinstance(outcome, CopyResult):
                sent.results.append(outcome)
            else:
                sent.sendable.append(outcome)
        if sent.sendable and not report.stopped:
            items = [Item(t.local_path, t.remote_path, sig[0]) for t, _m, sig in sent.sendable]
            sent.prepared = self.backend.prepare_put(items)
            self._staged.add(sent.prepared)
        return sent

    def _release(self, sent: _Sent) -> None:
        prepared, sent.prepared = sent.prepared, None
        if prepared is not None:
            self._staged.discard(prepared)
            prepared.close()

    def _release_all(self) -> None:
        """Remove the staging of every batch picked and not yet checked (a stop, an
        unreachable destination or an error ended the run before its turn)."""
        staged, self._staged = self._staged, set()
        for prepared in staged:
            prepared.close()

    def _put(self, sent: _Sent) -> None:
        report = sent.report
        if not sent.sendable or report.stopped or sent.prepared is None:
            return
        nbytes = sum(sig[0] for _t, _m, sig in sent.sendable)
        try:
            timeout = self.settings.put_timeout(nbytes)
            sent.put = self.backend.put_prepared(sent.prepared, timeout=timeout, cancel=self.cancel)
        except CommandCancelled:
            report.stopped = True
        except DestinationFull as exc:  # some files may have arrived whole before it filled up
            report.unreachable = True
            report.error = sent.full = str(exc)
            sent.put = TransferOutcome(ok=False, error=str(exc))
        except RemoteUnreachable as exc:
            report.unreachable = True
            report.error = str(exc)

    # -- stage two: check on the destination, record -------------------------------------------------

    def _check(self, sent: _Sent) -> BatchReport:
        self._release(sent)  # the staging is not needed once sent; removed off the sending thread
        report = sent.report
        results = list(sent.results)
        checkable = not report.unreachable or sent.full is not None
        if sent.sendable and sent.put is not None and not report.stopped and checkable:
            try:
                checked = self._verify(sent.sendable, sent.put, report)
                if sent.full is not None:
                    # The destination's fault, not the files': what arrived whole counts as
                    # copied (not sent again); the rest stays pending with no attempt counted.
                    not_copied = f"not copied: {sent.full}"
                    checked = [
                        r if r.outcome in ("verified", "changed") else CopyResult(r.id, "deferred", error=not_copied)
                        for r in checked
                    ]
                    report.error = sent.full
                results += checked
            except CommandCancelled:
                report.stopped = True
            except RemoteUnreachable as exc:
                report.unreachable = True
                report.error = str(exc)
        if report.unreachable:
            log.warning("%s; %d files stay pending and are tried again later", report.error, len(sent.sendable))
        # Outcomes are committed even when the transfer failed: attempts are never lost.
        self.manager.record_results(results, self.settings.max_copy_attempts, attempt_started=report.start_time)
        path_of = {t.id: t.local_path for t in sent.tasks}
        for r in results:
            if len(report.files) < REPORTED_FILES:
                report.files.append((path_of.get(r.id, ""), r.outcome == "verified"))
            if r.outcome == "verified":
                report.verified += 1
                report.bytes += r.local_size or 0
            elif r.outcome == "missing":
                report.missing += 1
            elif r.outcome == "failed":
                report.failed += 1
            elif r.outcome == "deferred":
                report.deferred += 1
            else:
                report.changed += 1
        if report.stopped and not report.error:
            report.error = "stopped before the batch finished; unfinished files stay pending"
        report.stop_time = time.time()
        if report.size:
            log.info(
                "batch of %d: %d verified, %d failed, %d missing, %d changed in %.2f s%s",
                report.size, report.verified, report.failed, report.missing, report.changed,
                report.stop_time - report.start_time, f" ({report.error})" if report.error else "",
            )  # fmt: skip
        return report

    def _prepare(self, task):
        """A CopyResult if the file cannot be sent now, else ``(task, md5, signature)``."""
        try:
            sig = local_signature(task.local_path)
        except LocalFileUnreadable as exc:
            return CopyResult(task.id, "deferred", error=str(exc))
        except SupRsyncError as exc:  # gone, or no longer a regular file
            return CopyResult(task.id, "missing", error=str(exc))
        md5 = task.local_md5sum
        if md5 is None or not task.signature_matches(sig):
            hashed_at = time.time()
            try:
                md5 = md5_file(task.local_path, self.cancel)
                after = local_signature(task.local_path)
            except InterruptedError:
                return CopyResult(task.id, "changed", error="stopped while hashing")
            except LocalFileGone as exc:
                return CopyResult(task.id, "missing", error=str(exc))
            except (LocalFileUnreadable, OSError) as exc:
                error = str(exc) if isinstance(exc, SupRsyncError) else f"cannot read local file: {exc.strerror or exc}"
                return CopyResult(task.id, "deferred", error=error)
            except SupRsyncError as exc:
                return CopyResult(task.id, "missing", error=str(exc))
            if after != sig:
                return CopyResult(task.id, "changed", error="local file changed while it was hashed; sent later")
            if racily_clean(sig, hashed_at):
                self._racy.add(task.id)
        return (task, md5, sig)

    def _verify(self, sendable, put: TransferOutcome, report: BatchReport) -> list[CopyResult]:
        s = self.settings
        if not put.ok:
            report.transfer_failed = True
            report.timed_out = put.timed_out
            report.error = put.error
            log.warning("sending to %s failed: %s; checking which files arrived", self.backend.describe(), put.error)
        # Files that could not even be staged were not sent: nothing to ask the destination.
        results = [
            CopyResult(task.id, "failed", error=put.skipped[task.remote_path], local_md5sum=md5).set_signature(sig)
            for task, md5, sig in sendable if task.remote_path in put.skipped
        ]  # fmt: skip
        sendable = [x for x in sendable if x[0].remote_path not in put.skipped]
        if not sendable:
            return results
        nbytes = sum(sig[0] for _t, _m, sig in sendable)
        remote = self.backend.checksum([t.remote_path for t, _m, _s in sendable], "md5",
                                       timeout=s.md5_timeout(nbytes), cancel=self.cancel)  # fmt: skip
        for task, md5, sig in sendable:
            got = remote.get(task.remote_path)
            # A racily clean file's signature proves nothing: stored without its mtime it never
            # matches, so the file is hashed again before it is deleted (and registering it
            # again sends it again).
            mtime = None if task.id in self._racy else sig.mtime
            common = {"local_md5sum": md5, "local_size": sig.size, "local_mtime": mtime, "remote_md5sum": got,
                      "local_ino": sig.ino, "local_ctime_ns": sig.ctime_ns}  # fmt: skip
            if got == md5:
                try:
                    now_sig = local_signature(task.local_path)
                except SupRsyncError:
                    now_sig = sig  # deleted after a verified copy: the copy stands
                if now_sig != sig:
                    results.append(
                        CopyResult(task.id, "changed", error="local file changed while it was copied; sent again")
                    )
                else:
                    results.append(CopyResult(task.id, "verified", **common))
            elif got is None:
                why = put.file_errors.get(task.remote_path) or put.error or "the transfer reported success"
                error = f"not found on the destination after the transfer ({why})"
                results.append(CopyResult(task.id, "failed", error=error, **common))
            elif _changed_since(task.local_path, sig):
                # Written to between hashing and sending (a file still growing): the transfer sent
                # newer content than was hashed. Not the copy's fault: no attempt counted,
                # hashed again and sent again next time.
                results.append(CopyResult(task.id, "changed", error="local file changed while it was copied; "
                                          "sent again"))  # fmt: skip
            else:
                why = f"; transfer: {put.error}" if put.error else ""
                results.append(
                    CopyResult(task.id, "failed", error=f"remote md5 {got} differs from local md5 {md5}{why}", **common)
                )
        return results


def _changed_since(local_path: str, sig: Signature) -> bool:
    """True if the local file's signature is no longer ``sig`` (False if it is gone)."""
    try:
        return local_signature(local_path) != sig
    except SupRsyncError:
        return False
