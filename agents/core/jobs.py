"""The job runner every agent's ops use: threads, one run at a time, stop, run records.

An op in ``agent.py`` declares what it does and hands the runner an *engine job*: a
callable that gets a :class:`JobContext` (a fresh cancel event, a progress callback, the
engine built for this run) and returns a report. The runner does the rest, the same way
for every agent:

- **one run at a time per instance** for exclusive ops (those that share a ledger, a
  cursor or log files): a second start is refused and the refusal names the run under way;
- **a fresh cancel event per run**: an abort or stop sets the event of *that* run only, so
  a refused start can never clear a running job's stop;
- **stop and abort answered within a second**: the op waits for its job in short steps; a
  job still finishing a network call when asked to stop ends in the background (holding
  the instance's lock, so nothing overlaps it) and records its own outcome;
- **the run recorded** in ``agent_runs`` (intent before, outcome after) for ops that
  change state, dry runs included;
- **progress into session.data** through :class:`~.opstate.OpState`, ``degraded`` and
  ``last_error`` on failure, **feeds** published from the report;
- **a crash** (a bug in the job) is logged with its traceback; the op fails with the
  error's text and the agent stays up.

Reports are plain objects with ``ok``, ``message()`` and ``summary()`` (see
:class:`JobReport`); engines return their own, simple ops return :class:`Result`. Nothing
here imports OCS: the CLI runs the same jobs through :func:`run_recorded`.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from hpcsync.db.runs import record_run

from .errors import USER_ERRORS, Refused
from .opstate import OpState

log = logging.getLogger("hpcsync.jobs")

#: How long an op waits for its job to notice a stop before it returns anyway (s).
STOP_GRACE = 0.5
#: How often the op checks whether its job has finished or a stop was asked for (s).
POLL = 0.1


@runtime_checkable
class JobReport(Protocol):
    """What an engine job returns.

    Required: ``ok`` (bool), ``message()`` (the sentence an operator reads) and
    ``summary()`` (a small JSON-safe dict: the op's ``session.data``, the run's summary).

    Optional, looked up with ``getattr``:

    - ``degraded`` (bool, default ``not ok``): mark the op degraded although it finished;
    - ``stopped`` (bool): the job ended early on request (run status ``stopped``);
    - ``more_work`` (bool): a process cycle that should be followed at once by the next;
    - ``cycle_summary()``: what a process shows as ``last_cycle`` (default ``summary()``);
    - ``session_fields()``: fields a process cycle sets at the top of ``session.data``
      instead of ``last_cycle``;
    - ``feed_records()``: ``(feed, block_name, data)`` triples to publish.
    """

    ok: bool

    def message(self) -> str: ...

    def summary(self) -> dict[str, Any]: ...


@dataclass
class Result:
    """A report for ops that need no engine report of their own (listings, ledger edits)."""

    ok: bool
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        return self.text

    def summary(self) -> dict[str, Any]:
        return dict(self.data)


class JobRefused(Exception):
    """A job that cannot start (another run holds the instance); the message says why."""


@dataclass
class JobContext:
    """What an engine job gets: its run's cancel event, progress, and the engine."""

    operation: str
    cancel: threading.Event
    state: OpState | None = None
    engine: Any = None
    on_progress: Callable[[dict[str, Any]], None] | None = None

    def progress(self, **fields: Any) -> None:
        """Report progress: ``activity`` (a short phrase) and any counters."""
        if self.on_progress is not None:
            self.on_progress(dict(fields))
        if self.state is not None:
            activity = fields.pop("activity", None) or "working"
            self.state.update(activity=activity, progress=fields) if fields else self.state.update(activity=activity)

    @property
    def stopped(self) -> bool:
        return self.cancel.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True at once when the run is asked to stop."""
        return self.cancel.wait(max(0.0, seconds))


def run_recorded(
    db: Any,
    job: Callable[[], Any],
    *,
    agent_class: str,
    instance_id: str,
    operation: str,
    dry_run: bool,
) -> Any:
    """Run ``job`` inside an ``agent_runs`` row: intent committed before, outcome after.

    A report that is not ``ok`` marks the run ``failed``, one that ``stopped`` early marks
    it ``stopped``; an exception marks it ``failed`` and is re-raised.
    """
    with record_run(db, agent_class=agent_class, instance_id=instance_id, operation=operation, dry_run=dry_run) as run:
        report = job()
        run.summary = report.summary()
        if not report.ok:
            run.status, run.message = "failed", report.message()
        elif getattr(report, "stopped", False):
            run.status, run.message = "stopped", report.message()
        return report


@dataclass(frozen=True)
class JobSpec:
    """How the runner treats one op (from its declaration in ``agent.py``)."""

    name: str
    #: the op can change state: its runs are recorded in ``agent_runs``
    changes_state: bool = False
    #: the op shares the instance's ledger/cursor/log files: one such run at a time
    exclusive: bool = False


class _Run:
    """One run of one op: its cancel event and its thread's completion."""

    def __init__(self, operation: str):
        self.operation = operation
        self.cancel = threading.Event()
        self.done = threading.Event()


