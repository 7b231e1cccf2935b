"""The Slurm side: sacct queries, their parsing, and the sacctmgr limit commands.

Every command runs through :func:`hpcsync.agents.core.process.run_command` (argv list, a
timeout, the op's cancel event). sacct is always asked for the seed's fields in the seed's
shape plus ``JobIDRaw`` at the end - ``-naPX --format=JobId,Submit,...,CPUTime,JobIDRaw`` -
so a saved dump of that command (:class:`SacctDump`) can stand in for the live cluster
(replays, the benchmark). Dumps in the seed's own 15-field shape still read.

Jobs are keyed by ``JobIDRaw``: sacct's ``JobID`` prints array tasks as ``6_1`` and het-job
components as ``123+0``, but the banking plugins (spank, jobcomp) record every job in the
API under its raw id (``8``, ``123``), so that is the ``jobslurmid`` pushed, kept in the
ledger and looked up with ``sacct -j``.

Node lists such as ``n0[061-062].savio2`` are expanded by python-hostlist; the original
scripts' own parser raised on them, dropping every multi-node job.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from threading import Event

import hostlist

from hpcsync.agents.core.process import CommandError, CommandResult, run_command

from .clock import ClusterClock

#: The seed's sacct fields, in the seed's order (the shape of older saved dumps).
SEED_SACCT_FIELDS: tuple[str, ...] = (
    "JobID",
    "Submit",
    "Start",
    "End",
    "UID",
    "Account",
    "State",
    "Partition",
    "QOS",
    "NodeList",
    "AllocCPUS",
    "ReqNodes",
    "AllocNodes",
    "CPUTimeRAW",
    "CPUTime",
)
#: The fields asked of sacct: the seed's, then the raw job id (array tasks and het-job
#: components have their own; JobID shows ``6_1`` / ``123+0``).
SACCT_FIELDS: tuple[str, ...] = (*SEED_SACCT_FIELDS, "JobIDRaw")
SACCT_FORMAT = "--format=" + ",".join(SACCT_FIELDS)
_RAW_INDEX = SACCT_FIELDS.index("JobIDRaw")

#: States of jobs that have not finished: their End is unknown and their cost not final.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "RESIZING",
        "SUSPENDED",
        "COMPLETING",
        "CONFIGURING",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
    }
)

#: Job ids per ``sacct -j`` call (keeps argv far below the kernel's limit).
IDS_PER_CALL = 500


class SacctFormatError(CommandError):
    """sacct printed (or a saved dump holds) a line that is not in the expected shape."""


@dataclass(frozen=True, slots=True)
class SacctJob:
    """One job allocation as sacct reports it (times aware, in UTC).

    ``job_id`` is the raw job id (``JobIDRaw``): the ``jobslurmid`` the banking plugins
    record and the API knows. ``sacct_id`` is ``JobID`` as sacct prints it (``6_1`` for an
    array task, ``123+0`` for a het-job component; the same as ``job_id`` otherwise).
    """

    job_id: str
    submit: datetime | None
    start: datetime | None
    end: datetime | None
    uid: str
    account: str
    state: str
    partition: str
    qos: str
    nodes: tuple[str, ...]
    alloc_cpus: int
    req_nodes: int
    alloc_nodes: int
    cpu_time_raw: int
    sacct_id: str = ""

    @property
    def active(self) -> bool:
        """Still pending or running: its cost is not final yet."""
        return self.state in ACTIVE_STATES or (self.start is not None and self.end is None)

    @property
    def started(self) -> bool:
        return self.start is not None


def normalize_state(raw: str) -> str:
    """``CANCELLED by 1234`` -> ``CANCELLED``; ``COMPLETED`` stays."""
    return raw.split(" ", 1)[0].strip().upper()


def expand_nodes(text: str) -> tuple[str, ...]:
    """Node names of a sacct NodeList (``n0[061-062].savio2,n0100`` -> 3 names)."""
    text = text.strip()
    if not text or text in ("None assigned", "(null)", "None"):
        return ()
    return tuple(hostlist.expand_hostlist(text))


def _int_field(values: Sequence[str], index: int) -> int:
    text = values[index].strip()
    return int(text) if text else 0


def split_sacct_line(line: str) -> list[str]:
    """The fields of one sacct line: the 16 of :data:`SACCT_FIELDS` or the seed's 15.

    ``sacct -p`` (not ``-P``) ends each line with a separator; that empty last field is
    dropped. Any other count is returned as is (the caller names the error).
    """
    values = line.rstrip("\r\n").split("|")
    if len(values) in (len(SACCT_FIELDS) + 1, len(SEED_SACCT_FIELDS) + 1) and values[-1] == "":
        values.pop()
    return values


def raw_job_id(values: Sequence[str]) -> str:
    """``JobIDRaw`` of a split line, or ``JobID`` when the line has no JobIDRaw (a seed-shape dump)."""
    raw = values[_RAW_INDEX].strip() if len(values) > _RAW_INDEX else ""
    return raw or values[0].strip()


def parse_sacct_line(line: str, clock: ClusterClock, where: str) -> SacctJob | None:
    """One line of ``sacct -naPX --format=<SACCT_FIELDS>`` (or the seed's 15 fields); ``None`` for job steps.

    Raises :class:`SacctFormatError` naming ``where`` (source and line), the field and
    what was expected.
    """
    values = split_sacct_line(line)
    if len(values) not in (len(SACCT_FIELDS), len(SEED_SACCT_FIELDS)):
        raise SacctFormatError(
            f"{where}: expected {len(SACCT_FIELDS)} fields separated by '|' ({','.join(SACCT_FIELDS)}) "
            f"or the seed's first {len(SEED_SACCT_FIELDS)}, got {len(values)}: {line[:200]!r}"
        )
    sacct_id = values[0].strip()
    if not sacct_id:
        raise SacctFormatError(f"{where}: JobID is empty: {line[:200]!r}")
    job_id = raw_job_id(values)
    if "." in sacct_id or "." in job_id:
        return None  # a step (123.batch, 6_1.0, 123+0.extern): accounted in its allocation line
    field = "?"
    try:
        field = "Submit"
        submits = clock.sacct_choices(values[1].strip())
        field = "Start"
        starts = clock.sacct_choices(values[2].strip())
        field = "End"
        ends = clock.sacct_choices(values[3].strip())
        field = "NodeList"
        nodes = expand_nodes(values[9])
        field = "AllocCPUS"
        alloc_cpus = _int_field(values, 10)
        field = "ReqNodes"
        req_nodes = _int_field(values, 11)
        field = "AllocNodes"
        alloc_nodes = _int_field(values, 12)
        field = "CPUTimeRAW"
        cpu_time_raw = _int_field(values, 13)
    except (ValueError, hostlist.BadHostlist) as exc:
        index = SACCT_FIELDS.index(field)
        raise SacctFormatError(
            f"{where}: job {job_id}: field {field} {values[index]!r} does not parse ({exc})"
        ) from None
    elapsed = cpu_time_raw / alloc_cpus if alloc_cpus > 0 and cpu_time_raw > 0 else None
    submit, start, end = _pick_instants(submits, starts, ends, elapsed)
    return SacctJob(
        job_id=job_id,
        submit=submit,
        start=start,
        end=end,
        uid=values[4].strip(),
        account=values[5].strip(),
        state=normalize_state(values[6]),
        partition=values[7].strip(),
        qos=values[8].strip(),
        nodes=nodes,
        alloc_cpus=alloc_cpus,
        req_nodes=req_nodes,
        alloc_nodes=alloc_nodes,
        cpu_time_raw=cpu_time_raw,
        sacct_id=sacct_id,
    )


def _pick_instants(
    submits: tuple[datetime, ...], starts: tuple[datetime, ...], ends: tuple[datetime, ...], elapsed: float | None
) -> tuple[datetime | None, datetime | None, datetime | None]:
    """Submit, Start, End, choosing between the two readings of a DST fall-back hour.

    The readings kept are in order (Submit <= Start <= End) and, when the job's elapsed
    seconds are known, closest to them; ties go to the first reading (``fold=0``).
    """
    best: tuple[float, tuple] | None = None
    for submit in submits or (None,):
        for start in starts or (None,):
            for end in ends or (None,):
                times = [t for t in (submit, start, end) if t is not None]
                if any(later < earlier for earlier, later in pairwise(times)):
                    continue
                score = 0.0
                if elapsed is not None and start is not None and end is not None:
                    score = abs((end - start).total_seconds() - elapsed)
                if best is None or score < best[0]:
                    best = (score, (submit, start, end))
    if best is None:  # no reading is in order: keep the first ones, the API will say why
        return tuple(choices[0] if choices else None for choices in (submits, starts, ends))  # type: ignore[return-value]
    return best[1]


def parse_sacct_output(lines: Iterable[str], clock: ClusterClock, source: str) -> list[SacctJob]:
    """Every job allocation in sacct output (blank lines and steps are skipped)."""
    jobs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        job = parse_sacct_line(line, clock, f"{source} line {number}")
        if job is not None:
            jobs.append(job)
    return jobs


@dataclass(frozen=True)
class AccountLimit:
    account: str
    grp_tres_mins: str  # as sacctmgr prints it, e.g. "cpu=60000", or ""

    @property
    def cpu_minutes(self) -> int | None:
        for part in self.grp_tres_mins.split(","):
            key, _, value = part.partition("=")
            if key == "cpu" and value.lstrip("-").isdigit():
                return int(value)
        return None


def set_limit_argv(sacctmgr: str, account: str, minutes: int) -> list[str]:
    """The sacctmgr command that sets an account's CPU-minute limit (no prompt: ``-i``)."""
    return [sacctmgr, "-i", "modify", "account", "where", f"name={account}", "set", f"GrpTRESMins=cpu={minutes}"]


class Slurm:
    """sacct/sacctmgr on this machine (or wherever ``SLURM_CONF`` points)."""

    def __init__(
        self,
        clock: ClusterClock,
        *,
        sacct: str = "sacct",
        sacctmgr: str = "sacctmgr",
        slurm_conf: str | None = None,
        timeout: float = 300.0,
        cancel: Event | None = None,
    ):
        self.clock = clock
        self.sacct = sacct
        self.sacctmgr = sacctmgr
        self.slurm_conf = slurm_conf
        self.timeout = timeout
        self.cancel = cancel
        self.commands_run = 0

    def describe(self) -> str:
        conf = f", SLURM_CONF={self.slurm_conf}" if self.slurm_conf else ""
        return f"{self.sacct} ({self.clock.label}{conf})"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.clock.env())
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        return env

    def _run(self, argv: list[str], check: bool = True) -> CommandResult:
        self.commands_run += 1
        return run_command(argv, timeout=self.timeout, env=self._env(), cancel=self.cancel, check=check)

    def jobs_by_id(self, job_ids: Sequence[str]) -> list[SacctJob]:
        """Current state of the given jobs (raw ids; allocations only), in chunks of ids.

        ``sacct -j 6`` also lists the other tasks of array 6 (and ``-j 123`` every
        component of het job 123): callers pick their jobs by :attr:`SacctJob.job_id`.
        """
        jobs: list[SacctJob] = []
        for first in range(0, len(job_ids), IDS_PER_CALL):
            chunk = list(job_ids[first : first + IDS_PER_CALL])
            argv = [self.sacct, "-naPX", SACCT_FORMAT, "-j", ",".join(chunk)]
            result = self._run(argv)
            jobs.extend(parse_sacct_output(result.stdout.splitlines(), self.clock, "sacct -j output"))
        return jobs

    def jobs_of_account(self, account: str, start: datetime, end: datetime) -> list[SacctJob]:
        """Every job allocation of ``account`` between ``start`` and ``end``, all users."""
        argv = [
            self.sacct, "-naPX", SACCT_FORMAT, "-A", account,
            "-S", self.clock.sacct_arg(start), "-E", self.clock.sacct_arg(end),
        ]  # fmt: skip
        result = self._run(argv)
        return parse_sacct_output(result.stdout.splitlines(), self.clock, f"sacct -A {account} output")

    def account_limits(self) -> dict[str, AccountLimit]:
        """Each account's own association line (no user) and its GrpTRESMins."""
        argv = [self.sacctmgr, "-nP", "show", "assoc", "format=Account,User,GrpTRESMins"]
        result = self._run(argv)
        limits: dict[str, AccountLimit] = {}
        for number, line in enumerate(result.stdout.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("|")
            if len(parts) < 3:
                raise SacctFormatError(f"sacctmgr show assoc output line {number}: expected 3 fields: {line[:200]!r}")
            account, user, tres = parts[0].strip(), parts[1].strip(), parts[2].strip()
            if account and not user:
                limits[account] = AccountLimit(account, tres)
        return limits

    def set_account_minutes(self, account: str, minutes: int) -> CommandResult:
        """Set the account's ``GrpTRESMins=cpu=<minutes>``; CommandError if sacctmgr refuses."""
        result = self._run(set_limit_argv(self.sacctmgr, account, minutes), check=False)
        if "nothing modified" in (result.stdout + result.stderr).lower():
            raise CommandError(f"sacctmgr modified nothing for account {account} (is it an account in Slurm?)", result)
        if not result.ok:
            raise CommandError(result.describe(), result)
        return result


class SacctDump:
    """A saved ``sacct -naPX --format=<SACCT_FIELDS>`` output, queried like :class:`Slurm`.

    The file is read once and its lines grouped by account and indexed by raw job id (raw
    text, parsed on demand). A dump in the seed's 15-field shape has no JobIDRaw: its jobs
    are keyed by JobID, so its array tasks keep sacct's ``6_1`` form.
    """

    def __init__(self, path: str | Path, clock: ClusterClock):
        self.path = Path(path)
        self.clock = clock
        self.commands_run = 0
        self._by_account: dict[str, list[tuple[int, str]]] | None = None
        self._by_id: dict[str, tuple[int, str]] | None = None

    def describe(self) -> str:
        return f"sacct dump {self.path} ({self.clock.label})"

    def _load(self) -> None:
        if self._by_account is not None:
            return
        by_account: dict[str, list[tuple[int, str]]] = defaultdict(list)
        by_id: dict[str, tuple[int, str]] = {}
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                for number, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    fields = split_sacct_line(line)
                    if len(fields) < 7:
                        raise SacctFormatError(
                            f"sacct dump {self.path} line {number}: expected {len(SACCT_FIELDS)} fields "
                            f"separated by '|': {line[:200]!r}"
                        )
                    by_account[fields[5].strip()].append((number, line))
                    by_id[raw_job_id(fields)] = (number, line)
        except FileNotFoundError:
            raise SacctFormatError(f"sacct dump {self.path} does not exist") from None
        except (PermissionError, IsADirectoryError):
            raise SacctFormatError(f"sacct dump {self.path} is not a readable file") from None
        self._by_account, self._by_id = dict(by_account), by_id

    def _parse(self, numbered: Iterable[tuple[int, str]]) -> list[SacctJob]:
        jobs = []
        for number, line in numbered:
            job = parse_sacct_line(line, self.clock, f"sacct dump {self.path} line {number}")
            if job is not None:
                jobs.append(job)
        return jobs

    def jobs_by_id(self, job_ids: Sequence[str]) -> list[SacctJob]:
        self._load()
        assert self._by_id is not None
        return self._parse(self._by_id[j] for j in job_ids if j in self._by_id)

    def jobs_of_account(self, account: str, start: datetime, end: datetime) -> list[SacctJob]:
        """Jobs of ``account`` that were eligible or ran between ``start`` and ``end`` (like sacct -S/-E)."""
        self._load()
        assert self._by_account is not None
        jobs = self._parse(self._by_account.get(account, ()))
        return [
            j
            for j in jobs
            if (j.end is None or j.end >= start) and ((j.start or j.submit) is None or (j.start or j.submit) <= end)
        ]
