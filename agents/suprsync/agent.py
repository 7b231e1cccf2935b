"""The SupRsync OCS agent: a thin shell over :mod:`hpcsync.agents.suprsync.engine`.

One ``run`` process (started at startup) copies an archive's registered files to the
destination, verifies them by md5, deletes local copies after the delay and finalizes
timecode directories. Operator tasks (socs#506) retry files that hit the attempt limit,
list failed files, mark files ignored and summarise the ledger per archive.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from ocs import ocs_agent

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.opstate import OpState, StopFlag
from hpcsync.agents.core.ssh import HOST_KEY_POLICIES, SshConfigError
from hpcsync.db.runs import record_run
from hpcsync.db.suprsync import ALL_STATES, SupRsyncFilesManager

from .backends import make_backend
from .copier import DEFAULT_FILES_PER_BATCH, DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_COPY_ATTEMPTS, CopySettings
from .engine import COUNTERS, EngineSettings, SupRsyncEngine

#: transfer_stats is published at most this often (and at the end of a run).
TRANSFER_STATS_INTERVAL = 60.0
#: Most files a listing task puts in session.data.
MAX_LISTED = 50


class SupRsync:
    """Copy an archive's registered files to a remote (or local) base directory, verify
    them by md5, delete local copies after a delay, and finalize timecode directories.

    Parameters:
        agent (OCSAgent): the OCS agent object.
        args (Namespace): parsed arguments (see :func:`make_parser`).
    """

    def __init__(self, agent: Any, args: argparse.Namespace):
        self.agent = agent
        self.log = agent.log
        self.args = args
        self.instance_id = args.instance_id
        self.archive = args.archive_name
        try:
            self.backend = make_backend(
                args.remote_basedir,
                ssh_host=args.ssh_host,
                ssh_key=args.ssh_key,
                ssh_port=args.ssh_port,
                known_hosts=args.ssh_known_hosts,
                host_key_checking=args.ssh_host_key_checking,
                connect_timeout=args.ssh_connect_timeout,
                compress=args.compression,
                bwlimit=args.bwlimit,
                chmod=args.chmod or None,
            )
            self.settings = EngineSettings(
                archive=self.archive,
                file_root=args.suprsync_file_root,
                instance_id=self.instance_id,
                delete_after=args.delete_local_after,
                copy=CopySettings(
                    self.archive,
                    max_copy_attempts=args.max_copy_attempts,
                    files_per_batch=args.files_per_batch,
                    max_batch_bytes=int(args.max_batch_mb * 2**20),
                    copy_timeout=args.copy_timeout,
                    cmd_timeout=args.cmd_timeout,
                ),
            )
        except (ValueError, SshConfigError) as exc:
            raise ConfigError(f"SupRsync {self.instance_id}: {exc}") from None
        if args.ssh_host and args.ssh_host_key_checking == "off":
            self.log.warn("ssh host key checking is off: only for test rigs")
        self._manager: SupRsyncFilesManager | None = None
        self._manager_lock = threading.Lock()
        self._stop = StopFlag()

        self.agent.register_feed("transfer_stats", record=True, agg_params={"exclude_aggregator": True})
        self.agent.register_feed("archive_stats", record=True)

    def _files_manager(self) -> SupRsyncFilesManager:
        """The ledger, opened (and migrated) on first use; shared by the process and tasks."""
        with self._manager_lock:
            if self._manager is None:
                a = self.args
                self._manager = SupRsyncFilesManager(
                    a.db_path, echo=a.db_echo, pool_size=a.db_pool_size, max_overflow=a.db_pool_max_overflow
                )
            return self._manager

    def _recorded(self, operation: str, dry_run: bool):
        """An ``agent_runs`` row for a task that changes the ledger (intent, then outcome)."""
        return record_run(
            self._files_manager().db,
            agent_class="SupRsync",
            instance_id=self.instance_id,
            operation=operation,
            dry_run=dry_run,
        )

    # -- the process ------------------------------------------------------------------------

    def run(self, session, params=None):
        """run()

        **Process** - Copy, verify, delete and finalize, in a loop, until stopped. Started
        when the agent starts. A full batch is followed at once by the next one; otherwise
        the loop sleeps ``--sleep-time`` seconds (a stop request wakes it at once).

        Notes:
            ``activity`` is ``copying``, ``deleting``, ``finalizing``, ``idle`` or
            ``sleeping``. ``last_copy`` describes the last batch that had files (at most 20
            listed as ``[local_path, md5_ok]``). ``archive_stats`` is keyed by archive.
            ``degraded`` is set while the destination is unreachable or a step fails, and
            cleared by the next clean iteration::

                >>> response.session['data']
                {'activity': 'sleeping',
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
        self._stop.reset()
        session.set_status("running")
        state = OpState(
            session,
            activity="starting",
            archive_name=self.archive,
            destination=self.backend.describe(),
            last_copy={},
            archive_stats={},
            counters=dict.fromkeys(COUNTERS, 0),
            last_error=None,
        )
        engine = SupRsyncEngine(
            self._files_manager,
            self.backend,
            self.settings,
            cancel=self._stop.event,
            on_activity=lambda activity: state.update(activity=activity),
        )
        next_transfer_stats = 0.0
        while not self._stop.stopped:
            try:
                report = engine.iterate()
            except Exception as exc:  # iterate() handles errors itself; this is the last net
                self.log.error("SupRsync loop failed: {e}", e=repr(exc))
                state.error(f"loop failed: {exc!r}", counter="errors_other")
                self._stop.sleep(self.args.sleep_time)
                continue
            update: dict[str, Any] = {"counters": engine.counters}
            if any(b.size for b in report.batches) or not state.data.get("last_copy"):
                update["last_copy"] = report.last_copy()  # an idle loop keeps the last batch shown
            if report.archive_stats is not None:
                update["archive_stats"] = {self.archive: report.archive_stats}
                self._publish("archive_stats", self.archive, report.archive_stats)
            if not report.ok:
                update["last_error"] = engine.last_error
            state.update(**update)
            state.set_degraded(not report.ok)
            if time.time() >= next_transfer_stats:
                self._publish_transfer_stats(engine, report)
                next_transfer_stats = time.time() + TRANSFER_STATS_INTERVAL
            if report.more_work and report.ok:
                continue
            state.update(activity="sleeping")
            self._stop.sleep(self.args.sleep_time)
        self._publish_transfer_stats(engine, None)
        state.update(activity="stopped")
        return True, "Stopped the run process"

    def _stop_run(self, session, params=None):
        """Stop the run process within a second (a running rsync is killed; its files stay
        pending and are sent again)."""
        self._stop.stop()
        return True, "Stopping the run process"

    def _publish(self, feed: str, block: str, data: dict[str, Any]) -> None:
        fields = {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) and v is not None}
        self.agent.publish_to_feed(feed, {"block_name": block, "timestamp": time.time(), "data": fields})

    def _publish_transfer_stats(self, engine: SupRsyncEngine, report) -> None:
        data: dict[str, Any] = dict(engine.counters)
        rates = [b.rate for b in (report.batches if report else []) if b.verified]
        data["files_per_s"] = float(max(rates)) if rates else 0.0
        self._publish("transfer_stats", "transfer_stats", data)

    # -- operator tasks (socs#506) ---------------------------------------------------------------

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
        summary = self._files_manager().status_summary(params["archive"])
        session.data = {"archives": summary, "timestamp": time.time()}
        total = sum(a["total"] for a in summary.values())
        failed = sum(a["failed"] + a["missing"] for a in summary.values())
        return True, f"{total} files in {len(summary)} archives; {failed} failed or missing"

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
        rows = self._files_manager().list_files(
            self.archive, ("failed", "missing"), with_errors=params["include_retrying"], limit=params["limit"]
        )
        files = [
            {
                "id": r.id,
                "local_path": r.local_path,
                "remote_path": r.remote_path,
                "status": r.status,
                "attempts": r.failed_copy_attempts,
                "last_error": (r.last_error or "")[:300],
                "last_attempt_at": r.last_attempt_at,
            }
            for r in rows
        ]
        session.data = {"archive_name": self.archive, "files": files, "count": len(files), "timestamp": time.time()}
        return True, f"{len(files)} failed files listed"

    @ocs_agent.param("ids", default=None, type=list)
    @ocs_agent.param("dry_run", default=False, type=bool)
    def retry_failed(self, session, params):
        """retry_failed(ids=None, dry_run=False)

        **Task** - Give files of this archive that hit the attempt limit (``failed``) or
        whose local file went missing (``missing``) fresh attempts: they become pending
        with their attempt count reset.

        Parameters:
            ids (list of int, optional): only these file ids (see ``list_failed``);
                default: every failed or missing file of the archive.
            dry_run (bool): only count them.

        Notes:
            >>> response.session['data']
            {'archive_name': 'timestreams', 'files': 3, 'dry_run': False,
             'timestamp': 1661284493.54}
        """
        ids = _int_ids(params["ids"])
        with self._recorded("retry_failed", params["dry_run"]) as run:
            n = self._files_manager().retry_files(self.archive, ids, dry_run=params["dry_run"])
            run.summary = {"archive": self.archive, "files": n, "ids": ids}
        session.data = {
            "archive_name": self.archive,
            "files": n,
            "dry_run": params["dry_run"],
            "timestamp": time.time(),
        }
        verb = "would be retried" if params["dry_run"] else "will be retried"
        return True, f"{n} files of {self.archive} {verb}"

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
        statuses = ("failed", "missing") if params["status"] == "failed+missing" else (params["status"],)
        ids = _int_ids(params["ids"])
        with self._recorded("ignore_files", params["dry_run"]) as run:
            n = self._files_manager().ignore_files(self.archive, ids, statuses, dry_run=params["dry_run"])
            run.summary = {"archive": self.archive, "files": n, "ids": ids, "statuses": list(statuses)}
        session.data = {
            "archive_name": self.archive,
            "files": n,
            "status": params["status"],
            "dry_run": params["dry_run"],
            "timestamp": time.time(),
        }
        if params["dry_run"]:
            return True, f"{n} {params['status']} files would be ignored (dry run; pass dry_run=False to apply)"
        return True, f"{n} {params['status']} files of {self.archive} are now ignored"


