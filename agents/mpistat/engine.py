"""MpistatReporter's engine: report, inspect, split and status over one dump directory.

Plain Python, no OCS import. It gets its settings, a database (opened on first use), a
cancel event and a progress callback; each job returns a report with ``ok``,
``message()`` and ``summary()`` (the op's ``session.data``).
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcsync.agents.core.process import run_command
from hpcsync.agents.core.secrets import Secret
from hpcsync.agents.core.transfer.base import DestinationError, Item, RemoteUnreachable, TransferOutcome
from hpcsync.db import Database
from hpcsync.db.runs import get_cursor, set_cursor

from . import history
from .dump import INFLATE, BadLines, FileProgress
from .errors import AlreadyDone, MpistatError
from .inspector import inspect_dump, tsv_lines
from .ldapdir import GroupDirectory, LdapSettings, local_directory, read_directory
from .ledger import MpistatLedger
from .quota import QuotaSource
from .report import ARCHIVE_CHECK_BELOW, GroupRow, aggregate_volume, find_archive, last_modified_days, write_tsv
from .sets import DumpSet, find_set
from .splitter import finish_split, split_dumps, start_split, write_index

ProgressCallback = Callable[..., None]
#: Most usage plots one report writes (for the groups at warning level 2 or 3).
MAX_PLOTS = 200


@dataclass
class MpistatSettings:
    """What every job needs; built by :mod:`.options`."""

    dump_dir: str
    output_dir: str
    volumes: list[str] = field(default_factory=list)
    max_days_ago: int = 10
    ldap: LdapSettings | None = None
    quota: QuotaSource = field(default_factory=QuotaSource)
    archive_roots: dict[str, list[str]] = field(default_factory=dict)
    #: the inspector's roots per volume (see :mod:`.inspector`)
    inspect_roots: dict[str, list[str]] = field(default_factory=dict)
    quota_workers: int = 4
    #: "all": every field of every line is checked; "used": only the fields a job reads
    validate: str = "all"


@dataclass
class JobOutcome:
    """What a job returns to the runner (and the CLI)."""

    ok: bool
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    degraded: bool = False
    stopped: bool = False
    feeds: list[tuple[str, str, dict]] = field(default_factory=list)

    def message(self) -> str:
        return self.text

    def summary(self) -> dict[str, Any]:
        return dict(self.data)

    def feed_records(self):
        return list(self.feeds)


class MpistatEngine:
    def __init__(
        self,
        settings: MpistatSettings,
        database: Callable[[], Database],
        *,
        ldap_password: Secret | None = None,
        cancel: threading.Event | None = None,
        progress: ProgressCallback | None = None,
        backend_factory: Callable[[], Any] | None = None,
        split_options: dict | None = None,
        inspect_depth: int = 2,
        instance_id: str = "mpistat",
    ):
        self.settings = settings
        self._database = database
        self.ldap_password = ldap_password
        self.cancel = cancel or threading.Event()
        self._progress = progress or (lambda **_: None)
        self.backend_factory = backend_factory or (lambda: None)
        self.split_options = split_options or {}
        self.inspect_depth = inspect_depth
        self.instance_id = instance_id
        self._ledger: MpistatLedger | None = None

    @property
    def ledger(self) -> MpistatLedger:
        if self._ledger is None:
            self._ledger = MpistatLedger(self._database())
        return self._ledger

    # -- shared steps ---------------------------------------------------------------------

    def find_set(self, date: dt.date | None = None) -> DumpSet:
        s = self.settings
        return find_set(s.dump_dir, s.volumes or None, max_days_ago=s.max_days_ago, date=date)

    def directory(self) -> GroupDirectory:
        if self.settings.ldap is None:
            return local_directory()
        self._progress(activity="reading LDAP groups")
        return read_directory(self.settings.ldap, self.ldap_password)

    def _reader_progress(self, state: dict, started: float, bad: BadLines) -> Callable[[FileProgress], None]:
        last = [0.0]

        def report(p: FileProgress) -> None:
            state["current"] = p.lines
            now = time.monotonic()
            if now - last[0] < 0.5:
                return
            last[0] = now
            lines = state["lines_before"] + p.lines
            self._progress(activity=f"reading {Path(p.file).name}", current_file=p.file, lines_read=lines,
                           lines_per_s=round(lines / max(now - started, 1e-6)), malformed=bad.total,
                           file_done_pct=round(100 * p.compressed_done / max(p.compressed_size, 1), 1))  # fmt: skip

        return report

    # -- report ---------------------------------------------------------------------------

    def report(self, date: dt.date | None = None, replace: bool = False, tsv: bool = True) -> JobOutcome:
        """lurge's group report for the newest complete set (or ``date``'s)."""
        started = time.monotonic()
        dumps = self.find_set(date)
        volumes = [d.volume for d in dumps.dumps]
        if not replace:
            stored = self.ledger.report_exists(dumps.date, volumes)
            if stored:
                raise AlreadyDone(f"a report for {dumps.date.isoformat()} is already stored for {', '.join(stored)} "
                                  "(pass replace=True to replace it)")  # fmt: skip
        directory = self.directory()
        bad = BadLines()
        state = {"lines_before": 0}
        usages = []
        for dump in dumps.dumps:
            usage = aggregate_volume(dump.path, dump.volume, bad, cancel=self.cancel, validate=self.settings.validate,
                                     on_block=self._reader_progress(state, started, bad))  # fmt: skip
            if self.cancel.is_set():
                return JobOutcome(True, f"report for {dumps.date} stopped on request; nothing was stored",
                                  {"date": dumps.date.isoformat(), "stored": False}, stopped=True)  # fmt: skip
            state["lines_before"] += state.pop("current", 0)
            usages.append(usage)
        lines = sum(u.lines for u in usages)
        rows, unknown = self._group_rows(usages, directory, dumps.date)
        self.ledger.store_report(dumps.date, rows, replace=replace)
        tsv_path = Path(self.settings.output_dir) / "report-output-files" / f"report-{dumps.stamp}.tsv"
        if tsv:
            write_tsv(tsv_path, rows)
        plots = self._warning_plots(rows, dumps.stamp)
        elapsed = time.monotonic() - started
        data = {
            "date": dumps.date.isoformat(),
            "volumes": volumes,
            "files": [d.path for d in dumps.dumps],
            "groups": len(rows),
            "unknown_gids": unknown,
            "lines_read": lines + bad.total,
            "lines_per_s": round((lines + bad.total) / max(elapsed, 1e-6)),
            "malformed": bad.summary(),
            "tsv": str(tsv_path) if tsv else None,
            "warnings": {str(level): sum(r.warning == level for r in rows) for level in (1, 2, 3)},
            "plots": len(plots),
            "elapsed_s": round(elapsed, 2),
            "inflate": INFLATE,
        }
        text = (f"report for {dumps.date.isoformat()}: {len(rows)} groups on {len(volumes)} volumes from "
                f"{lines + bad.total} lines ({bad.total} malformed, skipped)")  # fmt: skip
        feed = {"lines_read": lines + bad.total, "lines_per_s": data["lines_per_s"], "malformed": bad.total,
                "groups": len(rows)}  # fmt: skip
        return JobOutcome(True, text, data, degraded=bad.total > 0, feeds=[("mpistat_stats", "report", feed)])

    def _warning_plots(self, rows: list[GroupRow], stamp: str) -> list[str]:
        """An SVG of usage against quota for each group at warning level 2 or 3 (at most
        :data:`MAX_PLOTS`, the most urgent first): ``plots/YYYYMMDD/<volume>/<group>.svg``."""
        urgent = sorted((r for r in rows if (r.warning or 1) >= 2), key=lambda r: (-r.warning, r.volume, r.group))
        written = []
        for row in urgent[:MAX_PLOTS]:
            points = [(p.date, p.used, p.quota) for p in self.ledger.history(row.group, row.volume)]
            target = Path(self.settings.output_dir) / "plots" / stamp / row.volume / f"{row.group}.svg"
            write_text_atomic(target, history.plot_svg(row.group, row.volume, points))
            written.append(str(target))
        return written

    def _group_rows(self, usages, directory: GroupDirectory, date: dt.date) -> tuple[list[GroupRow], int]:
        rows: list[GroupRow] = []
        unknown = 0
        pending: list[GroupRow] = []
        for usage in usages:
            for gid, g in sorted(usage.gids.items()):
                info = directory.groups.get(gid)
                if info is None:
                    unknown += 1  # lurge drops groups LDAP does not know
                    continue
                if g.used == 0 and g.mtime is None:
                    continue  # lurge drops rows with no size and no mtime
                row = GroupRow(volume=usage.volume, gid=gid, group=info.name, pi=info.pi, used=g.used, quota=None,
                               last_modified=last_modified_days(usage.reference_time, g.mtime), archived=None,
                               is_humgen=info.selected, entries=g.entries)  # fmt: skip
                if g.used < ARCHIVE_CHECK_BELOW:
                    row.archived = find_archive(self.settings.archive_roots.get(usage.volume, []), info.name)
                pending.append(row)
        self._progress(activity=f"reading quotas of {len(pending)} groups")
        with ThreadPoolExecutor(max_workers=max(1, self.settings.quota_workers)) as pool:
            quotas = list(pool.map(lambda r: self.settings.quota.quota(r.volume, r.group, self.cancel), pending))
        past = self.ledger.histories(date, sorted({r.volume for r in pending}))
        for row, quota in zip(pending, quotas, strict=True):
            row.quota = quota
            points = [*past.get((row.group, row.volume), []), (date, row.used)]
            row.warning = history.warning_level(points, quota)
            rows.append(row)
        return rows, unknown

    # -- the run process ------------------------------------------------------------------

    def run_new(self, jobs: tuple[str, ...]) -> JobOutcome:
        """Run ``jobs`` on the newest complete set if this instance has not done so yet
        (the last date done is kept in ``sync_cursors``)."""
        try:
            dumps = self.find_set()
        except MpistatError as exc:
            return JobOutcome(True, f"waiting for a complete set: {exc}", {"date": None, "ran": []})
        done = get_cursor(self.ledger.db, f"mpistat:{self.instance_id}", "last_set")
        if done and done >= dumps.date.isoformat():
            return JobOutcome(True, f"the newest complete set ({dumps.date.isoformat()}) is done; waiting",
                              {"date": dumps.date.isoformat(), "ran": []})  # fmt: skip
        messages, ran, degraded = [], [], False
        for job in jobs:
            try:
                outcome = {"report": lambda: self.report(date=dumps.date),
                           "inspect": lambda: self.inspect(date=dumps.date),
                           "split": lambda: self.split(date=dumps.date)}[job]()  # fmt: skip
            except AlreadyDone as exc:
                messages.append(str(exc))
                continue
            if outcome.stopped:
                return JobOutcome(True, outcome.message(), {"date": dumps.date.isoformat(), "ran": ran},
                                  stopped=True)  # fmt: skip
            ran.append(job)
            degraded = degraded or outcome.degraded
            messages.append(outcome.message())
        set_cursor(self.ledger.db, f"mpistat:{self.instance_id}", "last_set", dumps.date.isoformat())
        return JobOutcome(True, "; ".join(messages), {"date": dumps.date.isoformat(), "ran": ran}, degraded=degraded)

    # -- status ---------------------------------------------------------------------------

    def status(self) -> JobOutcome:
        """The newest complete set on disk and the newest stored report."""
        data: dict[str, Any] = {"dump_dir": self.settings.dump_dir, "volumes": self.settings.volumes}
        try:
            dumps = self.find_set()
            data["newest_set"] = {"date": dumps.date.isoformat(), "files": [d.path for d in dumps.dumps]}
        except Exception as exc:
            data["newest_set"] = None
            data["newest_set_error"] = str(exc)
        latest = self.ledger.latest_report_date()
        data["latest_report"] = latest.isoformat() if latest else None
        newest = data["newest_set"]["date"] if data["newest_set"] else None
        data["report_pending"] = bool(newest and newest != data["latest_report"])
        text = f"newest complete set: {newest or 'none'}; newest stored report: {data['latest_report'] or 'none'}"
        return JobOutcome(True, text, data)

    # -- history --------------------------------------------------------------------------

    def history(self, group: str, volume: str | None = None, plot: str | None = None) -> JobOutcome:
        points = self.ledger.history(group, volume)
        if not points:
            return JobOutcome(False, f"no stored usage for group {group}" + (f" on {volume}" if volume else ""))
        out: dict[str, Any] = {"group": group, "volumes": {}}
        for vol in sorted({p.volume for p in points}):
            mine = [p for p in points if p.volume == vol]
            usage = [(p.date, p.used) for p in mine]
            quota = mine[-1].quota
            full = history.date_no_space(usage, quota)
            out["volumes"][vol] = {
                "points": [{"date": p.date.isoformat(), "used": p.used, "quota": p.quota} for p in mine],
                "quota": quota,
                "date_no_space": full.isoformat() if full else None,
                "warning": history.warning_level(usage, quota),
            }
            if plot:
                target = Path(plot)
                if len(out["volumes"]) > 1 or (volume is None and len({p.volume for p in points}) > 1):
                    target = target.with_name(f"{target.stem}-{vol}{target.suffix or '.svg'}")
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_text(history.plot_svg(group, vol, [(p.date, p.used, p.quota) for p in mine]))
                tmp.replace(target)
                out["volumes"][vol]["plot"] = str(target)
        parts = [f"{v}: {d['points'][-1]['used']} bytes, quota {d['quota']}, full on {d['date_no_space'] or 'never'}"
                 for v, d in out["volumes"].items()]  # fmt: skip
        return JobOutcome(True, f"{group}: " + "; ".join(parts), out)

    # -- inspect --------------------------------------------------------------------------

    def inspect(self, date: dt.date | None = None, depth: int | None = None, generic: bool = False,
                to_db: bool = True, output: str | None = None, header: bool = True) -> JobOutcome:  # fmt: skip
        """Directory reports under the configured roots of each volume of the set: a TSV
        (``output``, default ``<output-dir>/inspections/inspect-YYYYMMDD.tsv``; ``-`` for
        stdout, done by the CLI) and, with ``to_db``, a new current directory set per volume."""
        started = time.monotonic()
        depth = depth or self.inspect_depth
        dumps = self.find_set(date)
        todo = [d for d in dumps.dumps if self.settings.inspect_roots.get(d.volume)]
        if not todo:
            raise MpistatError(f"no --inspect-root is configured for {', '.join(d.volume for d in dumps.dumps)}")
        directory = self.directory()
        bad = BadLines()
        state = {"lines_before": 0}
        lines_out: list[str] = []
        stored: dict[str, int] = {}
        for n, dump in enumerate(todo):
            reference = int(dump.mtime)
            rows = inspect_dump(dump.path, self.settings.inspect_roots[dump.volume], depth, directory, bad,
                                reference_time=reference, cancel=self.cancel, validate=self.settings.validate,
                                on_block=self._reader_progress(state, started, bad))  # fmt: skip
            state["lines_before"] += state.pop("current", 0)
            if self.cancel.is_set():
                return JobOutcome(True, "inspection stopped on request; the current sets are unchanged",
                                  {"date": dumps.date.isoformat()}, stopped=True)  # fmt: skip
            lines_out += tsv_lines(rows, dump.volume, generic=generic, header=header and n == 0)
            if to_db:
                self._progress(activity=f"storing {len(rows)} directories of {dump.volume}")
                set_id = self.ledger.begin_set(dump.volume, dumps.date, dump.path)
                try:
                    self.ledger.add_directories(set_id, dump.volume, rows)
                except BaseException:
                    self.ledger.discard_set(set_id)
                    raise
                self.ledger.publish_set(set_id)
                stored[dump.volume] = len(rows)
        target = output or str(Path(self.settings.output_dir) / "inspections" / f"inspect-{dumps.stamp}.tsv")
        if target != "-":
            write_text_atomic(Path(target), "\n".join(lines_out) + "\n")
        elapsed = time.monotonic() - started
        data = {"date": dumps.date.isoformat(), "volumes": [d.volume for d in todo], "directories": stored,
                "depth": depth, "generic": generic, "tsv": None if target == "-" else target,
                "malformed": bad.summary(), "elapsed_s": round(elapsed, 2)}  # fmt: skip
        self.last_table = lines_out
        total = sum(stored.values()) if to_db else max(len(lines_out) - (1 if header else 0), 0)
        text = f"inspection of {dumps.date.isoformat()}: {total} directories ({bad.total} malformed lines skipped)"
        return JobOutcome(True, text, data, degraded=bad.total > 0)

    # -- split ----------------------------------------------------------------------------

    def split(self, date: dt.date | None = None, upload: bool = True, replace: bool = False) -> JobOutcome:
        """One gz file per selected group, index.txt, passwd and group dumps; then upload."""
        started = time.monotonic()
        dumps = self.find_set(date)
        opts = self.split_options
        split_dir = Path(opts.get("split_dir") or Path(self.settings.output_dir) / "groups")
        final = split_dir / dumps.stamp
        backend = self.backend_factory() if upload else None
        if final.exists() and not replace:
            raise AlreadyDone(f"the split of {dumps.date.isoformat()} already exists in {final} "
                              "(pass replace=True to split it again)")  # fmt: skip
        if backend is not None and not replace:
            try:
                remote = backend.list(dumps.stamp, timeout=120, cancel=self.cancel)
            except RemoteUnreachable as exc:
                raise MpistatError(f"cannot look for a finished split at {backend.describe()}: {exc}") from None
            if any(e.path == f"{dumps.stamp}/index.txt" for e in remote):
                raise AlreadyDone(f"the split of {dumps.date.isoformat()} is already uploaded to "
                                  f"{backend.describe()} (pass replace=True to upload it again)")  # fmt: skip
        directory = self.directory()
        bad = BadLines()
        tmp = start_split(split_dir, dumps.stamp)
        try:
            result = split_dumps(
                [d.path for d in dumps.dumps],
                directory,
                tmp,
                bad,
                path_prefixes=opts.get("path_prefixes", []),
                by_id=opts.get("by_id", False),
                cancel=self.cancel,
                on_block=self._reader_progress({"lines_before": 0}, started, bad),
                validate=self.settings.validate,
            )
            if self.cancel.is_set():
                shutil.rmtree(tmp, ignore_errors=True)
                return JobOutcome(True, "split stopped on request; nothing was kept", stopped=True)
            write_index(tmp / "index.txt", result.stats)
            for name, key in (("passwdfile", "passwd_command"), ("groupfile", "group_command")):
                command = opts.get(key)
                if command:
                    out = run_command(shlex.split(command), timeout=120, cancel=self.cancel)
                    (tmp / name).write_text(out.stdout)
            if final.exists():
                shutil.rmtree(final)
            final = finish_split(split_dir, dumps.stamp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        uploaded = 0
        if backend is not None:
            self._progress(activity=f"uploading to {backend.describe()}")
            uploaded = upload_split(backend, final, dumps.stamp, self.cancel)
        elapsed = time.monotonic() - started
        data = {"date": dumps.date.isoformat(), "directory": str(final), "groups": len(result.stats),
                "lines_read": result.lines_read + bad.total, "lines_written": result.lines_written,
                "unknown_gid_lines": result.unknown_gid_lines, "malformed": bad.summary(),
                "uploaded": uploaded, "destination": backend.describe() if backend else None,
                "elapsed_s": round(elapsed, 2)}  # fmt: skip
        where = f"; {uploaded} files uploaded to {backend.describe()}" if backend else ""
        text = (f"split of {dumps.date.isoformat()}: {result.lines_written} of {result.lines_read + bad.total} lines "
                f"into {len(result.stats)} group files in {final}{where}")  # fmt: skip
        return JobOutcome(True, text, data, degraded=bad.total > 0)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def upload_split(
    backend, directory: Path, stamp: str, cancel: threading.Event, attempts: int = 3, backoff: float = 1.0
) -> int:
    """Upload a finished split: every file, then ``index.txt`` last (its presence marks the
    date finished). Files that fail are tried again (``attempts`` in all); any still
    failing raise, and index.txt is then not sent."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != "index.txt")
    for batch in (names, ["index.txt"]):
        todo = [Item(str(directory / n), f"{stamp}/{n}", (directory / n).stat().st_size) for n in batch]
        for attempt in range(attempts):
            try:
                outcome = backend.put(todo, timeout=3600, cancel=cancel)
            except DestinationError as exc:  # refused credentials, no bucket: trying again will not help
                raise MpistatError(f"upload to {backend.describe()} failed: {exc}") from None
            except RemoteUnreachable as exc:  # the whole batch: try it again
                outcome = TransferOutcome(ok=False, error=str(exc))
            failed = set(outcome.skipped) | set(outcome.file_errors)
            if outcome.ok and not failed:
                todo = []
                break
            todo = [i for i in todo if i.remote_path in failed] if failed else todo
            if cancel.wait(min(backoff * 2**attempt, 30)):
                break
        if todo:
            raise MpistatError(f"upload to {backend.describe()} failed for {', '.join(i.remote_path for i in todo)}"
                               f": {outcome.error or 'see the file errors'}")  # fmt: skip
    return len(names) + 1
