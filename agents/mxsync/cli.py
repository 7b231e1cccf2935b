"""``hpcsync mxsync``: ASSyncy's ``mxsync`` without a hub, on the agent's options and engine.

``hpcsync mxsync --config config.yml [--execute]`` runs the service loop, as ``mxsync
--config config.yml [--execute]`` did (``--once``: one cycle, then exit). Subcommands, after
the options: ``import-ignore [FILE]`` (ASSyncy's ``ignore.yml`` into the ledger, once),
``export-ignore FILE`` (the done EPNs as an ``ignore.yml``), ``list [STATE]``, ``retry [EPN]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.skeleton import run_cli_job

from .options import MxSyncOptions, add_arguments


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    mx = subparsers.add_parser(
        "mxsync", help="repatriate Synchrotron EPN data (ASSyncy's mxsync; dry run unless --execute)"
    )
    add_arguments(mx)
    mx.add_argument("--once", action="store_true", help="one cycle, then exit (default: loop like mxsync)")
    sub = mx.add_subparsers(dest="mxsync_command", metavar="COMMAND")
    imp = sub.add_parser("import-ignore", help="mark the EPNs of an ASSyncy ignore.yml done (one-shot)")
    imp.add_argument("file", nargs="?", help="the ignore.yml (default: the config's 'ignore')")
    exp = sub.add_parser("export-ignore", help="write the done EPNs as an ASSyncy ignore.yml")
    exp.add_argument("file")
    lst = sub.add_parser("list", help="the ledger's EPNs")
    lst.add_argument("state", nargs="?", choices=("pending", "running", "done", "failed"))
    retry = sub.add_parser("retry", help="failed EPNs (or one EPN) pending again")
    retry.add_argument("epn", nargs="?")
    mx.set_defaults(func=_cmd)


def _options(args: argparse.Namespace) -> MxSyncOptions:
    return MxSyncOptions.from_args(args, instance_id="cli")


def _progress(fields: dict) -> None:
    activity = fields.get("activity")
    if activity and sys.stderr.isatty():
        print(f"\r{activity[:70]:<70}", end="", file=sys.stderr, flush=True)


def _cmd(args: argparse.Namespace) -> int:
    options = _options(args)
    command = args.mxsync_command
    if command == "import-ignore":
        return _ledger_job(options, "import_ignore", lambda engine: _import(engine, options, args.file))
    if command == "export-ignore":
        n = _ledger_job(options, "export_ignore", lambda engine: engine.ledger.export_ignore(args.file), False)
        print(f"wrote {n} done EPNs to {args.file}")
        return 0
    if command == "list":
        rows = _ledger_job(options, "list_epns", lambda engine: engine.ledger.rows(args.state, 100_000), False)
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    if command == "retry":
        n = _ledger_job(options, "retry", lambda engine: engine.ledger.retry(args.epn))
        print(f"{n} EPNs pending again")
        return 0
    return _loop(options, args.once)


def _ledger_job(options: MxSyncOptions, operation: str, job, changes_state: bool = True):
    class _Done:
        ok = True

        def __init__(self, value):
            self.value = value

        def message(self):
            return operation

        def summary(self):
            return {}

    return run_cli_job(
        options,
        lambda ctx: _Done(job(ctx.engine)),
        agent_class="MxSync",
        operation=operation,
        dry_run=False,
        changes_state=changes_state,
    ).value


def _import(engine, options: MxSyncOptions, path: str | None) -> int:
    config = options.read_config()
    path = path or options.setting("ignore_file", config)
    if not path:
        raise ConfigError("no ignore.yml named: give FILE or set 'ignore' in the config")
    added, refused = engine.ledger.import_ignore(path, engine.epn_map)
    for line in refused:
        print(f"refused: {line}", file=sys.stderr)
    print(f"{added} EPNs from {path} marked done ({len(refused)} refused)")
    return 0


def _loop(options: MxSyncOptions, once: bool) -> int:
    execute = bool(options.execute)
    stop = threading.Event()
    status = 0
    while True:
        try:
            report = run_cli_job(
                options,
                lambda ctx: ctx.engine.sync(execute=execute),
                agent_class="MxSync",
                operation="run",
                dry_run=not execute,
                progress=_progress,
            )
        except KeyboardInterrupt:
            print("\nstopped; interrupted transfers resume next time", file=sys.stderr)
            return 130
        if sys.stderr.isatty():
            print("\r" + " " * 72 + "\r", end="", file=sys.stderr)
        print(report.message())
        status = 0 if report.ok else 1
        if once:
            return status
        try:
            if stop.wait(options.interval()):
                return status
        except KeyboardInterrupt:
            return status
