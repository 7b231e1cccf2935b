"""The three SlurmSync jobs, as plain Python: reverse sync, running-jobs sync, full sync.

:class:`SlurmSyncEngine` knows nothing of OCS; the agent and the ``hpcsync slurmsync`` CLI
drive the same methods. Each job returns a report (:class:`SyncReport`,
:class:`ReverseSyncReport`) whose ``summary()`` is what ``session.data`` shows and whose
``message()`` is the sentence an operator reads. A problem in the middle of a job (API
outage, refused token, sacct failing, a malformed sacct line) ends the job with
``ok=False`` and that problem named; everything done before it stays done and recorded.

Pushes go out in batches: the ledger's intent is committed for a batch, its PUTs run
concurrently on a few worker threads, and their outcomes are committed together. A full
sync walks projects in name order; a push run that stops early (``max_jobs``, a stop
request, an error) saves the project it stopped in, with the run's time window, with
:func:`hpcsync.db.runs.set_cursor`, says so, and the next push run over the same window
starts there (the ledger then skips that project's jobs already pushed); a run over another
window starts at the first project.

Before a push, each job is checked against the server's date rule (:mod:`.charging`): a job
the server will store without charging is still sent, but counted, logged and recorded as
``stored_uncharged``, not ``pushed``. A job the API refused (4xx) is not sent again with the
same payload unless the run is asked to (``retry_rejected``).
"""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from hpcsync.agents.core.errors import USER_ERRORS
from hpcsync.agents.core.http import ApiAuthError, ApiUnavailable
from hpcsync.agents.core.secrets import Secret
from hpcsync.db import Database
from hpcsync.db.runs import get_cursor, set_cursor

from .audit import AuditReport, run_audit
from .bookkeeping import BookkeepingLog
from .charging import ChargeRule
from .clock import ClusterClock, api_time
from .coldfront import ColdFrontApi, PushResult
from .ledger import JobLedger, PreparedJob, payload_hash
from .pricing import PriceTable
from .profiles import Profile
from .slurm import SacctJob, set_limit_argv

log = logging.getLogger(__name__)

#: Jobs per ledger transaction and per round of concurrent PUTs.
BATCH_SIZE = 200
#: How many problems a report names (the rest are counted).
MAX_EXAMPLES = 10

ProgressCallback = Callable[..., None]


class StopRun(Exception):
    """The run ends early on purpose (limit reached, stop requested)."""


