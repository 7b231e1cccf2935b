"""Arguments shared by the agent and the CLI, and how they become a :class:`SlurmSyncEngine`.

Nothing here reads a secret or touches the network at import or parse time: the profile,
prices, token and database are resolved by :func:`build_engine` when a job starts, so a
bad profile file or a missing token fails that job with a clear message and the agent
stays up (and picks up a fixed file on the next run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from hpcsync.agents.core import preflight
from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.jobs import JobContext
from hpcsync.agents.core.secrets import load_secret
from hpcsync.agents.core.skeleton import AgentOptions
from hpcsync.db import Database, default_url, open_database

from .clock import ClusterClock
from .coldfront import ColdFrontApi
from .engine import ProgressCallback, SlurmSyncEngine
from .profiles import BUILTIN_PROFILES, select_profile
from .slurm import SacctDump, Slurm


def add_engine_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options every SlurmSync job needs (target, token, Slurm, API, ledger)."""
    parser.add_argument(
        "--profile-file",
        help="YAML file of target profiles (base_url, period_start, resources, prices, ...); "
        "adds to or overrides the built-in profiles",
    )
    parser.add_argument(
        "--token-file",
        help="where the API token is: file:/path (or a bare path) holding 'Token <key>', or env:VARIABLE. "
        "Never the token itself",
    )
    parser.add_argument("--api-url", help="override the profile's API base URL (e.g. a staging server)")
    parser.add_argument(
        "--price-file",
        "--PRICE_FILE",
        dest="price_file",
        help="TOML file with a [PartitionPrice] table (the banking plugin's bank-config.toml); "
        "overrides the profile's prices",
    )
    parser.add_argument(
        "--cluster-tz",
        help="IANA time zone the cluster's sacct prints times in (default: this machine's zone)",
    )
    parser.add_argument("--db", help="ledger database URL or SQLite path (default: $HPCSYNC_DB_URL or ~/.local/state)")
    parser.add_argument("--sacct", default="sacct", help="sacct program (default: %(default)s)")
    parser.add_argument("--sacctmgr", default="sacctmgr", help="sacctmgr program (default: %(default)s)")
    parser.add_argument("--slurm-conf", help="SLURM_CONF for sacct/sacctmgr (default: their own default)")
    parser.add_argument(
        "--workers", type=int, default=4, help="concurrent job uploads, one connection each (default: %(default)s)"
    )
    parser.add_argument(
        "--api-timeout", type=float, default=30.0, help="seconds per API request (default: %(default)s)"
    )
    parser.add_argument(
        "--api-retries",
        type=int,
        default=4,
        help="retries of an API request on 5xx, timeouts and connection errors (default: %(default)s)",
    )
    parser.add_argument(
        "--api-backoff",
        type=float,
        default=1.0,
        help="first wait between API retries in seconds, doubled each time (default: %(default)s)",
    )
    parser.add_argument(
        "--command-timeout",
        type=float,
        default=300.0,
        help="seconds a sacct/sacctmgr call may take (default: %(default)s)",
    )


