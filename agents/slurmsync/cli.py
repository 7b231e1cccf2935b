"""``hpcsync slurmsync reverse-sync | running-jobs | full-sync | audit``: the jobs without a hub.

The flags follow the seed scripts: ``-T mybrc|mylrc``, ``-s START``, ``-e END``, ``--PUSH``
(and ``--PRICE_FILE``). As there, the token file defaults to ``<script>_<target>.conf`` in
the current directory and the book-keeping logs go to the current directory; unlike there,
a missing token file is an error (exit status 1), not a silent success. ``audit`` is
read-only: it prints a table (``--json``: every finding as JSON) and exits 0 when the API
and Slurm agree, 2 when it found drift, 1 when it could not finish.
"""

from __future__ import annotations

import argparse
import json
import sys

from hpcsync.agents.core.skeleton import run_cli_job

from .clock import ClusterClock
from .options import TARGET_HELP, SlurmSyncOptions, add_engine_arguments

# Seed script name of each subcommand (token file and log file names).
_SCRIPT = {"reverse-sync": "reverse_sync", "running-jobs": "sync_running_jobs", "full-sync": "full_sync",
           "audit": "audit"}  # fmt: skip
#: ``audit``'s exit status when it found drift
DRIFT = 2


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    slurmsync = subparsers.add_parser(
        "slurmsync", help="reconcile Slurm accounting with a ColdFront/myBRC/myLRC API (dry run unless --PUSH)"
    )
    sub = slurmsync.add_subparsers(dest="slurmsync_command", metavar="JOB", required=True)

    reverse = sub.add_parser("reverse-sync", help="API service units -> sacctmgr GrpTRESMins commands")
    _common(reverse)
    reverse.add_argument("--apply", action="store_true", help="run the sacctmgr commands (default: only write them)")
    reverse.set_defaults(func=_cmd_reverse_sync)

    running = sub.add_parser("running-jobs", help="jobs RUNNING in the API -> current state from sacct -> pushed")
    _common(running)
    _window(running)
    running.set_defaults(func=_cmd_running_jobs)

    full = sub.add_parser("full-sync", help="every project's jobs since its allocation start -> pushed")
    _common(full)
    _window(full)
    full.add_argument(
        "--restart", action="store_true", help="ignore where an earlier push run stopped and start at the first project"
    )
    full.set_defaults(func=_cmd_full_sync)

    audit = sub.add_parser(
        "audit", help="read-only: API usage and jobs against Slurm's jobs (exit 2 when they drift apart)"
    )
    _common(audit)
    audit.add_argument("-s", "--start", help="jobs that started from this time (default: each allocation's start)")
    audit.add_argument("-e", "--end", help="... up to this time (default: now)")
    audit.add_argument("--json", action="store_true", help="print every finding as JSON instead of tables")
    audit.set_defaults(func=_cmd_audit)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-T", "--target", help=TARGET_HELP)
    add_engine_arguments(parser)
    parser.add_argument(
        "--log-dir",
        default=".",
        help="directory for the book-keeping logs and the reverse-sync command file (default: current directory)",
    )
    parser.add_argument(
        "--sacct-file",
        help="read jobs from a saved 'sacct -naPX --format=JobId,Submit,Start,End,UID,Account,State,Partition,"
        "QOS,NodeList,AllocCPUS,ReqNodes,AllocNodes,CPUTimeRAW,CPUTime,JobIDRaw' output instead of running sacct "
        "(without JobIDRaw, jobs are keyed by JobID: array tasks as <array>_<task>)",
    )


def _window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-s", "--start", help="start, YYYY-MM-DD[THH:MM:SS] in the cluster's time zone")
    parser.add_argument("-e", "--end", help="end, YYYY-MM-DD[THH:MM:SS] (default: now)")
    parser.add_argument("--PUSH", "--push", dest="push", action="store_true", help="send the updates to the API")
    parser.add_argument("--max-jobs", type=int, default=0, help="push at most this many jobs (default 0: all)")
    parser.add_argument(
        "--retry-rejected",
        action="store_true",
        help="send again the jobs the API refused before with the same data (default: leave them out)",
    )


def _run(args: argparse.Namespace, operation: str, dry_run: bool, job, changes_state: bool = True):
    """Run ``job(engine)`` as the agent's op would (same options, engine and run record)."""
    token = args.token_file or f"{_SCRIPT[args.slurmsync_command]}_{args.target or 'target'}.conf"
    options = SlurmSyncOptions.from_args(args, token_file=token, log_dir=args.log_dir, instance_id="cli")

    def progress(fields: dict) -> None:
        activity = fields.get("activity")
        if activity and sys.stderr.isatty():
            print(f"\r{activity[:70]:<70}", end="", file=sys.stderr, flush=True)

    return run_cli_job(
        options,
        lambda ctx: job(ctx.engine),
        agent_class="SlurmSync",
        operation=operation,
        dry_run=dry_run,
        changes_state=changes_state,
        progress=progress,
    )


def _times(args: argparse.Namespace) -> dict:
    clock = ClusterClock(args.cluster_tz)
    return {
        "start": clock.parse_user_time(args.start, "-s/--start") if args.start else None,
        "end": clock.parse_user_time(args.end, "-e/--end") if args.end else None,
    }


def _finish(report) -> int:
    if sys.stderr.isatty():
        print("\r" + " " * 72 + "\r", end="", file=sys.stderr)
    print(report.message())
    if getattr(report, "log_file", None):
        print(f"log: {report.log_file}")
    return 0 if report.ok else 1


def _cmd_reverse_sync(args: argparse.Namespace) -> int:
    report = _run(args, "reverse_sync", not args.apply, lambda engine: engine.reverse_sync(apply=args.apply))
    for command in report.commands:
        print(command)
    return _finish(report)


def _cmd_running_jobs(args: argparse.Namespace) -> int:
    times = _times(args)
    report = _run(
        args,
        "sync_running_jobs",
        not args.push,
        lambda engine: engine.sync_running_jobs(
            push=args.push, max_jobs=args.max_jobs, retry_rejected=args.retry_rejected, **times
        ),
    )
    return _finish(report)


def _cmd_full_sync(args: argparse.Namespace) -> int:
    times = _times(args)
    report = _run(
        args,
        "full_sync",
        not args.push,
        lambda engine: engine.full_sync(
            push=args.push,
            max_jobs=args.max_jobs,
            resume=not args.restart,
            retry_rejected=args.retry_rejected,
            **times,
        ),
    )
    return _finish(report)


def _cmd_audit(args: argparse.Namespace) -> int:
    times = _times(args)
    report = _run(args, "audit", True, lambda engine: engine.audit(**times), changes_state=False)
    if sys.stderr.isatty():
        print("\r" + " " * 72 + "\r", end="", file=sys.stderr)
    if args.json:
        print(json.dumps(report.details(), indent=2, sort_keys=True))
    else:
        print(report.table())
    if not report.ok:
        return 1
    return 0 if report.clean else DRIFT
