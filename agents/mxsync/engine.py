"""MxSync's engine: find finished experiments on the portal, pull each EPN's tree, verify it.

One cycle (:meth:`MxSyncEngine.sync`) does what one turn of ASSyncy's loop did, minus its
defects:

1. **discovery** - the visits running now (now → now + 1 h) give ``current_start`` (the
   earliest of their starts, or now); the visits of ``visit-day-range`` days before it
   that *ended* before it are finished experiments. Each EPN name is checked
   (:mod:`.epns`), its numeric base maps to a project (``epn_cap_map``; unmapped EPNs are
   EpnAlert's business), and new ones enter the ledger as ``pending``. A portal error is
   reported (``degraded``), never read as "no visits"; the pending EPNs are still
   transferred.
2. **transfers** - at most ``max_tasks`` at a time, each EPN claimed in the ledger first
   (never queued twice), pulled from ``<source-root>/<epn>/`` into
   ``<destination-root>/<project>/<epn>/data/`` with one set of rules for dry and live
   runs, then **verified** (every file there with its size; md5 too with
   ``verify_checksums``). Only then is it ``done``.

A dry run (the default) writes nothing: not the ledger, not the destination. It runs the
same pull as a dry run and reports what would be transferred.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hpcsync.agents.core.process import CommandCancelled, CommandError
from hpcsync.agents.core.transfer import Backend, DestinationError, RemoteUnreachable
from hpcsync.agents.core.transfer.tree import TreeRules, compare_tree, pull_tree
from hpcsync.db import Database

from .epns import EpnNameError, check_epn, project_for
from .ledger import EpnLedger, FoundEpn
from .portal import PORTAL_TZ, PortalClient, PortalError

log = logging.getLogger("hpcsync.mxsync")

#: ASSyncy's permissions policy for what arrives (``--chmod`` with ``--perms``).
ASSYNCY_CHMOD = "Dg+s,ug+w,o-wx,ug+X"
#: How often a running transfer reports progress and beats its ledger row (s).
BEAT = 2.0

ProgressCallback = Callable[..., None]


@dataclass
class EpnResult:
    epn: str
    project: str
    outcome: str  # done | would-transfer | failed | released | skipped
    files: int = 0
    bytes: int = 0
    bytes_sent: int = 0
    files_sent: int = 0
    seconds: float = 0.0
    verify_seconds: float = 0.0
    error: str | None = None


@dataclass
class SyncReport:
    """One cycle's outcome (the op's ``session.data``, the run's summary)."""

    execute: bool
    source: str
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    visits_seen: int = 0
    finished_epns: int = 0
    unmapped: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    portal_problems: list[str] = field(default_factory=list)
    portal_error: str | None = None
    host_error: str | None = None
    newly_found: int = 0
    results: list[EpnResult] = field(default_factory=list)
    stopped: bool = False
    counters: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.portal_error is None and self.host_error is None

    @property
    def degraded(self) -> bool:
        return not self.ok or bool(self.refused or self.portal_problems or self.by_outcome("failed"))

    def by_outcome(self, outcome: str) -> list[EpnResult]:
        return [r for r in self.results if r.outcome == outcome]

    def message(self) -> str:
        mode = "" if self.execute else "dry run: "
        done, failed = self.by_outcome("done"), self.by_outcome("failed")
        parts = [f"{mode}{self.finished_epns} finished EPNs on the portal"]
        if self.execute:
            parts.append(f"{len(done)} transferred and verified ({_size(sum(r.bytes_sent for r in done))})")
        else:
            would = self.by_outcome("would-transfer")
            parts.append(f"{len(would)} would be transferred ({_size(sum(r.bytes_sent for r in would))})")
        if failed:
            parts.append(f"{len(failed)} failed ({failed[0].epn}: {failed[0].error})")
        if self.unmapped:
            parts.append(f"{len(self.unmapped)} claimed by no project")
        if self.refused:
            parts.append(f"{len(self.refused)} refused: {self.refused[0]}")
        for problem in (self.portal_error, self.host_error):
            if problem:
                parts.append(problem)
        if self.stopped:
            parts.append("stopped on request; interrupted transfers resume next cycle")
        return "; ".join(parts)

    def summary(self) -> dict[str, Any]:
        def row(r: EpnResult) -> dict:
            return {k: v for k, v in r.__dict__.items() if v not in (None, 0, 0.0) or k in ("epn", "outcome")}

        return {
            "execute": self.execute,
            "source": self.source,
            "visits_seen": self.visits_seen,
            "finished_epns": self.finished_epns,
            "newly_found": self.newly_found,
            "epns": [row(r) for r in self.results[:100]],
            "transferred": len(self.by_outcome("done")),
            "failed": len(self.by_outcome("failed")),
            "bytes_sent": sum(r.bytes_sent for r in self.results),
            "unmapped": self.unmapped[:50],
            "refused": self.refused[:20],
            "portal_problems": self.portal_problems[:20],
            "portal_error": self.portal_error,
            "host_error": self.host_error,
            "ledger": self.ledger,
            "counters": self.counters,
            "elapsed_s": round((self.finished or time.time()) - self.started, 3),
        }

    def feed_records(self) -> list[tuple[str, str, dict]]:
        records = []
        for r in self.results:
            if r.outcome == "done" and r.seconds > 0:
                records.append(
                    (
                        "transfer_rates",
                        "epn",
                        {
                            "epn": r.epn,
                            "bytes": r.bytes_sent,
                            "files": r.files_sent,
                            "bytes_per_s": r.bytes_sent / r.seconds,
                        },
                    )
                )
        records.append(
            (
                "transfer_rates",
                "cycle",
                {**{k: v for k, v in self.counters.items()}, **{f"ledger_{k}": v for k, v in self.ledger.items()}},
            )
        )
        return records


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _tree_size(path: str) -> tuple[int, int]:
    """Files and bytes under ``path`` (partial files included: that is the progress)."""
    files = total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
                files += 1
            except OSError:
                pass
    return files, total