def add_agent_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The agent's own options (site-config ``arguments:``), besides the engine's."""
    parser.add_argument("--target", help=TARGET_HELP)
    add_engine_arguments(parser)
    parser.add_argument(
        "--sync-log-dir",
        help="directory for the book-keeping logs (<op>_<target>[_debug].log) and the reverse-sync command file "
        "(default: <site log-dir>/slurmsync-<instance-id>)",
    )
    parser.add_argument(
        "--interval", type=float, default=3600.0, help="seconds between syncs of the run process (default: %(default)s)"
    )
    parser.add_argument(
        "--run-push", action="store_true", help="the run process pushes updates (default: it only logs them)"
    )
    parser.add_argument("--auto-run", action="store_true", help="start the run process when the agent starts")


@dataclass
class SlurmSyncOptions(AgentOptions):
    """The settings of one SlurmSync target, resolved into an engine when a job starts."""

    target: str | None
    profile_file: str | None = None
    token_file: str | None = None
    api_url: str | None = None
    price_file: str | None = None
    cluster_tz: str | None = None
    db: str | None = None
    log_dir: str | None = None
    sacct: str = "sacct"
    sacctmgr: str = "sacctmgr"
    slurm_conf: str | None = None
    sacct_file: str | None = None
    workers: int = 4
    api_timeout: float = 30.0
    api_retries: int = 4
    api_backoff: float = 1.0
    command_timeout: float = 300.0
    #: the run process: seconds between cycles, and whether its cycles push
    interval: float = 3600.0
    run_push: bool = False
    instance_id: str = "cli"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        add_agent_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> SlurmSyncOptions:
        names = cls.__dataclass_fields__
        values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
        instance_id = getattr(args, "instance_id", None) or "slurmsync"
        values.setdefault("instance_id", instance_id)
        if getattr(args, "sync_log_dir", None):
            values["log_dir"] = args.sync_log_dir
        elif getattr(args, "log_dir", None):
            values["log_dir"] = f"{args.log_dir}/slurmsync-{instance_id}"
        else:
            values.setdefault("log_dir", default_log_dir(instance_id))
        values.update(overrides)
        return cls(**values)

    def build_engine(self, ctx: JobContext, database: Callable[[], Database]) -> SlurmSyncEngine:
        return build_engine(
            self,
            db=database(),
            cancel=ctx.cancel,
            progress=ctx.progress,
            agent_class="SlurmSync",
            instance_id=self.instance_id,
        )

    def preflight(self, args: argparse.Namespace, flight, where: str) -> None:
        preflight.database(self.db, "--db", flight, where)
        flight.add(where, preflight.secret(self.token_file, "--token-file"))
        flight.add(where, preflight.readable_file(self.profile_file, "--profile-file"))
        flight.add(where, preflight.readable_file(self.price_file, "--price-file"))
        if getattr(args, "sync_log_dir", None):
            preflight.directory(args.sync_log_dir, "--sync-log-dir", flight, where)
        if not self.sacct_file:
            for key, program in (("--sacct", self.sacct), ("--sacctmgr", self.sacctmgr)):
                if not shutil.which(program):
                    flight.add(where, f"{key} {program}: no such program on PATH")
        try:
            url = self.api_url or select_profile(self.target, self.profile_file).base_url
        except ConfigError as exc:
            flight.add(where, f"--target {self.target}: {exc}")
            return
        flight.add(where, preflight.reachable(url, "--api-url" if self.api_url else f"API of target {self.target}"))

    def window(self, params: dict) -> dict[str, datetime | None]:
        """An op's ``start``/``end`` parameters as times (cluster time zone unless an offset is given)."""
        clock = ClusterClock(self.cluster_tz)
        return {key: clock.parse_user_time(params[key], key) if params.get(key) else None for key in ("start", "end")}


def is_time(value: str) -> bool:
    """A parameter check: ``value`` reads as an operator's time (see ``ClusterClock``)."""
    try:
        ClusterClock(None).parse_user_time(value, "time")
    except ConfigError:
        return False
    return True


def build_engine(
    settings: SlurmSyncOptions,
    *,
    db: Database | None = None,
    cancel: threading.Event | None = None,
    progress: ProgressCallback | None = None,
    agent_class: str = "SlurmSync",
    instance_id: str = "cli",
) -> SlurmSyncEngine:
    """Resolve profile, prices, clock, token, API, Slurm and ledger; raise a clear error."""
    if settings.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {settings.workers}")
    profile = select_profile(settings.target, settings.profile_file)
    if settings.api_url:
        if not settings.api_url.startswith(("http://", "https://")):
            raise ConfigError(f"--api-url {settings.api_url!r} must start with http:// or https://")
        profile = replace(
            profile, base_url=settings.api_url if settings.api_url.endswith("/") else settings.api_url + "/"
        )
    clock = ClusterClock(settings.cluster_tz)
    prices = profile.price_table(settings.price_file)
    if not settings.token_file:
        raise ConfigError(
            f"no API token configured for {profile.name}: pass --token-file file:/path/to/token or env:VARIABLE"
        )
    token = load_secret(settings.token_file, what=f"API token for {profile.name}")
    cancel = cancel or threading.Event()
    api = ColdFrontApi(
        profile.base_url,
        token,
        timeout=settings.api_timeout,
        retries=settings.api_retries,
        backoff=settings.api_backoff,
        cancel=cancel,
    )
    if settings.sacct_file:
        slurm = SacctDump(settings.sacct_file, clock)
    else:
        slurm = Slurm(
            clock,
            sacct=settings.sacct,
            sacctmgr=settings.sacctmgr,
            slurm_conf=settings.slurm_conf,
            timeout=settings.command_timeout,
            cancel=cancel,
        )
    return SlurmSyncEngine(
        profile=profile,
        api=api,
        slurm=slurm,
        prices=prices,
        clock=clock,
        db=db or open_database(settings.db or default_url()),
        log_dir=settings.log_dir or default_log_dir(instance_id),
        token=token,
        workers=settings.workers,
        sacctmgr=settings.sacctmgr,
        cancel=cancel,
        progress=progress,
        agent_class=agent_class,
        instance_id=instance_id,
    )


def default_log_dir(instance_id: str) -> str:
    """``$XDG_STATE_HOME/hpcsync/slurmsync/<instance>`` (book-keeping logs, command files)."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return str(state / "hpcsync" / "slurmsync" / instance_id)


TARGET_HELP = f"target profile: {', '.join(sorted(BUILTIN_PROFILES))} or a name from --profile-file"
