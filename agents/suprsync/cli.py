"""``hpcsync suprsync``: register files, inspect and repair the ledger, run the copy loop.

::

    hpcsync suprsync add --instance timestream-sync /data/x/16750/a.g3 16750/a.g3
    hpcsync suprsync add-tree /data/smurf --instance smurf-sync --last-edit 60
    hpcsync suprsync list --instance smurf-sync   # failed and missing files (--status for others)
    hpcsync suprsync check                       # exit 1 if any file failed or went missing
    hpcsync suprsync retry --archive smurf       # dry run: counts; --apply gives them fresh attempts
    hpcsync suprsync ignore --archive smurf --ids 17 18 --apply
    hpcsync suprsync import-socs /data/so/dbs/old-suprsync.db --create
    hpcsync suprsync run --instance smurf-sync --once

The ledger is the one the agents use: ``--instance NAME`` takes the database, the archive
and (for ``run``) every setting from that SupRsync instance of the site config (found as
ocs finds it: ``--site-file``, ``$OCS_CONFIG_DIR/default.yaml``, the repository's demo).
Without it, the site config's only SupRsync instance is used; ``--db`` (or
``$SUPRSYNC_DB``) names a ledger outright, and one that does not exist is refused unless
``--create``. Registering into an archive that no instance of the site config copies from
that ledger is refused unless ``--force``. Options work before or after the action.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hpcsync.agents.core.siteconfig import (
    SiteConfigError,
    add_site_arguments,
    find_site_file,
    load_site_config,
    parse_instance,
    suggest,
)

from .files import SupRsyncError, normalize_remote_path
from .ledger import ALL_STATES, SupRsyncFilesManager
from .socs_import import import_socs_database

S = argparse.SUPPRESS


def _ledger_args(p: argparse.ArgumentParser, *, archive: bool = False, force: bool = False) -> None:
    """The options that choose the ledger (and archive); SUPPRESS defaults, so they work
    on ``hpcsync suprsync`` and on each action alike."""
    p.add_argument("--instance", default=S, help="a SupRsync instance of the site config: its ledger and archive")
    p.add_argument("--db", default=S, help="the ledger, a SQLite path or database URL (default: the instance's)")
    p.add_argument("--create", action="store_true", default=S, help="start a new ledger if --db does not exist")
    add_site_arguments(p)
    if archive:
        p.add_argument("--archive", default=S, help="the archive (default: the instance's --archive-name)")
    if force:
        p.add_argument(
            "--force", action="store_true", default=S, help="register into an archive no instance copies from"
        )


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("suprsync", help="SupRsync: register files, inspect the ledger, run the copy loop")
    _ledger_args(p, archive=True, force=True)
    sub = p.add_subparsers(dest="suprsync_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="register one file")
    add.add_argument("local_path", help="the local file (must exist)")
    add.add_argument("remote_path", help="destination relative to the agent's --remote-basedir")
    _ledger_args(add, archive=True, force=True)
    add.add_argument("--no-delete", action="store_true", help="never delete the local copy")
    add.set_defaults(func=_cmd_add)

    tree = sub.add_parser("add-tree", help="register every file under a local directory")
    tree.add_argument("root", help="local directory; remote paths are relative to it")
    _ledger_args(tree, archive=True, force=True)
    tree.add_argument("--remote-prefix", default="", help="prepended to every remote path")
    tree.add_argument("--last-edit", type=float, default=60.0,
                      help="skip files modified less than this many seconds ago (default: %(default)s)")  # fmt: skip
    tree.add_argument("--no-delete", action="store_true", help="never delete the local copies")
    tree.add_argument("--dry-run", action="store_true", help="only count what would be registered")
    tree.set_defaults(func=_cmd_add_tree)

    ls = sub.add_parser(
        "list",
        help="list the files that need attention: failed and missing ones (--status for others)",
        description="List files of the ledger. By default only the files that need attention: 'failed' "
        "(attempt limit reached) and 'missing' (local file gone); --status chooses other states, "
        "--retrying adds pending files whose last attempt failed.",
    )
    _ledger_args(ls, archive=True)
    ls.add_argument("--status", nargs="+", choices=ALL_STATES, default=["failed", "missing"],
                    help="states to list (default: failed missing)")  # fmt: skip
    ls.add_argument("--retrying", action="store_true", help="also pending files whose last attempt failed")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)

    check = sub.add_parser("check", help="files per state and archive; exit 1 if any failed or went missing")
    _ledger_args(check, archive=True)
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_cmd_check)

    retry = sub.add_parser("retry", help="give failed/missing files fresh attempts (dry run unless --apply)")
    _ledger_args(retry, archive=True)
    retry.add_argument("--ids", type=int, nargs="+")
    retry.add_argument("--apply", action="store_true", help="really retry them (default: only count)")
    retry.set_defaults(func=_cmd_retry)

    ignore = sub.add_parser("ignore", help="mark files ignored (dry run unless --apply)")
    _ledger_args(ignore, archive=True)
    ignore.add_argument("--ids", type=int, nargs="+")
    ignore.add_argument("--status", nargs="+", choices=ALL_STATES, default=["failed"])
    ignore.add_argument("--apply", action="store_true", help="really mark them (default: only count)")
    ignore.set_defaults(func=_cmd_ignore)

    imp = sub.add_parser("import-socs", help="import a socs SupRsync SQLite database (supersync_v0)")
    imp.add_argument("socs_db")
    _ledger_args(imp, archive=True)
    imp.add_argument("--max-copy-attempts", type=int, default=5,
                     help="socs rows with this many failed attempts become failed (default: %(default)s)")  # fmt: skip
    imp.set_defaults(func=_cmd_import)

    from .options import SupRsyncOptions

    run = sub.add_parser(
        "run",
        help="run the copy loop without a hub (the agent's run process)",
        description="Run the copy loop of a SupRsync instance without a hub: --instance NAME takes every "
        "setting from the site config (options given here override them); without it, --archive-name, "
        "--remote-basedir, --db-path and --suprsync-file-root are needed.",
    )
    SupRsyncOptions.add_arguments(run)
    for action in run._actions:  # with --instance, the site config supplies the required ones
        action.required = False
    run.add_argument("--instance", default=S, help="a SupRsync instance of the site config: all its settings")
    add_site_arguments(run)
    run.add_argument("--instance-id", default=None, help="names finalization files (default: the instance's)")
    run.add_argument("--once", action="store_true", help="one iteration, then exit (status 1 if anything failed)")
    run.set_defaults(func=_cmd_run)


@dataclass
class _Instance:
    instance_id: str
    args: argparse.Namespace
    db: str
    archive: str


def _site_instances(args, *, strict: bool) -> tuple[Path, list[_Instance]]:
    """The SupRsync instances of the site config (every host), parsed as the agent parses them."""
    path = find_site_file(getattr(args, "site_file", None))
    strict = strict or bool(getattr(args, "site_file", None))
    try:
        site = load_site_config(path)
    except SiteConfigError:
        if strict:
            raise
        return path, []
    found = []
    for inst in site.all_instances():
        if inst.agent_class != "SupRsync":
            continue
        try:
            parsed = parse_instance(site, inst)
        except SiteConfigError:
            if strict and inst.instance_id == getattr(args, "instance", None):
                raise
            continue  # 'hpcsync check' names what is wrong with it
        found.append(_Instance(inst.instance_id, parsed, parsed.db_path, parsed.archive_name))
    return path, found


def _same(a: str, b: str) -> bool:
    from hpcsync.db.engine import url_from_path_or_url

    return url_from_path_or_url(a) == url_from_path_or_url(b)


def _sqlite_file(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    from hpcsync.db.engine import url_from_path_or_url

    parsed = make_url(url_from_path_or_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    return None


@dataclass
class _Ledger:
    manager: SupRsyncFilesManager
    shown: str
    archive: str | None
    #: archives copied from this ledger by instances of the site config
    served: list[str]
    site: Path


def _ledger(args, *, writes: bool = False) -> _Ledger:
    """The ledger (and default archive) a command works on; see the module docstring."""
    wanted = getattr(args, "instance", None)
    explicit = getattr(args, "db", None) or os.environ.get("SUPRSYNC_DB")
    site, instances = _site_instances(args, strict=bool(wanted))
    archive = None
    by_instance = False
    if wanted:
        match = [i for i in instances if i.instance_id == wanted]
        if not match:
            ids = [i.instance_id for i in instances]
            raise SupRsyncError(
                f"no SupRsync instance {wanted!r} in {site}{suggest(wanted, ids)}; "
                f"its SupRsync instances: {', '.join(ids) or 'none'}"
            )
        if explicit and not _same(explicit, match[0].db):
            raise SupRsyncError(
                f"--db {explicit} is not the ledger of instance {wanted} ({match[0].db}); give one or the other"
            )
        url, archive, by_instance = match[0].db, match[0].archive, True
    elif explicit:
        url = explicit
    elif len(instances) == 1:
        url, archive, by_instance = instances[0].db, instances[0].archive, True
    elif instances:
        ids = ", ".join(i.instance_id for i in instances)
        raise SupRsyncError(f"{site} has {len(instances)} SupRsync instances ({ids}): pass --instance NAME")
    else:
        from hpcsync.db import default_url

        url = default_url()
    path = _sqlite_file(url)
    if path is not None and path.is_dir():
        raise SupRsyncError(f"ledger {path} is a directory, not a SQLite file")
    create = writes and getattr(args, "create", False)
    if path is not None and not by_instance and not path.is_file() and not create:
        known = "; ".join(f"{i.db} (instance {i.instance_id})" for i in instances)
        hint = " (pass --create to start a new one)" if writes else ""
        where = f"; the ledgers of {site}: {known}" if known else ""
        raise SupRsyncError(f"ledger {path} does not exist{hint}{where}")
    served = sorted({i.archive for i in instances if _same(i.db, url)})
    return _Ledger(SupRsyncFilesManager(url), str(path or url), archive, served, site)


def _archive(args, ledger: _Ledger, *, required: bool = True) -> str | None:
    archive = getattr(args, "archive", None) or ledger.archive
    if required and not archive:
        raise SupRsyncError("no archive: pass --archive NAME, or --instance NAME to use that instance's")
    return archive


def _served(args, ledger: _Ledger, archive: str) -> None:
    """Refuse an archive no instance copies from this ledger (unless --force)."""
    if archive in ledger.served or getattr(args, "force", False):
        return
    if ledger.served:
        raise SupRsyncError(
            f"no SupRsync instance of {ledger.site} copies archive {archive!r} from ledger {ledger.shown}"
            f"{suggest(archive, ledger.served)}; it serves: {', '.join(ledger.served)} "
            "(pass --force to register anyway)"
        )
    print(
        f"hpcsync suprsync: warning: no SupRsync instance of {ledger.site} uses ledger {ledger.shown}: "
        f"only an agent elsewhere with --db-path {ledger.shown} --archive-name {archive} will copy this",
        file=sys.stderr,
    )


def _show(path: str) -> str:
    """A path on one line: names with newlines or control characters are shown quoted."""
    return path if path.isprintable() else repr(path)


def _fail(message: str) -> int:
    print(f"hpcsync suprsync: {message}", file=sys.stderr)
    return 1


def _cmd_add(args) -> int:
    try:
        ledger = _ledger(args, writes=True)
        archive = _archive(args, ledger)
        _served(args, ledger, archive)
        row = ledger.manager.add_file(args.local_path, args.remote_path, archive, deletable=not args.no_delete)
    except SupRsyncError as exc:
        return _fail(str(exc))
    print(
        f"registered {_show(row.local_path)} -> {_show(row.remote_path)} in archive {archive} "
        f"of ledger {ledger.shown} (id {row.id})"
    )
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
    try:
        ledger = _ledger(args, writes=True)
        archive = _archive(args, ledger)
        _served(args, ledger, archive)
    except SupRsyncError as exc:
        return _fail(str(exc))
    manager = ledger.manager
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
        known = manager.known_remote_paths(archive, [r for _l, r in found]) if found else set()
        print(
            f"{len(found)} files under {root}: {len(found) - len(known)} new, {len(known)} already registered "
            f"in archive {archive} of ledger {ledger.shown} (dry run: nothing registered)"
        )
        return 0
    try:
        report = manager.add_files(entries, archive, deletable=not args.no_delete, skip_bad=True)
    except SupRsyncError as exc:
        return _fail(str(exc))
    print(
        f"{report.added} files registered in archive {archive} of ledger {ledger.shown}, "
        f"{report.requeued} changed and queued again, {report.unchanged} already registered"
    )
    # One odd file (undecodable name, vanished since the walk) never stops the rest.
    for message in report.refused[:20]:
        print(f"hpcsync suprsync: not registered: {message}", file=sys.stderr)
    if report.refused:
        return _fail(f"{len(report.refused)} files could not be registered (see above)")
    return 0


def _cmd_list(args) -> int:
    try:
        ledger = _ledger(args)
    except SupRsyncError as exc:
        return _fail(str(exc))
    archive = getattr(args, "archive", None)
    rows = ledger.manager.list_files(archive, args.status, with_errors=args.retrying, limit=args.limit)
    if args.json:
        keys = ("id", "archive_name", "status", "failed_copy_attempts", "local_path", "remote_path", "last_error")
        print(json.dumps([{k: getattr(r, k) for k in keys} for r in rows], indent=1))
        return 0
    if not rows:
        which = " or ".join(args.status) + (" (or retrying)" if args.retrying else "")
        print(f"no {which} files{f' in archive {archive}' if archive else ''} in ledger {ledger.shown}")
    for r in rows:
        error = f"  ({r.last_error})" if r.last_error else ""
        print(
            f"{r.id}\t{r.archive_name}\t{r.status}\t{r.failed_copy_attempts}\t{_show(r.remote_path)}\t"
            f"{_show(r.local_path)}{error}"
        )
    return 0


def _cmd_check(args) -> int:
    try:
        ledger = _ledger(args)
    except SupRsyncError as exc:
        return _fail(str(exc))
    summary = ledger.manager.status_summary(getattr(args, "archive", None))
    if args.json:
        print(json.dumps(summary, indent=1, sort_keys=True))
    else:
        if not summary:
            print(f"no files registered in ledger {ledger.shown}")
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
    try:
        ledger = _ledger(args)
        archive = _archive(args, ledger)
    except SupRsyncError as exc:
        return _fail(str(exc))
    n = ledger.manager.retry_files(archive, args.ids, dry_run=not args.apply)
    if not args.apply:
        print(f"{n} failed or missing files of {archive} would be pending again (dry run; add --apply)")
    else:
        print(f"{n} files of {archive} are pending again, with fresh attempts")
    return 0


def _cmd_ignore(args) -> int:
    try:
        ledger = _ledger(args)
        archive = _archive(args, ledger)
    except SupRsyncError as exc:
        return _fail(str(exc))
    n = ledger.manager.ignore_files(archive, args.ids, args.status, dry_run=not args.apply)
    if not args.apply:
        print(f"{n} files would be ignored (dry run; add --apply)")
    else:
        print(f"{n} files of {archive} are now ignored")
    return 0


def _cmd_import(args) -> int:
    try:
        ledger = _ledger(args, writes=True)
        report = import_socs_database(
            args.socs_db,
            ledger.manager,
            max_copy_attempts=args.max_copy_attempts,
            archive=getattr(args, "archive", None),
        )
    except SupRsyncError as exc:
        return _fail(str(exc))
    print(json.dumps(report.as_dict(), indent=1, sort_keys=True))
    for line in report.refused[:20]:
        print(f"refused: {line}", file=sys.stderr)
    return 0


#: What ``run`` must have, from the command line or the instance.
_RUN_REQUIRED = ("archive_name", "remote_basedir", "db_path", "suprsync_file_root")


def _run_args(args) -> argparse.Namespace:
    """``run``'s settings: the instance's arguments, overridden by those given on the command line."""
    wanted = getattr(args, "instance", None)
    merged = argparse.Namespace(**vars(args))
    if wanted:
        from .agent import make_parser

        required = [a for key in _RUN_REQUIRED for a in (f"--{key.replace('_', '-')}", "x")]
        defaults = vars(make_parser().parse_args(required))
        site, instances = _site_instances(args, strict=True)
        match = [i for i in instances if i.instance_id == wanted]
        if not match:
            ids = [i.instance_id for i in instances]
            raise SupRsyncError(f"no SupRsync instance {wanted!r} in {site}{suggest(wanted, ids)}; "
                                f"its SupRsync instances: {', '.join(ids) or 'none'}")  # fmt: skip
        for key, value in vars(match[0].args).items():
            given = getattr(args, key, None)
            if given is None or (key in defaults and key not in _RUN_REQUIRED and given == defaults[key]):
                setattr(merged, key, value)
        merged.instance_id = args.instance_id or wanted
    missing = [f"--{k.replace('_', '-')}" for k in _RUN_REQUIRED if not getattr(merged, k, None)]
    if missing:
        raise SupRsyncError(f"run needs --instance NAME, or {', '.join(missing)}")
    merged.instance_id = merged.instance_id or "suprsync-cli"
    return merged


def _cmd_run(args) -> int:
    from hpcsync.agents.core.errors import USER_ERRORS
    from hpcsync.agents.core.jobs import JobContext

    from .options import SupRsyncOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its migration chatter, every run
    try:
        options = SupRsyncOptions.from_args(_run_args(args))
    except (SupRsyncError, *USER_ERRORS) as exc:
        return _fail(str(exc))
    ctx = JobContext("run", threading.Event())
    engine = options.build_engine(ctx, options.open_database)
    try:
        while True:
            report = engine.iterate()
            failed_files = sum(b.failed + b.missing for b in report.batches)
            errors = list(report.errors)
            if report.unreachable and not errors:
                errors.append((report.last_error or {}).get("message") or "destination unreachable")
            ok = report.ok and not failed_files
            print(json.dumps({**report.summary(), "ok": ok, "failed_files": failed_files, "errors": errors},
                             default=str))  # fmt: skip
            if not ok:
                print(f"hpcsync suprsync run: {report.message()}", file=sys.stderr)
            if args.once:
                return 0 if ok else 1
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
