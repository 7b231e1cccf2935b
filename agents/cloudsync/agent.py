"""CloudSync OCS agent: ``alces sync``'s targets between local directories and S3.

Op declarations only; :class:`~.engine.CloudSyncEngine` does the work, the core job runner
runs one op at a time per instance, stops it within a second and records its runs.
"""

from __future__ import annotations

import argparse

from ocs import ocs_agent

from hpcsync.agents.core.jobs import Result
from hpcsync.agents.core.skeleton import AgentShell, Feed, process, run_agent, task

from .options import CloudSyncOptions


class CloudSync(AgentShell):
    """Keep named targets (a local directory each) in sync with ``<remote>/sync/<user>/<name>``.

    Args:
        agent (OCSAgent): the OCS agent object.
        args (argparse.Namespace): parsed arguments (see :func:`make_parser`).
    """

    agent_class = "CloudSync"
    options_class = CloudSyncOptions
    feeds = (Feed("cloudsync", agg_params={"frame_length": 60}, buffer_time=1),)

    @task(changes_state=True)
    @ocs_agent.param("max_delete", default=-1, type=int)
    @ocs_agent.param("dry_run", default=False, type=bool)
    @ocs_agent.param("target", default="default", type=str)
    def push(self, session, params):
        """push(target='default', dry_run=False, max_delete=-1)

        **Task** - Send the target's changed files (by content hash) to the remote, record
        owner, group, mode and mtime of every file and directory in the manifest, and
        delete remote files removed locally, unless more than ``max_delete`` would go.

        Parameters:
            target (str): the target's name (default ``default``: the home directory).
            dry_run (bool): only say what would be sent and deleted.
            max_delete (int): refuse (changing nothing) if more remote files would be
                deleted; -1 (default): the agent's ``--max-delete``, if any.

        Notes:
            While sending, ``session.data['progress']`` shows files and bytes done, the
            rate (bytes/s) and the current file. Example of the final ``session.data``::

                >>> response.session['data']
                {'operation': 'push', 'target': 'default', 'dry_run': False, 'refused': None,
                 'files_total': 2000, 'files_sent': 20, 'bytes_sent': 81920,
                 'files_unchanged': 1980, 'files_deleted': 10, 'attrs_updated': 0,
                 'hashed': 20, 'problems': 0, 'first_problems': {}, 'elapsed': 1.8,
                 'activity': 'done', 'timestamp': 1767225600.0}
        """
        max_delete = None if params["max_delete"] < 0 else params["max_delete"]
        return self.jobs.run(
            session,
            lambda job: job.engine.push(params["target"], dry_run=params["dry_run"], max_delete=max_delete),
            operation="push",
            dry_run=params["dry_run"],
            fields={"target": params["target"]},
        )

    @task(changes_state=True)
    @ocs_agent.param("delete", default=False, type=bool)
    @ocs_agent.param("dry_run", default=False, type=bool)
    @ocs_agent.param("target", default="default", type=str)
    def pull(self, session, params):
        """pull(target='default', dry_run=False, delete=False)

        **Task** - Fetch the remote's changed files into the target's directory, each
        written whole (temporary name, hash checked, renamed into place), with modes and
        mtimes (and owners, as root) from the manifest; recreate empty directories.

        Parameters:
            target (str): the target's name (default ``default``).
            dry_run (bool): only say what would be fetched.
            delete (bool): also delete local files the remote does not have (default:
                keep them).

        Notes:
            Remote paths that would land outside the directory are refused and listed in
            ``first_problems``. Example of ``session.data``::

                >>> response.session['data']
                {'operation': 'pull', 'target': 'default', 'dry_run': False,
                 'files_total': 2000, 'files_sent': 3, 'bytes_sent': 4096,
                 'files_unchanged': 1997, 'files_deleted': 0, 'problems': 1,
                 'first_problems': {'../x': "refused: path '../x' contains '..' ..."},
                 'activity': 'done', 'timestamp': 1767225600.0}
        """
        return self.jobs.run(
            session,
            lambda job: job.engine.pull(params["target"], dry_run=params["dry_run"], delete=params["delete"]),
            operation="pull",
            dry_run=params["dry_run"],
            fields={"target": params["target"]},
        )

    @task(changes_state=False, exclusive=False)
    def list(self, session, params):
        """list()

        **Task** - The targets, as ``alces sync list`` shows them.

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'targets': {'default': {'local_dir': '/home/alice',
                             'remote': 's3://bucket/sync/alice/default'}},
                 'lines': ['default: /home/alice <-> s3://bucket/sync/alice/default']}
        """

        def listing(job):
            pairs = job.engine.list_targets()
            lines = [f"{t.name}: {t.local_dir} <-> {remote}" for t, remote in pairs]
            targets = {t.name: {"local_dir": t.local_dir, "remote": remote} for t, remote in pairs}
            return Result(True, "; ".join(lines), {"targets": targets, "lines": lines})

        return self.jobs.run(session, listing, operation="list")

    @task(changes_state=True)
    @ocs_agent.param("confirm", default=False, type=bool)
    @ocs_agent.param("target", default="default", type=str)
    def purge(self, session, params):
        """purge(target='default', confirm=False)

        **Task** - Delete everything the target has on the remote (its files, manifest,
        and alces's ``.yml``/``.dat``). Without ``confirm=True`` it only lists what it
        would delete.

        Parameters:
            target (str): the target's name.
            confirm (bool): really delete (default False: a dry run).

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'operation': 'purge', 'target': 'data', 'dry_run': True, 'files_total': 12,
                 'files_sent': 12, 'bytes_sent': 52000, 'activity': 'done',
                 'timestamp': 1767225600.0}
        """
        return self.jobs.run(
            session,
            lambda job: job.engine.purge(params["target"], confirm=params["confirm"]),
            operation="purge",
            dry_run=not params["confirm"],
            fields={"target": params["target"]},
        )

    @task(changes_state=False, exclusive=False)
    def status(self, session, params):
        """status()

        **Task** - Each target's last push and pull as this instance recorded them (no
        network).

        Notes:
            Example of ``session.data``::

                >>> response.session['data']
                {'targets': {'default': {'local_dir': '/home/alice', 'remote': '...',
                             'last_push_at': 1767225600.0, 'last_push_ok': True,
                             'last_push_files': 20, 'last_push_bytes': 81920}}}
        """
        return self.jobs.run(
            session,
            lambda job: Result(True, "status of every target", {"targets": job.engine.status()}),
            operation="status",
        )

    @process(changes_state=True, startup=lambda args: args.auto_run)
    @ocs_agent.param("interval", default=None, type=float, check=lambda s: s >= 1)
    def run(self, session, params):
        """run(interval=None)

        **Process** - Push the agent's ``--run-target`` targets (default: ``default``)
        every ``interval`` seconds.

        Parameters:
            interval (float): seconds between pushes (default: the agent's ``--interval``).

        Notes:
            A failed cycle sets ``degraded`` and counts in ``cycles_failed``. Example::

                >>> response.session['data']
                {'activity': 'waiting', 'interval': 3600.0,
                 'counters': {'cycles': 3},
                 'last_cycle': {'ok': True, 'files_sent': 2, 'files_unchanged': 1998,
                                'finished_at': 1767225600.0, 'message': 'push of default: ...'},
                 'next_run_at': 1767229200.0, 'timestamp': 1767225600.0}
        """
        targets = self.options.targets or ["default"]
        return self.jobs.repeat(
            session,
            lambda job: job.engine.push_many(targets),
            operation="run",
            interval=params["interval"] or self.options.interval,
            fields={"targets": targets},
        )


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The CloudSync agent's arguments (site-config ``arguments:``)."""
    if parser is None:
        parser = argparse.ArgumentParser()
    CloudSyncOptions.add_arguments(parser.add_argument_group("Agent Options"))
    return parser


def main(args: list[str] | None = None) -> None:
    run_agent(CloudSync, make_parser, args)


if __name__ == "__main__":
    main()
