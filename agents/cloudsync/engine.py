"""CloudSync's engine: push, pull, purge, list and status of ``alces sync``-style targets.

Plain Python, no OCS. It drives one :class:`~hpcsync.agents.core.transfer.base.Backend`
rooted at ``<remote>/sync/<user>`` and never knows which kind it is. A target ``NAME``
lives there as alces laid it out — its files under ``NAME/`` — plus hpcsync's manifest
``NAME.hpcsync.json``: every file's content hash, stored size, owner, group, mode, mtime
and whether it is encrypted; every directory (so empty ones come back) and symlink; the
encryption settings. alces's ``NAME.yml`` (permissions map) and ``NAME.dat`` (openssl
tarball) are read when there is no manifest.

**push** scans the directory (symlinks recorded, never followed), hashes only files whose
signature (size, mtime, inode, ctime) is not in the local hash cache, compares each hash
with the manifest's (never an ETag, never size and time), sends what differs in batches,
writes the manifest, then deletes what was removed, unless more than ``max_delete`` would
go: then it refuses and changes nothing. A file it cannot read is reported and its remote
copy kept; the rest is synced.

**pull** fetches files whose content differs from the manifest into a temporary name next
to their place, checks the hash (and authenticates encrypted ones), sets mode, mtime and
(as root) owner, and renames it into place: an interrupted pull leaves no half file. It
refuses paths that would land outside the directory (``../x``, through a symlink), keeps
local extras unless ``delete`` is asked, and recreates empty directories.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import grp
import hashlib
import io
import json
import logging
import os
import pwd
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.process import CommandCancelled
from hpcsync.agents.core.secrets import load_secret
from hpcsync.agents.core.transfer.base import Backend, DestinationError, Item, RemoteUnreachable, unsafe_relative_path

from . import crypto, ledger
from .targets import Target, TargetStore, remote_root

log = logging.getLogger("hpcsync.cloudsync")

MANIFEST_FORMAT = "hpcsync-cloudsync/1"
BLOCK = 1 << 20
BATCH_FILES = 200
BATCH_BYTES = 256 << 20
HASH_WORKERS = 4
#: batches under way at once in a push: the next one goes while the last one's slowest files
#: finish (on loopback, CPU-bound, 1, 2 and 4 measured the same; a remote far away gains)
SEND_AHEAD = 2
TIMEOUT = 6 * 3600
LIST_LIMIT = 20


class CloudSyncError(ConfigError):
    """A run that cannot go on: remote unreachable or refusing, wrong passphrase, tampered
    manifest. One line naming what was wrong; the CLI and the agent print it as such."""


def clear_errors(method):
    """Turn the transfer layer's and the crypto's errors into :class:`CloudSyncError`."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (RemoteUnreachable, crypto.CryptoError) as exc:
            raise CloudSyncError(str(exc)) from None
        except Exception as exc:
            if type(exc).__module__.startswith(("botocore", "s3transfer")) or "S3ConfigError" in type(exc).__name__:
                raise CloudSyncError(f"S3: {exc}") from None
            raise

    return wrapper


def manifest_name(name: str) -> str:
    return f"{name}.hpcsync.json"


@dataclass
class FileInfo:
    size: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    sig: ledger.Signature
    enc: bool
    sha256: str | None = None


@dataclass
class Scan:
    files: dict[str, FileInfo] = field(default_factory=dict)
    dirs: dict[str, dict] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    #: paths not synced, with the reason (unreadable, not UTF-8, key too long, special file)
    problems: dict[str, str] = field(default_factory=dict)
    #: directories that could not be read: nothing below them is deleted remotely
    unreadable_dirs: set[str] = field(default_factory=set)
    hashed: int = 0


@dataclass
class Report:
    """What one push, pull or purge did (a :class:`~hpcsync.agents.core.jobs.JobReport`)."""

    operation: str
    target: str
    ok: bool = True
    dry_run: bool = False
    refused: str | None = None
    files_total: int = 0
    files_sent: int = 0
    bytes_sent: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    attrs_updated: int = 0
    dirs: int = 0
    hashed: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    planned: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    stopped: bool = False
    note: str = ""

    @property
    def degraded(self) -> bool:
        return not self.ok or bool(self.problems)

    def message(self) -> str:
        if self.refused:
            return f"{self.operation} of {self.target} refused: {self.refused}"
        verb = {"push": "sent", "pull": "fetched", "purge": "deleted"}.get(self.operation, "moved")
        would = "would be " if self.dry_run else ""
        text = f"{self.operation} of {self.target}: {self.files_sent} file(s) {would}{verb} ({self.bytes_sent} bytes)"
        if self.operation != "purge":
            text += f", {self.files_unchanged} unchanged, {self.files_deleted} {would}deleted"
        if self.problems:
            first = next(iter(self.problems.items()))
            text += f"; {len(self.problems)} not synced (first: {first[0]!r}: {first[1]})"
        if self.stopped:
            text += "; stopped on request"
        if self.note:
            text += f"; {self.note}"
        return text

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target, "dry_run": self.dry_run, "refused": self.refused,
            "files_total": self.files_total, "files_sent": self.files_sent, "bytes_sent": self.bytes_sent,
            "files_unchanged": self.files_unchanged, "files_deleted": self.files_deleted,
            "attrs_updated": self.attrs_updated, "hashed": self.hashed, "problems": len(self.problems),
            "first_problems": dict(list(self.problems.items())[:LIST_LIMIT]),
            "elapsed": round(self.elapsed, 3),
        }  # fmt: skip

    def feed_records(self):
        data = {k: v for k, v in self.summary().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        data["rate"] = self.bytes_sent / self.elapsed if self.elapsed > 0 else 0.0
        return [("cloudsync", f"{self.operation}_{self.target}", data)]


@dataclass
class Settings:
    """What an engine needs (see :class:`~.options.CloudSyncOptions`)."""

    config_dir: str
    remote: str
    user: str
    instance_id: str = "cli"
    home: str = field(default_factory=lambda: os.path.expanduser("~"))
    passphrase: str | None = None  # a secret reference: file:/path or env:NAME
    max_delete: int | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)


