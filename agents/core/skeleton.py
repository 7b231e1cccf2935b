"""The agent skeleton: what every hpcsync ``agent.py`` is built from.

An agent package has the same four parts (see ``docs/developers.rst``):

- ``options.py``: an :class:`AgentOptions` subclass — the agent's arguments, the settings
  they resolve to, and how a run's engine is built; used by ``agent.py`` and ``cli.py``;
- ``engine.py``: plain Python, no OCS import;
- ``agent.py``: an :class:`AgentShell` subclass holding **op declarations only** — each op
  is a method decorated with :func:`task` or :func:`process` (and ``@ocs_agent.param``),
  whose docstring documents its ``session.data`` and whose body hands an engine job to
  ``self.jobs`` (a :class:`~.jobs.JobRunner`); then ``make_parser`` and ``main``;
- ``cli.py``: ``hpcsync <agent> ...`` subcommands on the same options and engine.

:func:`run_agent` joins the hub and registers every declared op with its aborter or
stopper and its access level: ops that only read are open (:data:`~.access.READ`), ops
that can change state need a credential (:data:`~.access.CHANGE`).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hpcsync.db import Database, default_url, open_database

from .access import CHANGE, READ
from .jobs import JobContext, JobRunner, JobSpec, run_recorded


@dataclass(frozen=True)
class Feed:
    """An OCS feed the agent publishes (record feeds go to InfluxDB and the aggregator)."""

    name: str
    record: bool = True
    agg_params: Mapping[str, Any] = field(default_factory=dict)
    buffer_time: float = 0


@dataclass(frozen=True)
class OpDeclaration:
    kind: str  # "task" or "process"
    changes_state: bool
    exclusive: bool
    startup: bool | Callable[[argparse.Namespace], bool] = False

    @property
    def min_privs(self) -> int:
        return CHANGE if self.changes_state else READ


def task(*, changes_state: bool, exclusive: bool | None = None) -> Callable:
    """Declare a method as an OCS task.

    :param changes_state: the task can change state (even if only when a parameter says
        so, e.g. ``push=True``): it needs the :data:`~.access.CHANGE` credential and its
        runs are recorded in ``agent_runs``.
    :param exclusive: one run at a time with the instance's other exclusive ops (they
        share a ledger, a cursor or log files). Default: ``changes_state``.
    """
    return _declare("task", changes_state, changes_state if exclusive is None else exclusive, False)


def process(
    *,
    changes_state: bool,
    exclusive: bool | None = None,
    startup: bool | Callable[[argparse.Namespace], bool] = False,
) -> Callable:
    """Declare a method as an OCS process (a loop with a stopper, see :meth:`JobRunner.repeat`).

    :param startup: start it when the agent starts; a callable gets the parsed arguments.
    """
    return _declare("process", changes_state, changes_state if exclusive is None else exclusive, startup)


def _declare(kind: str, changes_state: bool, exclusive: bool, startup) -> Callable:
    def mark(method: Callable) -> Callable:
        # Sets an attribute instead of wrapping, so ocs's @param decorators may sit on
        # either side of this one and still find the same function.
        method._hpcsync_op = OpDeclaration(kind, changes_state, exclusive, startup)
        return method

    return mark


def declared_ops(cls: type) -> dict[str, OpDeclaration]:
    """``{op name: declaration}`` of an :class:`AgentShell` subclass, in definition order."""
    ops: dict[str, OpDeclaration] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            declaration = getattr(value, "_hpcsync_op", None)
            if declaration is not None:
                ops[name] = declaration
    return ops


class AgentOptions:
    """An agent's arguments → settings → engine; shared by ``agent.py`` and ``cli.py``.

    Subclasses implement :meth:`add_arguments` (the site-config ``arguments:``),
    :meth:`from_args` and :meth:`build_engine`. Reading secrets and files happens in
    ``build_engine``, when a run starts, so a bad file fails that run with a clear
    message and is picked up once fixed, while the agent stays up.
    """

    # Every subclass has these two (annotations only, so dataclass subclasses may order
    # their fields freely):
    #: the instance's database URL or SQLite path (None: ``$HPCSYNC_DB_URL`` or the default)
    db: str | None
    #: who the run ledger says ran the jobs (the OCS instance id; ``cli`` from the CLI)
    instance_id: str

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        raise NotImplementedError

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AgentOptions:
        raise NotImplementedError

    def build_engine(self, ctx: JobContext, database: Callable[[], Database]) -> Any:
        """The engine one run works on (closed after the run if it has ``close()``).

        ``database()`` opens (once) and returns the instance's database; an engine that
        must survive a database outage calls it late, on first use.
        """
        raise NotImplementedError

    def open_database(self) -> Database:
        return open_database(self.db or default_url())

    def preflight(self, args: argparse.Namespace, flight: Any, where: str) -> None:
        """What ``hpcsync check`` (and ``up``) verify before this instance starts: add each
        problem, one line naming the option, with ``flight.add(where, problem)``. The checks
        are in :mod:`~hpcsync.agents.core.preflight`. Default: the database."""
        from . import preflight

        preflight.database(self.db, "--db", flight, where)

    def warnings(self) -> list[str]:
        """Settings an operator should hear about when the agent starts (e.g. checks off)."""
        return []


class AgentShell:
    """Base of every agent class: options, the lazily opened database, the job runner, feeds.

    Subclasses set :attr:`agent_class`, :attr:`options_class` and :attr:`feeds`, and
    declare their ops with :func:`task` / :func:`process`.
    """

    agent_class: ClassVar[str]
    options_class: ClassVar[type[AgentOptions]]
    #: the agent's OCS feeds
    feeds: ClassVar[tuple[Feed, ...]] = ()

    def __init__(self, agent: Any, args: argparse.Namespace):
        self.agent = agent
        self.log = agent.log
        self.args = args
        self.instance_id = getattr(args, "instance_id", None) or self.agent_class.lower()
        self.options = self.options_class.from_args(args)
        self._db: Database | None = None
        self._db_lock = threading.Lock()
        self.jobs = JobRunner(
            agent_class=self.agent_class,
            instance_id=self.instance_id,
            specs={
                name: JobSpec(name, changes_state=d.changes_state, exclusive=d.exclusive)
                for name, d in declared_ops(type(self)).items()
            },
            open_database=self.database,
            build_engine=lambda ctx: self.options.build_engine(ctx, self.database),
            publish=agent.publish_to_feed,
            log_error=lambda text: self.log.error("{text}", text=text),
        )
        for feed in self.feeds:
            agent.register_feed(feed.name, record=feed.record, agg_params=dict(feed.agg_params),
                                buffer_time=feed.buffer_time)  # fmt: skip
        for text in self.options.warnings():
            self.log.warn("{text}", text=text)

    def database(self) -> Database:
        """The instance's database, opened (and migrated) on first use."""
        with self._db_lock:
            if self._db is None:
                self._db = self.options.open_database()
            return self._db