def _int_ids(ids) -> list[int] | None:
    if not ids:
        return None
    try:
        return [int(i) for i in ids]
    except (TypeError, ValueError):
        raise ValueError(f"ids must be a list of integers, got {ids!r}") from None


def make_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """socs's SupRsync arguments (same names and meanings), plus ssh port and host keys."""
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group("Agent Options")
    pgroup.add_argument(
        "--archive-name",
        required=True,
        help="Name of the managed archive: which registered files this instance copies.",
    )
    pgroup.add_argument(
        "--remote-basedir",
        required=True,
        help="Base directory on the destination; a file goes to <remote-basedir>/<remote_path>.",
    )
    pgroup.add_argument(
        "--db-path",
        required=True,
        help="The ledger: a SQLite file path (as socs) or a database URL "
        "(postgresql+psycopg://..., mysql+pymysql://...).",
    )
    pgroup.add_argument(
        "--ssh-host",
        default=None,
        help="Destination host as [user@]host. Without it files are copied to a local directory.",
    )
    pgroup.add_argument("--ssh-key", default=None, help="Private key file for the ssh host.")
    pgroup.add_argument("--ssh-port", type=int, default=None, help="ssh port (default: ssh's own, 22).")
    pgroup.add_argument(
        "--ssh-known-hosts", default=None, help="known_hosts file holding the host key (default: ~/.ssh/known_hosts)."
    )
    pgroup.add_argument(
        "--ssh-host-key-checking",
        choices=HOST_KEY_POLICIES,
        default="yes",
        help="yes: the host key must be known (default); accept-new: trust on first use; "
        "off: no check (test rigs only).",
    )
    pgroup.add_argument(
        "--ssh-connect-timeout",
        type=int,
        default=10,
        help="Seconds ssh waits for the host to answer (default: %(default)s).",
    )
    pgroup.add_argument(
        "--delete-local-after",
        type=float,
        default=None,
        help="Seconds after a file's copy was verified (remote md5 matched) when its local "
        "copy is deleted. Default: never delete.",
    )
    pgroup.add_argument(
        "--max-copy-attempts",
        type=int,
        default=DEFAULT_MAX_COPY_ATTEMPTS,
        help="Failed attempts after which a file is no longer tried (status failed; see the "
        "retry_failed task). Default: %(default)s.",
    )
    pgroup.add_argument(
        "--copy-timeout",
        type=float,
        default=None,
        help="Seconds one rsync batch may take. Default: 300 s plus 1 s per MB of the batch.",
    )
    pgroup.add_argument(
        "--cmd-timeout",
        type=float,
        default=None,
        help="Seconds a remote command (md5sum of a batch) may take, plus 1 s per 100 MB it checksums. Default: 60.",
    )
    pgroup.add_argument(
        "--files-per-batch",
        type=int,
        default=DEFAULT_FILES_PER_BATCH,
        help="Files per rsync/md5sum batch; full batches follow each other without sleeping. Default: %(default)s.",
    )
    pgroup.add_argument(
        "--max-batch-mb",
        type=float,
        default=DEFAULT_MAX_BATCH_BYTES / 2**20,
        help="A batch also ends once its files add up to this many MiB (one bigger file still goes alone). "
        "Default: %(default)g.",
    )
    pgroup.add_argument(
        "--sleep-time",
        type=float,
        default=60,
        help="Seconds to sleep when there is nothing left to copy. Default: %(default)s.",
    )
    pgroup.add_argument(
        "--compression", action="store_true", default=False, help="Compress data in transit (rsync --compress)."
    )
    pgroup.add_argument("--bwlimit", default=None, help="Bandwidth limit passed to rsync --bwlimit (e.g. 10M).")
    pgroup.add_argument(
        "--chmod",
        default="g+rwX,o+rX",
        help="rsync --chmod applied on transfer (default: %(default)s); an empty string keeps the source permissions.",
    )
    pgroup.add_argument(
        "--suprsync-file-root",
        required=True,
        help="Local directory where the agent writes timecode finalization files.",
    )
    pgroup.add_argument("--db-echo", action="store_true", help="Log every SQL statement.")
    pgroup.add_argument("--db-pool-size", type=int, default=5, help="Database connections kept open (not SQLite).")
    pgroup.add_argument("--db-pool-max-overflow", type=int, default=10,
                        help="Extra database connections allowed (not SQLite).")  # fmt: skip
    return parser


def main(args=None):
    from hpcsync.agents.core.ocs_glue import start_agent

    agent, runner, parsed = start_agent("SupRsync", make_parser, args)
    suprsync = SupRsync(agent, parsed)
    agent.register_process("run", suprsync.run, suprsync._stop_run, startup=True)
    agent.register_task("status", suprsync.status)
    agent.register_task("list_failed", suprsync.list_failed)
    agent.register_task("retry_failed", suprsync.retry_failed)
    agent.register_task("ignore_files", suprsync.ignore_files)
    runner.run(agent, auto_reconnect=True)


if __name__ == "__main__":
    main()
