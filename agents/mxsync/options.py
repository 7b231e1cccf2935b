"""MxSync's arguments (or an ASSyncy ``config.yml``), shared by the agent and the CLI.

Every ASSyncy setting has an argument; ``--config`` names an ASSyncy ``config.yml`` read as
it is, and an argument given explicitly overrides the file's value. The file, the secrets
and the database are read when a run starts (:meth:`MxSyncOptions.build_engine`), so a
fixed file is picked up by the next run and a bad one fails that run with one line naming
the key, while the agent stays up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.jobs import JobContext
from hpcsync.agents.core.secrets import load_secret
from hpcsync.agents.core.skeleton import AgentOptions
from hpcsync.agents.core.ssh import HOST_KEY_POLICIES, SshOptions
from hpcsync.agents.core.transfer import Backend, make_backend
from hpcsync.agents.core.transfer.sftp import SftpBackend
from hpcsync.db import Database

from .config import AssyncyConfig, equipment_entries, load_assyncy_config
from .engine import ASSYNCY_CHMOD, MxSyncEngine
from .epns import name_problem
from .ledger import default_scope
from .portal import Equipment, PortalClient

#: argument dest -> ASSyncy config key (the file's value is used unless the argument is given)
CONFIG_KEYS = {
    "portal_url": "base-url",
    "beamline": "beamline",
    "host": "host",
    "key_file": "key-file",
    "destination_root": "destination-root-path",
    "max_tasks": "max-tasks",
    "visit_day_range": "visit-day-range",
    "sync_frequency_hours": "sync-frequency-hours",
    "ignore_file": "ignore",
    "remote_user": "remote-user",
    "source_root": "source-root",
    "transfer": "transfer",
    "ssh_port": "port",
    "known_hosts": "known-hosts",
    "host_key_checking": "host-key-checking",
    "verify_checksums": "verify-checksums",
}
DEFAULTS = {
    "beamline": "mx",
    "max_tasks": 1,
    "visit_day_range": 200.0,
    "sync_frequency_hours": 24.0,
    "transfer": "rsync",
    "host_key_checking": "yes",
    "verify_checksums": False,
}


_DEMO_LOCK = threading.Lock()
_DEMO_PORTAL: list = []


def demo_settings(directory: str) -> dict[str, Any]:
    """Config values of the demo: the portal emulator (started once per process, seeded with
    :func:`~hpcsync.agents.testing.synchrotron_portal.demo_seed`) and EPN trees under
    ``<directory>/synchrotron/data/mx`` (12282a/b, 13001a mapped; 14444a claimed by no one)."""
    from hpcsync.agents.testing.synchrotron_portal import SynchrotronPortalEmulator, demo_seed

    with _DEMO_LOCK:
        if not _DEMO_PORTAL:
            emulator = SynchrotronPortalEmulator()
            emulator.seed(demo_seed())
            _DEMO_PORTAL.append(emulator.start())
        portal = _DEMO_PORTAL[0]
    source = os.path.join(directory, "synchrotron", "data", "mx")
    os.makedirs(source, exist_ok=True)
    for epn, size in (("12282a", 3 << 20), ("12282b", 1 << 20), ("13001a", 2 << 20), ("14444a", 1 << 10)):
        if os.path.isdir(os.path.join(source, epn)):
            continue
        # Built aside and renamed into place: the demo's MxSync and EpnAlert start at the
        # same time, and neither may see (or copy) a half-written EPN.
        staging = tempfile.mkdtemp(prefix=f".{epn}.", dir=source)
        os.makedirs(os.path.join(staging, "frames"))
        for n in range(3):
            with open(os.path.join(staging, "frames", f"img_{n:04d}.cbf"), "wb") as fh:
                fh.write(os.urandom(size // 3))
        with open(os.path.join(staging, ".info"), "w") as fh:
            fh.write(f"EPN {epn}: demo beamtime\n")
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, os.path.join(source, epn))
        except OSError:  # the other agent made it first
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "base-url": portal.url,
        "equipment": [
            {
                "username": "demo",
                "password": "demo",
                "client_name": "demo-client",
                "client_password": "demo-client-secret",
                "id": "23",
            },
            {
                "username": "demo",
                "password": "demo",
                "client_name": "demo-client",
                "client_password": "demo-client-secret",
                "id": "24",
            },
        ],
        "epn_cap_map": {"12282": "ny79", "13001": "ab12"},
        "source-root": source,
        "destination-root-path": os.path.join(directory, "scratch"),
        "visit-day-range": 30,
        "sync-frequency-hours": 0.01,
        "epnalert-email-to": "helpdesk@example.edu",
        "epnalert-email-from": "mxsync-demo@example.edu",
    }


def remote_backend(
    source_root: str,
    *,
    host: str | None,
    key_file: str | None,
    port: int | None,
    known_hosts: str | None,
    host_key_checking: str,
    protocol: str,
) -> Backend:
    """Where the EPN directories are: ``[user@]host:source_root`` over rsync/ssh or sftp,
    or a local directory when no host is given (the demo). MxSync and EpnAlert share it."""
    if protocol not in ("rsync", "sftp"):
        raise ConfigError(f"transfer {protocol!r} is not rsync or sftp")
    key = os.path.expanduser(key_file) if key_file else None
    if host and protocol == "sftp":
        ssh = SshOptions(
            host, port=port, key_file=key, known_hosts_file=known_hosts, host_key_checking=host_key_checking
        )
        return SftpBackend(source_root, ssh)
    return make_backend(
        source_root,
        ssh_host=host,
        ssh_key=key,
        ssh_port=port,
        known_hosts=known_hosts,
        host_key_checking=host_key_checking,
    )


def add_source_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options MxSync and EpnAlert share: the config file, the portal, the remote host
    and its layout, the EPN map, the ledger."""
    parser.add_argument("--config", help="an ASSyncy config.yml, read as it is; the options below override it")
    parser.add_argument(
        "--demo",
        metavar="DIR",
        help="demo mode: start the shipped portal emulator in this process and use a local source tree under DIR "
        "(made if missing); no outside service is needed",
    )
    parser.add_argument("--portal-url", help="portal base URL (config: base-url)")
    parser.add_argument(
        "--equipment-id",
        action="append",
        help="equipment (beamline) id to read visits of, repeatable (config: equipment[].id); "
        "with --portal-username etc. instead of the config's equipment list",
    )
    parser.add_argument("--portal-username", help="portal user (config: equipment[].username)")
    parser.add_argument("--portal-password", help="where the portal user's password is: file:/path or env:NAME")
    parser.add_argument("--portal-client-name", help="portal API client name (config: equipment[].client_name)")
    parser.add_argument("--portal-client-password", help="where the API client's password is: file:/path or env:NAME")
    parser.add_argument("--beamline", help="beamline name; the source is /data/<beamline>/<epn>/ (default: mx)")
    parser.add_argument(
        "--epn-map",
        action="append",
        metavar="EPN=PROJECT",
        help="EPN number to project, repeatable (config: epn_cap_map)",
    )
    parser.add_argument("--host", help="the remote host (config: host); none: --source-root is a local directory")
    parser.add_argument("--remote-user", help="remote user (ASSyncy hard-coded help@massive.org.au)")
    parser.add_argument("--source-root", help="where the EPN directories are (default: /data/<beamline>)")
    parser.add_argument("--transfer", choices=("rsync", "sftp"), help="rsync over ssh, or sftp (default: rsync)")
    parser.add_argument("--key-file", help="ssh private key (config: key-file)")
    parser.add_argument("--ssh-port", type=int, help="ssh port (default: 22)")
    parser.add_argument("--known-hosts", help="known_hosts file holding the host's key (default: ~/.ssh/known_hosts)")
    parser.add_argument(
        "--host-key-checking", choices=HOST_KEY_POLICIES, help="yes (default), accept-new, or off (test rigs only)"
    )
    parser.add_argument("--visit-day-range", type=float, help="days back to look for finished visits (default 200)")
    parser.add_argument("--scope", help="ledger scope (default: <beamline>:<destination root>)")
    parser.add_argument("--db", help="ledger database URL or SQLite path (default: $HPCSYNC_DB_URL or ~/.local/state)")
    parser.add_argument("--portal-timeout", type=float, default=30.0, help="seconds per portal request (default 30)")
    parser.add_argument("--portal-retries", type=int, default=3, help="retries of a portal request (default 3)")
    parser.add_argument("--portal-backoff", type=float, default=1.0, help="first wait between retries (default 1 s)")
    parser.add_argument("--auto-run", action="store_true", help="start the run process when the agent starts")


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """MxSync's options (site-config ``arguments:``; the CLI's too)."""
    add_source_arguments(parser)
    parser.add_argument(
        "--execute",
        action="store_true",
        default=None,
        help="the run process moves data (default: rsync dry runs only, as ASSyncy without --execute)",
    )
    parser.add_argument(
        "--destination-root",
        help="destination root; EPNs land in <root>/<project>/<epn>/data/ (config: destination-root-path)",
    )
    parser.add_argument("--max-tasks", type=int, help="transfers at a time (config: max-tasks; default 1)")
    parser.add_argument(
        "--sync-frequency-hours", type=float, help="hours between cycles of the run process (default 24)"
    )
    parser.add_argument("--ignore-file", help="ASSyncy's ignore.yml, for the one-shot import (config: ignore)")
    parser.add_argument(
        "--chmod",
        default=ASSYNCY_CHMOD,
        help="permissions of what arrives, rsync --chmod (default: ASSyncy's %(default)s)",
    )
    parser.add_argument(
        "--verify-checksums",
        action="store_true",
        default=None,
        help="verification also compares md5 checksums (reads every file on both sides)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        help="failed attempts before an EPN is held as failed until 'retry' (default: %(default)s)",
    )
    parser.add_argument(
        "--transfer-timeout", type=float, default=7 * 86400.0, help="seconds one EPN's rsync may take (default: a week)"
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=60.0,
        help="seconds after which a transfer whose owner stopped beating (killed) is taken over",
    )


