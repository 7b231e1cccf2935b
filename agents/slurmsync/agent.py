"""SlurmSync OCS agent: Slurm accounting <-> a ColdFront/myBRC/myLRC allocation API.

One instance per target. Op declarations only: the job runner (:mod:`~hpcsync.agents.core.jobs`)
runs them one at a time per instance, stops them within a second and records each run;
:class:`~.engine.SlurmSyncEngine` does the work.
"""

from __future__ import annotations

import argparse

from ocs import ocs_agent

from hpcsync.agents.core.skeleton import AgentShell, Feed, process, run_agent, task

from .options import SlurmSyncOptions, is_time


def sync_task(op):
    """The declaration both job syncs share: a task that changes state, and its parameters."""
    for declare in (
        ocs_agent.param("retry_rejected", default=False, type=bool),
        ocs_agent.param("max_jobs", default=0, type=int, check=lambda n: n >= 0),
        ocs_agent.param("end", default=None, type=str, check=is_time),
        ocs_agent.param("start", default=None, type=str, check=is_time),
        ocs_agent.param("push", default=False, type=bool),
        task(changes_state=True),
    ):
        op = declare(op)
    return op


class SlurmSync(AgentShell):
    """Reconcile Slurm accounting with a ColdFront/myBRC/myLRC API.

    Args:
        agent (OCSAgent): the OCS agent object.
        args (argparse.Namespace): parsed arguments (see :func:`make_parser`).
    """

    agent_class = "SlurmSync"
    options_class = SlurmSyncOptions
    feeds = (
        Feed("sync_stats", agg_params={"frame_length": 60}, buffer_time=1),
        Feed("audit", agg_params={"frame_length": 60}, buffer_time=1),
    )

    # -- tasks ------------------------------------------------------------------------------

    @task(changes_state=True)
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
        return self.jobs.run(
            session,
            lambda job: job.engine.reverse_sync(apply=params["apply"]),
            operation="reverse_sync",
            dry_run=not params["apply"],
            fields={"target": self.options.target},
        )

    @sync_task
    def sync_running_jobs(self, session, params):
        """sync_running_jobs(push=False, start=None, end=None, max_jobs=0, retry_rejected=False)

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
            retry_rejected (bool): send again the jobs the API refused before with the
                same data (default False: they are counted in ``rejected_earlier``).

        Notes:
            Jobs still running in Slurm are left alone; jobs pushed no longer list as
            RUNNING, so the next run picks up whatever this one did not push. Jobs the
            server will store without charging (its date rule: the allocation's start and,
            for ``fc_``/``ic_``/``pc_``, end date) count in ``stored_uncharged``, not
            ``pushed``; ``problems`` says when a RUNNING estimate stays charged. Example::

                >>> response.session['data']
                {'operation': 'sync_running_jobs', 'target': 'mybrc', 'dry_run': False,
                 'window': {'start': '2026-06-01T07:00:00Z', 'end': '2026-11-22T23:30:00Z'},
                 'complete': True,
                 'jobs': {'found_in_slurm': 4, 'still_running': 1, 'never_started': 0,
                          'unchanged': 0, 'to_push': 3, 'pushed': 3, 'stored_uncharged': 0,
                          'rejected': 0, 'rejected_earlier': 0, 'failed': 0, 'not_sent': 0},
                 'service_units': '4.50', 'elapsed_s': 0.3, 'api_requests': 5,
                 'sacct_calls': 1, 'listed_running': 4, 'not_in_slurm': [],
                 'log_file': '/var/log/ocs/slurmsync-mybrc/sync_running_jobs_mybrc.log',
                 'activity': 'done', 'timestamp': 1767225600.0}
        """
        window = self.options.window(params)
        return self.jobs.run(
            session,
            lambda job: job.engine.sync_running_jobs(
                push=params["push"], max_jobs=params["max_jobs"], retry_rejected=params["retry_rejected"], **window
            ),
            operation="sync_running_jobs",
            dry_run=not params["push"],
            fields={"target": self.options.target},
        )

    @sync_task
    def full_sync(self, session, params):
        """full_sync(push=False, start=None, end=None, max_jobs=0, retry_rejected=False)

        **Task** - For every project in the API, read its jobs from ``sacct`` since its
        allocation's start date and push the finished ones whose data changed since the
        last push (per the ledger). A dry run unless ``push=True``.

        Parameters:
            push (bool): send the jobs to the API (default False: only log them).
            start (str): read jobs from this time instead of each allocation's start,
                ``YYYY-MM-DD[THH:MM:SS]`` (cluster time zone) or ISO 8601 with offset.
            end (str): read jobs up to this time (default: now).
            max_jobs (int): push at most this many jobs in this run (default 0: all).
            retry_rejected (bool): send again the jobs the API refused before with the
                same data (default False: they are counted in ``rejected_earlier``).

        Notes:
            A push run that stops early (``max_jobs``, abort, API outage) says in
            ``resume_at`` which project the next push run over the same ``start``/``end``
            starts from; a run over another window starts at the first project and says
            so in ``resume_ignored``. Jobs the server will store without charging count
            in ``stored_uncharged`` (``uncharged_reasons`` says why). Example::

                >>> response.session['data']
                {'operation': 'full_sync', 'target': 'mybrc', 'dry_run': False,
                 'window': {'start': None, 'end': '2026-11-22T23:30:00Z'},
                 'complete': True,
                 'jobs': {'found_in_slurm': 6, 'still_running': 1, 'never_started': 0,
                          'unchanged': 0, 'to_push': 5, 'pushed': 5, 'stored_uncharged': 0,
                          'rejected': 0, 'rejected_earlier': 0, 'failed': 0, 'not_sent': 0},
                 'service_units': '12.50', 'elapsed_s': 0.8, 'api_requests': 12,
                 'sacct_calls': 2,
                 'projects': {'total': 2, 'done': 2, 'without_allocation': []},
                 'log_file': '/var/log/ocs/slurmsync-mybrc/full_sync_mybrc.log',
                 'activity': 'done', 'timestamp': 1767225600.0}
        """
        window = self.options.window(params)
        return self.jobs.run(
            session,
            lambda job: job.engine.full_sync(
                push=params["push"], max_jobs=params["max_jobs"], retry_rejected=params["retry_rejected"], **window
            ),
            operation="full_sync",
            dry_run=not params["push"],
            fields={"target": self.options.target},
        )

    @task(changes_state=False)
    @ocs_agent.param("start", default=None, type=str, check=is_time)
    @ocs_agent.param("end", default=None, type=str, check=is_time)
    def audit(self, session, params):
        """audit(start=None, end=None)

        **Task** - Read-only: for every project with a compute allocation, compare the
        usage the API holds (the project's and each member's) with the jobs it holds, and
        those jobs with Slurm's. Lists jobs missing on either side, amounts that differ
        from Slurm's cost, jobs the server's date rule kept from being charged, and jobs
        still RUNNING in the API that Slurm has finished. Changes nothing, needs no
        credential; the summary is also published on the ``audit`` feed.

        Parameters:
            start (str): compare jobs that started from this time (default: each
                allocation's start date), ``YYYY-MM-DD[THH:MM:SS]`` or ISO 8601.
            end (str): ... up to this time (default: now).

        Notes:
            ``drift`` counts each kind of finding; ``usage_drift_su`` is the projects'
            usage minus what their jobs can have charged (positive: charged too much).
            Example of ``session.data``::

                >>> response.session['data']
                {'operation': 'audit', 'target': 'mybrc', 'clean': False,
                 'window': {'start': None, 'end': '2026-11-22T23:30:00Z'}, 'projects': 2,
                 'jobs': {'in_api': 5, 'in_slurm': 6},
                 'drift': {'stale_running': 1, 'missing_in_api': 1, 'missing_in_slurm': 0,
                           'amount_differs': 0, 'uncharged': 0, 'usage_projects': 1,
                           'usage_users': 1},
                 'usage_drift_su': '100.00',
                 'usage_differs': [{'project': 'fc_beta', 'user': None, 'usage': '3700.00',
                                    'jobs_total': '3700.00', 'chargeable': '3600.00',
                                    'drift': '100.00'}, ...],
                 'findings': [{'kind': 'stale_running', 'project': 'fc_beta',
                               'jobslurmid': '5', 'detail': 'RUNNING in the API ...'}, ...],
                 'elapsed_s': 0.2, 'api_requests': 14, 'sacct_calls': 2,
                 'log_file': '/var/log/ocs/slurmsync-mybrc/audit_mybrc.log',
                 'activity': 'done', 'timestamp': 1767225600.0}
        """
        window = self.options.window(params)
        return self.jobs.run(
            session,
            lambda job: job.engine.audit(**window),
            operation="audit",
            fields={"target": self.options.target},
        )

    # -- process ----------------------------------------------------------------------------

    @process(changes_state=True, startup=lambda args: args.auto_run)
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
        push = self.options.run_push if params["push"] is None else params["push"]
        return self.jobs.repeat(
            session,
            lambda job: job.engine.sync_running_jobs(push=push),
            operation="run",
            interval=params["interval"] or self.options.interval,
            dry_run=not push,
            fields={"push": push},
        )


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The SlurmSync agent's arguments (site-config ``arguments:``)."""
    if parser is None:
        parser = argparse.ArgumentParser()
    SlurmSyncOptions.add_arguments(parser.add_argument_group("Agent Options"))
    return parser


def main(args: list[str] | None = None) -> None:
    run_agent(SlurmSync, make_parser, args)


if __name__ == "__main__":
    main()