def make_backend(remote: str, user: str, options: dict[str, Any] | None = None) -> Backend:
    """The backend rooted at ``<remote>/sync/<user>``: S3 for ``s3://``, else a local directory."""
    root = remote_root(remote, user)
    if remote.startswith("s3://"):
        from hpcsync.agents.core.transfer.s3 import S3Backend

        return S3Backend(root, **(options or {}))
    from hpcsync.agents.core.transfer.localdir import LocalDirBackend

    if not os.path.isdir(remote):
        raise ConfigError(f"remote directory {remote} does not exist")
    os.makedirs(root, exist_ok=True)
    return LocalDirBackend(root, bwlimit=(options or {}).get("bwlimit"))


class CloudSyncEngine:
    """One run's engine: targets from their files, one backend, the hash cache."""

    def __init__(self, settings: Settings, database: Callable[[], Any], *, backend: Backend | None = None,
                 cancel: threading.Event | None = None, progress: Callable[..., None] | None = None):  # fmt: skip
        self.settings = settings
        self.store = TargetStore(settings.config_dir, settings.home)
        self._database = database
        self._backend = backend
        self.cancel = cancel or threading.Event()
        self.progress = progress or (lambda **kw: None)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.settings.remote, self.settings.user, self.settings.backend_options)
        return self._backend

    def remote_of(self, name: str) -> str:
        return f"{remote_root(self.settings.remote, self.settings.user)}/{name}"

    # -- list and status -----------------------------------------------------------------------

    @clear_errors
    def list_targets(self) -> list[tuple[Target, str]]:
        return [(t, self.remote_of(t.name)) for t in self.store.load_all()]

    @clear_errors
    def status(self) -> dict[str, Any]:
        db = self._database()
        out = {}
        for target, remote in self.list_targets():
            row = ledger.target_state(db, self.settings.instance_id, target.name)
            entry: dict[str, Any] = {"local_dir": target.local_dir, "remote": remote}
            if row is not None:
                for key in ("last_push_at", "last_push_ok", "last_push_files", "last_push_bytes", "last_pull_at",
                            "last_pull_ok", "last_pull_files", "last_message"):  # fmt: skip
                    entry[key] = getattr(row, key)
            out[target.name] = entry
        return out

    # -- the passphrase and key ------------------------------------------------------------------

    def _passphrase(self, name: str, why: str) -> str:
        if not self.settings.passphrase:
            raise ConfigError(
                f"target {name} {why}, but no passphrase is configured: give --passphrase file:/path or env:NAME"
            )
        return load_secret(self.settings.passphrase, what="CloudSync passphrase").reveal()

    def _key(self, name: str, manifest: dict | None, why: str) -> crypto.TargetKey:
        params = (manifest or {}).get("encryption")
        phrase = self._passphrase(name, why)
        if params:
            return crypto.TargetKey.open(phrase, params, f"target {name} ({manifest_name(name)})")
        return crypto.TargetKey.create(phrase)

    # -- manifest ---------------------------------------------------------------------------------

    def read_manifest(self, name: str) -> dict | None:
        data = self.backend.read_object(manifest_name(name), timeout=600, cancel=self.cancel)
        if data is None:
            return None
        try:
            manifest = json.loads(data.decode("utf-8"))
            if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
                raise ValueError("not a CloudSync manifest")
        except (ValueError, UnicodeDecodeError) as exc:
            raise DestinationError(f"{self.remote_of(name)}: {manifest_name(name)} is damaged ({exc})") from None
        return manifest

    # -- scanning ---------------------------------------------------------------------------------

    def scan(self, target: Target, report: Report) -> Scan:
        root = target.local_dir
        if not os.path.isdir(root):
            raise ConfigError(f"target {target.name}: {root} is not a directory")
        scan = Scan()
        max_bytes = getattr(self.backend, "max_path_bytes", None)
        limit = None if max_bytes is None else max_bytes - len(target.name.encode()) - 1

        def walk(directory: str, rel: str) -> None:
            if self.cancel.is_set():
                return
            try:
                entries = list(os.scandir(directory))
            except OSError as exc:
                scan.problems[rel or "."] = f"directory not readable: {exc.strerror or exc}"
                scan.unreadable_dirs.add(rel)
                return
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    scan.problems[name] = "name is not valid UTF-8 (S3 keys must be)"
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    scan.problems[name] = exc.strerror or str(exc)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if target.excluded_dir(name):
                        continue
                    scan.dirs[name] = _attrs(st)
                    walk(entry.path, name)
                    continue
                kind = target.classify(name)
                if kind is None:
                    continue
                if limit is not None and len(name.encode()) > limit:
                    scan.problems[name] = f"path is {len(name.encode())} bytes; this remote takes at most {limit}"
                elif stat.S_ISLNK(st.st_mode):
                    try:
                        scan.links[name] = os.readlink(entry.path)
                    except OSError as exc:
                        scan.problems[name] = exc.strerror or str(exc)
                elif stat.S_ISREG(st.st_mode):
                    scan.files[name] = FileInfo(st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_uid,
                                                st.st_gid, ledger.Signature.of(st), kind == "encrypt")  # fmt: skip
                else:
                    scan.problems[name] = "not a regular file, directory or symlink"

        report.note = "scanning"
        walk(root, "")
        report.note = ""
        self._hash(target, scan)
        return scan

    def _hash(self, target: Target, scan: Scan) -> None:
        """Fill each file's sha256 from the cache, hashing only files whose signature moved."""
        db = self._database()
        scope = ledger.scope_of(target.local_dir)
        cached = ledger.load_hashes(db, scope)
        todo = []
        for rel, info in scan.files.items():
            hit = cached.get(rel)
            if hit is not None and hit[0] == info.sig:
                info.sha256 = hit[1]
            else:
                todo.append(rel)
        fresh: dict[str, tuple[ledger.Signature, str]] = {}
        if todo:
            self.progress(activity="hashing", files_total=len(todo))

            def work(rel: str) -> tuple[str, str | None, str | None]:
                if self.cancel.is_set():
                    return rel, None, "stopped"
                try:
                    return rel, *_sha256_checked(os.path.join(target.local_dir, rel), scan.files[rel].sig)
                except OSError as exc:
                    return rel, None, f"not readable: {exc.strerror or exc}"

            with ThreadPoolExecutor(HASH_WORKERS) as pool:
                for rel, sha, problem in pool.map(work, todo):
                    if sha is None:
                        scan.problems[rel] = problem or "not readable"
                        del scan.files[rel]
                    else:
                        scan.files[rel].sha256 = sha
                        fresh[rel] = (scan.files[rel].sig, sha)
        scan.hashed = len(fresh)
        gone = [p for p in cached if p not in scan.files and p not in scan.problems]
        ledger.save_hashes(db, scope, fresh, gone)

    # -- push ---------------------------------------------------------------------------------------

    def push_many(self, names: list[str]) -> Report:
        """Push each target in turn (the run process's cycle); one combined report."""
        total = Report("push", ",".join(names))
        for name in names:
            if self.cancel.is_set():
                total.stopped = True
                break
            try:
                one = self.push(name)
            except ConfigError as exc:
                total.ok = False
                total.problems[name] = str(exc)
                continue
            total.ok = total.ok and one.ok
            total.stopped = total.stopped or one.stopped
            for key in ("files_total", "files_sent", "bytes_sent", "files_unchanged", "files_deleted", "hashed"):
                setattr(total, key, getattr(total, key) + getattr(one, key))
            total.problems.update({f"{name}: {k}": v for k, v in one.problems.items()})
            if one.refused:
                total.problems[name] = one.refused
            total.elapsed += one.elapsed
        return total

    @clear_errors
    def push(self, name: str = "default", *, dry_run: bool = False, max_delete: int | None = None) -> Report:
        started = time.monotonic()
        target = self.store.load(name)
        report = Report("push", name, dry_run=dry_run)
        backend = self.backend
        # The remote's manifest and listing are fetched while the directory is scanned and hashed.
        with ThreadPoolExecutor(2, thread_name_prefix="cloudsync-remote") as pool:
            manifest_future = pool.submit(self.read_manifest, name)
            listing = pool.submit(backend.list, name + "/", timeout=TIMEOUT, cancel=self.cancel)
            scan = self.scan(target, report)
            manifest = manifest_future.result()
            remote = {e.path[len(name) + 1 :]: e for e in listing.result()}
        report.problems.update(scan.problems)
        report.hashed = scan.hashed
        report.files_total = len(scan.files)
        enc_count = sum(1 for f in scan.files.values() if f.enc)
        key = self._key(name, manifest, f"has {enc_count} file(s) to encrypt") if enc_count else None
        old_files = (manifest or {}).get("files", {})

        new_files: dict[str, dict] = {}
        to_send: list[str] = []
        for rel, info in sorted(scan.files.items()):
            stored_hash = key.name_hash(info.sha256) if info.enc else info.sha256
            entry = _file_entry(info, stored_hash)
            old = old_files.get(rel)
            there = remote.get(rel)
            if (old and old.get("hash") == stored_hash and bool(old.get("enc")) == info.enc and there is not None
                    and there.size == old.get("stored_size")):  # fmt: skip
                entry["stored_size"] = old["stored_size"]
                new_files[rel] = entry
                report.files_unchanged += 1
                if any(old.get(k) != entry[k] for k in ("mode", "mtime_ns", "uid", "gid")):
                    report.attrs_updated += 1
            else:
                to_send.append(rel)
        protected = set(scan.problems) | set(scan.links)
        to_delete = sorted(
            rel for rel in remote
            if rel not in scan.files and rel not in protected and not _under(rel, scan.unreadable_dirs)
        )  # fmt: skip
        # a file we could not read keeps its remote copy and its manifest entry, and so does
        # everything below a directory we could not read (its directories and links too)
        for rel, entry in old_files.items():
            if rel in remote and rel not in new_files and (rel in scan.problems or _under(rel, scan.unreadable_dirs)):
                new_files[rel] = entry
        dirs, links = dict(scan.dirs), dict(scan.links)
        for kept, old in ((dirs, (manifest or {}).get("dirs", {})), (links, (manifest or {}).get("links", {}))):
            for rel, value in old.items():
                if rel not in kept and _under(rel, scan.unreadable_dirs):
                    kept[rel] = value
        limit = self.settings.max_delete if max_delete is None else max_delete
        if limit is not None and limit >= 0 and len(to_delete) > limit:
            report.ok = False
            report.refused = (f"{len(to_delete)} remote file(s) would be deleted, more than the limit of {limit} "
                              f"(--max-delete); nothing was changed")  # fmt: skip
            report.planned = to_delete[:LIST_LIMIT]
            report.elapsed = time.monotonic() - started
            return report
        report.planned = to_send[:LIST_LIMIT]
        if dry_run:
            report.files_sent = len(to_send)
            report.bytes_sent = sum(scan.files[r].size for r in to_send)
            report.files_deleted = len(to_delete)
            report.elapsed = time.monotonic() - started
            return report

        self._send(target, scan, to_send, key, new_files, report, started)
        if self.cancel.is_set():
            report.stopped = True
            # what a stop left unsent keeps its old entry while its old object is there (a
            # pull checks the hash, so a half-replaced file is never taken for the new one)
            for rel in to_send:
                if rel not in new_files and rel in old_files and rel in remote:
                    new_files[rel] = old_files[rel]
        new_manifest = {
            "format": MANIFEST_FORMAT, "target": name, "pushed_at": time.time(), "pushed_by": os.uname().nodename,
            "files": new_files, "dirs": dirs, "links": links,
        }  # fmt: skip
        if key is not None:
            new_manifest["encryption"] = key.params
        elif manifest and manifest.get("encryption"):
            new_manifest["encryption"] = manifest["encryption"]
        if not _same_manifest(manifest, new_manifest):  # a run that changed nothing writes nothing
            backend.write_object(manifest_name(name), json.dumps(new_manifest, ensure_ascii=False).encode("utf-8"),
                                 timeout=600, cancel=None)  # fmt: skip
        if not report.stopped and to_delete:
            outcome = backend.delete([f"{name}/{rel}" for rel in to_delete], timeout=TIMEOUT, cancel=self.cancel)
            failed = {p[len(name) + 1 :]: why for p, why in {**outcome.file_errors, **outcome.skipped}.items()}
            report.problems.update({rel: f"not deleted: {why}" for rel, why in failed.items()})
            report.files_deleted = len(to_delete) - len(failed)
        self._drop_legacy_dat(name, report)
        report.dirs = len(scan.dirs)
        report.elapsed = time.monotonic() - started
        self._record(target, push=True, report=report)
        return report

    def _send(self, target: Target, scan: Scan, to_send: list[str], key, new_files: dict, report: Report,
              started: float) -> None:  # fmt: skip
        """Send ``to_send`` in batches, :data:`SEND_AHEAD` of them under way at once (the next
        batch goes while the last one's slowest files finish), each recorded in
        ``new_files`` as it ends, in order. A stop sends no further batch; of those under
        way, what the backend says reached the remote whole is recorded."""
        total_bytes = sum(scan.files[r].size for r in to_send)
        tmpdir = tempfile.mkdtemp(prefix="hpcsync-cloudsync-")  # 0700: encrypted copies only
        under_way: collections.deque = collections.deque()

        def progress(current: str) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            self.progress(activity="sending", files_done=report.files_sent, files_total=len(to_send),
                          bytes_done=report.bytes_sent, bytes_total=total_bytes,
                          rate=round(report.bytes_sent / elapsed), current=current)  # fmt: skip

        def settle() -> None:
            batch, items, future = under_way.popleft()
            try:
                outcome = future.result()
            except CommandCancelled as exc:  # stopped mid-batch: what reached the remote counts
                landed = set(getattr(exc, "sent", ()))
                self._account(target, scan, [i for i in items if i[1].remote_path in landed], None, key, new_files,
                              report)  # fmt: skip
                return
            self._account(target, scan, items, outcome, key, new_files, report)
            progress(batch[-1])

        try:
            # on an error the batches still under way end first: the pool waits for them
            with ThreadPoolExecutor(SEND_AHEAD, thread_name_prefix="cloudsync-send") as pool:
                batch: list[str] = []
                size = 0
                for n, rel in enumerate(to_send):
                    batch.append(rel)
                    size += scan.files[rel].size
                    if len(batch) < BATCH_FILES and size < BATCH_BYTES and n < len(to_send) - 1:
                        continue
                    if self.cancel.is_set():
                        break
                    progress(batch[0])
                    items = self._prepare(target, scan, batch, key, report, tmpdir, n)
                    future = pool.submit(self.backend.put, [i for _r, i, _s in items], timeout=TIMEOUT,
                                         cancel=self.cancel)  # fmt: skip
                    under_way.append((batch, items, future))
                    if len(under_way) >= SEND_AHEAD:
                        settle()
                    batch, size = [], 0
                while under_way:
                    settle()
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _prepare(self, target, scan, batch, key, report, tmpdir, tag) -> list[tuple[str, Item, int]]:
        """``(path, backend item, stored size)`` of each file of ``batch`` (encrypted ones into
        ``tmpdir``, named apart per batch: two batches may be under way)."""
        items = []
        for rel in batch:
            info = scan.files[rel]
            src = os.path.join(target.local_dir, rel)
            if info.enc:
                tmp = os.path.join(tmpdir, f"{tag}.{len(items)}.enc")
                try:
                    with open(src, "rb") as fin, open(tmp, "wb") as fout:
                        stored = key.encrypt_file(fin, fout, rel)
                except OSError as exc:
                    report.problems[rel] = f"not readable: {exc.strerror or exc}"
                    continue
                meta = {"hpcsync-enc": "1", "hpcsync-hash": key.name_hash(info.sha256)}
                items.append((rel, Item(tmp, f"{target.name}/{rel}", stored, meta), stored))
            else:
                meta = {"sha256": info.sha256}
                items.append((rel, Item(src, f"{target.name}/{rel}", info.size, meta), info.size))
        return items

    def _account(self, target, scan, items, outcome, key, new_files, report) -> None:
        """Record in ``new_files`` and ``report`` the files of a batch the backend sent
        (``outcome`` None: ``items`` are those a stopped batch had sent whole)."""
        failed = {**outcome.skipped, **outcome.file_errors} if outcome is not None else {}
        for rel, item, stored in items:
            if item.remote_path in failed:
                report.problems[rel] = f"not sent: {failed[item.remote_path]}"
                continue
            if outcome is not None and outcome.timed_out and not outcome.file_errors and not outcome.ok:
                report.problems[rel] = "not sent: timed out"
                continue
            info = scan.files[rel]
            try:
                now = ledger.Signature.of(os.stat(os.path.join(target.local_dir, rel)))
            except OSError:
                now = None
            if now != info.sig:  # changed while being sent: what went up may not match the hash
                report.problems[rel] = "changed while being sent; the next push sends it again"
                continue
            entry = _file_entry(info, key.name_hash(info.sha256) if info.enc else info.sha256)
            entry["stored_size"] = stored
            new_files[rel] = entry
            report.files_sent += 1
            report.bytes_sent += info.size
        if outcome is not None and not outcome.ok and not outcome.file_errors and not outcome.skipped and outcome.error:
            log.warning("batch to %s: %s", self.backend.describe(), outcome.error)

    def _drop_legacy_dat(self, name: str, report: Report) -> None:
        row = ledger.target_state(self._database(), self.settings.instance_id, name)
        if row is None or not row.legacy_imported:
            return
        if self.backend.read_object(f"{name}.dat", timeout=600, cancel=self.cancel) is not None:
            self.backend.delete([f"{name}.dat"], timeout=600, cancel=self.cancel)
            report.note = f"alces's {name}.dat replaced by per-file encryption"

    def _record(self, target: Target, *, push: bool, report: Report) -> None:
        prefix = "last_push" if push else "last_pull"
        fields = {f"{prefix}_at": time.time(), f"{prefix}_ok": report.ok and not report.problems,
                  f"{prefix}_files": report.files_sent, "last_message": report.message()[:2000]}  # fmt: skip
        if push:
            fields["last_push_bytes"] = report.bytes_sent
        ledger.record_target(self._database(), self.settings.instance_id, target.name, target.local_dir,
                             self.remote_of(target.name), **fields)  # fmt: skip

    # -- pull ---------------------------------------------------------------------------------------

    @clear_errors
    def pull(self, name: str = "default", *, dry_run: bool = False, delete: bool = False) -> Report:
        started = time.monotonic()
        target = self.store.load(name)
        report = Report("pull", name, dry_run=dry_run)
        root = target.local_dir
        if not dry_run:
            os.makedirs(root, exist_ok=True)
        manifest = self.read_manifest(name)
        legacy = None
        if manifest is None:
            manifest, legacy = self._foreign_manifest(name)
        files: dict[str, dict] = manifest["files"]
        key = None
        if any(m.get("enc") for m in files.values()):
            key = self._key(name, manifest, "has encrypted files")
        safe: dict[str, dict] = {}
        for rel, m in files.items():
            why = _unsafe_local(root, rel)
            if why:
                report.problems[rel] = f"refused: {why}"
            else:
                safe[rel] = m
        report.files_total = len(safe)
        cached = ledger.load_hashes(self._database(), ledger.scope_of(root))
        to_fetch: list[str] = []
        attrs_only: list[str] = []
        for rel, m in sorted(safe.items()):
            local = os.path.join(root, rel)
            try:
                st = os.lstat(local)
            except FileNotFoundError:
                to_fetch.append(rel)
                continue
            except OSError as exc:
                report.problems[rel] = exc.strerror or str(exc)
                continue
            if not stat.S_ISREG(st.st_mode):
                report.problems[rel] = "a directory or symlink is in its place locally; not replaced"
                continue
            if _same_content(local, st, m, key, cached.get(rel)):
                report.files_unchanged += 1
                if _attrs_differ(st, m):
                    attrs_only.append(rel)
            else:
                to_fetch.append(rel)
        report.planned = to_fetch[:LIST_LIMIT]
        extras = self._local_extras(target, safe, manifest) if delete else []
        if dry_run:
            report.files_sent = len(to_fetch)
            report.bytes_sent = sum(int(safe[r].get("size", 0)) for r in to_fetch)
            report.files_deleted = len(extras)
            report.elapsed = time.monotonic() - started
            return report
        for rel in sorted(manifest.get("dirs", {})):
            if _unsafe_local(root, rel + "/x") is None:
                with contextlib.suppress(OSError):
                    _safe_makedirs(root, rel)
        fresh: dict[str, tuple[ledger.Signature, str]] = {}
        total_bytes = sum(int(safe[r].get("stored_size", safe[r].get("size", 0))) for r in to_fetch)
        for i in range(0, len(to_fetch), BATCH_FILES):
            if self.cancel.is_set():
                report.stopped = True
                break
            self._fetch_batch(target, to_fetch[i : i + BATCH_FILES], safe, key, report, fresh)
            elapsed = max(time.monotonic() - started, 1e-6)
            last = to_fetch[min(i + BATCH_FILES, len(to_fetch)) - 1]
            self.progress(activity="fetching", files_done=report.files_sent, files_total=len(to_fetch),
                          bytes_done=report.bytes_sent, bytes_total=total_bytes,
                          rate=round(report.bytes_sent / elapsed), current=last)  # fmt: skip
        for rel in attrs_only:
            _apply_attrs(os.path.join(root, rel), safe[rel])
            report.attrs_updated += 1
        for rel, link in manifest.get("links", {}).items():
            if _unsafe_local(root, rel) is None and not os.path.lexists(os.path.join(root, rel)):
                with contextlib.suppress(OSError):
                    _safe_makedirs(root, os.path.dirname(rel))
                    os.symlink(link, os.path.join(root, rel))
        if legacy is not None:
            self._import_legacy(target, legacy, report)
        for rel in extras:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(root, rel))
                report.files_deleted += 1
        for rel, attrs in sorted(manifest.get("dirs", {}).items(), key=lambda kv: -kv[0].count("/")):
            path = os.path.join(root, rel)
            if _unsafe_local(root, rel + "/x") is None and os.path.isdir(path) and not os.path.islink(path):
                _apply_attrs(path, attrs)
        report.dirs = len(manifest.get("dirs", {}))
        ledger.save_hashes(self._database(), ledger.scope_of(root), fresh)
        report.elapsed = time.monotonic() - started
        self._record(target, push=False, report=report)
        return report

    def _fetch_batch(self, target, batch, safe, key, report, fresh) -> None:
        root = target.local_dir
        items = []
        staged = {}
        for rel in batch:
            local = os.path.join(root, rel)
            try:
                _safe_makedirs(root, os.path.dirname(rel))
            except OSError as exc:
                report.problems[rel] = f"refused: {exc}"
                continue
            stage_name = f".{os.path.basename(local)[:80]}.hpcsync-{os.urandom(4).hex()}"
            stage = os.path.join(os.path.dirname(local), stage_name)
            staged[rel] = stage
            items.append(Item(stage, f"{target.name}/{rel}"))
        outcome = self.backend.get(items, timeout=TIMEOUT, cancel=self.cancel)
        failed = {**outcome.skipped, **outcome.file_errors}
        for rel, stage in staged.items():
            m = safe[rel]
            local = os.path.join(root, rel)
            try:
                if f"{target.name}/{rel}" in failed or not os.path.isfile(stage):
                    why = failed.get(f"{target.name}/{rel}", "missing on the remote")
                    report.problems[rel] = f"not fetched: {why}"
                    continue
                if m.get("enc"):
                    plain = stage + ".plain"
                    digest = hashlib.sha256()
                    try:
                        with open(stage, "rb") as fin, open(plain, "wb") as fout:
                            for chunk in key.decrypt_chunks(fin, rel, f"{target.name}/{rel}"):
                                digest.update(chunk)
                                fout.write(chunk)
                        if key.name_hash(digest.hexdigest()) != m.get("hash"):
                            raise crypto.TamperedObject(f"{target.name}/{rel} does not match the manifest's hash")
                    except crypto.CryptoError as exc:
                        with contextlib.suppress(OSError):
                            os.remove(plain)
                        report.problems[rel] = str(exc)
                        continue
                    os.replace(plain, stage)
                    sha = digest.hexdigest()
                else:
                    sha = _sha256_file(stage)
                    if m.get("hash") and sha != m["hash"]:
                        report.problems[rel] = "content does not match the manifest's hash; not written"
                        continue
                _apply_attrs(stage, m)
                os.replace(stage, local)
                fresh[rel] = (ledger.Signature.of(os.stat(local)), sha)
                report.files_sent += 1
                report.bytes_sent += os.stat(local).st_size
            finally:
                with contextlib.suppress(OSError):
                    os.remove(stage)

    def _local_extras(self, target: Target, files: dict, manifest: dict) -> list[str]:
        """Local files the target syncs that the remote does not have (deleted by ``delete``)."""
        extras = []
        keep = set(files) | set(manifest.get("links", {}))
        for dirpath, dirnames, filenames in os.walk(target.local_dir):
            rel_dir = os.path.relpath(dirpath, target.local_dir)
            rel_dir = "" if rel_dir == "." else rel_dir
            dirnames[:] = [d for d in dirnames if not target.excluded_dir(f"{rel_dir}/{d}".lstrip("/"))]
            for f in filenames:
                rel = f"{rel_dir}/{f}".lstrip("/")
                if rel not in keep and target.classify(rel) is not None and ".hpcsync-" not in f:
                    extras.append(rel)
        return extras

    def _foreign_manifest(self, name: str) -> tuple[dict, dict | None]:
        """A manifest for a remote hpcsync did not write: alces's (``NAME.yml``'s permissions
        map, ``NAME.dat``), or plain files from another tool. Files carry no hash."""
        entries = self.backend.list(name + "/", timeout=TIMEOUT, cancel=self.cancel)
        perms: dict = {}
        yml = self.backend.read_object(f"{name}.yml", timeout=600, cancel=self.cancel)
        if yml is not None:
            perms = _alces_permissions(yml.decode("utf-8", "replace"))
        files, dirs = {}, {}
        for e in entries:
            rel = e.path[len(name) + 1 :]
            if rel.endswith("/.empty") or rel == ".empty":  # alces's empty-directory marker
                d = rel.rpartition("/")[0]
                if d:
                    dirs[d] = perms.get(d, {})
                continue
            entry = {"size": e.size, "stored_size": e.size, "enc": False, "hash": None}
            entry.update(perms.get(rel, {}))
            files[rel] = entry
        for rel, attrs in perms.items():
            if attrs.get("dir"):
                dirs.setdefault(rel, attrs)
        dat = self.backend.read_object(f"{name}.dat", timeout=TIMEOUT, cancel=self.cancel)
        legacy = {"dat": dat} if dat is not None else None
        return {"format": MANIFEST_FORMAT, "files": files, "dirs": dirs, "links": {}}, legacy

    def _import_legacy(self, target: Target, legacy: dict, report: Report) -> None:
        phrase = self._passphrase(target.name, f"has alces's encrypted {target.name}.dat")
        data = crypto.decrypt_openssl_enc(legacy["dat"], phrase, f"{target.name}.dat")
        count = _extract_tar(data, target.local_dir, report)
        report.files_sent += count
        report.note = f"{count} file(s) read from alces's {target.name}.dat; the next push stores them encrypted"
        ledger.record_target(self._database(), self.settings.instance_id, target.name, target.local_dir,
                             self.remote_of(target.name), legacy_imported=True)  # fmt: skip

    # -- purge --------------------------------------------------------------------------------------

    @clear_errors
    def purge(self, name: str = "default", *, confirm: bool = False) -> Report:
        started = time.monotonic()
        report = Report("purge", name, dry_run=not confirm)
        entries = self.backend.list(name + "/", timeout=TIMEOUT, cancel=self.cancel)
        paths = [e.path for e in entries]
        extra = [p for p in (manifest_name(name), f"{name}.yml", f"{name}.dat")
                 if self.backend.read_object(p, timeout=600, cancel=self.cancel) is not None]  # fmt: skip
        paths += extra
        report.files_total = len(paths)
        report.files_sent = len(paths)
        report.bytes_sent = sum(e.size for e in entries)
        report.planned = paths[:LIST_LIMIT]
        if not confirm:
            report.note = f"nothing deleted: confirm to delete everything under {self.remote_of(name)}"
            report.elapsed = time.monotonic() - started
            return report
        outcome = self.backend.delete(paths, timeout=TIMEOUT, cancel=self.cancel)
        for p, why in {**outcome.file_errors, **outcome.skipped}.items():
            report.problems[p] = f"not deleted: {why}"
        report.files_sent = len(paths) - len(report.problems)
        report.ok = not report.problems
        report.elapsed = time.monotonic() - started
        return report