@dataclass
class MxSyncOptions(AgentOptions):
    """MxSync's arguments as given (None: take the config file's value, then the default)."""

    config: str | None = None
    demo: str | None = None
    execute: bool | None = None
    portal_url: str | None = None
    equipment_id: list[str] | None = None
    portal_username: str | None = None
    portal_password: str | None = None
    portal_client_name: str | None = None
    portal_client_password: str | None = None
    beamline: str | None = None
    epn_map: list[str] | None = None
    host: str | None = None
    remote_user: str | None = None
    source_root: str | None = None
    transfer: str | None = None
    key_file: str | None = None
    ssh_port: int | None = None
    known_hosts: str | None = None
    host_key_checking: str | None = None
    destination_root: str | None = None
    max_tasks: int | None = None
    visit_day_range: float | None = None
    sync_frequency_hours: float | None = None
    ignore_file: str | None = None
    chmod: str | None = ASSYNCY_CHMOD
    verify_checksums: bool | None = None
    max_attempts: int = 5
    scope: str | None = None
    db: str | None = None
    portal_timeout: float = 30.0
    portal_retries: int = 3
    portal_backoff: float = 1.0
    transfer_timeout: float = 7 * 86400.0
    stale_after: float = 60.0
    instance_id: str = "cli"

    @classmethod
    def add_arguments(cls, parser) -> None:
        add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> MxSyncOptions:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        values.setdefault("instance_id", getattr(args, "instance_id", None) or "mxsync")
        values.update(overrides)
        options = cls(**values)
        for name in ("max_tasks", "max_attempts", "portal_retries"):
            value = getattr(options, name)
            if value is not None and value < (0 if name == "portal_retries" else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        return options

    # -- resolution (when a run starts) ----------------------------------------------------------

    def read_config(self) -> AssyncyConfig:
        config = load_assyncy_config(self.config) if self.config else AssyncyConfig("(no --config)", {})
        if self.demo:
            config.values = {**demo_settings(self.demo), **config.values}
        return config

    def setting(self, name: str, config: AssyncyConfig) -> Any:
        """An argument's value, else the config file's, else the default."""
        value = getattr(self, name)
        if value is None and name in CONFIG_KEYS:
            value = config.get(CONFIG_KEYS[name])
        return DEFAULTS.get(name) if value is None else value

    def equipment(self, config: AssyncyConfig) -> list[Equipment]:
        if self.equipment_id:
            missing = [
                f"--{n.replace('_', '-')}"
                for n in ("portal_username", "portal_password", "portal_client_name", "portal_client_password")
                if not getattr(self, n)
            ]
            if missing:
                raise ConfigError(f"--equipment-id needs {', '.join(missing)}")
            return [
                Equipment(
                    str(e),
                    self.portal_username,
                    load_secret(self.portal_password, what="portal password"),
                    self.portal_client_name,
                    load_secret(self.portal_client_password, what="portal client password"),
                )
                for e in self.equipment_id
            ]
        return equipment_entries(config.get("equipment") or [])

    def epn_map_of(self, config: AssyncyConfig) -> dict[str, str]:
        mapping = dict(config.get("epn_cap_map") or {})
        for item in self.epn_map or []:
            base, sep, project = item.partition("=")
            if not sep or not base.isdigit() or name_problem(project):
                raise ConfigError(f"--epn-map {item!r}: expected EPN_NUMBER=PROJECT (e.g. 12282=ny79)")
            mapping[base] = project
        return mapping

    def portal(self, config: AssyncyConfig, cancel) -> PortalClient | None:
        url = self.setting("portal_url", config)
        equipment = self.equipment(config)
        if not url and not equipment:
            return None
        if not url:
            raise ConfigError("no portal URL: pass --portal-url or set base-url in the config")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--portal-url {url!r} must start with http:// or https://")
        if not equipment:
            raise ConfigError("no equipment to read visits of: set equipment in the config or pass --equipment-id")
        return PortalClient(
            url,
            equipment,
            timeout=self.portal_timeout,
            retries=self.portal_retries,
            backoff=self.portal_backoff,
            cancel=cancel,
        )

    def backend(self, config: AssyncyConfig):
        beamline = self.setting("beamline", config)
        source_root = self.setting("source_root", config) or f"/data/{beamline}"
        host = self.setting("host", config)
        user = self.setting("remote_user", config)
        if user and host and "@" not in host:
            host = f"{user}@{host}"
        return remote_backend(
            source_root,
            host=host or None,
            key_file=self.setting("key_file", config),
            port=self.setting("ssh_port", config),
            known_hosts=self.setting("known_hosts", config),
            host_key_checking=self.setting("host_key_checking", config),
            protocol=self.setting("transfer", config),
        )

    def resolve_scope(self, config: AssyncyConfig) -> str:
        return self.scope or default_scope(self.setting("beamline", config), self.destination_root_of(config))

    def destination_root_of(self, config: AssyncyConfig) -> str:
        root = self.setting("destination_root", config)
        if not root:
            raise ConfigError("no destination: pass --destination-root or set destination-root-path in the config")
        if not os.path.isabs(root):
            raise ConfigError(f"destination root {root!r} must be an absolute path")
        return root

    def interval(self) -> float:
        """Seconds between cycles of the run process (sync-frequency-hours)."""
        try:
            config = self.read_config()
        except ConfigError:
            config = AssyncyConfig("", {})
        return float(self.setting("sync_frequency_hours", config)) * 3600.0

    def run_execute(self) -> bool:
        return bool(self.execute)

    def build_engine(self, ctx: JobContext, database: Callable[[], Database]) -> MxSyncEngine:
        config = self.read_config()
        beamline = self.setting("beamline", config)
        why = name_problem(beamline)
        if why:
            raise ConfigError(f"beamline {beamline!r} cannot be a directory name: {why}")
        max_tasks = int(self.setting("max_tasks", config))
        if max_tasks < 1:
            raise ConfigError(f"max-tasks must be at least 1, got {max_tasks}")
        return MxSyncEngine(
            portal=self.portal(config, ctx.cancel),
            backend=self.backend(config),
            db=database,
            scope=self.resolve_scope(config),
            epn_map=self.epn_map_of(config),
            destination_root=self.destination_root_of(config),
            visit_day_range=float(self.setting("visit_day_range", config)),
            max_tasks=max_tasks,
            chmod=self.chmod or None,
            verify_checksums=bool(self.setting("verify_checksums", config)),
            max_attempts=self.max_attempts,
            stale_after=self.stale_after,
            transfer_timeout=self.transfer_timeout,
            cancel=ctx.cancel,
            progress=ctx.progress,
        )

    def warnings(self) -> list[str]:
        out = []
        try:
            config = self.read_config()
            out += config.warnings
            if self.setting("host_key_checking", config) == "off":
                out.append("ssh host key checking is OFF: the remote host is not authenticated")
        except ConfigError as exc:
            out.append(str(exc))
        return out
