"""One SupRsync loop iteration: copy, delete, finalize timecode dirs, archive stats.

:class:`SupRsyncEngine` is what the agent's ``run`` process (and ``hpcsync suprsync run``)
calls in a loop. Each step runs under one error handler that turns any failure into a
counter, a ``last_error`` and ``degraded``, and never lets it escape: a database that is
briefly unavailable, a remote that is down, a file that cannot be read all leave the loop
running. A stop request interrupts a running rsync or md5sum within 0.1 s.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from hpcsync.agents.core.process import CommandError, CommandTimeout
from hpcsync.agents.core.transfer import Backend, RemoteUnreachable
from hpcsync.db.engine import DatabaseError

from .copier import BatchReport, Copier, CopySettings
from .deleter import delete_files
from .files import SupRsyncError
from .ledger import SupRsyncFilesManager
from .timecodes import update_timecode_dirs

log = logging.getLogger("hpcsync.suprsync")

#: Counters every run starts with (socs's names first).
COUNTERS = (
    "iterations", "copies", "bytes_copied", "failed_copies", "deletions", "requeued_changed",
    "finalized_dirs", "errors_timeout", "errors_nonzero", "errors_unreachable", "errors_db",
    "errors_local", "errors_other",
)  # fmt: skip
#: How often timecode dirs are (re)created from files registered in the last week (socs: 6 h).
TCDIR_REFRESH_INTERVAL = 6 * 3600.0
#: transfer_stats is published at most this often.
TRANSFER_STATS_INTERVAL = 60.0
#: The copy step keeps taking full batches for at most this long before the loop moves on
#: to deletion and finalization (a large backlog must not starve them).
COPY_STEP_BUDGET = 60.0


@dataclass
class EngineSettings:
    archive: str
    file_root: str
    instance_id: str
    delete_after: float | None = None
    copy: CopySettings | None = None
    #: local files are deleted only under these directories (empty: anywhere registered)
    local_roots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.copy is None:
            self.copy = CopySettings(self.archive)
        if self.delete_after is not None and self.delete_after < 0:
            raise ValueError("delete-local-after must be zero or positive")


@dataclass
class IterationReport:
    start_time: float
    stop_time: float = 0.0
    batches: list[BatchReport] = field(default_factory=list)
    archive_stats: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    unreachable: bool = False
    more_work: bool = False
    #: filled by the engine at the end of the iteration
    archive: str = ""
    destination: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    shown_copy: dict[str, Any] = field(default_factory=dict)
    last_error: dict[str, Any] | None = None
    transfer_stats_due: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and not self.unreachable

    def last_copy(self) -> dict[str, Any]:
        """socs's ``last_copy``: the last batch that had files, else an empty copy."""
        for b in reversed(self.batches):
            if b.size:
                return b.as_session()
        return {"start_time": self.start_time, "stop_time": self.stop_time, "files": []}

    def message(self) -> str:
        verified = sum(b.verified for b in self.batches)
        failed = sum(b.failed + b.missing for b in self.batches)
        text = f"{self.archive}: {verified} files copied and verified, {failed} failed"
        if not self.ok:
            text += f"; {(self.last_error or {}).get('message') or 'destination unreachable'}"
        return text

    def summary(self) -> dict[str, Any]:
        return {"last_copy": {k: v for k, v in self.shown_copy.items() if k != "files"},
                "archive_stats": self.archive_stats, "errors": self.errors}  # fmt: skip

    def session_fields(self) -> dict[str, Any]:
        """What the ``run`` process shows (socs's session.data, plus ``last_error``)."""
        fields: dict[str, Any] = {"archive_name": self.archive, "destination": self.destination,
                                  "counters": self.counters, "last_copy": self.shown_copy}  # fmt: skip
        if self.archive_stats is not None:
            fields["archive_stats"] = {self.archive: self.archive_stats}
        if not self.ok:
            fields["last_error"] = self.last_error
        return fields

    def feed_records(self) -> list[tuple[str, str, dict[str, Any]]]:
        records = []
        if self.archive_stats is not None:
            records.append(("archive_stats", self.archive, self.archive_stats))
        if self.transfer_stats_due:
            rates = [b.rate for b in self.batches if b.verified]
            records.append(("transfer_stats", "transfer_stats",
                            {**self.counters, "files_per_s": float(max(rates)) if rates else 0.0}))  # fmt: skip
        return records