# -- helpers --------------------------------------------------------------------------------------


def _attrs(st) -> dict:
    return {"mode": stat.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns, "uid": st.st_uid, "gid": st.st_gid,
            "owner": _user(st.st_uid), "group": _group(st.st_gid)}  # fmt: skip


def _file_entry(info: FileInfo, stored_hash: str) -> dict:
    return {"hash": stored_hash, "size": info.size, "stored_size": info.size, "enc": info.enc, "mode": info.mode,
            "mtime_ns": info.mtime_ns, "uid": info.uid, "gid": info.gid, "owner": _user(info.uid),
            "group": _group(info.gid)}  # fmt: skip


_names: dict[tuple[str, int], str | None] = {}


def _user(uid: int) -> str | None:
    if ("u", uid) not in _names:
        try:
            _names["u", uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _names["u", uid] = None
    return _names["u", uid]


def _group(gid: int) -> str | None:
    if ("g", gid) not in _names:
        try:
            _names["g", gid] = grp.getgrgid(gid).gr_name
        except KeyError:
            _names["g", gid] = None
    return _names["g", gid]


def _under(rel: str, dirs: set[str]) -> bool:
    return any(d == "" or rel.startswith(d + "/") for d in dirs)


def _same_manifest(old: dict | None, new: dict) -> bool:
    """True if ``new`` says what ``old`` says, leaving aside when and where it was pushed."""
    if old is None:
        return False
    moment = ("pushed_at", "pushed_by")
    return {k: v for k, v in old.items() if k not in moment} == {k: v for k, v in new.items() if k not in moment}


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _sha256_checked(path: str, sig: ledger.Signature) -> tuple[str | None, str | None]:
    """sha256 of ``path`` (never through a symlink) if it still has signature ``sig`` after
    being read; else ``(None, why)``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        digest = hashlib.sha256()
        while block := f.read(BLOCK):
            digest.update(block)
        after = ledger.Signature.of(os.fstat(f.fileno()))
    if after != sig:
        return None, "changed while being read; the next push sends it"
    return digest.hexdigest(), None


def _same_content(local: str, st, m: dict, key, cached) -> bool:
    want = m.get("hash")
    if not want:  # no hash (alces or another tool): size and mtime from its permissions map
        return st.st_size == m.get("size") and m.get("mtime_ns") is not None and st.st_mtime_ns == m["mtime_ns"]
    sig = ledger.Signature.of(st)
    sha = cached[1] if cached is not None and cached[0] == sig else _sha256_file(local)
    return (key.name_hash(sha) if m.get("enc") else sha) == want


def _attrs_differ(st, m: dict) -> bool:
    return (m.get("mode") is not None and stat.S_IMODE(st.st_mode) != m["mode"]) or (
        m.get("mtime_ns") is not None and st.st_mtime_ns != m["mtime_ns"]
    )


def _apply_attrs(path: str, m: dict) -> None:
    """Mode, owner (as root) and mtime from the manifest; never through a symlink."""
    if os.geteuid() == 0 and (m.get("owner") or m.get("uid") is not None):
        uid = _uid_of(m.get("owner"), m.get("uid"))
        gid = _gid_of(m.get("group"), m.get("gid"))
        with contextlib.suppress(OSError):
            os.chown(path, uid, gid, follow_symlinks=False)
    if m.get("mode") is not None:
        os.chmod(path, int(m["mode"]) & 0o7777)
    if m.get("mtime_ns") is not None:
        os.utime(path, ns=(time.time_ns(), int(m["mtime_ns"])), follow_symlinks=False)


def _uid_of(owner: str | None, uid) -> int:
    if owner:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(owner).pw_uid
    return int(uid) if uid is not None else -1


def _gid_of(group: str | None, gid) -> int:
    if group:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(group).gr_gid
    return int(gid) if gid is not None else -1


def _unsafe_local(root: str, rel: str) -> str | None:
    """Why the remote path ``rel`` may not be written under ``root``, or None."""
    if not isinstance(rel, str):
        return "not a path"
    why = unsafe_relative_path(rel)
    if why:
        return f"{why}; it would land outside {root}"
    # no component of its directory may be a symlink (it could lead anywhere)
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    path = root
    for part in parts[:-1]:
        path = os.path.join(path, part)
        if os.path.islink(path):
            return f"{os.path.relpath(path, root)!r} is a symlink locally; writing through it could leave {root}"
    return None


def _safe_makedirs(root: str, rel_dir: str) -> None:
    """Create ``root/rel_dir`` one component at a time, refusing to pass a symlink."""
    path = root
    for part in [p for p in rel_dir.split("/") if p not in ("", ".")]:
        path = os.path.join(path, part)
        try:
            os.mkdir(path)
        except FileExistsError:
            if os.path.islink(path) or not os.path.isdir(path):
                raise NotADirectoryError(f"{os.path.relpath(path, root)!r} is not a plain directory locally") from None


def _alces_permissions(text: str) -> dict[str, dict]:
    """alces's ``:files:`` map (``path: "owner:group:mode:atime:mtime"``) as manifest attributes."""
    import re

    import yaml

    text = re.sub(r"^(\s*(?:-\s+)?):(\w+):", r"\1\2:", text, flags=re.M)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    out = {}
    for path, value in (files or {}).items():
        parts = str(value).split(":")
        if len(parts) != 5:
            continue
        owner, group, mode, _atime, mtime = parts
        rel = str(path).strip("/")
        try:
            out[rel] = {"owner": owner or None, "group": group or None, "mode": int(mode, 8) & 0o7777,
                        "mtime_ns": int(float(mtime) * 1e9)}  # fmt: skip
        except ValueError:
            continue
    return out


def _extract_tar(data: bytes, root: str, report: Report) -> int:
    """Extract alces's decrypted ``tar.gz`` under ``root``: regular files and directories
    only, none outside ``root``, each file through a temporary renamed into place."""
    count = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            rel = member.name.lstrip("./") if member.name.startswith("./") else member.name
            rel = rel.rstrip("/")
            why = _unsafe_local(root, rel) if rel else "empty name"
            if why:
                report.problems[f"{report.target}.dat:{member.name}"] = f"refused: {why}"
                continue
            if member.isdir():
                _safe_makedirs(root, rel)
                continue
            if not member.isfile():
                report.problems[f"{report.target}.dat:{member.name}"] = "not a regular file; not extracted"
                continue
            _safe_makedirs(root, os.path.dirname(rel))
            dst = os.path.join(root, rel)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)[:80]}.", dir=os.path.dirname(dst))
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(tar.extractfile(member), out)
                os.chmod(tmp, member.mode & 0o7777)
                os.utime(tmp, (member.mtime, member.mtime))
                os.replace(tmp, dst)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
            count += 1
    return count