def run_agent(
    shell_class: type[AgentShell],
    make_parser: Callable[[argparse.ArgumentParser | None], argparse.ArgumentParser],
    args: Sequence[str] | None = None,
) -> None:
    """``main()`` of every agent: join the hub, register the declared ops, run."""
    from .ocs_glue import start_agent

    agent, runner, parsed = start_agent(shell_class.agent_class, make_parser, args)
    shell = shell_class(agent, parsed)
    register_ops(agent, shell, parsed)
    runner.run(agent, auto_reconnect=True)


def _stop_sessions_as_the_agent(agent: Any) -> None:
    """When the hub is gone past ``--crossbar-timeout``, ocs stops every running op before
    the agent exits, but without a credential: under access control its own stop is refused
    and the process outlives its reactor, never to register again. Stop them with the
    agent's own key (the one ocs uses for start-up ops)."""
    from ocs.ocs_twisted import dsleep
    from twisted.internet.defer import inlineCallbacks

    @inlineCallbacks
    def stop_all():
        for name, session in list(agent.sessions.items()):
            if session is None or session.status in ("stopping", "done"):
                continue
            if name in agent.tasks:
                yield agent.abort(name, password=agent)
            elif name in agent.processes:
                yield agent.stop(name, password=agent)
        yield dsleep(3)  # as ocs: a moment for processes to stop cleanly

    agent._stop_all_running_sessions = stop_all


def register_ops(agent: Any, shell: AgentShell, parsed: argparse.Namespace) -> None:
    """Register each declared op of ``shell`` on the OCS ``agent``."""
    _stop_sessions_as_the_agent(agent)
    for name, declaration in declared_ops(type(shell)).items():
        method = getattr(shell, name)
        stop = shell.jobs.stopper(name)
        if declaration.kind == "task":
            agent.register_task(name, method, aborter=stop, min_privs=declaration.min_privs)
        else:
            startup = declaration.startup(parsed) if callable(declaration.startup) else declaration.startup
            agent.register_process(name, method, stop, startup=bool(startup), min_privs=declaration.min_privs)


def run_cli_job(
    options: AgentOptions,
    job: Callable[[JobContext], Any],
    *,
    agent_class: str,
    operation: str,
    dry_run: bool,
    changes_state: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """Run one engine job from the command line, as the agent's op would: same options,
    same engine, same ``agent_runs`` record (for jobs that change state)."""
    ctx = JobContext(operation, threading.Event(), on_progress=progress)
    opened: list[Database] = []

    def database() -> Database:
        if not opened:
            opened.append(options.open_database())
        return opened[0]

    ctx.engine = options.build_engine(ctx, database)
    try:
        if not changes_state:
            return job(ctx)
        return run_recorded(
            database(),
            lambda: job(ctx),
            agent_class=agent_class,
            instance_id=options.instance_id,
            operation=operation,
            dry_run=dry_run,
        )
    finally:
        ctx.cancel.set()
        close = getattr(ctx.engine, "close", None)
        if callable(close):
            close()
