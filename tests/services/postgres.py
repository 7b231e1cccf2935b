"""A private PostgreSQL server (initdb in a temp dir, trust auth, loopback only)."""

from __future__ import annotations

import glob
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpcsync.agents.core import daemon

from . import ServiceError, free_port, log_tail


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise ServiceError(f"PostgreSQL server program {name} not found: run ./install.sh")
    return found[-1]


@dataclass
class Postgres:
    base: Path
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", _pg_bin("psql"), "-h", str(self.base), "-p", str(self.port),
             "-U", "postgres", "-q", "-c", f'CREATE DATABASE "{name}"'],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        daemon.stop(self.pid, sig=2, timeout=15)  # SIGINT = fast shutdown


def start_postgres(base: Path) -> Postgres:
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    shutil.chown(base, "postgres", "postgres")
    base.chmod(0o700)
    data = base / "data"
    port = free_port()
    init = subprocess.run(
        ["runuser", "-u", "postgres", "--", _pg_bin("initdb"), "-D", str(data), "-U", "postgres",
         "--auth=trust", "-E", "UTF8", "--no-sync"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if init.returncode != 0:
        raise ServiceError(f"initdb failed: {init.stderr.strip()[-800:]}")
    log = base / "postgres.log"
    proc = daemon.spawn(
        ["runuser", "-u", "postgres", "--", _pg_bin("postgres"), "-D", str(data), "-p", str(port),
         "-k", str(base), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        log_path=log,
    )  # fmt: skip
    probe = [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    ok = daemon.wait_until(
        lambda: proc.poll() is None and subprocess.run(probe, capture_output=True, timeout=5).returncode == 0,
        60,
        0.2,
    )
    if not ok:
        daemon.stop(proc.pid, timeout=5)
        raise ServiceError(f"PostgreSQL did not start on port {port}:\n{log_tail(log)}")
    return Postgres(base, port, proc.pid)
