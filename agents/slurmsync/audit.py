"""The audit: does the server charge what Slurm says the jobs cost?

Read-only. For every project with a compute allocation, over the allocation's period (its
start date, or the op's ``start``, to ``end`` or now), it reads:

- the usage the server holds, for the project and for each member of the allocation;
- the jobs the server holds (``GET jobs/?account=`` and, per member, ``&user=``), with the
  server's ``total_amount``;
- the jobs Slurm has (``sacct -A``), priced with the one price table.

and reports, per project and member, the usage against the sum of the jobs the server can
have charged under its date rule (:mod:`.charging`), and per job:

- ``missing_in_api``: Slurm ran and finished it, the server has no such job;
- ``missing_in_slurm``: the server has it, sacct does not;
- ``amount_differs``: the server's amount is not what Slurm says the job cost;
- ``uncharged``: the server stores it but its date rule kept it from moving usage;
- ``stale_running``: the server still says RUNNING, Slurm has finished it.

The job lists are compared on start dates in the window (the server filters its list on
``startdate``; sacct's ``-S``/``-E`` select by run time, so its jobs are filtered the same
way). Usage is compared only when the window covers the allocation from its start date
(usage holds every charge since then). A report with no finding is ``clean``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from hpcsync.agents.core.errors import USER_ERRORS

from .charging import ChargeRule
from .clock import api_time

if TYPE_CHECKING:
    from .engine import SlurmSyncEngine

#: The kinds of job findings, in the order the table shows them.
JOB_FINDINGS = ("stale_running", "missing_in_api", "missing_in_slurm", "amount_differs", "uncharged")
#: How many findings ``session.data`` lists (the CLI's --json and the log have them all).
SHOWN = 10
ZERO = Decimal("0.00")


@dataclass
class UsageRow:
    """One project's or member's usage against its jobs."""

    project: str
    user: str | None  # None: the project as a whole
    usage: Decimal | None  # what the server holds
    jobs_total: Decimal  # the amounts of its jobs in the window (the server's total_amount)
    chargeable: Decimal  # of which the server's date rule lets it charge

    @property
    def drift(self) -> Decimal | None:
        return None if self.usage is None else self.usage - self.chargeable

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": self.project, "user": self.user, "usage": _text(self.usage),
            "jobs_total": str(self.jobs_total), "chargeable": str(self.chargeable), "drift": _text(self.drift),
        }  # fmt: skip


@dataclass
class JobFinding:
    kind: str
    project: str
    jobslurmid: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "project": self.project, "jobslurmid": self.jobslurmid, "detail": self.detail}


@dataclass
class AuditReport:
    """What an audit found; ``summary()`` is the op's ``session.data``."""

    target: str
    start: str | None = None
    end: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    projects: int = 0
    projects_without_allocation: list[str] = field(default_factory=list)
    #: projects whose usage was not compared (the window starts after their allocation)
    usage_not_compared: list[str] = field(default_factory=list)
    usage: list[UsageRow] = field(default_factory=list)
    findings: list[JobFinding] = field(default_factory=list)
    jobs_in_api: int = 0
    jobs_in_slurm: int = 0
    error: str | None = None
    log_file: str | None = None
    api_requests: int = 0
    sacct_calls: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def drifting(self) -> list[UsageRow]:
        return [row for row in self.usage if row.drift]

    @property
    def clean(self) -> bool:
        return self.ok and not self.drifting and not self.findings

    def counts(self) -> dict[str, int]:
        counts = {kind: 0 for kind in JOB_FINDINGS}
        for finding in self.findings:
            counts[finding.kind] += 1
        counts["usage_projects"] = sum(1 for row in self.drifting if row.user is None)
        counts["usage_users"] = sum(1 for row in self.drifting if row.user is not None)
        return counts

    @property
    def usage_drift(self) -> Decimal:
        """The projects' usage minus what their jobs can have charged (positive: over-charged)."""
        return sum((row.drift or ZERO for row in self.usage if row.user is None), ZERO)

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "operation": "audit",
            "target": self.target,
            "window": {"start": self.start, "end": self.end},
            "clean": self.clean,
            "projects": self.projects,
            "jobs": {"in_api": self.jobs_in_api, "in_slurm": self.jobs_in_slurm},
            "drift": self.counts(),
            "usage_drift_su": str(self.usage_drift),
            "elapsed_s": round((self.finished_at or time.time()) - self.started_at, 3),
            "api_requests": self.api_requests,
            "sacct_calls": self.sacct_calls,
            "log_file": self.log_file,
        }
        if self.drifting:
            data["usage_differs"] = [row.as_dict() for row in self.drifting[:SHOWN]]
        if self.findings:
            data["findings"] = [f.as_dict() for f in self.findings[:SHOWN]]
        if self.projects_without_allocation:
            data["projects_without_allocation"] = self.projects_without_allocation[:SHOWN]
        if self.usage_not_compared:
            data["usage_not_compared"] = self.usage_not_compared[:SHOWN]
        if self.error:
            data["error"] = self.error
        return data

    def details(self) -> dict[str, Any]:
        """Everything, for ``hpcsync slurmsync audit --json``."""
        return {**self.summary(), "usage": [row.as_dict() for row in self.usage],
                "findings": [f.as_dict() for f in self.findings]}  # fmt: skip

    def feed_records(self) -> list[tuple[str, str, dict[str, Any]]]:
        data: dict[str, Any] = {"ok": int(self.ok), "clean": int(self.clean), "projects": self.projects,
                                "usage_drift_su": float(self.usage_drift),
                                "jobs_in_api": self.jobs_in_api, "jobs_in_slurm": self.jobs_in_slurm}  # fmt: skip
        data.update(self.counts())
        return [("audit", "audit", data)]

    def message(self) -> str:
        head = f"audit of {self.target}"
        if self.error:
            return f"{head} failed: {self.error}."
        if self.clean:
            return (
                f"{head}: clean: {self.projects} projects, {self.jobs_in_api} jobs in the API and "
                f"{self.jobs_in_slurm} in Slurm agree, and every usage equals its jobs."
            )
        counts = self.counts()
        parts = [f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items() if n and kind in JOB_FINDINGS]
        if counts["usage_projects"] or counts["usage_users"]:
            parts.insert(
                0,
                f"usage differs from its jobs for {counts['usage_projects']} projects and {counts['usage_users']} "
                f"users ({self.usage_drift} SU over all projects)",
            )
        return f"{head}: drift found: " + "; ".join(parts) + "."

    def table(self) -> str:
        """The findings as text tables (``hpcsync slurmsync audit``)."""
        rows = [("PROJECT", "USER", "USAGE", "JOBS TOTAL", "CHARGEABLE", "DRIFT")]
        rows += [
            (r.project, r.user or "(project)", _text(r.usage) or "-", str(r.jobs_total), str(r.chargeable),
             _text(r.drift) or "-")
            for r in self.usage
        ]  # fmt: skip
        text = _columns(rows, right={2, 3, 4, 5})
        if self.findings:
            findings = [("FINDING", "PROJECT", "JOB", "DETAIL")]
            findings += [(f.kind, f.project, f.jobslurmid, f.detail) for f in self.findings]
            text += "\n\n" + _columns(findings)
        return text + "\n\n" + self.message()


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _columns(rows: list[tuple[str, ...]], right: set[int] = frozenset()) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [cell.rjust(width) if i in right else cell.ljust(width) for i, (cell, width) in pairs]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _amount(value: Any) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return ZERO
    return amount if amount.is_finite() else ZERO


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def run_audit(engine: SlurmSyncEngine, *, start: datetime | None = None, end: datetime | None = None) -> AuditReport:
    """Audit every project of ``engine``'s target (see the module docstring)."""
    from .bookkeeping import BookkeepingLog

    end = end or engine.clock.now()
    report = AuditReport(engine.profile.name, api_time(start), api_time(end))
    requests_before = engine.api.requests_made
    commands_before = getattr(engine.slurm, "commands_run", 0)
    book = BookkeepingLog(engine.log_dir, "audit", engine.profile.name, False, engine.token)
    report.log_file = str(book.path)
    try:
        book.info(f"starting audit of {engine.api.base_url} against {engine.slurm.describe()}")
        engine.progress(activity="listing projects")
        names = sorted({str(p["name"]) for p in engine.api.projects()})
        for name in names:
            if engine.cancel.is_set():
                raise _Stopped("stop requested")
            engine.progress(activity=f"auditing project {name}", projects_done=report.projects)
            resource = engine.profile.resource_for(name)
            allocation = engine.api.compute_allocation(name, resource)
            if allocation is None:
                report.projects_without_allocation.append(name)
                continue
            report.projects += 1
            _audit_project(engine, report, allocation, resource, start, end)
        order = {kind: n for n, kind in enumerate(JOB_FINDINGS)}
        report.findings.sort(key=lambda f: (f.project, order[f.kind], f.jobslurmid.zfill(20)))
        for row in report.drifting:
            book.warning(f"USAGE DIFFERS : {row.as_dict()}")
        for finding in report.findings:
            book.warning(f"{finding.jobslurmid} {finding.kind.upper()} : {finding.project}: {finding.detail}")
    except _Stopped as stop:
        report.error = str(stop)
    except USER_ERRORS as exc:
        report.error = str(exc)
    finally:
        report.finished_at = time.time()
        report.api_requests = engine.api.requests_made - requests_before
        report.sacct_calls = getattr(engine.slurm, "commands_run", 0) - commands_before
        (book.error if report.error else book.info)(report.message())
        book.close()
    return report


