"""CloudSync's arguments (site config ``arguments:`` and ``hpcsync sync``) and its engine.

Nothing is read at parse time: target files, the passphrase and the S3 credentials file
are read when a run starts (:meth:`CloudSyncOptions.build_engine`), so a bad file fails
that run with one line and the agent stays up.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from hpcsync.agents.core import preflight
from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.jobs import JobContext
from hpcsync.agents.core.skeleton import AgentOptions
from hpcsync.db import Database

from .engine import CloudSyncEngine, Settings
from .targets import current_user


def default_config_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "hpcsync", "cloudsync")


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--remote",
        help="where targets live: s3://BUCKET (or s3://BUCKET/PREFIX) or a local directory; "
        "each target is <remote>/sync/<user>/<name> (default: $HPCSYNC_SYNC_REMOTE)",
    )
    parser.add_argument("--config-dir", help="directory of the sync.<name>.yml target files "
                        "(default: $XDG_CONFIG_HOME/hpcsync/cloudsync)")  # fmt: skip
    parser.add_argument("--user", help="the <user> part of the remote layout (default: the current user)")
    parser.add_argument("--home", help="directory the 'default' target syncs (default: the home directory)")
    parser.add_argument("--passphrase", help="encryption passphrase reference: file:/path or env:NAME (never the "
                        "passphrase itself)")  # fmt: skip
    parser.add_argument("--max-delete", type=int, help="refuse a push that would delete more remote files than this")
    parser.add_argument("--endpoint-url", help="S3 endpoint (default: AWS)")
    parser.add_argument("--region", help="S3 region (default: the profile's, or us-east-1)")
    parser.add_argument("--profile", help="AWS profile (in the AWS config/credentials files, or --credentials-file)")
    parser.add_argument("--credentials-file", help="AWS-style credentials file (default: the environment and "
                        "boto3's usual chain)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=8, help="S3 requests at a time (default: %(default)s)")
    parser.add_argument("--chunk-size-mb", type=int, default=16, help="S3 multipart part size (default: %(default)s)")
    parser.add_argument("--bwlimit", help="bandwidth cap in KiB/s (or with K/M/G), rsync style")
    parser.add_argument("--db", help="database URL or SQLite path (default: $HPCSYNC_DB_URL or ~/.local/state)")


@dataclass
class CloudSyncOptions(AgentOptions):
    remote: str | None = None
    config_dir: str = field(default_factory=default_config_dir)
    user: str = field(default_factory=current_user)
    home: str = field(default_factory=lambda: os.path.expanduser("~"))
    passphrase: str | None = None
    max_delete: int | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    credentials_file: str | None = None
    concurrency: int = 8
    chunk_size_mb: int = 16
    bwlimit: str | None = None
    db: str | None = None
    instance_id: str = "cli"
    # the agent's own: targets pushed by the run process, its interval, and start-up
    targets: list[str] = field(default_factory=list)
    interval: float = 3600.0
    auto_run: bool = False

    @classmethod
    def add_arguments(cls, parser) -> None:
        """The agent's arguments: the engine's, plus what its ``run`` process pushes."""
        add_arguments(parser)
        parser.add_argument("--run-target", dest="targets", action="append",
                            help="a target the run process pushes (repeat; default: default)")  # fmt: skip
        parser.add_argument("--interval", type=float, help="seconds between the run process's pushes (default 3600)")
        parser.add_argument("--auto-run", action="store_true", help="start the run process when the agent starts")

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> CloudSyncOptions:
        values = {n: getattr(args, n) for n in cls.__dataclass_fields__ if getattr(args, n, None) is not None}
        values.setdefault("instance_id", getattr(args, "instance_id", None) or "cloudsync")
        values.update(overrides)
        options = cls(**values)
        if options.remote is None:
            options.remote = os.environ.get("HPCSYNC_SYNC_REMOTE")
        if options.max_delete is not None and options.max_delete < 0:
            raise ConfigError(f"--max-delete must be 0 or more, got {options.max_delete}")
        if options.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {options.concurrency}")
        if options.chunk_size_mb < 5:
            raise ConfigError(f"--chunk-size-mb must be at least 5 (S3's smallest part), got {options.chunk_size_mb}")
        if options.passphrase and not options.passphrase.startswith(("file:", "env:")):
            raise ConfigError("--passphrase takes a reference (file:/path or env:NAME), never the passphrase itself")
        return options

    def settings(self) -> Settings:
        if not self.remote:
            raise ConfigError("no remote: give --remote s3://BUCKET or a directory (or set HPCSYNC_SYNC_REMOTE)")
        backend = {"bwlimit": self.bwlimit}
        if self.remote.startswith("s3://"):
            backend.update(endpoint_url=self.endpoint_url, region=self.region, profile=self.profile,
                           credentials_file=self.credentials_file, concurrency=self.concurrency,
                           chunk_size=self.chunk_size_mb << 20,
                           multipart_threshold=self.chunk_size_mb << 20)  # fmt: skip
        return Settings(self.config_dir, self.remote, self.user, self.instance_id, self.home, self.passphrase,
                        self.max_delete, backend)  # fmt: skip

    def preflight(self, args: argparse.Namespace, flight, where: str) -> None:
        preflight.database(self.db, "--db", flight, where)
        if not self.remote:
            flight.add(where, "--remote: no remote given (s3://BUCKET or a directory; or set HPCSYNC_SYNC_REMOTE)")
        elif self.remote.startswith("s3://"):
            flight.add(where, preflight.readable_file(self.credentials_file, "--credentials-file"))
            if self.endpoint_url:
                flight.add(where, preflight.reachable(self.endpoint_url, "--endpoint-url"))
        else:
            preflight.directory(self.remote, "--remote", flight, where)
        if self.home:  # the default target's directory (targets' own files are made by 'add')
            preflight.directory(self.home, "--home", flight, where)
        if self.passphrase:
            flight.add(where, preflight.secret(self.passphrase, "--passphrase"))

    def build_engine(self, ctx: JobContext, database: Callable[[], Database]) -> CloudSyncEngine:
        return CloudSyncEngine(self.settings(), database, cancel=ctx.cancel, progress=ctx.progress)
