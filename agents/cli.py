"""The ``hpcsync`` command: local hub control, the database, and every agent's jobs.

Each agent in :mod:`hpcsync.agents.registry` with a ``cli`` module adds its subcommands
(``add_commands(subparsers)``); they run the same engines as the agent's ops, on the same
options, so every job also runs without a hub.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

VERSION = "0.1.0"


def _default_site_file() -> str:
    if os.environ.get("OCS_CONFIG_DIR"):
        return str(Path(os.environ["OCS_CONFIG_DIR"]) / "default.yaml")
    return "site-configs/default.yaml"


def _add_site_args(p: argparse.ArgumentParser) -> None:
    from .core.localsite import default_run_dir

    p.add_argument("--site-file", default=_default_site_file(), help="site config (default: %(default)s)")
    p.add_argument("--site-host", help="host block to use (default: this hostname, else 'localhost')")
    p.add_argument("--run-dir", default=str(default_run_dir()), help="pids, logs, hub config (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcsync", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hpcsync {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser("up", help="start the hub and the agents of a site config on this machine")
    _add_site_args(up)
    up.add_argument("instances", nargs="*", help="only these instance ids (default: all of the host)")
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser("down", help="stop what 'hpcsync up' started")
    _add_site_args(down)
    down.set_defaults(func=_cmd_down)

    status = sub.add_parser("status", help="show the hub, each agent and its ops")
    _add_site_args(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    db = sub.add_parser("db", help="the hpcsync database")
    db.add_argument("--db", help="database URL or SQLite path (default: $HPCSYNC_DB_URL or ~/.local/state)")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    dbsub.add_parser("upgrade", help="migrate the schema to the newest revision").set_defaults(func=_cmd_db_upgrade)
    dbsub.add_parser("current", help="show the schema revision").set_defaults(func=_cmd_db_current)

    from .registry import AGENTS

    for entry in AGENTS:
        if entry.has_cli:
            importlib.import_module(entry.cli_module).add_commands(sub)
    return parser


def _local_site(args):
    from .core.localsite import LocalSite
    from .core.siteconfig import load_site_config

    return LocalSite(load_site_config(args.site_file), Path(args.run_dir), args.site_host)


def _cmd_up(args) -> int:
    _local_site(args).up(only=args.instances or None)
    print("all up; 'hpcsync status' shows the agents and their ops, 'hpcsync down' stops them")
    return 0


def _cmd_down(args) -> int:
    _local_site(args).down()
    return 0


def _cmd_status(args) -> int:
    from .core.localsite import format_status, status_json

    report = _local_site(args).status()
    print(status_json(report) if args.json else format_status(report))
    return 0 if report["hub"]["ready"] else 3


def _cmd_db_upgrade(args) -> int:
    from hpcsync.db import open_database

    db = open_database(args.db, upgrade=False)
    before = db.current_revision()
    db.upgrade()
    print(f"{db.url}: schema {before or 'empty'} -> {db.current_revision()}")
    return 0


def _cmd_db_current(args) -> int:
    from hpcsync.db import open_database

    db = open_database(args.db, upgrade=False)
    current, head = db.current_revision(), db.head_revision()
    print(f"{db.url}: revision {current or 'none'} (newest {head})")
    return 0 if current == head else 1


def main(argv: list[str] | None = None) -> int:
    from .core.errors import USER_ERRORS

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"hpcsync {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
