"""SupRsync's arguments, the settings they resolve to, and its engine; for the agent and the CLI.

The arguments keep socs's names and meanings (a site config written for socs's SupRsync
works as is), plus the ssh port, host keys, timeouts and batch size. Everything that can
be checked without the network is checked here, when the agent starts: a bad ``--bwlimit``
or ``--chmod`` fails start-up with one line naming it, not the first copy an hour later.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from hpcsync.agents.core import preflight
from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.jobs import JobContext
from hpcsync.agents.core.skeleton import AgentOptions
from hpcsync.agents.core.ssh import HOST_KEY_POLICIES, SshConfigError
from hpcsync.agents.core.transfer import Backend, make_backend
from hpcsync.db import Database, open_database

from .copier import DEFAULT_FILES_PER_BATCH, DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_COPY_ATTEMPTS, CopySettings
from .engine import EngineSettings, SupRsyncEngine
from .ledger import SupRsyncFilesManager


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """socs's SupRsync arguments (same names and meanings), plus ssh port and host keys."""
    parser.add_argument(
        "--archive-name",
        required=True,
        help="Name of the managed archive: which registered files this instance copies.",
    )
    parser.add_argument(
        "--remote-basedir",
        required=True,
        help="Base directory on the destination; a file goes to <remote-basedir>/<remote_path>.",
    )
    parser.add_argument(
        "--db-path",
        required=True,
        help="The ledger: a SQLite file path (as socs) or a database URL "
        "(postgresql+psycopg://..., mysql+pymysql://...).",
    )
    parser.add_argument(
        "--ssh-host",
        default=None,
        help="Destination host as [user@]host. Without it files are copied to a local directory.",
    )
    parser.add_argument("--ssh-key", default=None, help="Private key file for the ssh host.")
    parser.add_argument("--ssh-port", type=int, default=None, help="ssh port (default: ssh's own, 22).")
    parser.add_argument(
        "--ssh-known-hosts", default=None, help="known_hosts file holding the host key (default: ~/.ssh/known_hosts)."
    )
    parser.add_argument(
        "--ssh-host-key-checking",
        choices=HOST_KEY_POLICIES,
        default="yes",
        help="yes: the host key must be known (default); accept-new: trust on first use; "
        "off: no check (test rigs only).",
    )
    parser.add_argument(
        "--ssh-connect-timeout",
        type=int,
        default=10,
        help="Seconds ssh waits for the host to answer (default: %(default)s).",
    )
    parser.add_argument(
        "--delete-local-after",
        type=float,
        default=None,
        help="Seconds after a file's copy was verified (remote md5 matched) when its local "
        "copy is deleted. Default: never delete.",
    )
    parser.add_argument(
        "--local-root",
        action="append",
        default=[],
        metavar="DIR",
        help="Delete local files only under this directory (repeat for several); a file registered elsewhere is "
        "kept and named. Default: no restriction (as socs).",
    )
    parser.add_argument(
        "--max-copy-attempts",
        type=int,
        default=DEFAULT_MAX_COPY_ATTEMPTS,
        help="Failed attempts after which a file is no longer tried (status failed; see the "
        "retry_failed task). Default: %(default)s.",
    )
    parser.add_argument(
        "--copy-timeout",
        type=float,
        default=None,
        help="Seconds one rsync batch may take. Default: 300 s plus 1 s per MB of the batch.",
    )
    parser.add_argument(
        "--cmd-timeout",
        type=float,
        default=None,
        help="Seconds a remote command (md5sum of a batch) may take, plus 1 s per 100 MB it checksums. Default: 60.",
    )
    parser.add_argument(
        "--files-per-batch",
        type=int,
        default=DEFAULT_FILES_PER_BATCH,
        help="Files per rsync/md5sum batch; full batches follow each other without sleeping. Default: %(default)s.",
    )
    parser.add_argument(
        "--max-batch-mb",
        type=float,
        default=DEFAULT_MAX_BATCH_BYTES / 2**20,
        help="A batch also ends once its files add up to this many MiB (one bigger file still goes alone). "
        "Default: %(default)g.",
    )
    parser.add_argument(
        "--sleep-time",
        type=float,
        default=60,
        help="Seconds to sleep when there is nothing left to copy. Default: %(default)s.",
    )
    parser.add_argument(
        "--compression", action="store_true", default=False, help="Compress data in transit (rsync --compress)."
    )
    parser.add_argument("--bwlimit", default=None, help="Bandwidth limit passed to rsync --bwlimit (e.g. 10M).")
    parser.add_argument(
        "--chmod",
        default="g+rwX,o+rX",
        help="rsync --chmod applied on transfer (default: %(default)s); an empty string keeps the source permissions.",
    )
    parser.add_argument(
        "--suprsync-file-root",
        required=True,
        help="Local directory where the agent writes timecode finalization files.",
    )
    parser.add_argument("--db-echo", action="store_true", help="Log every SQL statement.")
    parser.add_argument("--db-pool-size", type=int, default=5, help="Database connections kept open (not SQLite).")
    parser.add_argument("--db-pool-max-overflow", type=int, default=10,
                        help="Extra database connections allowed (not SQLite).")  # fmt: skip


