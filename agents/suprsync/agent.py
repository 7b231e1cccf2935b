"""The SupRsync OCS agent: op declarations over :class:`~.engine.SupRsyncEngine`.

One ``run`` process (started at startup) copies an archive's registered files to the
destination, verifies them by md5, deletes local copies after the delay and finalizes
timecode directories. Operator tasks (socs#506) retry files that hit the attempt limit,
list failed files, mark files ignored and summarise the ledger per archive.
"""

from __future__ import annotations

import argparse

from ocs import ocs_agent

from hpcsync.agents.core.jobs import Result
from hpcsync.agents.core.skeleton import AgentShell, Feed, process, run_agent, task

from .ledger import ALL_STATES
from .options import SupRsyncOptions, parse_ids

#: Most files a listing task puts in session.data.
MAX_LISTED = 50


class SupRsync(AgentShell):
    """Copy an archive's registered files to a remote (or local) base directory, verify
    them by md5, delete local copies after a delay, and finalize timecode directories.

    Parameters:
        agent (OCSAgent): the OCS agent object.
        args (Namespace): parsed arguments (see :func:`make_parser`).
    """

    agent_class = "SupRsync"
    options_class = SupRsyncOptions
    feeds = (Feed("transfer_stats", agg_params={"exclude_aggregator": True}), Feed("archive_stats"))

    # -- the process ------------------------------------------------------------------------

    @process(changes_state=True, startup=True)
    def run(self, session, params=None):
        """run()

        **Process** - Copy, verify, delete and finalize, in a loop, until stopped. Started
        when the agent starts. A full batch is followed at once by the next one; otherwise
        the loop sleeps ``--sleep-time`` seconds (a stop request wakes it at once).

        Notes:
            ``activity`` is ``copying``, ``deleting``, ``finalizing``, ``idle`` or
            ``waiting`` (until ``next_run_at``). ``last_copy`` describes the last batch that had files (at most 20
            listed as ``[local_path, md5_ok]``). ``archive_stats`` is keyed by archive.
            ``degraded`` is set while the destination is unreachable or a step fails, and
            cleared by the next clean iteration::

                >>> response.session['data']
                {'activity': 'waiting', 'next_run_at': 1661284553.54, 'interval': 60.0,
                 'archive_name': 'timestreams',
                 'destination': 'user@host:/path/to/base/dir/timestreams',
                 'timestamp': 1661284493.54,
                 'last_copy': {'start_time': 1661284493.53, 'stop_time': 1661284493.54,
                               'files': [['/data/16612/obs/a.g3', True]],
                               'num_files': 1, 'verified': 1, 'failed': 0, 'bytes': 4096},
                 'archive_stats': {'timestreams': {'finalized_until': 1661284492.5,
                                                   'num_files': 3, 'uncopied_files': 0,
                                                   'failed_files': 0,
                                                   'last_file_added': '/data/16612/obs/a.g3',
                                                   'last_file_copied': '/data/16612/obs/a.g3'}},
                 'counters': {'iterations': 1, 'copies': 1, 'bytes_copied': 4096,
                              'failed_copies': 0, 'deletions': 0, 'requeued_changed': 0,
                              'finalized_dirs': 0, 'errors_timeout': 0, 'errors_nonzero': 0,
                              'errors_unreachable': 0, 'errors_db': 0, 'errors_local': 0,
                              'errors_other': 0},
                 'last_error': None}
        """
        return self.jobs.repeat(
            session,
            lambda job: job.engine.iterate(),
            operation="run",
            interval=self.options.sleep_time,
            fields={"archive_name": self.options.archive, "destination": self.options.backend.describe()},
            one_engine=True,
            record_cycles=False,  # a loop every few seconds: its counters say what it did
        )

    # -- operator tasks (socs#506) ---------------------------------------------------------------

    @task(changes_state=False)
    @ocs_agent.param("archive", default=None, type=str)
    def status(self, session, params):
        """status(archive=None)

        **Task** - Summarise the ledger: how many files are in each state, per archive,
        the oldest pending file and the timecode dirs still open.

        Parameters:
            archive (str, optional): only this archive (default: every archive in the
                ledger).

        Notes:
            Counts every row of the archive once (an index-only scan)::

                >>> response.session['data']
                {'archives': {'timestreams': {'pending': 2, 'copied': 10, 'removed': 988,
                                              'failed': 1, 'ignored': 0, 'missing': 0,
                                              'total': 1001, 'oldest_pending': 1661284400.0,
                                              'timecode_dirs_open': 1,
                                              'timecode_dirs_finalized': 3}},
                 'timestamp': 1661284493.54}
        """

        def summarise(job):
            summary = job.engine.manager.status_summary(params["archive"])
            total = sum(a["total"] for a in summary.values())
            failed = sum(a["failed"] + a["missing"] for a in summary.values())
            return Result(True, f"{total} files in {len(summary)} archives; {failed} failed or missing",
                          {"archives": summary})  # fmt: skip

        return self.jobs.run(session, summarise, operation="status")

    @task(changes_state=False)
    @ocs_agent.param("limit", default=20, type=int, check=lambda n: 1 <= n <= MAX_LISTED)
    @ocs_agent.param("include_retrying", default=True, type=bool)
    def list_failed(self, session, params):
        """list_failed(limit=20, include_retrying=True)

        **Task** - List this archive's files that failed: ``failed`` (attempt limit
        reached), ``missing`` (local file vanished), and with ``include_retrying`` the
        pending files whose last attempt failed (md5 mismatch, rsync error).

        Parameters:
            limit (int): at most this many files (1-50).
            include_retrying (bool): also list pending files with failed attempts.

        Notes:
            >>> response.session['data']
            {'archive_name': 'timestreams',
             'files': [{'id': 17, 'local_path': '/data/16612/obs/b.g3',
                        'remote_path': '16612/obs/b.g3', 'status': 'failed',
                        'attempts': 5, 'last_error': 'remote md5 ... differs from local md5 ...',
                        'last_attempt_at': 1661284400.0}],
             'count': 1,
             'timestamp': 1661284493.54}
        """

        def listing(job):
            rows = job.engine.manager.list_files(
                self.options.archive, ("failed", "missing"), with_errors=params["include_retrying"],
                limit=params["limit"],
            )  # fmt: skip
            files = [
                {"id": r.id, "local_path": r.local_path, "remote_path": r.remote_path, "status": r.status,
                 "attempts": r.failed_copy_attempts, "last_error": (r.last_error or "")[:300],
                 "last_attempt_at": r.last_attempt_at}
                for r in rows
            ]  # fmt: skip
            data = {"archive_name": self.options.archive, "files": files, "count": len(files)}
            return Result(True, f"{len(files)} failed files listed", data)

        return self.jobs.run(session, listing, operation="list_failed")

    @task(changes_state=True, exclusive=False)  # one short ledger update: runs beside the loop
    @ocs_agent.param("ids", default=None, type=list)
    @ocs_agent.param("dry_run", default=True, type=bool)
    def retry_failed(self, session, params):
        """retry_failed(ids=None, dry_run=True)

        **Task** - Give files of this archive that hit the attempt limit (``failed``) or
        whose local file went missing (``missing``) fresh attempts: they become pending
        with their attempt count reset. A dry run by default, like every op that changes
        state: started with no parameters it only counts the files it would retry.

        Parameters:
            ids (list of int, optional): only these file ids (see ``list_failed``);
                default: every failed or missing file of the archive.
            dry_run (bool): only count them (default True); pass False to retry them.

        Notes:
            >>> response.session['data']
            {'archive_name': 'timestreams', 'files': 3, 'dry_run': True,
             'timestamp': 1661284493.54}
        """

        def retry(job):
            archive, dry_run = self.options.archive, params["dry_run"]
            n = job.engine.manager.retry_files(archive, parse_ids(params["ids"]), dry_run=dry_run)
            verb = "would be retried" if dry_run else "will be retried"
            return Result(True, f"{n} files of {archive} {verb}", {"archive_name": archive, "files": n})

        return self.jobs.run(session, retry, operation="retry_failed", dry_run=params["dry_run"])

    @task(changes_state=True, exclusive=False)  # one short ledger update: runs beside the loop
    @ocs_agent.param("ids", default=None, type=list)
    @ocs_agent.param("status", default="failed", choices=[*ALL_STATES, "failed+missing"])
    @ocs_agent.param("dry_run", default=True, type=bool)
    def ignore_files(self, session, params):
        """ignore_files(ids=None, status='failed', dry_run=True)

        **Task** - Mark files of this archive ``ignored``: they are never copied, and no
        longer keep their timecode dir from being finalized. A dry run by default: started
        with no parameters it only counts the failed files it would ignore.

        Parameters:
            ids (list of int, optional): only these file ids (default: every file in
                ``status``).
            status (str): which files: ``failed`` (default), ``missing``, ``pending``,
                ``failed+missing`` ...
            dry_run (bool): only count them (default True); pass False to apply.

        Notes:
            >>> response.session['data']
            {'archive_name': 'timestreams', 'files': 1, 'status': 'failed',
             'dry_run': True, 'timestamp': 1661284493.54}
        """

        def ignore(job):
            archive, dry_run, status = self.options.archive, params["dry_run"], params["status"]
            statuses = ("failed", "missing") if status == "failed+missing" else (status,)
            n = job.engine.manager.ignore_files(archive, parse_ids(params["ids"]), statuses, dry_run=dry_run)
            data = {"archive_name": archive, "files": n, "status": status}
            if dry_run:
                return Result(True, f"{n} {status} files would be ignored (dry run; pass dry_run=False to apply)", data)
            return Result(True, f"{n} {status} files of {archive} are now ignored", data)

        return self.jobs.run(session, ignore, operation="ignore_files", dry_run=params["dry_run"])


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """socs's SupRsync arguments (same names and meanings), plus ssh port and host keys."""
    if parser is None:
        parser = argparse.ArgumentParser()
    SupRsyncOptions.add_arguments(parser.add_argument_group("Agent Options"))
    return parser


def main(args=None):
    run_agent(SupRsync, make_parser, args)


if __name__ == "__main__":
    main()
