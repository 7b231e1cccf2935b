"""``hpcsync sync list | add | remove | push | pull | purge``: alces sync's verbs.

Output follows alces: ``list`` prints ``<name>: <dir> <-> <remote>``; push, pull and purge
print `` > Title`` then ``<step> ... OK`` (or ``FAIL``, exit status 1); errors go to stderr
as ``hpcsync sync <verb>: ...``. A path that could not be synced (unreadable, a special
file, refused) is named on stderr after the rest was synced, and makes the ``Sync`` step
``FAIL`` and the exit status 1, as a cron job must notice. Nothing prompts for a passphrase: it comes from
``--passphrase file:/path`` or ``env:NAME``. ``remove`` and ``purge`` ask before acting
unless ``--yes``; with no terminal they refuse rather than assume.
"""

from __future__ import annotations

import argparse
import sys
import time

from hpcsync.agents.core.skeleton import run_cli_job

from .options import CloudSyncOptions, add_arguments
from .targets import TargetStore


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    sync = subparsers.add_parser("sync", help="alces sync's targets: a directory <-> s3://bucket/sync/<user>/<name>")
    sub = sync.add_subparsers(dest="sync_command", metavar="VERB", required=True)

    p = sub.add_parser("list", help="the targets and their remotes")
    add_arguments(p)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("add", help="add a target NAME syncing DIR")
    p.add_argument("name")
    p.add_argument("dir")
    for flag in ("include", "exclude", "encrypt"):
        p.add_argument(f"--{flag}", action="append", default=[], help=f"a glob to {flag} (repeat)")
    add_arguments(p)
    p.set_defaults(func=_cmd_add)

    p = sub.add_parser("remove", help="forget target NAME (its remote data stays; see purge)")
    p.add_argument("name")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    add_arguments(p)
    p.set_defaults(func=_cmd_remove)

    for verb, helptext in (("push", "send local changes (by content) to the remote"),
                           ("pull", "fetch remote changes into the directory")):  # fmt: skip
        p = sub.add_parser(verb, help=helptext)
        p.add_argument("name", nargs="?", default="default")
        p.add_argument("--dry-run", "-n", action="store_true", help="only say what would happen")
        if verb == "pull":
            p.add_argument("--delete", action="store_true", help="also delete local files the remote lacks")
        add_arguments(p)
        p.set_defaults(func=_cmd_push if verb == "push" else _cmd_pull)

    p = sub.add_parser("purge", help="delete the target's remote data (asks, or --yes)")
    p.add_argument("name")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    add_arguments(p)
    p.set_defaults(func=_cmd_purge)


def _options(args: argparse.Namespace) -> CloudSyncOptions:
    return CloudSyncOptions.from_args(args, instance_id="cli")


def _ask(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        print(f"{question} -- no terminal to ask on; give --yes", file=sys.stderr)
        return False
    return input(f"{question} (Y/N)? ").strip().lower() in ("y", "yes")


def _step(title: str, ok: bool) -> None:
    print(f"{title:>16} ... {'OK' if ok else 'FAIL'}")


class _Bar:
    """A progress bar on stderr for transfers that take a while (only on a terminal)."""

    def __init__(self):
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, fields: dict) -> None:
        if not sys.stderr.isatty() or time.monotonic() - self.started < 1.0:
            return
        total = fields.get("bytes_total") or 0
        done = fields.get("bytes_done") or 0
        files = f"{fields.get('files_done', 0)}/{fields.get('files_total', '?')}"
        frac = done / total if total else 0.0
        bar = "#" * int(frac * 30)
        rate = (fields.get("rate") or 0) / 1e6
        print(f"\r  [{bar:<30}] {frac:4.0%} {files} files {rate:6.1f} MB/s", end="", file=sys.stderr, flush=True)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            print("\r" + " " * 72 + "\r", end="", file=sys.stderr)