@dataclass
class SupRsyncOptions(AgentOptions):
    """One archive's copy loop: where files go, how, and the ledger they come from."""

    archive: str
    db: str
    backend: Backend
    settings: EngineSettings
    sleep_time: float = 60.0
    host_key_checking: str = "yes"
    ssh_host: str | None = None
    db_echo: bool = False
    db_pool_size: int = 5
    db_pool_max_overflow: int = 10
    instance_id: str = "suprsync"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SupRsyncOptions:
        instance_id = getattr(args, "instance_id", None) or "suprsync"
        try:
            backend = make_backend(
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
                owner=instance_id,
            )
            settings = EngineSettings(
                archive=args.archive_name,
                file_root=args.suprsync_file_root,
                instance_id=instance_id,
                delete_after=args.delete_local_after,
                local_roots=tuple(getattr(args, "local_root", None) or ()),
                copy=CopySettings(
                    args.archive_name,
                    max_copy_attempts=args.max_copy_attempts,
                    files_per_batch=args.files_per_batch,
                    max_batch_bytes=int(args.max_batch_mb * 2**20),
                    copy_timeout=args.copy_timeout,
                    cmd_timeout=args.cmd_timeout,
                ),
            )
        except (ValueError, SshConfigError) as exc:
            raise ConfigError(f"SupRsync {instance_id}: {exc}") from None
        return cls(
            archive=args.archive_name,
            db=args.db_path,
            backend=backend,
            settings=settings,
            sleep_time=args.sleep_time,
            host_key_checking=args.ssh_host_key_checking,
            ssh_host=args.ssh_host,
            db_echo=args.db_echo,
            db_pool_size=args.db_pool_size,
            db_pool_max_overflow=args.db_pool_max_overflow,
            instance_id=instance_id,
        )

    def open_database(self) -> Database:
        return open_database(
            self.db, echo=self.db_echo, pool_size=self.db_pool_size, max_overflow=self.db_pool_max_overflow
        )

    def build_engine(self, ctx: JobContext, database: Callable[[], Database]) -> SupRsyncEngine:
        # The ledger opens on first use: a database down at start-up degrades the loop, which
        # retries it, instead of ending the process.
        return SupRsyncEngine(
            lambda: SupRsyncFilesManager(database()),
            self.backend,
            self.settings,
            cancel=ctx.cancel,
            on_activity=lambda activity: ctx.progress(activity=activity),
        )

    def preflight(self, args: argparse.Namespace, flight, where: str) -> None:
        preflight.database(self.db, "--db-path", flight, where)
        preflight.directory(self.settings.file_root, "--suprsync-file-root", flight, where)
        if not self.ssh_host:
            preflight.directory(args.remote_basedir, "--remote-basedir", flight, where)
            return
        flight.add(where, preflight.readable_file(args.ssh_key, "--ssh-key"))
        flight.add(where, preflight.readable_file(args.ssh_known_hosts, "--ssh-known-hosts"))
        if not flight.problems:
            flight.add(where, preflight.destination(self.backend, f"--ssh-host {self.ssh_host}"))

    def warnings(self) -> list[str]:
        found = []
        if self.ssh_host and self.host_key_checking == "off":
            found.append("ssh host key checking is off: only for test rigs")
        if self.settings.delete_after is not None and not self.settings.local_roots:
            found.append("--delete-local-after deletes verified files wherever they were registered; "
                         "--local-root DIR limits it to the archive's own directories")  # fmt: skip
        return found


def parse_ids(ids) -> list[int] | None:
    """An op's ``ids`` parameter: a list of file ids, or None for 'every matching file'."""
    if not ids:
        return None
    try:
        return [int(i) for i in ids]
    except (TypeError, ValueError):
        raise ConfigError(f"ids must be a list of integers, got {ids!r}") from None
