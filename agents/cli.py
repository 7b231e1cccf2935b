"""The ``hpcsync`` command: local hub control, the site config check, the database, and every agent's jobs.

Each agent in :mod:`hpcsync.agents.registry` with a ``cli`` module adds its subcommands
(``add_commands(subparsers)``); they run the same engines as the agent's ops, on the same
options, so every job also runs without a hub.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

VERSION = "0.1.0"

DESCRIPTION = "hpcsync: local hub control, the site config check, the database, and every agent's jobs."
EPILOG = (
    "The site config is looked up as ocs does: --site-file, else $OCS_CONFIG_DIR/default.yaml, "
    "else the repository's demo (site-configs/default.yaml). Options may come before or after "
    "the command. Commands that change state are dry runs unless told otherwise (--apply)."
)


def _add_run_dir(p: argparse.ArgumentParser) -> None:
    from .core.localsite import default_run_dir
    from .core.siteconfig import add_site_arguments

    add_site_arguments(p)
    p.add_argument(
        "--run-dir", default=argparse.SUPPRESS, help=f"pids, logs, hub config (default: {default_run_dir()})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcsync", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"hpcsync {VERSION}")
    _add_run_dir(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser(
        "check",
        help="check the whole site config (keys, agent classes, arguments, databases, directories, "
        "hosts, secrets) without starting anything",
    )
    _add_run_dir(check)
    check.add_argument(
        "--create-directories", action="store_true", help="create missing directories instead of reporting them"
    )
    check.set_defaults(func=_cmd_check)

    up = sub.add_parser("up", help="check the site config, then start its hub and agents on this machine")
    _add_run_dir(up)
    up.add_argument(
        "--create-directories", action="store_true", help="create missing directories instead of reporting them"
    )
    up.add_argument("instances", nargs="*", help="only these instance ids (default: all of the host)")
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser("down", help="stop what 'hpcsync up' started")
    _add_run_dir(down)
    down.set_defaults(func=_cmd_down)

    status = sub.add_parser("status", help="show the hub, and each agent's health (degraded, last error) and ops")
    _add_run_dir(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_cmd_status)

    db = sub.add_parser("db", help="the hpcsync database")
    db_help = "database URL or SQLite path (default: $HPCSYNC_DB_URL or ~/.local/state)"
    db.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for name, func, text in (
        ("upgrade", _cmd_db_upgrade, "migrate the schema to the newest revision"),
        ("current", _cmd_db_current, "show the schema revision"),
    ):
        action = dbsub.add_parser(name, help=text)
        action.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
        action.set_defaults(func=func)

    from .registry import AGENTS

    for entry in AGENTS:
        if entry.has_cli:
            importlib.import_module(entry.cli_module).add_commands(sub)
    return parser


def _local_site(args):
    from .core.localsite import LocalSite, default_run_dir
    from .core.siteconfig import find_site_file, load_site_config

    site = load_site_config(find_site_file(getattr(args, "site_file", None)))
    return LocalSite(site, Path(getattr(args, "run_dir", None) or default_run_dir()), getattr(args, "site_host", None))


def _cmd_check(args) -> int:
    from .core.localsite import CheckFailed
    from .core.preflight import check_site
    from .core.siteconfig import find_site_file

    path = find_site_file(getattr(args, "site_file", None))
    flight = check_site(path, getattr(args, "site_host", None), create=args.create_directories)
    for note in flight.notes:
        print(f"check: {note}")
    if flight.problems:
        raise CheckFailed(flight.problems)
    print(f"{path}: no problems found")
    return 0


def _cmd_up(args) -> int:
    _local_site(args).up(only=args.instances or None, create_directories=args.create_directories)
    print("all up; 'hpcsync status' shows the agents and their health, 'hpcsync down' stops them")
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

    db = open_database(getattr(args, "db", None), upgrade=False)
    before = db.current_revision()
    db.upgrade()
    print(f"{db.url}: schema {before or 'empty'} -> {db.current_revision()}")
    return 0


def _cmd_db_current(args) -> int:
    from hpcsync.db import open_database

    db = open_database(getattr(args, "db", None), upgrade=False)
    current, head = db.current_revision(), db.head_revision()
    print(f"{db.url}: revision {current or 'none'} (newest {head})")
    return 0 if current == head else 1


def main(argv: list[str] | None = None) -> int:
    from .core.errors import USER_ERRORS
    from .core.localsite import CheckFailed

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CheckFailed as exc:
        for problem in exc.problems:
            print(f"hpcsync {args.command}: {problem}", file=sys.stderr)
        print(f"hpcsync {args.command}: {len(exc.problems)} problem(s); nothing was started", file=sys.stderr)
        return 1
    except USER_ERRORS as exc:
        print(f"hpcsync {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