class _Stopped(Exception):
    pass


def _audit_project(engine: SlurmSyncEngine, report: AuditReport, allocation, resource: str, start, end) -> None:
    name = allocation.project
    rule: ChargeRule = engine.charge_rule(allocation)
    allocation_start = engine.allocation_start(allocation.start_date, name)
    since = start or allocation_start
    compare_usage = since <= allocation_start
    api_jobs, total = engine.api.jobs(name, since, end)
    by_id = {str(j["jobslurmid"]): j for j in api_jobs}
    report.jobs_in_api += len(by_id)

    # What the server can have charged for each of its jobs, by its own date rule.
    charged: dict[str, Decimal] = {}
    for job_id, job in by_id.items():
        enddate = _when(job.get("enddate"))
        why = rule.why_uncharged(_when(job.get("submitdate")), _when(job.get("startdate")), enddate,
                                 put=enddate is not None)  # fmt: skip
        if why is None:
            charged[job_id] = _amount(job.get("amount"))
        elif _amount(job.get("amount")):
            report.findings.append(JobFinding("uncharged", name, job_id, f"{job.get('amount')} SU not charged: {why}"))
    if compare_usage:
        _audit_usage(engine, report, allocation.id, name, resource, since, end, api_jobs, total, charged)
    else:
        report.usage_not_compared.append(name)
    _compare_with_slurm(engine, report, name, since, end, by_id)


