"""``hpcsync suprsync``: register files, inspect and repair the ledger, run the copy loop.

::

    hpcsync suprsync --db /data/so/dbs/suprsync.db add /data/x/16750/a.g3 16750/a.g3 --archive timestreams
    hpcsync suprsync add-tree /data/smurf --archive smurf --last-edit 60
    hpcsync suprsync list --archive smurf --status failed missing
    hpcsync suprsync check                       # exit 1 if any file failed or went missing
    hpcsync suprsync retry --archive smurf       # failed/missing files get fresh attempts
    hpcsync suprsync ignore --archive smurf --ids 17 18 --apply
    hpcsync suprsync import-socs /data/so/dbs/old-suprsync.db
    hpcsync suprsync run --archive-name smurf --remote-basedir /dst --db-path DB --suprsync-file-root R --once

The database defaults to ``$SUPRSYNC_DB``, then ``$HPCSYNC_DB_URL``, then hpcsync's default.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time

from .files import SupRsyncError, normalize_remote_path
from .ledger import ALL_STATES, SupRsyncFilesManager
from .socs_import import import_socs_database


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("suprsync", help="SupRsync: register files, inspect the ledger, run the copy loop")
    p.add_argument(
        "--db", default=None, help="ledger URL or SQLite path (default: $SUPRSYNC_DB, $HPCSYNC_DB_URL, else hpcsync's)"
    )
    sub = p.add_subparsers(dest="suprsync_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="register one file")
    add.add_argument("local_path", help="the local file (must exist)")
    add.add_argument("remote_path", help="destination relative to the agent's --remote-basedir")
    add.add_argument("--archive", required=True)
    add.add_argument("--no-delete", action="store_true", help="never delete the local copy")
    add.set_defaults(func=_cmd_add)

    tree = sub.add_parser("add-tree", help="register every file under a local directory")
    tree.add_argument("root", help="local directory; remote paths are relative to it")
    tree.add_argument("--archive", required=True)
    tree.add_argument("--remote-prefix", default="", help="prepended to every remote path")
    tree.add_argument("--last-edit", type=float, default=60.0,
                      help="skip files modified less than this many seconds ago (default: %(default)s)")  # fmt: skip
    tree.add_argument("--no-delete", action="store_true", help="never delete the local copies")
    tree.add_argument("--dry-run", action="store_true", help="only count what would be registered")
    tree.set_defaults(func=_cmd_add_tree)

    ls = sub.add_parser("list", help="list files of the ledger")
    ls.add_argument("--archive")
    ls.add_argument("--status", nargs="+", choices=ALL_STATES, default=["failed", "missing"])
    ls.add_argument("--retrying", action="store_true", help="also pending files whose last attempt failed")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)

    check = sub.add_parser("check", help="files per state and archive; exit 1 if any failed or went missing")
    check.add_argument("--archive")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_cmd_check)

    retry = sub.add_parser("retry", help="give failed/missing files fresh attempts")
    retry.add_argument("--archive", required=True)
    retry.add_argument("--ids", type=int, nargs="+")
    retry.add_argument("--dry-run", action="store_true")
    retry.set_defaults(func=_cmd_retry)

    ignore = sub.add_parser("ignore", help="mark files ignored (dry run unless --apply)")
    ignore.add_argument("--archive", required=True)
    ignore.add_argument("--ids", type=int, nargs="+")
    ignore.add_argument("--status", nargs="+", choices=ALL_STATES, default=["failed"])
    ignore.add_argument("--apply", action="store_true", help="really mark them (default: only count)")
    ignore.set_defaults(func=_cmd_ignore)

    imp = sub.add_parser("import-socs", help="import a socs SupRsync SQLite database (supersync_v0)")
    imp.add_argument("socs_db")
    imp.add_argument("--archive", help="only this archive")
    imp.add_argument("--max-copy-attempts", type=int, default=5,
                     help="socs rows with this many failed attempts become failed (default: %(default)s)")  # fmt: skip
    imp.set_defaults(func=_cmd_import)

    from .options import SupRsyncOptions

    run = sub.add_parser("run", help="run the copy loop without a hub (the agent's run process)")
    SupRsyncOptions.add_arguments(run)
    run.add_argument("--instance-id", default="suprsync-cli", help="names finalization files (default: %(default)s)")
    run.add_argument("--once", action="store_true", help="one iteration, then exit (status 1 if it failed)")
    run.set_defaults(func=_cmd_run)


def _manager(args) -> SupRsyncFilesManager:
    url = args.db or os.environ.get("SUPRSYNC_DB")
    if not url:
        from hpcsync.db import default_url

        url = default_url()
    return SupRsyncFilesManager(url)


def _show(path: str) -> str:
    """A path on one line: names with newlines or control characters are shown quoted."""
    return path if path.isprintable() else repr(path)


def _fail(message: str) -> int:
    print(f"hpcsync suprsync: {message}", file=sys.stderr)
    return 1


def _cmd_add(args) -> int:
    try:
        row = _manager(args).add_file(args.local_path, args.remote_path, args.archive, deletable=not args.no_delete)
    except SupRsyncError as exc:
        return _fail(str(exc))
    print(f"registered {_show(row.local_path)} -> {_show(row.remote_path)} in {args.archive} (id {row.id})")
    return 0


def _walk(root: str, last_edit: float, prefix: str):
    cutoff = time.time() - last_edit
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not os.path.isfile(path) or st.st_mtime > cutoff:
                continue
            rel = os.path.relpath(path, root)
            yield path, f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel


def _cmd_add_tree(args) -> int:
    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        return _fail(f"{root!r} is not a directory")
    manager = _manager(args)
    entries = _walk(root, args.last_edit, args.remote_prefix)
    if args.dry_run:
        found = []
        for local, remote in entries:
            try:
                normalize_remote_path(remote)
            except SupRsyncError as exc:
                print(f"hpcsync suprsync: would not register: {exc}", file=sys.stderr)
                continue
            found.append((local, remote))
        known = manager.known_remote_paths(args.archive, [r for _l, r in found]) if found else set()
        print(f"{len(found)} files under {root}: {len(found) - len(known)} new, {len(known)} already registered")
        return 0
    try:
        report = manager.add_files(entries, args.archive, deletable=not args.no_delete, skip_bad=True)
    except SupRsyncError as exc:
        return _fail(str(exc))
    print(
        f"{report.added} files registered in {args.archive}, {report.requeued} changed and queued again, "
        f"{report.unchanged} already registered"
    )
    # One odd file (undecodable name, vanished since the walk) never stops the rest.
    for message in report.refused[:20]:
        print(f"hpcsync suprsync: not registered: {message}", file=sys.stderr)
    if report.refused:
        return _fail(f"{len(report.refused)} files could not be registered (see above)")
    return 0


def _cmd_list(args) -> int:
    rows = _manager(args).list_files(args.archive, args.status, with_errors=args.retrying, limit=args.limit)
    if args.json:
        keys = ("id", "archive_name", "status", "failed_copy_attempts", "local_path", "remote_path", "last_error")
        print(json.dumps([{k: getattr(r, k) for k in keys} for r in rows], indent=1))
        return 0
    for r in rows:
        error = f"  ({r.last_error})" if r.last_error else ""
        print(
            f"{r.id}\t{r.archive_name}\t{r.status}\t{r.failed_copy_attempts}\t{_show(r.remote_path)}\t"
            f"{_show(r.local_path)}{error}"
        )
    return 0


def _cmd_check(args) -> int:
    summary = _manager(args).status_summary(args.archive)
    if args.json:
        print(json.dumps(summary, indent=1, sort_keys=True))
    else:
        if not summary:
            print("no files registered")
        for name, s in sorted(summary.items()):
            oldest = ""
            if s["oldest_pending"]:
                oldest = f", oldest pending registered {time.time() - s['oldest_pending']:.0f} s ago"
            states = ", ".join(f"{k} {s[k]}" for k in ALL_STATES if s[k])
            print(f"{name}: {s['total']} files ({states or 'none'}){oldest}; timecode dirs open "
                  f"{s.get('timecode_dirs_open', 0)}, finalized {s.get('timecode_dirs_finalized', 0)}")  # fmt: skip
    bad = sum(s["failed"] + s["missing"] for s in summary.values())
    if bad:
        print(f"{bad} files failed or went missing: 'hpcsync suprsync list' shows them", file=sys.stderr)
    return 1 if bad else 0


def _cmd_retry(args) -> int:
    n = _manager(args).retry_files(args.archive, args.ids, dry_run=args.dry_run)
    print(f"{n} files of {args.archive} {'would be' if args.dry_run else 'are'} pending again")
    return 0


def _cmd_ignore(args) -> int:
    n = _manager(args).ignore_files(args.archive, args.ids, args.status, dry_run=not args.apply)
    if not args.apply:
        print(f"{n} files would be ignored (dry run; add --apply)")
    else:
        print(f"{n} files of {args.archive} are now ignored")
    return 0


def _cmd_import(args) -> int:
    try:
        report = import_socs_database(
            args.socs_db, _manager(args), max_copy_attempts=args.max_copy_attempts, archive=args.archive
        )
    except SupRsyncError as exc:
        return _fail(str(exc))
    print(json.dumps(report.as_dict(), indent=1, sort_keys=True))
    for line in report.refused[:20]:
        print(f"refused: {line}", file=sys.stderr)
    return 0


def _cmd_run(args) -> int:
    from hpcsync.agents.core.jobs import JobContext

    from .options import SupRsyncOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    options = SupRsyncOptions.from_args(args)
    ctx = JobContext("run", threading.Event())
    engine = options.build_engine(ctx, options.open_database)
    try:
        while True:
            report = engine.iterate()
            print(json.dumps(report.summary(), default=str))
            if args.once:
                return 0 if report.ok else 1
            if not report.more_work:
                ctx.sleep(options.sleep_time)
    except KeyboardInterrupt:
        ctx.cancel.set()
        return 130


def main(argv=None) -> int:  # pragma: no cover - convenience for ``python -m``
    parser = argparse.ArgumentParser(prog="hpcsync")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