@dataclass
class SyncReport:
    """What a running-jobs or full sync did (or, in a dry run, would do)."""

    operation: str
    target: str
    dry_run: bool
    start: str | None = None
    end: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    projects_total: int = 0
    projects_done: int = 0
    projects_without_allocation: list[str] = field(default_factory=list)
    listed_running: int = 0
    jobs_found: int = 0
    still_running: int = 0
    never_started: int = 0
    not_in_slurm: list[str] = field(default_factory=list)
    unchanged: int = 0
    to_push: int = 0
    pushed: int = 0
    #: jobs (to be) stored by the server without moving usage (its date rule), and their SUs
    stored_uncharged: int = 0
    uncharged_amount: Decimal = Decimal("0.00")
    uncharged_reasons: list[str] = field(default_factory=list)
    rejected: int = 0
    #: jobs the API refused before with the same payload: not sent again
    rejected_earlier: int = 0
    failed: int = 0
    not_sent: int = 0
    amount: Decimal = Decimal("0.00")
    unknown_partitions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    current_project: str | None = None
    resumed_from: str | None = None
    resume_at: str | None = None
    #: the window a full sync's resume cursor is kept for (the op's start/end as given)
    cursor_window: dict[str, str | None] | None = None
    #: why a saved resume point was not used (it was for another window)
    resume_ignored: str | None = None
    stopped_reason: str | None = None
    error: str | None = None
    log_file: str | None = None
    api_requests: int = 0
    sacct_calls: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def complete(self) -> bool:
        return self.ok and self.stopped_reason is None

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.started_at

    @property
    def stopped(self) -> bool:
        """Ended early on purpose (limit reached, stop requested): the run ledger says so."""
        return self.ok and not self.complete

    @property
    def degraded(self) -> bool:
        """Jobs the API refused or that could not be sent leave the op degraded."""
        return not self.ok or bool(self.rejected or self.failed)

    def note_problem(self, text: str) -> None:
        if len(self.problems) < MAX_EXAMPLES:
            self.problems.append(text)

    def cycle_summary(self) -> dict[str, Any]:
        """What the ``run`` process shows of its last cycle."""
        return {
            "listed_running": self.listed_running,
            "pushed": self.pushed,
            "to_push": self.to_push,
            "still_running": self.still_running,
        }

    def feed_records(self) -> list[tuple[str, str, dict[str, Any]]]:
        data: dict[str, Any] = {"ok": int(self.ok), "elapsed_s": round(self.elapsed, 3),
                                "api_requests": self.api_requests}  # fmt: skip
        data.update({f"jobs_{k}": v for k, v in self.summary()["jobs"].items()})
        return [("sync_stats", self.operation, data)]

    def summary(self) -> dict[str, Any]:
        """Small and JSON-safe: what ``session.data`` and the run ledger keep."""
        data: dict[str, Any] = {
            "operation": self.operation,
            "target": self.target,
            "dry_run": self.dry_run,
            "window": {"start": self.start, "end": self.end},
            "complete": self.complete,
            "jobs": {
                "found_in_slurm": self.jobs_found,
                "still_running": self.still_running,
                "never_started": self.never_started,
                "unchanged": self.unchanged,
                "to_push": self.to_push,
                "pushed": self.pushed,
                "stored_uncharged": self.stored_uncharged,
                "rejected": self.rejected,
                "rejected_earlier": self.rejected_earlier,
                "failed": self.failed,
                "not_sent": self.not_sent,
            },
            "service_units": str(self.amount),
            "elapsed_s": round(self.elapsed, 3),
            "api_requests": self.api_requests,
            "sacct_calls": self.sacct_calls,
            "log_file": self.log_file,
        }
        if self.operation == "full_sync":
            data["projects"] = {
                "total": self.projects_total,
                "done": self.projects_done,
                "without_allocation": self.projects_without_allocation[:MAX_EXAMPLES],
            }
        else:
            data["listed_running"] = self.listed_running
            data["not_in_slurm"] = self.not_in_slurm[:MAX_EXAMPLES]
        if self.stored_uncharged:
            data["service_units_uncharged"] = str(self.uncharged_amount)
        for key in ("unknown_partitions", "uncharged_reasons", "problems"):
            if getattr(self, key):
                data[key] = getattr(self, key)[:MAX_EXAMPLES]
        for key in ("resumed_from", "resume_at", "resume_ignored", "stopped_reason", "error"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        return data

    def message(self) -> str:
        """One or two sentences an operator can act on."""
        name = self.operation.replace("_", " ")
        head = f"{name} of {self.target}" + (" (dry run)" if self.dry_run else "")
        if self.dry_run:
            text = f"{head}: {self.to_push} jobs would be pushed ({self.amount} SU); {self.unchanged} unchanged"
        else:
            text = f"{head}: pushed {self.pushed} jobs ({self.amount} SU); {self.unchanged} unchanged"
        extras = []
        if self.stored_uncharged:
            verb = "would be" if self.dry_run else "were"
            of_them = " of them" if self.dry_run else ""
            extras.append(
                f"{self.stored_uncharged}{of_them} {verb} stored by the server without charge "
                f"({self.uncharged_amount} SU; {self.uncharged_reasons[0]})"
            )
        if self.rejected:
            extras.append(f"{self.rejected} rejected by the API (see the log file and ledger)")
        if self.rejected_earlier:
            extras.append(
                f"{self.rejected_earlier} refused by the API before with the same data, not sent again "
                "(retry_rejected=True sends them)"
            )
        if self.failed or self.not_sent:
            extras.append(f"{self.failed + self.not_sent} not pushed")
        if self.still_running:
            extras.append(f"{self.still_running} still running in Slurm")
        if self.not_in_slurm:
            extras.append(f"{len(self.not_in_slurm)} unknown to sacct")
        if self.unknown_partitions:
            extras.append(f"unknown partitions priced 0: {', '.join(self.unknown_partitions[:5])}")
        if extras:
            text += "; " + "; ".join(extras)
        text += "."
        if self.error:
            where = f" at project {self.current_project}" if self.current_project else ""
            text += f" Failed{where}: {self.error}."
        elif self.stopped_reason:
            text += f" Stopped early: {self.stopped_reason}."
        if self.resume_ignored:
            text += f" {self.resume_ignored}."
        if self.resume_at:
            text += f" The next push run over the same window resumes at project {self.resume_at}."
        elif not self.complete and self.operation == "sync_running_jobs" and not self.dry_run:
            text += " Jobs not pushed stay RUNNING in the API; the next run picks them up."
        return text


@dataclass
class LimitChange:
    account: str
    service_units: Decimal
    minutes: int
    current_minutes: int | None


@dataclass
class ReverseSyncReport:
    """What a reverse sync found, wrote and (with apply) set in Slurm."""

    target: str
    applied: bool
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    projects: int = 0
    excluded: list[str] = field(default_factory=list)
    without_allocation: list[str] = field(default_factory=list)
    without_service_units: list[str] = field(default_factory=list)
    missing_in_slurm: list[str] = field(default_factory=list)
    unchanged: int = 0
    changes: list[LimitChange] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    set_ok: list[str] = field(default_factory=list)
    set_failed: list[str] = field(default_factory=list)
    output_file: str | None = None
    log_file: str | None = None
    error: str | None = None
    api_requests: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.set_failed

    def feed_records(self) -> list[tuple[str, str, dict[str, Any]]]:
        elapsed = round((self.finished_at or time.time()) - self.started_at, 3)
        data = {"ok": int(self.ok), "elapsed_s": elapsed, "api_requests": self.api_requests,
                "limits_to_change": len(self.changes)}  # fmt: skip
        return [("sync_stats", "reverse_sync", data)]

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "operation": "reverse_sync",
            "target": self.target,
            "apply": self.applied,
            "projects": self.projects,
            "limits_to_change": len(self.changes),
            "limits_unchanged": self.unchanged,
            "commands": self.commands[:50],
            "output_file": self.output_file,
            "log_file": self.log_file,
            "elapsed_s": round((self.finished_at or time.time()) - self.started_at, 3),
            "api_requests": self.api_requests,
        }
        for key in ("excluded", "without_allocation", "without_service_units", "missing_in_slurm"):
            values = getattr(self, key)
            if values:
                data[key] = values[:MAX_EXAMPLES]
                data[f"{key}_count"] = len(values)
        if self.applied:
            data["applied"] = len(self.set_ok)
            data["apply_failed"] = self.set_failed[:MAX_EXAMPLES]
        if self.error:
            data["error"] = self.error
        return data

    def message(self) -> str:
        head = f"reverse sync of {self.target}"
        if self.error:
            return f"{head} failed: {self.error}."
        text = f"{head}: {len(self.changes)} account limits differ from the API, {self.unchanged} already match"
        if self.missing_in_slurm:
            text += f"; {len(self.missing_in_slurm)} projects have no Slurm account"
        if self.applied:
            text += f"; set {len(self.set_ok)} in Slurm"
            if self.set_failed:
                text += f", {len(self.set_failed)} failed ({'; '.join(self.set_failed[:3])})"
        else:
            text += f"; commands written to {self.output_file} (not applied: apply=True sets them)"
        return text + "."


