"""MxSync fixtures: the portal emulator (per test) and EPN trees on the real sshd."""

from __future__ import annotations

import os
import shutil
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from hpcsync.agents.core.jobs import JobContext
from hpcsync.agents.mxsync.options import MxSyncOptions
from hpcsync.agents.mxsync.portal import PORTAL_TZ
from hpcsync.agents.testing.synchrotron_portal import SynchrotronPortalEmulator
from hpcsync.db import open_database

NOW = datetime.now(PORTAL_TZ).replace(microsecond=0)
CLIENT, CLIENT_PW, USER, USER_PW = "mxclient", "client-secret-pw", "syncbot", "user-secret-pw"


@pytest.fixture
def portal():
    emulator = SynchrotronPortalEmulator().start()
    emulator.add_client(CLIENT, CLIENT_PW)
    emulator.add_user(USER, USER_PW, [23, 24])
    yield emulator
    emulator.stop()


def finished(portal, epn: str, *, days_ago: float = 3, equipment: int = 23) -> None:
    start = NOW - timedelta(days=days_ago)
    portal.add_visit(equipment, epn, start, start + timedelta(hours=12))


def make_epn(root: Path, epn: str, files: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """An EPN tree as the beamline leaves it: data, a .info, other dotfiles, a subdir."""
    files = files or {
        "frames/img_0001.cbf": os.urandom(20_000),
        "frames/img_0002.cbf": os.urandom(30_000),
        "processing/log.txt": b"processed\n",
        ".info": b"beamtime metadata\n",
        ".DS_Store": b"junk",
        ".snapshot/old.cbf": b"old",
    }
    for rel, data in files.items():
        path = root / epn / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for d, _dirs, names in os.walk(root):
        os.chmod(d, 0o755)
        for n in names:
            os.chmod(os.path.join(d, n), 0o644)
    return files


@pytest.fixture
def remote(sshd):
    """``/data/mx``-like root on the sshd host, readable by the shell user."""
    root = sshd.make_remote_dir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


def write_config(path: Path, portal, dest: Path, **extra) -> Path:
    """An ASSyncy config.yml (inline passwords, as ASSyncy has them), plus ``extra`` keys."""
    import yaml

    config = {
        "comment": "test",
        "epn_cap_map": {"12282": "ny79", "13001": "ab12"},
        "equipment": [
            {"username": USER, "password": USER_PW, "client_name": CLIENT, "client_password": CLIENT_PW, "id": 23}
        ],
        "base-url": portal.url,
        "beamline": "mx",
        "visit-day-range": 30,
        "destination-root-path": str(dest),
        "sync-frequency-hours": 1,
        "max-tasks": 2,
        "log-level": "logging.DEBUG",
        "log-files": {"sync": "/nonexistent/sync.log"},
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def ssh_extra(sshd, remote: Path) -> dict:
    return {
        "host": "127.0.0.1",
        "remote-user": "hsyncuser",
        "port": sshd.port,
        "key-file": str(sshd.client_key),
        "known-hosts": str(sshd.known_hosts),
        "source-root": str(remote),
    }


def engine_for(config: Path, tmp_path: Path, cancel: threading.Event | None = None, **options):
    opts = MxSyncOptions(config=str(config), db=f"sqlite:///{tmp_path / 'ledger.db'}", **options)
    ctx = JobContext("test", cancel or threading.Event())
    db = open_database(opts.db)
    return opts.build_engine(ctx, lambda: db)