class JobRunner:
    """Runs an agent instance's engine jobs (see the module docstring).

    :param agent_class: e.g. ``"SlurmSync"`` (for ``agent_runs``).
    :param instance_id: the OCS instance id.
    :param specs: ``{op name: JobSpec}``.
    :param open_database: returns the instance's :class:`~hpcsync.db.Database` (opened
        lazily: a database down at start-up fails a run, not the agent).
    :param build_engine: ``build_engine(ctx)`` returns the engine a job runs on, or None.
    :param publish: ``publish(feed, message)`` (the agent's ``publish_to_feed``).
    :param log_error: where crashes and failures are logged (the agent's txaio log).
    """

    def __init__(
        self,
        *,
        agent_class: str,
        instance_id: str,
        specs: Mapping[str, JobSpec],
        open_database: Callable[[], Any],
        build_engine: Callable[[JobContext], Any] | None = None,
        publish: Callable[[str, dict], None] | None = None,
        log_error: Callable[[str], None] | None = None,
    ):
        self.agent_class = agent_class
        self.instance_id = instance_id
        self.specs = dict(specs)
        self.open_database = open_database
        self.build_engine = build_engine or (lambda ctx: None)
        self.publish = publish
        self.log_error = log_error or (lambda text: log.error("%s", text))
        self._lock = threading.Lock()  # guards _runs and _exclusive_owner
        self._runs: dict[str, _Run] = {}
        self._exclusive_owner: _Run | None = None

    # -- stop / abort ------------------------------------------------------------------------

    def stop(self, operation: str) -> tuple[bool, str]:
        """Ask the current run of ``operation`` to stop (its own cancel event only)."""
        with self._lock:
            run = self._runs.get(operation)
        if run is None or run.done.is_set():
            return True, f"{operation} is not running"
        run.cancel.set()
        return True, f"asked {operation} to stop"

    def stopper(self, operation: str) -> Callable[..., tuple[bool, str]]:
        """An OCS aborter/stopper for ``operation``."""

        def stop_op(session: Any = None, params: Any = None) -> tuple[bool, str]:
            return self.stop(operation)

        stop_op.__name__ = f"_stop_{operation}"
        return stop_op

    # -- the run slot ------------------------------------------------------------------------

    def _claim(self, spec: JobSpec, run: _Run) -> None:
        with self._lock:
            if spec.exclusive:
                owner = self._exclusive_owner
                if owner is not None and not owner.done.is_set():
                    raise JobRefused(
                        f"{spec.name} not started: {owner.operation} is still running on this instance "
                        "(its runs share this instance's ledger and files, so they run one at a time); "
                        "start it again when that one has finished"
                    )
                self._exclusive_owner = run
            self._runs[spec.name] = run

    def _release(self, run: _Run) -> None:
        with self._lock:
            if self._exclusive_owner is run:
                self._exclusive_owner = None
        run.done.set()

    # -- one job -----------------------------------------------------------------------------

    def _execute(
        self,
        spec: JobSpec,
        run: _Run,
        job: Callable[[JobContext], Any],
        state: OpState | None,
        dry_run: bool,
        engine: Any = None,
        record: bool = True,
    ) -> Callable[[], tuple[Any, BaseException | str | None]]:
        """Start ``job`` in its own thread; return a function that yields its outcome.

        The job runs on ``engine`` if given (a process's one engine), else on one built
        for this run and closed after it.
        """
        outcome: dict[str, Any] = {"report": None, "error": None}

        def work() -> None:
            ctx = JobContext(spec.name, run.cancel, state, engine)
            try:
                try:
                    if engine is None:
                        ctx.engine = self.build_engine(ctx)
                    if spec.changes_state and record:
                        outcome["report"] = run_recorded(
                            self.open_database(),
                            lambda: job(ctx),
                            agent_class=self.agent_class,
                            instance_id=self.instance_id,
                            operation=spec.name,
                            dry_run=dry_run,
                        )
                    else:
                        outcome["report"] = job(ctx)
                finally:
                    close = getattr(ctx.engine, "close", None)
                    if engine is None and callable(close):
                        close()
            except USER_ERRORS as exc:
                outcome["error"] = exc
            except Exception as exc:  # a bug: keep its traceback in the agent log
                self.log_error(f"{spec.name} crashed: {traceback.format_exc()}")
                outcome["error"] = f"{type(exc).__name__}: {exc} (a bug: the traceback is in the agent's log)"
            finally:
                self._release(run)

        threading.Thread(target=work, name=f"{self.instance_id}-{spec.name}", daemon=True).start()
        return lambda: (outcome["report"], outcome["error"])

    def _wait(self, run: _Run) -> bool:
        """Wait for the run; False if it was asked to stop and has not finished soon after."""
        while not run.done.wait(POLL):
            if run.cancel.is_set() and not run.done.wait(STOP_GRACE):
                return False
        return True

    # -- tasks -------------------------------------------------------------------------------

    def run(
        self,
        session: Any,
        job: Callable[[JobContext], Any],
        *,
        operation: str | None = None,
        dry_run: bool = False,
        fields: Mapping[str, Any] | None = None,
    ) -> tuple[bool, str]:
        """Run one engine job as a task: ``session.data`` shows its progress, then its summary."""
        spec = self._spec(session, operation)
        start_fields = {"operation": spec.name, "dry_run": dry_run, **(fields or {})}
        state = OpState(session, **start_fields, activity="starting")
        run = _Run(spec.name)
        try:
            self._claim(spec, run)
        except JobRefused as exc:
            state.update(activity="not started", refused=str(exc))
            return False, str(exc)
        result = self._execute(spec, run, job, state, dry_run)
        if not self._wait(run):
            state.update(activity="stopping: calls under way end in the background and are recorded")
            return True, (
                f"{spec.name} stopped on request; the calls already under way end in the background "
                "and their outcomes are recorded"
            )
        report, error = result()
        if isinstance(error, Refused):
            message = f"{spec.name} refused: {error}"
            state.update(activity="refused", refused=message)
            return False, message
        if report is None:
            message = f"{spec.name} failed: {error}"
            state.update(activity="failed")
            state.error(message, counter="errors")
            self.log_error(message)
            return False, message
        final = OpState(session, **{**start_fields, **report.summary(), "activity": "done" if report.ok else "failed"})
        self._finish(final, report)
        return bool(report.ok), report.message()

    def _finish(self, state: OpState, report: Any) -> None:
        if getattr(report, "degraded", not report.ok):
            state.error(report.message(), counter="errors")
        else:
            state.recovered()
        self.publish_records(getattr(report, "feed_records", lambda: ())())
        (log.info if report.ok else log.warning)("%s", report.message())

    # -- processes ---------------------------------------------------------------------------

    def repeat(
        self,
        session: Any,
        cycle: Callable[[JobContext], Any],
        *,
        interval: float,
        operation: str | None = None,
        dry_run: bool = False,
        fields: Mapping[str, Any] | None = None,
        one_engine: bool = False,
        record_cycles: bool = True,
    ) -> tuple[bool, str]:
        """Run ``cycle`` every ``interval`` seconds until stopped: a process op.

        Each cycle is one run (exclusive and recorded as the op's spec says); a cycle
        refused because another run holds the instance is skipped, not failed. With
        ``one_engine`` the engine is built once for the whole process (it keeps state
        across cycles, e.g. counters); otherwise each cycle gets a fresh one (a fixed
        config file is picked up by the next cycle). ``record_cycles=False`` keeps a loop
        that runs every few seconds out of ``agent_runs`` (its counters say what it did).
        """
        spec = self._spec(session, operation)
        process_run = _Run(spec.name)
        with self._lock:
            self._runs[spec.name] = process_run
        state = OpState(session, activity="starting", interval=interval, dry_run=dry_run, **(fields or {}))
        if hasattr(session, "set_status"):
            session.set_status("running")
        engine: Any = None
        if one_engine:
            try:
                engine = self.build_engine(JobContext(spec.name, process_run.cancel, state))
            except USER_ERRORS as exc:
                state.update(activity="failed")
                state.error(f"{spec.name} could not start: {exc}")
                return False, f"{spec.name} could not start: {exc}"
        try:
            while not process_run.cancel.is_set():
                report = self._cycle(spec, process_run, cycle, state, dry_run, engine, record_cycles)
                if report is not None and getattr(report, "more_work", False) and report.ok:
                    continue
                state.update(activity="waiting", next_run_at=time.time() + interval)
                process_run.cancel.wait(interval)
        finally:
            close = getattr(engine, "close", None)
            if callable(close):
                close()
            process_run.done.set()
        state.update(activity="stopped", next_run_at=None)
        return True, f"{spec.name} stopped"

    def _cycle(self, spec, process_run: _Run, cycle, state: OpState, dry_run: bool, engine: Any, record: bool) -> Any:
        run = _Run(spec.name)
        run.cancel = process_run.cancel  # a stop of the process stops its cycle
        try:
            self._claim(spec, run)
        except JobRefused as exc:
            # Not a failure: the other run covers this cycle's work, or the next cycle will.
            state.update(last_cycle={"ok": True, "skipped": True, "finished_at": time.time(), "message": str(exc)})
            return None
        with self._lock:
            self._runs[spec.name] = process_run  # stop() keeps addressing the process
        result = self._execute(spec, run, cycle, state, dry_run, engine, record)
        state.count("cycles")
        if not self._wait(run):
            state.update(last_cycle={"ok": True, "finished_at": time.time(),
                                     "message": "stopped during the cycle; it ends in the background"})  # fmt: skip
            return None
        report, error = result()
        if report is None:
            message = f"{spec.name} cycle failed: {error}"
            self.log_error(message)
            state.update(last_cycle={"ok": False, "finished_at": time.time(), "message": message})
            state.error(message, counter="cycles_failed")
            return None
        top = getattr(report, "session_fields", None)
        if callable(top):
            state.update(**top())
        else:
            summary = getattr(report, "cycle_summary", report.summary)()
            state.update(last_cycle={**summary, "ok": bool(report.ok), "finished_at": time.time(),
                                     "message": report.message()})  # fmt: skip
        if getattr(report, "degraded", not report.ok):
            state.error(report.message(), counter="cycles_failed")
        else:
            state.update(last_success_at=time.time())  # how long ago it last worked ('hpcsync status')
            state.recovered()
        self.publish_records(getattr(report, "feed_records", lambda: ())())
        return report

    # -- feeds -------------------------------------------------------------------------------

    def publish_records(self, records: Iterable[tuple[str, str, Mapping[str, Any]]]) -> None:
        """Publish ``(feed, block_name, data)`` records: numbers, strings and booleans only."""
        if self.publish is None:
            return
        for feed, block, data in records:
            fields = {k: v for k, v in data.items() if isinstance(v, (bool, int, float, str))}
            if not fields:
                continue
            try:
                self.publish(feed, {"block_name": block, "timestamp": time.time(), "data": fields})
            except Exception as exc:  # a feed hiccup must not fail a finished job
                self.log_error(f"could not publish {feed}: {exc}")

    # -- helpers -----------------------------------------------------------------------------

    def _spec(self, session: Any, operation: str | None) -> JobSpec:
        name = operation or getattr(session, "op_name", None)
        if name not in self.specs:
            raise KeyError(f"{name!r} is not a declared op of {self.agent_class}")
        return self.specs[name]