class _Budget:
    """How many more jobs a run may push (None: no limit)."""

    def __init__(self, limit: int | None):
        self.remaining = limit if limit and limit > 0 else None
        self.limit = self.remaining

    def take(self, jobs: list[PreparedJob]) -> list[PreparedJob]:
        if self.remaining is None:
            return jobs
        taken = jobs[: self.remaining]
        self.remaining -= len(taken)
        return taken

    @property
    def spent(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


@dataclass
class _InFlight:
    """A batch whose PUTs are running."""

    batch: list[PreparedJob]
    futures: list[Future]


class SlurmSyncEngine:
    """The jobs of one target.

    :param slurm: a :class:`~.slurm.Slurm` (live sacct) or :class:`~.slurm.SacctDump`.
    :param log_dir: where the book-keeping logs and the reverse-sync command file go.
    :param workers: concurrent PUTs (each on its own HTTP connection).
    :param cancel: set to stop the current job between batches (and abort waits).
    :param progress: called with keyword fields as the job advances (``session.data``).
    """

    def __init__(
        self,
        *,
        profile: Profile,
        api: ColdFrontApi,
        slurm: Any,
        prices: PriceTable,
        clock: ClusterClock,
        db: Database,
        log_dir: str | Path,
        token: Secret | None = None,
        workers: int = 4,
        batch_size: int = BATCH_SIZE,
        sacctmgr: str = "sacctmgr",
        cancel: threading.Event | None = None,
        progress: ProgressCallback | None = None,
        agent_class: str = "SlurmSync",
        instance_id: str = "cli",
    ):
        self.profile = profile
        self.api = api
        self.slurm = slurm
        self.prices = prices
        self.clock = clock
        self.db = db
        # Keyed by the API actually used (the profile's base URL or --api-url): a staging and
        # a production instance of one target sharing a database keep separate ledgers.
        self.ledger = JobLedger(db, profile.name, api.base_url)
        self.log_dir = Path(log_dir).expanduser()
        self.token = token
        self.workers = max(1, int(workers))
        self.batch_size = max(1, int(batch_size))
        self.sacctmgr = sacctmgr
        self.cancel = cancel or threading.Event()
        self.progress = progress or (lambda **_: None)
        self.agent_class = agent_class
        self.instance_id = instance_id
        self._pool: ThreadPoolExecutor | None = None

    @property
    def cursor_scope(self) -> str:
        """Where a full sync resumes is kept per target and API, like the ledger rows."""
        return f"slurmsync:{self.profile.name}@{self.ledger.api_url_hash}"

    # -- payloads --------------------------------------------------------------------------

    def charge_rule(self, allocation) -> ChargeRule:
        """The server's date rule for an allocation (see :mod:`.charging`)."""
        return ChargeRule.of(allocation, self.profile.periodic_prefixes, self.profile.server_time_zone)

    def prepare(self, job: SacctJob, rule: ChargeRule | None = None) -> PreparedJob:
        """The API payload of a finished job, priced with the one price table; with the
        allocation's ``rule``, it says whether the server will charge it."""
        assert job.start is not None and job.end is not None
        seconds = (job.end - job.start).total_seconds()
        amount = self.prices.amount(job.partition, job.alloc_cpus, seconds)
        raw_hours = seconds / 3600.0
        status = self.profile.api_status(job.state)
        payload = {
            "jobslurmid": job.job_id,
            "submitdate": api_time(job.submit),
            "startdate": api_time(job.start),
            "enddate": api_time(job.end),
            "userid": job.uid,
            "accountid": job.account,
            "amount": str(amount),
            "jobstatus": status,
            "partition": job.partition,
            "qos": job.qos,
            "nodes": [{"name": n} for n in job.nodes],
            "num_cpus": job.alloc_cpus,
            "num_req_nodes": job.req_nodes,
            "num_alloc_nodes": job.alloc_nodes,
            "raw_time": round(raw_hours, 6),
            "cpu_time": round(raw_hours * job.alloc_cpus, 6),
        }
        uncharged = rule.why_uncharged(job.submit, job.start, job.end) if rule is not None else None
        return PreparedJob(job.job_id, job.account, status, amount, payload, payload_hash(payload), uncharged)

    # -- running-jobs sync -----------------------------------------------------------------

    def sync_running_jobs(
        self,
        *,
        push: bool = False,
        start: datetime | None = None,
        end: datetime | None = None,
        max_jobs: int = 0,
        retry_rejected: bool = False,
    ) -> SyncReport:
        """Jobs the API still calls RUNNING -> their state in sacct -> pushed (if ``push``)."""
        start = start or self.clock.period_start(self.profile.period_start_month, self.profile.period_start_day)
        end = end or self.clock.now()
        report = SyncReport("sync_running_jobs", self.profile.name, not push, api_time(start), api_time(end))
        with self._run_context(report) as book:
            self.progress(activity="listing RUNNING jobs in the API")
            listed = self.api.running_jobs(start, end)
            job_ids = list(dict.fromkeys(str(j["jobslurmid"]) for j in listed))
            report.listed_running = len(job_ids)
            book.info(f"{len(job_ids)} jobs are RUNNING in the API between {report.start} and {report.end}")
            self.progress(activity="reading sacct", listed_running=len(job_ids))
            found = {j.job_id: j for j in self.slurm.jobs_by_id(job_ids)} if job_ids else {}
            report.jobs_found = len(found)
            estimates = {str(j["jobslurmid"]): j.get("amount") for j in listed}
            rules: dict[str, ChargeRule | None] = {}
            ready = []
            for job_id in job_ids:
                job = found.get(job_id)
                if job is None:
                    report.not_in_slurm.append(job_id)
                elif job.active:
                    report.still_running += 1
                elif not job.started:
                    report.never_started += 1
                    report.note_problem(f"job {job_id} is RUNNING in the API but never started in Slurm ({job.state})")
                else:
                    if job.account not in rules:
                        allocation = self.api.compute_allocation(job.account, self.profile.resource_for(job.account))
                        rules[job.account] = self.charge_rule(allocation) if allocation is not None else None
                    prepared = self.prepare(job, rules[job.account])
                    if prepared.uncharged and estimates.get(job_id) not in (None, "", "0.00"):
                        report.note_problem(
                            f"job {job_id}: the server will store it without moving usage ({prepared.uncharged}); "
                            f"the RUNNING estimate it charged ({estimates[job_id]} SU) stays charged"
                        )
                    ready.append(prepared)
            if report.not_in_slurm:
                book.warning(f"not found by sacct: {', '.join(report.not_in_slurm[:100])}")
            # No ledger skip here: the API listing these jobs as RUNNING shows that it
            # differs from Slurm, whatever was pushed before.
            self._send(
                ready, report, book, push=push, skip_unchanged=False, budget=_Budget(max_jobs), retry=retry_rejected
            )
        return report

    # -- full sync -------------------------------------------------------------------------

    def full_sync(
        self,
        *,
        push: bool = False,
        start: datetime | None = None,
        end: datetime | None = None,
        max_jobs: int = 0,
        resume: bool = True,
        retry_rejected: bool = False,
    ) -> SyncReport:
        """Every project's jobs since its allocation start (or ``start``) -> pushed (if ``push``).

        Jobs whose payload the API already accepted (per the ledger) are skipped. A push run
        resumes where an earlier one over the same window stopped.
        """
        window = {"start": api_time(start), "end": api_time(end)}  # as given: None means the default
        end = end or self.clock.now()
        report = SyncReport("full_sync", self.profile.name, not push, api_time(start) if start else None, api_time(end))
        report.cursor_window = window
        budget = _Budget(max_jobs)
        with self._run_context(report) as book:
            self.progress(activity="listing projects")
            names = sorted({str(p["name"]) for p in self.api.projects()})
            report.projects_total = len(names)
            cursor = get_cursor(self.db, self.cursor_scope, "full_sync") if (push and resume) else None
            if cursor and cursor.get("window", {"start": None, "end": None}) != window:
                report.resume_ignored = (
                    f"An earlier push run stopped at project {cursor.get('project')} over another window "
                    f"({_window_text(cursor.get('window'))}); this one ({_window_text(window)}) started at the first "
                    "project"
                )
                book.info(report.resume_ignored)
                cursor = None
            if cursor and cursor.get("project") in names:
                report.resumed_from = cursor["project"]
                skipped = names.index(cursor["project"])
                report.projects_done = skipped
                names = names[skipped:]
                book.info(f"resuming at project {report.resumed_from} ({skipped} projects done by an earlier run)")
            for index, name in enumerate(names):
                report.current_project = name
                if self.cancel.is_set():
                    raise StopRun("stop requested")
                if budget.spent:
                    raise StopRun(f"max_jobs={budget.limit} reached")
                self.progress(activity=f"project {name}", project=name, projects_done=report.projects_done)
                allocation = self.api.compute_allocation(name, self.profile.resource_for(name))
                if allocation is None:
                    report.projects_without_allocation.append(name)
                    book.warning(f"project {name}: no {self.profile.resource_for(name)} allocation; skipped")
                else:
                    project_start = start or self.allocation_start(allocation.start_date, name, book)
                    jobs = self.slurm.jobs_of_account(name, project_start, end)
                    ready = self._finished(jobs, report, self.charge_rule(allocation))
                    self._send(ready, report, book, push=push, skip_unchanged=True, budget=budget, retry=retry_rejected)
                report.projects_done += 1
                if push:
                    following = names[index + 1] if index + 1 < len(names) else None
                    set_cursor(
                        self.db,
                        self.cursor_scope,
                        "full_sync",
                        {"project": following, "window": window} if following else None,
                    )
            report.current_project = None
            if push:
                set_cursor(self.db, self.cursor_scope, "full_sync", None)
        return report

    def allocation_start(self, start_date: str | None, project: str, book: BookkeepingLog | None = None) -> datetime:
        """Where a project's jobs are read from: its allocation's start date, else the period start."""
        if start_date:
            try:
                return self.clock.date_start(start_date)
            except ValueError:
                if book is not None:
                    book.warning(f"project {project}: allocation start_date {start_date!r} is not a date")
        return self.clock.period_start(self.profile.period_start_month, self.profile.period_start_day)

    def _finished(self, jobs: Sequence[SacctJob], report: SyncReport, rule: ChargeRule) -> list[PreparedJob]:
        ready = []
        for job in jobs:
            report.jobs_found += 1
            if job.active:
                report.still_running += 1
            elif not job.started:
                report.never_started += 1
            else:
                ready.append(self.prepare(job, rule))
        return ready

    # -- pushing ---------------------------------------------------------------------------

    def _send(
        self,
        jobs: list[PreparedJob],
        report: SyncReport,
        book: BookkeepingLog,
        *,
        push: bool,
        skip_unchanged: bool,
        budget: _Budget,
        retry: bool = False,
    ) -> None:
        # Batches are pipelined: while batch N's PUTs run on the workers, this thread
        # commits batch N+1's intent and then batch N's outcomes. Each batch's intent is
        # still committed before any of its PUTs, and its outcomes after all of them.
        halt = threading.Event()
        in_flight: _InFlight | None = None
        try:
            for first in range(0, len(jobs), self.batch_size):
                if self.cancel.is_set():
                    raise StopRun("stop requested")
                batch = jobs[first : first + self.batch_size]
                done, refused = self.ledger.not_to_send(batch)
                if not skip_unchanged:
                    done = set()  # (the API lists these jobs as RUNNING: it differs from Slurm)
                if retry:
                    refused = set()
                else:
                    refused -= done
                report.unchanged += len(done)
                report.rejected_earlier += len(refused)
                for job_id in sorted(refused)[: max(0, MAX_EXAMPLES - len(report.problems))]:
                    report.note_problem(f"job {job_id}: refused by the API before with the same data; not sent again")
                batch = [j for j in batch if j.jobslurmid not in done and j.jobslurmid not in refused]
                if not batch:
                    continue
                if budget.spent:
                    raise StopRun(f"max_jobs={budget.limit} reached")
                taken = budget.take(batch)
                report.to_push += len(taken)
                if push:
                    self.ledger.record_intent(taken)
                    previous, in_flight = in_flight, self._start_puts(taken, halt)
                    if previous is not None:
                        self._finish(previous, report, book)
                else:
                    for job in taken:
                        book.job("COLLECTED", job.jobslurmid, job.payload)
                        self._count_charge(job, report, book)
                self.progress(
                    activity="pushing" if push else "collecting (dry run)",
                    to_push=report.to_push,
                    pushed=report.pushed,
                    unchanged=report.unchanged,
                    rejected=report.rejected,
                )
                if len(taken) < len(batch):
                    raise StopRun(f"max_jobs={budget.limit} reached")
        except BaseException:
            if in_flight is not None:
                try:
                    self._finish(in_flight, report, book)
                except USER_ERRORS:
                    pass  # the first problem is the one reported
            raise
        if in_flight is not None:
            self._finish(in_flight, report, book)

    def _start_puts(self, batch: list[PreparedJob], halt: threading.Event) -> _InFlight:
        # Once one PUT finds the API down (after its retries) or the token refused, the
        # others are not sent: they would only wait through the same retries.
        def put(job: PreparedJob) -> PushResult:
            if halt.is_set() or self.cancel.is_set():
                return PushResult(job.jobslurmid, "skipped", None, "not sent: the run stopped first")
            result = self.api.put_job(job.payload)
            if result.outcome in ("unavailable", "auth"):
                halt.set()
            return result

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="slurmsync-put")
        return _InFlight(batch, [self._pool.submit(put, job) for job in batch])

    def _finish(self, in_flight: _InFlight, report: SyncReport, book: BookkeepingLog) -> None:
        """Wait for a batch's PUTs, commit their outcomes, count them; raise if the API failed."""
        results = [future.result() for future in in_flight.futures]
        uncharged = {job.jobslurmid: job.uncharged for job in in_flight.batch if job.uncharged}
        self.ledger.record_outcomes(results, {job.jobslurmid: job.hash for job in in_flight.batch}, uncharged)
        fatal: PushResult | None = None
        for job, result in zip(in_flight.batch, results, strict=True):
            if result.outcome == "pushed":
                book.job("UPDATED", job.jobslurmid, job.payload)
                self._count_charge(job, report, book)
            elif result.outcome == "rejected":
                report.rejected += 1
                report.note_problem(f"job {job.jobslurmid}: {result.error}")
                book.warning(f"{job.jobslurmid} REJECTED : {result.error}")
            elif result.outcome == "skipped":
                report.not_sent += 1
            else:
                report.failed += 1
                book.error(f"{job.jobslurmid} FAILED : {result.error}")
                fatal = fatal or result
        if fatal is not None:
            error_class = ApiAuthError if fatal.outcome == "auth" else ApiUnavailable
            raise error_class(fatal.error or "the API failed", status=fatal.http_status)

    @staticmethod
    def _count_charge(job: PreparedJob, report: SyncReport, book: BookkeepingLog) -> None:
        """Count a job sent (or, in a dry run, to send) as charged or as stored uncharged."""
        if job.uncharged is None:
            report.pushed += not report.dry_run
            report.amount += job.amount
            return
        report.stored_uncharged += 1
        report.uncharged_amount += job.amount
        if job.uncharged not in report.uncharged_reasons and len(report.uncharged_reasons) < MAX_EXAMPLES:
            report.uncharged_reasons.append(job.uncharged)
        book.warning(f"{job.jobslurmid} NOT CHARGED : {job.amount} SU stored without charge: {job.uncharged}")

    def close(self) -> None:
        """Stop the upload workers and close the API connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.api.close()

    # -- audit -----------------------------------------------------------------------------

    def audit(self, *, start: datetime | None = None, end: datetime | None = None) -> AuditReport:
        """Read-only: the server's usage and jobs against Slurm's jobs (see :mod:`.audit`)."""
        return run_audit(self, start=start, end=end)

    # -- reverse sync ----------------------------------------------------------------------

    def reverse_sync(self, *, apply: bool = False) -> ReverseSyncReport:
        """API service units -> ``GrpTRESMins=cpu=<SU x 60>`` per Slurm account.

        Writes the commands for the accounts whose limit differs to
        ``reverse_sync_output_<target>.sh`` (reviewable, runnable) and, with ``apply``,
        runs them.
        """
        report = ReverseSyncReport(self.profile.name, apply)
        book = BookkeepingLog(self.log_dir, "reverse_sync", self.profile.name, not apply, self.token)
        report.log_file = str(book.path)
        try:
            book.info(f"starting reverse sync against {self.api.base_url} (apply={apply})")
            self.progress(activity="listing projects")
            names = sorted({str(p["name"]) for p in self.api.projects()})
            report.projects = len(names)
            self.progress(activity="reading Slurm account limits", projects=len(names))
            limits = self.slurm.account_limits()
            for name in names:
                if self.cancel.is_set():
                    raise StopRun("stop requested")
                if self.profile.excluded_from_reverse_sync(name):
                    report.excluded.append(name)
                    continue
                allocation = self.api.compute_allocation(name, self.profile.resource_for(name))
                if allocation is None:
                    report.without_allocation.append(name)
                    continue
                service_units, _usage = self.api.service_units(allocation.id)
                if service_units is None or service_units < 0:
                    # A negative limit would clear Slurm's limit (-1) or be refused: never set it.
                    report.without_service_units.append(name)
                    if service_units is not None:
                        book.warning(f"project {name}: the API gives {service_units} service units; not set")
                    continue
                minutes = int(service_units * 60)
                current = limits.get(name)
                if current is None:
                    report.missing_in_slurm.append(name)
                    book.warning(f"project {name} ({service_units} SU) has no account in Slurm")
                elif current.cpu_minutes == minutes:
                    report.unchanged += 1
                else:
                    report.changes.append(LimitChange(name, service_units, minutes, current.cpu_minutes))
            # Quoted for the shell: the file is run by an operator, and names come from the API.
            report.commands = [shlex.join(set_limit_argv(self.sacctmgr, c.account, c.minutes)) for c in report.changes]
            report.output_file = str(self._write_commands(report))
            for change, command in zip(report.changes, report.commands, strict=True):
                book.info(
                    f"{change.account}: {change.service_units} SU -> cpu={change.minutes} min "
                    f"(now {change.current_minutes if change.current_minutes is not None else 'unset'}): {command}"
                )
            if apply:
                for change in report.changes:
                    if self.cancel.is_set():
                        raise StopRun("stop requested")
                    self.progress(activity=f"setting the limit of {change.account}")
                    try:
                        self.slurm.set_account_minutes(change.account, change.minutes)
                    except USER_ERRORS as exc:
                        report.set_failed.append(f"{change.account}: {exc}")
                        book.error(f"{change.account}: setting GrpTRESMins failed: {exc}")
                    else:
                        report.set_ok.append(change.account)
                        book.info(f"{change.account}: GrpTRESMins=cpu={change.minutes} set")
        except StopRun as stop:
            report.error = str(stop)
        except USER_ERRORS as exc:
            report.error = str(exc)
            book.error(str(exc))
        finally:
            report.finished_at = time.time()
            report.api_requests = self.api.requests_made
            book.info(report.message())
            book.close()
        return report

    def _write_commands(self, report: ReverseSyncReport) -> Path:
        path = self.log_dir / f"reverse_sync_output_{self.profile.name}.sh"
        lines = [
            "#!/bin/sh",
            f"# hpcsync slurmsync reverse sync of {self.profile.name} ({self.api.base_url})",
            f"# written {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {len(report.changes)} limits to change, "
            f"{report.unchanged} already match the API",
            "# Review, then run this file, or start reverse_sync with apply=True.",
        ]
        for name in report.missing_in_slurm:
            lines.append(f"# project {_printable(name)} has no Slurm account: nothing to set")
        lines.extend(report.commands)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.log_dir, prefix=".reverse_sync.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        return path

    # -- run bracket -----------------------------------------------------------------------

    def _run_context(self, report: SyncReport):
        return _RunContext(self, report)


def _window_text(window: Any) -> str:
    if not isinstance(window, dict):
        window = {}
    return f"{window.get('start') or 'allocation starts'} .. {window.get('end') or 'now'}"


def _printable(text: str) -> str:
    """``text`` on one line: control characters (a newline in a name from the API) escaped."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