class MxSyncEngine:
    """Discovery and transfers for one source and one destination root.

    :param portal: the portal client (None: no discovery, only the ledger's pending EPNs).
    :param backend: where the EPN trees are (its base directory is the source root).
    :param stale_after: seconds after which a ``running`` row whose owner stopped beating
        is taken over (the owner was killed).
    """

    def __init__(
        self,
        *,
        portal: PortalClient | None,
        backend: Backend,
        db: Callable[[], Database],
        scope: str,
        epn_map: dict[str, str],
        destination_root: str,
        visit_day_range: float = 200,
        max_tasks: int = 1,
        chmod: str | None = ASSYNCY_CHMOD,
        verify_checksums: bool = False,
        max_attempts: int = 5,
        stale_after: float = 60.0,
        transfer_timeout: float = 7 * 86400,
        cancel: threading.Event | None = None,
        progress: ProgressCallback | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self.portal = portal
        self.backend = backend
        self._db = db
        self.scope = scope
        self.epn_map = dict(epn_map)
        self.destination_root = destination_root
        self.visit_day_range = visit_day_range
        self.max_tasks = max(1, int(max_tasks))
        self.rules = TreeRules(keep_dotfiles=(".info",), exclude_dotfiles=True, chmod=chmod, size_only=True)
        self.verify_checksums = verify_checksums
        self.max_attempts = max_attempts
        self.stale_after = stale_after
        self.transfer_timeout = transfer_timeout
        self.cancel = cancel or threading.Event()
        self._progress = progress
        self.clock = clock or (lambda: datetime.now(PORTAL_TZ))
        self.owner = f"{os.uname().nodename[:30]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.counters: dict[str, int] = {"cycles": 0, "epns_done": 0, "epns_failed": 0, "bytes_sent": 0}
        self._running: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._last_progress = 0.0
        self._ledger: EpnLedger | None = None

    @property
    def ledger(self) -> EpnLedger:
        if self._ledger is None:
            self._ledger = EpnLedger(self._db(), self.scope)
        return self._ledger

    def close(self) -> None:
        if self.portal is not None:
            self.portal.close()

    def destination(self, project: str, epn: str) -> str:
        return os.path.join(self.destination_root, project, epn, "data")

    # -- discovery -----------------------------------------------------------------------------

    def discover(self, report: SyncReport) -> list[FoundEpn]:
        """Finished visits → checked EPN names → projects (see the module docstring)."""
        if self.portal is None:
            return []
        now = self.clock()
        try:
            current, problems = self.portal.all_visits(now, now + timedelta(hours=1))
            current_start = min([now, *(v.start for v in current)])
            previous, more = self.portal.all_visits(current_start - timedelta(days=self.visit_day_range), current_start)
        except PortalError as exc:
            report.portal_error = f"portal unavailable: {exc}"
            log.warning("%s", report.portal_error)
            return []
        report.portal_problems = problems + more
        report.visits_seen = len(current) + len(previous)
        found: dict[str, FoundEpn] = {}
        for visit in previous:
            if visit.end >= current_start:
                continue  # still running: never synced
            try:
                epn = check_epn(visit.epn, f"the portal (equipment {visit.equipment_id})")
            except EpnNameError as exc:
                if str(exc) not in report.refused:
                    report.refused.append(str(exc))
                    log.error("%s", exc)
                continue
            project = project_for(epn, self.epn_map)
            if project is None:
                if epn not in report.unmapped:
                    report.unmapped.append(epn)
                continue
            found.setdefault(epn, FoundEpn(epn, project, visit.equipment_id, visit.end.timestamp()))
        report.finished_epns = len(found) + len(report.unmapped)
        return sorted(found.values(), key=lambda f: (f.visit_end or 0, f.epn))

    # -- one cycle -----------------------------------------------------------------------------

    def sync(self, *, execute: bool) -> SyncReport:
        """Discover, then transfer (or with ``execute=False`` dry-run) every pending EPN."""
        report = SyncReport(execute=execute, source=self.backend.describe())
        self.counters["cycles"] += 1
        self.progress(activity="asking the portal for finished visits")
        found = self.discover(report)
        if execute:
            report.newly_found = self.ledger.add_found(found)
            todo = self.ledger.pending() + self.ledger.stale_running(self.stale_after)
        else:
            states = self.ledger.states([f.epn for f in found])
            todo = [{"epn": f.epn, "project": f.project} for f in found if states.get(f.epn) != "done"]
        with self._lock:
            todo = [t for t in todo if t["epn"] not in self._running]
        if todo and not self.cancel.is_set():
            self.progress(activity=f"{'transferring' if execute else 'dry run of'} {len(todo)} EPNs")
            with self.backend.connection(self.cancel), ThreadPoolExecutor(self.max_tasks, "mxsync") as pool:
                futures = [pool.submit(self._one, t["epn"], t["project"], execute, report) for t in todo]
                for future in futures:
                    result = future.result()
                    if result is not None:
                        report.results.append(result)
        report.stopped = self.cancel.is_set()
        report.counters = dict(self.counters)
        report.ledger = self.ledger.counts()
        report.finished = time.time()
        return report

    def _one(self, epn: str, project: str, execute: bool, report: SyncReport) -> EpnResult | None:
        """Transfer (or dry-run) one EPN; its ledger outcome is committed before returning."""
        if self.cancel.is_set() or report.host_error:
            return None
        try:
            check_epn(epn, "the ledger")
        except EpnNameError as exc:
            report.refused.append(str(exc))
            return None
        if execute and not self.ledger.claim(epn, self.owner, self.stale_after):
            return EpnResult(epn, project, "skipped", error="another transfer owns it")
        with self._lock:
            self._running[epn] = {"project": project, "started_at": time.time(), "bytes": 0, "bytes_total": 0}
        try:
            result = self._transfer(epn, project, execute)
        except CommandCancelled:
            result = EpnResult(epn, project, "released", error="stopped on request; resumes next cycle")
        except (RemoteUnreachable, DestinationError) as exc:  # not the EPN's fault
            report.host_error = report.host_error or str(exc)
            result = EpnResult(epn, project, "released", error=str(exc))
        except (CommandError, OSError, ValueError) as exc:
            result = EpnResult(epn, project, "failed", error=str(exc))
        finally:
            with self._lock:
                self._running.pop(epn, None)
        if execute:
            if result.outcome == "done":
                self.ledger.done(epn, self.owner, files=result.files, nbytes=result.bytes)
                self.counters["epns_done"] += 1
                self.counters["bytes_sent"] += result.bytes_sent
            elif result.outcome == "released":
                self.ledger.released(epn, self.owner, result.error or "released")
            else:
                self.ledger.failed(epn, self.owner, result.error or "failed", self.max_attempts)
                self.counters["epns_failed"] += 1
                log.warning("EPN %s: %s", epn, result.error)
        return result

    def _transfer(self, epn: str, project: str, execute: bool) -> EpnResult:
        dest = self.destination(project, epn)
        timeout = self.transfer_timeout
        plan = pull_tree(self.backend, epn, dest, self.rules, dry_run=True, timeout=timeout, cancel=self.cancel)
        if not plan.ok:
            return EpnResult(epn, project, "failed", error=plan.error)
        if not execute:
            return EpnResult(
                epn,
                project,
                "would-transfer",
                files=plan.files_total,
                bytes=plan.bytes_total,
                files_sent=plan.files_sent,
                bytes_sent=plan.bytes_sent,
            )
        with self._lock:
            self._running[epn].update(bytes_total=plan.bytes_sent, files_total=plan.files_sent)
        _, before = _tree_size(dest) if os.path.isdir(dest) else (0, 0)
        watching = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(epn, dest, before, watching), daemon=True)
        watcher.start()
        started = time.monotonic()
        try:
            live = pull_tree(self.backend, epn, dest, self.rules, timeout=timeout, cancel=self.cancel)
        finally:
            watching.set()
            watcher.join()
        seconds = time.monotonic() - started
        if not live.ok:
            return EpnResult(epn, project, "failed", seconds=seconds, error=f"transfer failed: {live.error}")
        started = time.monotonic()
        check = compare_tree(
            self.backend, epn, dest, self.rules, checksums=self.verify_checksums, timeout=timeout, cancel=self.cancel
        )
        verify_seconds = time.monotonic() - started
        if self.cancel.is_set():
            raise CommandCancelled("stopped during verification")
        if not check.ok or check.n_differences:
            why = check.error or f"{check.n_differences} files missing or different: {'; '.join(check.differences[:3])}"
            return EpnResult(epn, project, "failed", seconds=seconds, error=f"verification failed: {why}")
        return EpnResult(
            epn,
            project,
            "done",
            files=check.files_total,
            bytes=check.bytes_total,
            files_sent=live.files_sent,
            bytes_sent=live.bytes_sent,
            seconds=seconds,
            verify_seconds=verify_seconds,
        )

    def _watch(self, epn: str, dest: str, before: int, stop: threading.Event) -> None:
        """While a transfer runs: bytes arrived, rate and ETA into progress; the ledger beat."""
        started = time.monotonic()
        while not stop.wait(BEAT):
            files, total = _tree_size(dest) if os.path.isdir(dest) else (0, 0)
            sent = max(0, total - before)
            elapsed = time.monotonic() - started
            with self._lock:
                info = self._running.get(epn)
                if info is None:
                    return
                rate = sent / elapsed if elapsed else 0.0
                left = max(0, info.get("bytes_total", 0) - sent)
                info.update(bytes=sent, files=files, rate_Bps=round(rate), eta_s=round(left / rate) if rate else None)
            try:
                self.ledger.heartbeat(epn, self.owner, files=files, nbytes=total)
            except Exception as exc:  # a database hiccup must not end the transfer
                log.warning("heartbeat of %s: %s", epn, exc)
            self.progress(activity=f"transferring {len(self._running)} EPNs")

    def progress(self, **fields: Any) -> None:
        if self._progress is None:
            return
        with self._lock:
            running = {epn: {k: v for k, v in info.items()} for epn, info in self._running.items()}
        self._progress(**fields, running=running, counters=dict(self.counters))

    # -- small jobs ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            running = {epn: dict(info) for epn, info in self._running.items()}
        return {
            "scope": self.scope,
            "source": self.backend.describe(),
            "destination_root": self.destination_root,
            "ledger": self.ledger.counts(),
            "running_here": running,
            "counters": dict(self.counters),
            "projects": sorted(set(self.epn_map.values())),
        }
