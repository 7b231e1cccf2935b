"""``hpcsync mpistat report | inspect | split | manager | history``: the jobs without a hub.

Every subcommand takes the agent's own options (``--dump-dir``, ``--ldap-url`` ...) and
runs the same engine; ``manager`` is lurge's ``manager.py``: find the newest complete set
within ``--max-days-ago`` and run ``report``, ``inspect`` or ``both``.
"""

from __future__ import annotations

import argparse
import json
import sys

from hpcsync.agents.core.skeleton import run_cli_job

from .options import MpistatOptions, add_arguments, parse_date


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    mpistat = subparsers.add_parser(
        "mpistat", help="group usage reports, project inspections and group splits from mpistat/wrstat dumps"
    )
    sub = mpistat.add_subparsers(dest="mpistat_command", metavar="JOB", required=True)

    report = sub.add_parser("report", help="lurge's per-group report: TSV and the database")
    _common(report)
    report.add_argument("--replace", action="store_true", help="replace a date already stored")
    report.set_defaults(func=_cmd_report)

    inspect = sub.add_parser("inspect", help="directory reports under the project roots")
    _common(inspect)
    inspect.add_argument("-d", "--depth", type=int, default=None, help="depth (default: --inspect-depth)")
    inspect.add_argument("--generic", action="store_true", help="one Directory column instead of Project/Directory")
    inspect.add_argument("--noheader", action="store_true", help="no header line")
    inspect.add_argument("--tosql", action="store_true", help="also replace the volume's directories in the database")
    inspect.add_argument("-o", "--output", default="-", help="TSV file (default: - for stdout)")
    inspect.set_defaults(func=_cmd_inspect)

    split = sub.add_parser("split", help="one gz file per group, index.txt, passwd/group dumps, upload")
    _common(split)
    split.add_argument("--no-upload", action="store_true", help="build the files only")
    split.add_argument("--replace", action="store_true", help="split (and upload) a finished date again")
    split.set_defaults(func=_cmd_split)

    manager = sub.add_parser("manager", help="lurge's manager.py: newest complete set, then report/inspect/both")
    _common(manager)
    manager.add_argument("mode", choices=("report", "inspector", "inspect", "both"), help="what to run")
    manager.set_defaults(func=_cmd_manager)

    history = sub.add_parser("history", help="a group's stored usage, the date it fills its quota, a plot")
    _common(history)
    history.add_argument("group", help="the group's name")
    history.add_argument("--volume", help="one volume (default: all)")
    history.add_argument("--plot", help="write an SVG plot of usage against quota here")
    history.set_defaults(func=_cmd_history)


def _common(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)
    parser.add_argument("--date", help="YYYY-MM-DD of the set (default: the newest complete set)")
    parser.add_argument("--json", action="store_true", help="print the job's summary as JSON")


def _progress(fields: dict) -> None:
    activity = fields.get("activity")
    if activity and sys.stderr.isatty():
        lines = fields.get("lines_read")
        text = f"{activity} {lines} lines" if lines else activity
        print(f"\r{text[:76]:<76}", end="", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, operation: str, job, *, changes_state: bool = True):
    options = MpistatOptions.from_args(args, instance_id="cli")
    return run_cli_job(options, lambda ctx: job(ctx.engine), agent_class="MpistatReporter", operation=operation,
                       dry_run=False, changes_state=changes_state, progress=_progress)  # fmt: skip


def _finish(args, report) -> int:
    if sys.stderr.isatty():
        print("\r" + " " * 78 + "\r", end="", file=sys.stderr)
    if args.json:
        print(json.dumps(report.summary(), indent=2, sort_keys=True, default=str))
    print(report.message(), file=sys.stderr if getattr(args, "output", None) == "-" else sys.stdout)
    return 0 if report.ok else 1


def _cmd_report(args) -> int:
    date = parse_date(args.date)
    return _finish(args, _run(args, "report", lambda e: e.report(date=date, replace=args.replace)))


def _cmd_inspect(args) -> int:
    date = parse_date(args.date)
    holder = {}

    def job(engine):
        outcome = engine.inspect(date=date, depth=args.depth, generic=args.generic, to_db=args.tosql,
                                 output=args.output, header=not args.noheader)  # fmt: skip
        holder["table"] = engine.last_table
        return outcome

    report = _run(args, "inspect", job, changes_state=args.tosql)
    if args.output == "-":
        for line in holder.get("table", []):
            print(line)
    return _finish(args, report)


def _cmd_split(args) -> int:
    date = parse_date(args.date)
    return _finish(args, _run(args, "split", lambda e: e.split(date=date, upload=not args.no_upload,
                                                                replace=args.replace)))  # fmt: skip


def _cmd_manager(args) -> int:
    date = parse_date(args.date)
    status = 0
    if args.mode in ("report", "both"):
        status |= _finish(args, _run(args, "report", lambda e: e.report(date=date)))
    if args.mode in ("inspector", "inspect", "both"):
        status |= _finish(args, _run(args, "inspect", lambda e: e.inspect(date=date)))
    return status


def _cmd_history(args) -> int:
    report = _run(args, "history", lambda e: e.history(args.group, args.volume, args.plot), changes_state=False)
    return _finish(args, report)
