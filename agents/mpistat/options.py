"""MpistatReporter's arguments, the settings they resolve to, and its engine; for the
agent and the CLI.

Everything checkable without the network is checked in :meth:`MpistatOptions.from_args`
(``VOL=PATH`` pairs, job names, the upload URL); the LDAP password and the S3 credentials
are read by :meth:`~MpistatOptions.build_engine` when a run starts, so a missing file fails
that run with one line and the agent stays up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.jobs import JobContext
from hpcsync.agents.core.secrets import load_secret
from hpcsync.agents.core.skeleton import AgentOptions
from hpcsync.db import Database

from .demo import DEMO_VOLUME, make_demo_dump
from .engine import MpistatEngine, MpistatSettings
from .ldapdir import LdapSettings
from .quota import QuotaSource
from .sets import volume_name

JOBS = ("report", "inspect", "split")


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--dump-dir",
        default=None,
        help="directory of the mpistat/wrstat dumps (YYYYMMDD_VVV.dat.gz, wrstat's names, final/); "
        "required unless --demo",
    )
    parser.add_argument(
        "--demo",
        default=None,
        metavar="DIR",
        help="demo: make and walk a small tree under DIR and report on today's dump of it (dumps, reports and "
        "splits under DIR; group names from this machine's group database)",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where reports go: report-output-files/report-YYYYMMDD.tsv, inspections, plots "
        "(default: $XDG_STATE_HOME/hpcsync/mpistat/<instance>)",
    )
    parser.add_argument(
        "--volumes",
        default="",
        help="comma-separated volumes a complete set must have (114 or scratch114); "
        "default: whatever the newest date has",
    )
    parser.add_argument(
        "--validate",
        choices=("all", "used"),
        default="all",
        help="all: every field of every line is checked (a bad one skips the line); used: only the fields "
        "the job reads and the column count, as lurge (faster; default: %(default)s)",
    )
    parser.add_argument(
        "--max-days-ago",
        type=int,
        default=10,
        help="look for a complete set this many days back (default: %(default)s)",
    )
    parser.add_argument("--db", help="database URL or SQLite path (default: $HPCSYNC_DB_URL or ~/.local/state)")
    ldap = parser.add_argument_group("LDAP") if isinstance(parser, argparse.ArgumentParser) else parser
    ldap.add_argument("--ldap-url", help="LDAP server, e.g. ldap://ldap-ro.example.org:389 (none: gids only)")
    ldap.add_argument("--ldap-group-base", default="ou=group,dc=sanger,dc=ac,dc=uk", help="base of the groups")
    ldap.add_argument("--ldap-people-base", default="ou=people,dc=sanger,dc=ac,dc=uk", help="base of the PIs")
    ldap.add_argument(
        "--ldap-group-filter",
        default="(objectClass=posixGroup)",
        help="filter of every group reported (default: %(default)s)",
    )
    ldap.add_argument(
        "--ldap-selected-filter",
        default="(objectClass=sangerHumgenProjectGroup)",
        help="filter of the groups flagged 'Is Humgen?' and split (default: %(default)s)",
    )
    ldap.add_argument(
        "--ldap-pi-attribute",
        default="sangerProjectPI",
        help="group attribute holding the PI's DN (default: %(default)s)",
    )
    ldap.add_argument("--ldap-bind-dn", help="bind DN (default: anonymous)")
    ldap.add_argument(
        "--ldap-password-file",
        help="where the bind password is: file:/path or env:VARIABLE (never the password itself)",
    )
    ldap.add_argument("--ldap-timeout", type=float, default=30.0, help="seconds per LDAP call (default: %(default)s)")
    parser.add_argument(
        "--quota-command",
        default=None,
        help="quota command, {group} {mount} {volume} filled in, e.g. 'lfs quota -gq {group} {mount}' "
        "(field 4 of its output is the limit in KiB)",
    )
    parser.add_argument("--quota-csv-dir", help="directory of <volume>.csv quota files (group,limit in KiB)")
    parser.add_argument("--quota-timeout", type=float, default=60.0, help="seconds per quota command")
    parser.add_argument(
        "--volume-mount",
        action="append",
        default=[],
        metavar="VOL=PATH",
        help="mount point of a volume for {mount} (default /lustre/<volume>); repeatable",
    )
    parser.add_argument(
        "--archive-root",
        action="append",
        default=[],
        metavar="VOL=PATH",
        help="a directory whose <group>/.imirrored marks an archived group; repeatable",
    )
    parser.add_argument(
        "--inspect-root",
        action="append",
        default=[],
        metavar="VOL=PATH",
        help="a project root the inspector reports on (a glob, e.g. "
        "/lustre/scratch115/realdata/mdt[0-9]/projects); repeatable",
    )
    parser.add_argument("--inspect-depth", type=int, default=2, help="inspector depth (default: %(default)s)")
    parser.add_argument("--split-dir", default=None, help="where split files are built (default: <output-dir>/groups)")
    parser.add_argument(
        "--split-path-prefix",
        action="append",
        default=[],
        help="also split lines under this path, whatever their group (lurge: the 116 projects)",
    )
    parser.add_argument("--split-by-id", action="store_true", help="name split files by gid instead of group name")
    parser.add_argument("--passwd-command", default="getent passwd", help="passwd dump command (default: %(default)s)")
    parser.add_argument("--group-command", default="getent group", help="group dump command (default: %(default)s)")
    parser.add_argument(
        "--upload-url",
        default=None,
        help="where split files go: s3://bucket/prefix or a local directory (none: no upload)",
    )
    parser.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (default: AWS)")
    parser.add_argument("--s3-region", default=None, help="S3 region")
    parser.add_argument(
        "--s3-credentials-file",
        default=None,
        help="AWS-style credentials file (default: the environment or boto3's chain)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=3600.0,
        help="seconds between looks for a new set in the run process (default: %(default)s)",
    )
    parser.add_argument(
        "--run-jobs",
        default="report",
        help="what the run process does with a new set: report, inspect, split, comma-separated",
    )
    parser.add_argument("--auto-run", action="store_true", help="start the run process when the agent starts")


def parse_date(text: str | None) -> dt.date | None:
    """An op's or the CLI's ``date`` (``YYYY-MM-DD`` or ``YYYYMMDD``); None for none."""
    if not text:
        return None
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, form).date()
        except ValueError:
            continue
    raise ConfigError(f"date {text!r} is not YYYY-MM-DD")


def is_date(text: str | None) -> bool:
    """A parameter check: ``text`` is None or a date :func:`parse_date` reads."""
    try:
        parse_date(text)
    except ConfigError:
        return False
    return True


def _pairs(values: list[str], option: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for value in values:
        volume, sep, path = value.partition("=")
        if not sep or not volume.strip() or not path.strip():
            raise ConfigError(f"{option} {value!r} must be VOL=PATH, e.g. scratch114=/lustre/scratch114/teams")
        out.setdefault(volume_name(volume), []).append(path.strip())
    return out


def default_output_dir(instance_id: str) -> str:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return str(state / "hpcsync" / "mpistat" / instance_id)


@dataclass
class MpistatOptions(AgentOptions):
    settings: MpistatSettings
    demo: str | None = None
    db: str | None = None
    ldap_password_file: str | None = None
    upload_url: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_credentials_file: str | None = None
    interval: float = 3600.0
    run_jobs: tuple[str, ...] = ("report",)
    inspect_depth: int = 2
    split_options: dict = field(default_factory=dict)
    instance_id: str = "mpistat"

    @classmethod
    def add_arguments(cls, parser) -> None:
        add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> MpistatOptions:
        instance_id = overrides.pop("instance_id", None) or getattr(args, "instance_id", None) or "mpistat"
        demo = getattr(args, "demo", None)
        if demo:
            args.dump_dir = args.dump_dir or str(Path(demo) / "dumps")
            args.output_dir = args.output_dir or str(Path(demo) / "out")
            args.volumes = args.volumes or DEMO_VOLUME
        if not args.dump_dir:
            raise ConfigError("--dump-dir is required (or --demo DIR)")
        if args.max_days_ago < 0:
            raise ConfigError(f"--max-days-ago must be 0 or more, got {args.max_days_ago}")
        if args.inspect_depth < 1:
            raise ConfigError(f"--inspect-depth must be at least 1, got {args.inspect_depth}")
        jobs = tuple(j.strip() for j in args.run_jobs.split(",") if j.strip())
        unknown = [j for j in jobs if j not in JOBS]
        if unknown or not jobs:
            raise ConfigError(f"--run-jobs {args.run_jobs!r}: choose from {', '.join(JOBS)}")
        if args.upload_url and args.upload_url.startswith("s3://") and len(args.upload_url) <= 5:
            raise ConfigError(f"--upload-url {args.upload_url!r} names no bucket")
        ldap = None
        if args.ldap_url:
            if not args.ldap_url.startswith(("ldap://", "ldaps://")):
                raise ConfigError(f"--ldap-url {args.ldap_url!r} must start with ldap:// or ldaps://")
            ldap = LdapSettings(url=args.ldap_url, group_base=args.ldap_group_base, people_base=args.ldap_people_base,
                                group_filter=args.ldap_group_filter, selected_filter=args.ldap_selected_filter or None,
                                pi_attribute=args.ldap_pi_attribute, bind_dn=args.ldap_bind_dn,
                                timeout=args.ldap_timeout)  # fmt: skip
        output = args.output_dir or default_output_dir(instance_id)
        mounts = {v: paths[-1] for v, paths in _pairs(args.volume_mount, "--volume-mount").items()}
        settings = MpistatSettings(
            dump_dir=args.dump_dir,
            output_dir=output,
            volumes=[volume_name(v) for v in args.volumes.split(",") if v.strip()],
            max_days_ago=args.max_days_ago,
            ldap=ldap,
            quota=QuotaSource(args.quota_command, args.quota_csv_dir, mounts, args.quota_timeout),
            archive_roots=_pairs(args.archive_root, "--archive-root"),
            inspect_roots=_pairs(args.inspect_root, "--inspect-root"),
            validate=getattr(args, "validate", "all") or "all",
        )
        split = {
            "split_dir": args.split_dir or str(Path(output) / "groups"),
            "path_prefixes": list(args.split_path_prefix),
            "by_id": bool(args.split_by_id),
            "passwd_command": args.passwd_command,
            "group_command": args.group_command,
        }
        values = dict(settings=settings, demo=demo, db=args.db, ldap_password_file=args.ldap_password_file,
                      upload_url=args.upload_url, s3_endpoint=args.s3_endpoint, s3_region=args.s3_region,
                      s3_credentials_file=args.s3_credentials_file, interval=args.interval, run_jobs=jobs,
                      inspect_depth=args.inspect_depth, split_options=split, instance_id=instance_id)  # fmt: skip
        values.update(overrides)
        return cls(**values)

    def backend(self):
        """The split files' destination, or None (no upload)."""
        if not self.upload_url:
            return None
        if self.upload_url.startswith("s3://"):
            from hpcsync.agents.core.transfer.s3 import S3Backend

            try:
                return S3Backend(self.upload_url, endpoint_url=self.s3_endpoint, region=self.s3_region,
                                 credentials_file=self.s3_credentials_file)  # fmt: skip
            except ValueError as exc:
                raise ConfigError(f"--upload-url {self.upload_url}: {exc}") from None
        from hpcsync.agents.core.transfer import LocalRsyncBackend

        return LocalRsyncBackend(self.upload_url)

    def build_engine(self, ctx: JobContext, database: Callable[[], Database]) -> MpistatEngine:
        if self.demo:
            make_demo_dump(self.demo)
        password = None
        if self.ldap_password_file:
            password = load_secret(self.ldap_password_file, what="LDAP bind password")
        return MpistatEngine(self.settings, database, ldap_password=password, cancel=ctx.cancel,
                             progress=ctx.progress, backend_factory=self.backend, split_options=self.split_options,
                             inspect_depth=self.inspect_depth, instance_id=self.instance_id)  # fmt: skip
