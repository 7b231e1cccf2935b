"""A private MariaDB server (own datadir, socket and loopback port)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpcsync.agents.core import daemon

from . import ServiceError, free_port, log_tail


@dataclass
class MariaDB:
    base: Path
    port: int
    pid: int

    @property
    def socket(self) -> Path:
        return self.base / "run" / "mysqld.sock"

    def sql(self, statement: str) -> str:
        out = subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-N", "-B", "-e", statement],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if out.returncode != 0:
            raise ServiceError(f"mariadb: {out.stderr.strip()}")
        return out.stdout

    def create_database(self, name: str, user: str = "hpcsync", password: str = "hpcsync-test") -> str:
        self.sql(
            f"CREATE DATABASE IF NOT EXISTS `{name}`; "
            f"CREATE USER IF NOT EXISTS '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
            f"GRANT ALL ON `{name}`.* TO '{user}'@'127.0.0.1'; FLUSH PRIVILEGES;"
        )
        return f"mysql+pymysql://{user}:{password}@127.0.0.1:{self.port}/{name}?charset=utf8mb4"

    def stop(self) -> None:
        daemon.stop(self.pid, timeout=20)


def start_mariadb(base: Path, port: int | None = None) -> MariaDB:
    base = Path(base)
    datadir, rundir = base / "data", base / "run"
    for d in (base, rundir):
        d.mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "mysql", "mysql")
    port = port or free_port()
    if not (datadir / "mysql").is_dir():
        datadir.mkdir(exist_ok=True)
        shutil.chown(datadir, "mysql", "mysql")
        init = subprocess.run(
            ["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={datadir}",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if init.returncode != 0:
            raise ServiceError(f"mariadb-install-db failed: {init.stderr.strip()[-800:]}")
    log = base / "mariadb.err"
    proc = daemon.spawn(
        ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", f"--datadir={datadir}",
         f"--socket={rundir / 'mysqld.sock'}", f"--pid-file={rundir / 'mysqld.pid'}",
         "--bind-address=127.0.0.1", f"--port={port}", "--skip-name-resolve",
         "--innodb-buffer-pool-size=128M", "--innodb-log-file-size=64M",
         "--innodb-flush-log-at-trx-commit=2", f"--log-error={log}"],
        log_path=base / "mariadb.out",
    )  # fmt: skip
    db = MariaDB(base, port, proc.pid)
    ok = daemon.wait_until(lambda: proc.poll() is None and db.sql("SELECT 1").strip() == "1", 60, 0.2)
    if not ok:
        daemon.stop(proc.pid, timeout=5)
        raise ServiceError(f"MariaDB did not start on port {port}:\n{log_tail(log)}")
    return db
