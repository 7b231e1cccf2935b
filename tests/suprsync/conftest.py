"""Helpers for the SupRsync tests: a ledger, files on disk, a destination with faults."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from hpcsync.agents.core.transfer import LocalRsyncBackend, RemoteUnreachable, TransferOutcome
from hpcsync.agents.suprsync.copier import CopySettings
from hpcsync.agents.suprsync.engine import EngineSettings, SupRsyncEngine
from hpcsync.agents.suprsync.ledger import SupRsyncFilesManager

HOSTILE_NAMES = [
    "with space.dat",
    "quote'and\"double.dat",
    "-leading-dash.dat",
    "new\nline.dat",
    "back\\slash.dat",
    "ünïcødé ✓.dat",
    "$(touch pwned).dat",
    "tab\there.dat",
]

ARCHIVE = "timestreams"


def tc_now(offset: int = 0) -> int:
    return int(time.time() // 1e5) + offset


def md5(path: str | Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture
def ledger(tmp_path) -> SupRsyncFilesManager:
    manager = SupRsyncFilesManager(tmp_path / "ledger" / "suprsync.db")
    yield manager
    manager.dispose()


@pytest.fixture
def src(tmp_path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return d


@pytest.fixture
def dst(tmp_path) -> Path:
    d = tmp_path / "dst"
    d.mkdir()
    return d


class FaultyBackend(LocalRsyncBackend):
    """A local destination whose faults a test switches on.

    ``corrupt``: remote paths whose copy is damaged after rsync; ``drop``: remote paths
    removed after rsync (with rsync reporting failure, as exit 23 would); ``unreachable``:
    every operation raises :class:`RemoteUnreachable`.
    """

    def __init__(self, basedir, **kw):
        super().__init__(str(basedir), **kw)
        self.corrupt: set[str] = set()
        self.drop: set[str] = set()
        self.unreachable = False
        self.puts = 0
        self.checks = 0

    def put_prepared(self, prepared, *, timeout, cancel=None):  # what put() and the copier call
        if self.unreachable:
            raise RemoteUnreachable("test destination is unreachable")
        self.puts += 1
        outcome = super().put_prepared(prepared, timeout=timeout, cancel=cancel)
        failed = False
        for item in prepared.items:
            path = Path(self.basedir) / item.remote_path
            if item.remote_path in self.corrupt:
                path.write_bytes(b"damaged in transit")
            if item.remote_path in self.drop:
                path.unlink(missing_ok=True)
                failed = True
        if failed:
            return TransferOutcome(ok=False, error="rsync exited with status 23: some files could not be transferred")
        return outcome

    def checksum(self, paths, kind="md5", *, timeout, cancel=None):
        if self.unreachable:
            raise RemoteUnreachable("test destination is unreachable")
        self.checks += 1
        return super().checksum(paths, kind, timeout=timeout, cancel=cancel)


def make_engine(manager, backend, tmp_path, *, delete_after=None, **copy) -> SupRsyncEngine:
    settings = EngineSettings(
        ARCHIVE,
        str(tmp_path / "fileroot"),
        "sync-test",
        delete_after=delete_after,
        copy=CopySettings(ARCHIVE, **copy),
    )
    return SupRsyncEngine(lambda: manager, backend, settings)


def status_of(manager: SupRsyncFilesManager, archive: str = ARCHIVE) -> dict[str, int]:
    summary = manager.status_summary(archive).get(archive, {})
    return {k: v for k, v in summary.items() if k in ("pending", "copied", "removed", "failed", "ignored", "missing")}


#: Programs a transfer runs, here or on the remote side.
TRANSFER_PROGRAMS = ("rsync", "ssh", "sh", "xargs", "md5sum", "find", "rm")


def transfer_processes_naming(path: str | Path) -> list[str]:
    """Command lines of live transfer processes (rsync, ssh, remote commands) that name
    ``path``: what is left of a transfer to or from it (a zombie has no command line)."""
    needle = os.fsencode(str(path))
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] and os.path.basename(os.fsdecode(argv[0])) in TRANSFER_PROGRAMS and any(needle in a for a in argv):
            found.append(" ".join(os.fsdecode(a) for a in argv))
    return found


def files_under(root: Path) -> dict[str, str]:
    """``{relative path: md5}`` of every regular file under ``root``."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = md5(p)
    return out