class _RunContext:
    """Opens the book-keeping log; turns a stop or a user error into the report's outcome."""

    def __init__(self, engine: SlurmSyncEngine, report: SyncReport):
        self.engine = engine
        self.report = report

    def __enter__(self) -> BookkeepingLog:
        engine, report = self.engine, self.report
        self.book = BookkeepingLog(engine.log_dir, report.operation, report.target, report.dry_run, engine.token)
        report.log_file = str(self.book.path)
        self.requests_before = engine.api.requests_made
        self.commands_before = getattr(engine.slurm, "commands_run", 0)
        self.book.info(
            f"starting {report.operation} against {engine.api.base_url} from {engine.slurm.describe()} "
            f"({'dry run' if report.dry_run else 'PUSH'}; window {report.start or 'allocation starts'} .. {report.end})"
        )
        return self.book

    def __exit__(self, exc_type, exc, tb) -> bool:
        engine, report = self.engine, self.report
        handled = False
        if exc_type is not None and issubclass(exc_type, StopRun):
            report.stopped_reason = str(exc)
            handled = True
        elif exc_type is not None and issubclass(exc_type, USER_ERRORS):
            report.error = str(exc)
            handled = True
        if handled and report.operation == "full_sync" and report.current_project and not report.dry_run:
            cursor = {"project": report.current_project, "window": report.cursor_window}
            set_cursor(engine.db, engine.cursor_scope, "full_sync", cursor)
            report.resume_at = report.current_project
        if engine._pool is not None:
            engine._pool.shutdown(wait=True)
            engine._pool = None
        report.unknown_partitions = sorted(engine.prices.unknown_seen)
        report.api_requests = engine.api.requests_made - self.requests_before
        report.sacct_calls = getattr(engine.slurm, "commands_run", 0) - self.commands_before
        report.finished_at = time.time()
        if report.error:
            self.book.error(report.message())
        else:
            self.book.info(report.message())
        self.book.close()
        return handled