def _run(args, operation: str, dry_run: bool, job):
    bar = _Bar()
    try:
        return run_cli_job(_options(args), lambda ctx: job(ctx.engine), agent_class="CloudSync",
                           operation=operation, dry_run=dry_run, progress=bar)  # fmt: skip
    finally:
        bar.close()


def _report(report, steps: list[str]) -> int:
    """Print the steps, what was not synced and the summary; the exit status: 1 if the run
    failed or refused, or if any path was not synced (the rest was: the Sync step says FAIL)."""
    done = report.ok and not report.refused
    for title in steps:
        _step(title, done and not (title == "Sync" and report.problems))
    for path in report.planned[:20] if report.dry_run else []:
        print(f"   {path!r}")
    for path, why in list(report.problems.items())[:20]:
        print(f"   ! {path!r}: {why}", file=sys.stderr)
    print(report.message())
    return 0 if done and not report.problems else 1


def _cmd_list(args) -> int:
    options = _options(args)
    store = TargetStore(options.config_dir, options.home)
    settings_remote = options.settings().remote
    from .targets import remote_root

    for target in store.load_all():
        print(f"{target.name}: {target.local_dir} <-> {remote_root(settings_remote, options.user)}/{target.name}")
    return 0


def _cmd_add(args) -> int:
    options = _options(args)
    target = TargetStore(options.config_dir, options.home).add(
        args.name, args.dir, include=args.include, exclude=args.exclude, encrypt=args.encrypt
    )
    print(f"hpcsync sync add: created '{target.name}' to sync '{target.local_dir}'")
    return 0


def _cmd_remove(args) -> int:
    options = _options(args)
    store = TargetStore(options.config_dir, options.home)
    store.load(args.name)
    if not _ask(f"Remove sync configuration for '{args.name}'", args.yes):
        print(f"hpcsync sync remove: kept '{args.name}'")
        return 1
    store.remove(args.name)
    print(f"hpcsync sync remove: removed '{args.name}'")
    return 0


def _cmd_push(args) -> int:
    options = _options(args)
    target = TargetStore(options.config_dir, options.home).load(args.name)
    remote = f"{options.settings().remote}"
    print(f" > Synchronizing directory '{target.local_dir}' to {remote}" + (" (dry run)" if args.dry_run else ""))
    report = _run(args, "push", args.dry_run, lambda engine: engine.push(args.name, dry_run=args.dry_run))
    return _report(report, ["Permissions", "Sync"])


def _cmd_pull(args) -> int:
    options = _options(args)
    target = TargetStore(options.config_dir, options.home).load(args.name)
    print(f" > Synchronizing directory '{target.local_dir}' from {options.settings().remote}"
          + (" (dry run)" if args.dry_run else ""))  # fmt: skip
    report = _run(args, "pull", args.dry_run,
                  lambda engine: engine.pull(args.name, dry_run=args.dry_run, delete=args.delete))  # fmt: skip
    return _report(report, ["Sync", "Permissions"])


def _cmd_purge(args) -> int:
    options = _options(args)
    plan = _run(args, "purge", True, lambda engine: engine.purge(args.name, confirm=False))
    where = f"{options.settings().remote.rstrip('/')}/sync/{options.user}/{args.name}"
    print(f" > Purge of '{args.name}' at '{where}': {plan.files_total} object(s), {plan.bytes_sent} bytes")
    for path in plan.planned:
        print(f"   {path!r}")
    if plan.files_total > len(plan.planned):
        print(f"   ... and {plan.files_total - len(plan.planned)} more")
    if not plan.files_total:
        print(f"hpcsync sync purge: nothing to purge for '{args.name}'")
        return 0
    if not _ask(f"Purge all files for '{args.name}' at '{where}'", args.yes):
        print(f"hpcsync sync purge: nothing deleted for '{args.name}'")
        return 1
    report = _run(args, "purge", False, lambda engine: engine.purge(args.name, confirm=True))
    _step("Purge", report.ok)
    print(f"hpcsync sync purge: purged '{args.name}'" if report.ok else report.message())
    return 0 if report.ok else 1