def _audit_usage(engine, report, allocation_id, name, resource, since, end, api_jobs, total, charged) -> None:
    """The project's and each member's usage against what their jobs can have charged."""
    _, usage = engine.api.service_units(allocation_id)
    jobs_total = total if total is not None else sum((_amount(j.get("amount")) for j in api_jobs), ZERO)
    report.usage.append(UsageRow(name, None, usage, jobs_total, sum(charged.values(), ZERO)))
    for member in engine.api.allocation_users(name, resource):
        _, user_usage = engine.api.user_service_units(member["id"])
        user_jobs, user_total = engine.api.jobs(name, since, end, user=member["user"])
        ids = [str(j["jobslurmid"]) for j in user_jobs]
        user_total = user_total if user_total is not None else sum((_amount(j.get("amount")) for j in user_jobs), ZERO)
        chargeable = sum((charged.get(i, ZERO) for i in ids), ZERO)
        report.usage.append(UsageRow(name, member["user"], user_usage, user_total, chargeable))


def _compare_with_slurm(engine, report: AuditReport, name: str, since, end, by_id: dict[str, dict]) -> None:
    """The server's jobs against Slurm's, on the same start-date window."""
    ran = engine.slurm.jobs_of_account(name, since, end)
    slurm_jobs = {j.job_id: j for j in ran if j.start is not None and since <= j.start <= end}
    report.jobs_in_slurm += len(slurm_jobs)
    for job_id, job in sorted(slurm_jobs.items(), key=lambda item: (item[1].start, item[0])):
        stored = by_id.get(job_id)
        if job.active:
            continue  # its cost is not final; the plugin's RUNNING record is right for now
        cost = engine.prepare(job).amount
        if stored is None:
            report.findings.append(JobFinding("missing_in_api", name, job_id, f"{job.state} in Slurm, {cost} SU"))
        elif stored.get("jobstatus") == "RUNNING":
            report.findings.append(
                JobFinding("stale_running", name, job_id,
                           f"RUNNING in the API ({stored.get('amount')} SU), {job.state} in Slurm ({cost} SU)")
            )  # fmt: skip
        elif _amount(stored.get("amount")) != cost:
            report.findings.append(
                JobFinding("amount_differs", name, job_id, f"{stored.get('amount')} SU in the API, {cost} SU in Slurm")
            )
    for job_id in by_id.keys() - slurm_jobs.keys():
        job = by_id[job_id]
        report.findings.append(
            JobFinding("missing_in_slurm", name, job_id, f"{job.get('jobstatus')} in the API, {job.get('amount')} SU")
        )
