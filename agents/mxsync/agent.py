"""MxSync OCS agent: Australian Synchrotron experiment (EPN) data into project trees.

Op declarations only: the job runner (:mod:`~hpcsync.agents.core.jobs`) runs them one at a
time per instance, stops them within a second and records each run;
:class:`~.engine.MxSyncEngine` does the work.
"""

from __future__ import annotations

import argparse

from ocs import ocs_agent

from hpcsync.agents.core.jobs import Result
from hpcsync.agents.core.skeleton import AgentShell, Feed, process, run_agent, task

from .options import MxSyncOptions


class MxSync(AgentShell):
    """Repatriate finished experiments' data from the Synchrotron, verified, never twice.

    Args:
        agent (OCSAgent): the OCS agent object.
        args (argparse.Namespace): parsed arguments (see :func:`make_parser`).
    """

    agent_class = "MxSync"
    options_class = MxSyncOptions
    feeds = (Feed("transfer_rates", agg_params={"frame_length": 60}, buffer_time=1),)

    @process(changes_state=True, startup=lambda args: args.auto_run)
    @ocs_agent.param("execute", default=None, type=bool)
    def run(self, session, params):
        """run(execute=None)

        **Process** - The service loop (ASSyncy's ``mxsync``): every
        ``sync-frequency-hours``, find the finished visits on the portal, then transfer and
        verify every pending EPN, at most ``max-tasks`` at a time. Stops within a second;
        an interrupted transfer resumes next cycle.

        Parameters:
            execute (bool): move data (default: the agent's ``--execute``, which is off:
                every cycle is an rsync dry run).

        Notes:
            A portal or host that cannot be reached sets ``degraded``; the loop carries
            on. Example of ``session.data``::

                >>> response.session['data']
                {'activity': 'transferring 1 EPNs', 'interval': 86400.0, 'dry_run': False,
                 'progress': {'running': {'12282a': {'project': 'ny79', 'bytes': 104857600,
                              'bytes_total': 524288000, 'files': 120, 'rate_Bps': 52428800,
                              'eta_s': 8}},
                              'counters': {'cycles': 3, 'epns_done': 7, 'epns_failed': 0,
                                           'bytes_sent': 9663676416}},
                 'last_cycle': {'ok': True, 'transferred': 2, 'failed': 0,
                                'ledger': {'pending': 1, 'running': 1, 'done': 7, 'failed': 0},
                                'message': '4 finished EPNs on the portal; 2 transferred ...'},
                 'counters': {'cycles': 3}, 'timestamp': 1767225600.0}
        """
        execute = self.options.run_execute() if params["execute"] is None else params["execute"]
        return self.jobs.repeat(
            session,
            lambda job: job.engine.sync(execute=execute),
            operation="run",
            interval=self.options.interval(),
            dry_run=not execute,
            one_engine=True,
        )

    @task(changes_state=True)
    @ocs_agent.param("execute", default=False, type=bool)
    def sync_now(self, session, params):
        """sync_now(execute=False)

        **Task** - One cycle now: discovery, then every pending EPN. A dry run unless
        ``execute=True``. Refused while a cycle of ``run`` is under way.

        Parameters:
            execute (bool): move data (default False: rsync dry runs, nothing written).

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'operation': 'sync_now', 'dry_run': True, 'execute': False,
                 'finished_epns': 3, 'newly_found': 0, 'transferred': 0, 'failed': 0,
                 'epns': [{'epn': '12282a', 'project': 'ny79', 'outcome': 'would-transfer',
                           'files': 120, 'bytes': 524288000, 'files_sent': 120,
                           'bytes_sent': 524288000}],
                 'unmapped': ['14444a'], 'refused': [], 'portal_error': None,
                 'activity': 'done', 'timestamp': 1767225600.0}
        """
        return self.jobs.run(
            session,
            lambda job: job.engine.sync(execute=params["execute"]),
            operation="sync_now",
            dry_run=not params["execute"],
        )

    @task(changes_state=False)
    def status(self, session, params):
        """status()

        **Task** - The ledger's counts per state, the transfers running in this process
        and the configuration in use (no secrets).

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'scope': 'mx:/scratch', 'source': 'help@sftp.synchrotron.org.au:/data/mx',
                 'destination_root': '/scratch',
                 'ledger': {'pending': 1, 'running': 0, 'done': 7, 'failed': 1},
                 'running_here': {}, 'projects': ['ny79'], 'activity': 'done'}
        """
        return self.jobs.run(
            session, lambda job: Result(True, "MxSync status", job.engine.status()), operation="status"
        )

    @task(changes_state=False)
    @ocs_agent.param("limit", default=100, type=int, check=lambda n: 0 < n <= 10000)
    @ocs_agent.param("state", default="", type=str, check=lambda s: s in ("", "pending", "running", "done", "failed"))
    def list_epns(self, session, params):
        """list_epns(state='', limit=100)

        **Task** - The ledger's EPNs (all, or those in ``state``), with project, files,
        bytes, attempts, last error and when each was verified.

        Parameters:
            state (str): pending, running, done or failed (default: all).
            limit (int): at most this many (default 100).

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'epns': [{'epn': '12282a', 'project': 'ny79', 'state': 'done', 'files': 120,
                           'bytes': 524288000, 'attempts': 1, 'last_error': None,
                           'verified_at': 1767225600.0, 'finished_at': 1767225600.0}],
                 'activity': 'done'}
        """
        return self.jobs.run(
            session,
            lambda job: Result(
                True, "EPNs in the ledger", {"epns": job.engine.ledger.rows(params["state"] or None, params["limit"])}
            ),
            operation="list_epns",
        )

    @task(changes_state=True)
    @ocs_agent.param("epn", default="", type=str)
    def retry(self, session, params):
        """retry(epn='')

        **Task** - Make failed EPNs pending again with no attempts counted (all of them, or
        the one named; a done EPN named here is transferred and verified again).

        Parameters:
            epn (str): one EPN (default: every failed one).

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'operation': 'retry', 'requeued': 2, 'activity': 'done'}
        """

        def job(ctx):
            n = ctx.engine.ledger.retry(params["epn"] or None)
            return Result(True, f"{n} EPNs pending again", {"requeued": n})

        return self.jobs.run(session, job, operation="retry")


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The MxSync agent's arguments (site-config ``arguments:``)."""
    if parser is None:
        parser = argparse.ArgumentParser()
    MxSyncOptions.add_arguments(parser.add_argument_group("Agent Options"))
    return parser


def main(args: list[str] | None = None) -> None:
    run_agent(MxSync, make_parser, args)


if __name__ == "__main__":
    main()