class SupRsyncEngine:
    """The SupRsync loop body for one archive. Thread-safe to stop from another thread."""

    def __init__(
        self,
        manager_factory: Callable[[], SupRsyncFilesManager],
        backend: Backend,
        settings: EngineSettings,
        *,
        cancel: threading.Event | None = None,
        on_activity: Callable[[str], None] | None = None,
    ):
        self._manager_factory = manager_factory
        self._manager: SupRsyncFilesManager | None = None
        self.backend = backend
        self.settings = settings
        self.cancel = cancel or threading.Event()
        self.on_activity = on_activity or (lambda activity: None)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.last_error: dict[str, Any] | None = None
        self._last_tcdir_refresh = 0.0
        self._shown_copy: dict[str, Any] = {}
        self._leftovers_removed = not hasattr(backend, "remove_leftovers")
        self._next_transfer_stats = 0.0

    @property
    def manager(self) -> SupRsyncFilesManager:
        """The files manager, opened on first use (a database down at startup is retried)."""
        if self._manager is None:
            self._manager = self._manager_factory()
        return self._manager

    def iterate(self) -> IterationReport:
        s = self.settings
        report = IterationReport(start_time=time.time())
        self.counters["iterations"] += 1

        self._step(report, "copying", self._copy_step, report)
        if s.delete_after is not None and not self.cancel.is_set():
            self._step(report, "deleting", self._delete_step, report)
        if not self.cancel.is_set():
            self._step(report, "finalizing", self._timecode_step)
        if not self.cancel.is_set():
            report.archive_stats = self._step(report, "idle", lambda: self.manager.get_archive_stats(s.archive))
        self.on_activity("idle")
        report.stop_time = time.time()
        return self._close_report(report)

    def _close_report(self, report: IterationReport) -> IterationReport:
        report.archive = self.settings.archive
        report.destination = self.backend.describe()
        report.counters = dict(self.counters)
        report.last_error = self.last_error
        # An idle iteration keeps the last batch with files shown (ocs-web shows session.data).
        if any(b.size for b in report.batches) or not self._shown_copy:
            self._shown_copy = report.last_copy()
        report.shown_copy = self._shown_copy
        now = time.time()
        if now >= self._next_transfer_stats:
            report.transfer_stats_due = True
            self._next_transfer_stats = now + TRANSFER_STATS_INTERVAL
        return report

    # -- steps ----------------------------------------------------------------------------

    def _remove_leftovers(self) -> None:
        """Once per run, before its first copy: what a killed run of this instance left
        (symlink trees, ssh control directories, rsync's partial files on the remote)."""
        removed = self.backend.remove_leftovers(timeout=self.settings.copy.md5_timeout(0), cancel=self.cancel)
        for what in removed:
            log.info("removed what an earlier run left: %s", what)
        self._leftovers_removed = True

    def _copy_step(self, report: IterationReport) -> None:
        if not self.manager.has_pending(self.settings.archive):
            return  # idle: not even a connection to the destination
        copier = Copier(self.manager, self.backend, self.settings.copy, cancel=self.cancel)
        prepare = None if self._leftovers_removed else self._remove_leftovers
        batches = copier.copy_batches(COPY_STEP_BUDGET, prepare=prepare)
        for batch in batches:
            report.batches.append(batch)
            self.counters["copies"] += batch.verified
            self.counters["bytes_copied"] += batch.bytes
            self.counters["failed_copies"] += batch.failed + batch.missing
            if not batch.unreachable:
                # Local files that could not be looked at (stale NFS handle, EIO): still pending.
                self.counters["errors_local"] += batch.deferred
            if batch.unreachable:
                report.unreachable = True
                self.counters["errors_unreachable"] += 1
                self._error(batch.error or "destination unreachable")
            elif batch.transfer_failed:
                self.counters["errors_timeout" if batch.timed_out else "errors_nonzero"] += 1
                self._error(f"transfer failed: {batch.error}")
                report.errors.append(batch.error or "transfer failed")
        last = batches[-1] if batches else None
        if last is not None and last.full and not (last.stopped or last.unreachable):
            report.more_work = True  # the time budget ran out with more to copy

    def _delete_step(self, report: IterationReport) -> None:
        result = delete_files(self.manager, self.settings.archive, self.settings.delete_after, cancel=self.cancel,
                              local_roots=self.settings.local_roots)  # fmt: skip
        self.counters["deletions"] += result.removed + result.gone
        self.counters["requeued_changed"] += result.requeued
        if result.more:
            report.more_work = True

    def _timecode_step(self) -> None:
        s = self.settings
        now = time.time()
        if now - self._last_tcdir_refresh > TCDIR_REFRESH_INTERVAL:
            created = self.manager.create_all_timecode_dirs(s.archive, min_ctime=now - 7 * 24 * 3600)
            if created:
                log.info("created %d timecode dirs for files registered without one", created)
            self._last_tcdir_refresh = now
        done = update_timecode_dirs(self.manager, s.archive, s.file_root, s.instance_id, now=now)
        self.counters["finalized_dirs"] += len(done)

    # -- one error path -------------------------------------------------------------------

    def _step(self, report: IterationReport, activity: str, fn: Callable, *args):
        self.on_activity(activity)
        try:
            return fn(*args)
        except CommandTimeout as exc:
            counter = "errors_timeout"
            message = str(exc)
        except RemoteUnreachable as exc:
            report.unreachable = True
            counter, message = "errors_unreachable", str(exc)
        except CommandError as exc:
            counter, message = "errors_nonzero", str(exc)
        except (SQLAlchemyError, DatabaseError) as exc:
            counter = "errors_db"
            message = f"database error while {activity}: {getattr(exc, 'orig', None) or exc}"
        except (OSError, SupRsyncError) as exc:
            counter, message = "errors_local", f"while {activity}: {exc}"
        except Exception as exc:  # a bug: keep the loop alive, keep the traceback in the log
            counter, message = "errors_other", f"unexpected error while {activity}: {exc!r}"
            log.error("%s\n%s", message, traceback.format_exc())
        self.counters[counter] += 1
        self._error(message)
        report.errors.append(message)
        return None

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.last_error = {"message": message[:500], "time": time.time()}
