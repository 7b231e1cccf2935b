"""SlurmSync OCS agent: Slurm accounting <-> a ColdFront/myBRC/myLRC allocation API.

One instance per target. The ops map to :class:`~.engine.SlurmSyncEngine` jobs; this file
holds no sync logic, only parameters, ``session.data`` and the run/stop plumbing.
"""

from __future__ import annotations

import argparse
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ocs import ocs_agent

from hpcsync.agents.core.errors import USER_ERRORS, ConfigError
from hpcsync.agents.core.ocs_glue import start_agent
from hpcsync.agents.core.opstate import OpState, StopFlag
from hpcsync.db import Database, default_url, open_database

from .clock import ClusterClock
from .engine import SlurmSyncEngine
from .options import TARGET_HELP, EngineSettings, add_engine_arguments, build_engine, default_log_dir

AGENT_CLASS = "SlurmSync"


def _is_time(value: str) -> bool:
    try:
        ClusterClock(None).parse_user_time(value, "time")
    except ConfigError:
        return False
    return True


class SlurmSync:
    """Reconcile Slurm accounting with a ColdFront/myBRC/myLRC API.

    Args:
        agent (OCSAgent): the OCS agent object.
        args (argparse.Namespace): parsed arguments (see :func:`make_parser`).
    """

    def __init__(self, agent: Any, args: argparse.Namespace):
        self.agent = agent
        self.log = agent.log
        self.args = args
        self.instance_id = getattr(args, "instance_id", None) or "slurmsync"
        self.settings = EngineSettings.from_args(args, log_dir=self._log_dir(args))
        self._db: Database | None = None
        self._db_lock = threading.Lock()
        self._cancel = {name: threading.Event() for name in ("reverse_sync", "sync_running_jobs", "full_sync")}
        self._run_stop = StopFlag()
        # One sync at a time per instance: concurrent jobs would share the ledger rows, the
        # resume cursor and the book-keeping log files. A second one is refused, by name.
        self._busy = threading.Lock()
        self._busy_with: str | None = None
        agent.register_feed("sync_stats", record=True, agg_params={"frame_length": 60}, buffer_time=1)

    def _log_dir(self, args: argparse.Namespace) -> str:
        if getattr(args, "sync_log_dir", None):
            return args.sync_log_dir
        if getattr(args, "log_dir", None):
            return f"{args.log_dir}/slurmsync-{self.instance_id}"
        return default_log_dir(self.instance_id)

    # -- plumbing ---------------------------------------------------------------------------

    def _database(self) -> Database:
        with self._db_lock:
            if self._db is None:
                self._db = open_database(self.settings.db or default_url())
            return self._db

    def _engine(self, cancel: threading.Event, progress: Callable[..., None]) -> SlurmSyncEngine:
        return build_engine(
            self.settings,
            db=self._database(),
            cancel=cancel,
            progress=progress,
            agent_class=AGENT_CLASS,
            instance_id=self.instance_id,
        )

    def _times(self, params: dict) -> dict:
        clock = ClusterClock(self.settings.cluster_tz)
        return {key: clock.parse_user_time(params[key], key) if params.get(key) else None for key in ("start", "end")}

    def _execute(
        self, label: str, operation: str, dry_run: bool, cancel: threading.Event, progress, job, finished
    ) -> tuple[str, Any]:
        """Run one engine job in its own thread; return when it ends or within a second of a stop.

        Returns ``("busy", other_job)`` if another sync of this instance is under way,
        ``("stopped", None)`` if a stop was asked for and the job is still finishing an API
        call (it ends in the background and records its outcome), else ``("done", None)``
        after ``finished(report, error)`` has run in the job's thread.
        """
        if not self._busy.acquire(blocking=False):
            return "busy", self._busy_with
        self._busy_with = label
        done = threading.Event()

        def work() -> None:
            try:
                report, error = None, None
                try:
                    engine = self._engine(cancel, progress)
                    report = engine.record(operation, dry_run, lambda: job(engine))
                except USER_ERRORS as exc:
                    error = exc
                finished(report, error)
            except Exception as exc:  # a bug: keep its traceback in the agent log
                self.log.error("{op} crashed: {tb}", op=label, tb=traceback.format_exc())
                finished(None, exc)
            finally:
                self._busy_with = None
                self._busy.release()
                done.set()

        threading.Thread(target=work, name=f"slurmsync-{operation}", daemon=True).start()
        while not done.wait(0.1):
            if cancel.is_set() and not done.wait(0.5):
                return "stopped", None
        return "done", None

    def _busy_message(self, operation: str, other: str | None) -> str:
        return (
            f"{operation} not started: {other or 'another sync'} is still running on this instance "
            "(syncs of one target share its ledger and log files, so they run one at a time); "
            "start it again when that one has finished"
        )

    def _run_job(self, session: Any, operation: str, dry_run: bool, job: Callable[[SlurmSyncEngine], Any]):
        """Run one engine job as an op: progress into session.data, errors into degraded."""
        state = OpState(session, operation=operation, target=self.settings.target, dry_run=dry_run, activity="starting")
        cancel = self._cancel[operation]
        cancel.clear()
        result: dict[str, Any] = {}

        def progress(**fields: Any) -> None:
            state.update(activity=fields.pop("activity", "working"), progress=fields)

        def finished(report: Any, error: BaseException | None) -> None:
            if report is None:
                state.update(activity="failed")
                state.error(str(error), counter="errors")
                self.log.error("{op} failed: {err}", op=operation, err=str(error))
                result["reply"] = (False, f"{operation} failed: {error}")
                return
            final = OpState(session, **report.summary(), activity="done" if report.ok else "failed")
            problems = not report.ok or getattr(report, "rejected", 0) or getattr(report, "failed", 0)
            if problems:
                final.error(report.message(), counter="errors")
            else:
                final.recovered()
            self._publish(operation, report)
            self.log.info("{msg}", msg=report.message())
            result["reply"] = (report.ok, report.message())

        outcome, other = self._execute(operation, operation, dry_run, cancel, progress, job, finished)
        if outcome == "busy":
            message = self._busy_message(operation, other)
            state.update(activity="not started", refused=message)
            return False, message
        if outcome == "stopped":
            state.update(activity="stopping: API calls under way end in the background and are recorded")
            return True, (
                f"{operation} stopped on request; the API calls already under way end in the background "
                "and their outcomes go to the ledger and the log file"
            )
        return result["reply"]

    def _publish(self, operation: str, report: Any) -> None:
        summary = report.summary()
        jobs = summary.get("jobs", {})
        data = {
            "ok": int(report.ok),
            "elapsed_s": float(summary.get("elapsed_s", 0.0)),
            "api_requests": int(summary.get("api_requests", 0)),
        }
        data.update({f"jobs_{k}": int(v) for k, v in jobs.items()})
        if operation == "reverse_sync":
            data["limits_to_change"] = int(summary.get("limits_to_change", 0))
        try:
            self.agent.publish_to_feed("sync_stats", {"block_name": operation, "timestamp": time.time(), "data": data})
        except Exception as exc:  # a feed hiccup must not fail a finished sync
            self.log.warn("could not publish sync_stats: {err}", err=str(exc))

    # -- tasks ------------------------------------------------------------------------------

    @ocs_agent.param("apply", default=False, type=bool)
    def reverse_sync(self, session, params):
        """reverse_sync(apply=False)

        **Task** - Read each project's service units from the API and compute the Slurm
        account limits (``GrpTRESMins=cpu=<SU x 60>``) that differ from Slurm's. Writes the
        ``sacctmgr`` commands to ``reverse_sync_output_<target>.sh`` in the log directory
        for review, and shows them here. Only with ``apply=True`` are they run.

        Parameters:
            apply (bool): run the sacctmgr commands (default False: only write them).

        Notes:
            Projects listed in the profile's ``reverse_sync_exclude`` (myBRC: ``abc``,
            ``vector_*``) are skipped. Example of ``session.data``::

                >>> response.session['data']
                {'operation': 'reverse_sync', 'target': 'mybrc', 'apply': False,
                 'projects': 3, 'limits_to_change': 2, 'limits_unchanged': 1,
                 'commands': ['sacctmgr -i modify account where name=pc_alpha set GrpTRESMins=cpu=60000'],
                 'output_file': '/var/log/ocs/slurmsync-mybrc/reverse_sync_output_mybrc.sh',
                 'log_file': '/var/log/ocs/slurmsync-mybrc/reverse_sync_mybrc_debug.log',
                 'elapsed_s': 0.41, 'api_requests': 7, 'activity': 'done',
                 'timestamp': 1767225600.0}
        """
        return self._run_job(
            session, "reverse_sync", not params["apply"], lambda e: e.reverse_sync(apply=params["apply"])
        )

    @ocs_agent.param("push", default=False, type=bool)
    @ocs_agent.param("start", default=None, type=str, check=_is_time)
    @ocs_agent.param("end", default=None, type=str, check=_is_time)
    @ocs_agent.param("max_jobs", default=0, type=int, check=lambda n: n >= 0)
    def sync_running_jobs(self, session, params):
        """sync_running_jobs(push=False, start=None, end=None, max_jobs=0)

        **Task** - Find the jobs the API still lists as RUNNING (started between
        ``start`` and ``end``), read their current state from ``sacct``, and push the
        finished ones with their final cost. A dry run unless ``push=True``.

        Parameters:
            push (bool): send the updates to the API (default False: only log them).
            start (str): earliest job start, ``YYYY-MM-DD[THH:MM:SS]`` in the cluster's
                time zone or ISO 8601 with offset (default: the allocation period start,
                myBRC 06-01, myLRC 10-01).
            end (str): latest job start (default: now).
            max_jobs (int): push at most this many jobs in this run (default 0: all).

        Notes:
            Jobs still running in Slurm are left alone; jobs pushed no longer list as
            RUNNING, so the next run picks up whatever this one did not push. Example::

                >>> response.session['data']
                {'operation': 'sync_running_jobs', 'target': 'mybrc', 'dry_run': False,
                 'window': {'start': '2026-06-01T07:00:00Z', 'end': '2026-11-22T23:30:00Z'},
                 'complete': True,
                 'jobs': {'found_in_slurm': 4, 'still_running': 1, 'never_started': 0,
                          'unchanged': 0, 'to_push': 3, 'pushed': 3, 'rejected': 0,
                          'failed': 0, 'not_sent': 0},
                 'service_units': '4.50', 'elapsed_s': 0.3, 'api_requests': 4,
                 'sacct_calls': 1, 'listed_running': 4, 'not_in_slurm': [],
                 'log_file': '/var/log/ocs/slurmsync-mybrc/sync_running_jobs_mybrc.log',
                 'activity': 'done', 'timestamp': 1767225600.0}
        """
        times = self._times(params)
        return self._run_job(
            session,
            "sync_running_jobs",
            not params["push"],
            lambda e: e.sync_running_jobs(push=params["push"], max_jobs=params["max_jobs"], **times),
        )

    @ocs_agent.param("push", default=False, type=bool)
    @ocs_agent.param("start", default=None, type=str, check=_is_time)
    @ocs_agent.param("end", default=None, type=str, check=_is_time)
    @ocs_agent.param("max_jobs", default=0, type=int, check=lambda n: n >= 0)
    def full_sync(self, session, params):
        """full_sync(push=False, start=None, end=None, max_jobs=0)

        **Task** - For every project in the API, read its jobs from ``sacct`` since its
        allocation's start date and push the finished ones whose data changed since the
        last push (per the ledger). A dry run unless ``push=True``.

        Parameters:
            push (bool): send the jobs to the API (default False: only log them).
            start (str): read jobs from this time instead of each allocation's start,
                ``YYYY-MM-DD[THH:MM:SS]`` (cluster time zone) or ISO 8601 with offset.
            end (str): read jobs up to this time (default: now).
            max_jobs (int): push at most this many jobs in this run (default 0: all).

        Notes:
            A push run that stops early (``max_jobs``, abort, API outage) says in
            ``resume_at`` which project the next push run starts from. Example::

                >>> response.session['data']
                {'operation': 'full_sync', 'target': 'mybrc', 'dry_run': False,
                 'window': {'start': None, 'end': '2026-11-22T23:30:00Z'},
                 'complete': True,
                 'jobs': {'found_in_slurm': 6, 'still_running': 1, 'never_started': 0,
                          'unchanged': 0, 'to_push': 5, 'pushed': 5, 'rejected': 0,
                          'failed': 0, 'not_sent': 0},
                 'service_units': '12.50', 'elapsed_s': 0.8, 'api_requests': 12,
                 'sacct_calls': 2,
                 'projects': {'total': 2, 'done': 2, 'without_allocation': []},
                 'log_file': '/var/log/ocs/slurmsync-mybrc/full_sync_mybrc.log',
                 'activity': 'done', 'timestamp': 1767225600.0}
        """
        times = self._times(params)
        return self._run_job(
            session,
            "full_sync",
            not params["push"],
            lambda e: e.full_sync(push=params["push"], max_jobs=params["max_jobs"], **times),
        )

    def _abort(self, operation: str) -> tuple[bool, str]:
        self._cancel[operation].set()
        return True, f"asked {operation} to stop after the current batch"

    def _abort_reverse_sync(self, session, params):
        return self._abort("reverse_sync")

    def _abort_sync_running_jobs(self, session, params):
        return self._abort("sync_running_jobs")

    def _abort_full_sync(self, session, params):
        return self._abort("full_sync")

    # -- process ----------------------------------------------------------------------------

    @ocs_agent.param("interval", default=None, type=float, check=lambda s: s >= 1)
    @ocs_agent.param("push", default=None, type=bool)
    def run(self, session, params):
        """run(interval=None, push=None)

        **Process** - Repeat the running-jobs sync every ``interval`` seconds, so jobs
        left RUNNING in the API (plugin or API downtime) are patched without cron.

        Parameters:
            interval (float): seconds between syncs (default: the agent's ``--interval``).
            push (bool): push the updates (default: the agent's ``--run-push``, which is
                off, so the process only logs what it would push).

        Notes:
            A failed cycle sets ``degraded`` and counts in ``cycles_failed``; the process
            keeps going. Example::

                >>> response.session['data']
                {'activity': 'waiting', 'interval': 600.0, 'push': True,
                 'counters': {'cycles': 12, 'cycles_failed': 1},
                 'last_cycle': {'ok': True, 'listed_running': 3, 'pushed': 2,
                                'still_running': 1, 'finished_at': 1767225600.0,
                                'message': 'sync running jobs of mybrc: pushed 2 jobs ...'},
                 'next_run_at': 1767226200.0, 'timestamp': 1767225600.0}
        """
        interval = params["interval"] or self.args.interval
        push = self.args.run_push if params["push"] is None else params["push"]
        state = OpState(session, activity="starting", interval=interval, push=push)
        session.set_status("running")
        self._run_stop.reset()
        while not self._run_stop.stopped:
            state.update(activity="syncing running jobs")
            cycle = self._run_cycle(push, state)
            state.count("cycles")
            state.update(last_cycle=cycle)
            if cycle["ok"]:
                state.recovered()
            else:
                state.error(cycle["message"], counter="cycles_failed")
            state.update(activity="waiting", next_run_at=time.time() + interval)
            self._run_stop.sleep(interval)
        state.update(activity="stopped")
        return True, "stopped repeating the running-jobs sync"

    def _run_cycle(self, push: bool, state: OpState) -> dict:
        def progress(**fields: Any) -> None:
            state.update(activity=f"syncing running jobs: {fields.pop('activity', 'working')}")

        cycle: dict[str, Any] = {}

        def finished(report: Any, error: BaseException | None) -> None:
            if report is None:
                self.log.error("running-jobs sync failed: {err}", err=str(error))
                cycle.update(ok=False, finished_at=time.time(), message=f"sync_running_jobs failed: {error}")
                return
            self._publish("sync_running_jobs", report)
            cycle.update(
                ok=report.ok and not report.rejected,
                listed_running=report.listed_running,
                pushed=report.pushed,
                to_push=report.to_push,
                still_running=report.still_running,
                finished_at=time.time(),
                message=report.message(),
            )

        outcome, other = self._execute(
            "the run process",
            "sync_running_jobs",
            not push,
            self._run_stop.event,
            progress,
            lambda e: e.sync_running_jobs(push=push),
            finished,
        )
        if outcome == "busy":
            # Not a failure: the other sync covers this cycle's work or the next cycle will.
            message = self._busy_message("this cycle", other)
            return {"ok": True, "skipped": True, "finished_at": time.time(), "message": message}
        if outcome == "stopped":
            message = "stopped during the sync; it ends in the background"
            return {"ok": True, "finished_at": time.time(), "message": message}
        return cycle

    def _stop_run(self, session, params):
        self._run_stop.stop()
        return True, "stopping the running-jobs sync loop"


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The SlurmSync agent's arguments (site-config ``arguments:``)."""
    if parser is None:
        parser = argparse.ArgumentParser()
    group = parser.add_argument_group("Agent Options")
    group.add_argument("--target", help=TARGET_HELP)
    add_engine_arguments(group)
    group.add_argument(
        "--sync-log-dir",
        help="directory for the book-keeping logs (<op>_<target>[_debug].log) and the reverse-sync command file "
        "(default: <site log-dir>/slurmsync-<instance-id>)",
    )
    group.add_argument(
        "--interval", type=float, default=3600.0, help="seconds between syncs of the run process (default: %(default)s)"
    )
    group.add_argument(
        "--run-push", action="store_true", help="the run process pushes updates (default: it only logs them)"
    )
    group.add_argument("--auto-run", action="store_true", help="start the run process when the agent starts")
    return parser


def main(args: list[str] | None = None) -> None:
    agent, runner, parsed = start_agent(AGENT_CLASS, make_parser, args)
    sync = SlurmSync(agent, parsed)
    agent.register_task("reverse_sync", sync.reverse_sync, aborter=sync._abort_reverse_sync)
    agent.register_task("sync_running_jobs", sync.sync_running_jobs, aborter=sync._abort_sync_running_jobs)
    agent.register_task("full_sync", sync.full_sync, aborter=sync._abort_full_sync)
    agent.register_process("run", sync.run, sync._stop_run, startup=bool(parsed.auto_run))
    runner.run(agent, auto_reconnect=True)


if __name__ == "__main__":
    main()
