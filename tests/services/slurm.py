"""A private single-node Slurm cluster with accounting: munged, MariaDB, slurmdbd,
slurmctld and slurmd, on free loopback ports, under a fresh directory in /tmp.

It follows ``reference/services-on-loopback.md`` section 1: a private munge socket (named
in ``AccountingStoragePass`` too, or clients talk to the system socket), ``slurmdbd.conf``
owned by ``slurm`` with mode 600 next to ``slurm.conf``, ``NodeName=localhost`` with
``slurmd -N localhost``, zombies counted as stopped, and fresh state per start (job ids
begin at 1). The base directory is outside pytest's temp tree because the daemons' users
(munge, mysql, slurm) and the job users must be able to enter it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpcsync.agents.core import daemon

from . import ServiceError, free_port, log_tail
from .mariadb import MariaDB, start_mariadb

CLUSTER = "hpcsynctest"
#: CPUs declared for the node; never more than the machine has.
NODE_CPUS = min(2, os.cpu_count() or 1)


def ensure_unix_user(name: str) -> int:
    """The uid of ``name``, created (no home, no login shell) if missing."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
        return pwd.getpwnam(name).pw_uid


@dataclass
class SlurmCluster:
    base: Path
    dbd_port: int
    ctld_port: int
    slurmd_port: int
    mariadb: MariaDB | None = None
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.base / "etc" / "slurm.conf"

    @property
    def jobs_dir(self) -> Path:
        return self.base / "jobs"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, argv: list[str], *, timeout: float = 30, check: bool = True, env: dict | None = None):
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env={**self.env, **(env or {})}, check=False
        )
        if check and proc.returncode != 0:
            raise ServiceError(f"{' '.join(argv)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
        return proc

    def sacctmgr(self, *args: str, check: bool = True) -> str:
        """``sacctmgr -i ARGS`` (no confirmation prompt); its output."""
        return self.run(["sacctmgr", "-i", *args], check=check).stdout

    def sbatch(self, user: str, *args: str, wrap: str) -> str:
        """Submit ``wrap`` as ``user``; the job id. Output goes to the cluster's jobs dir."""
        argv = [
            "runuser", "-u", user, "--", "sbatch", "--parsable", "-D", str(self.jobs_dir),
            "-o", str(self.jobs_dir / "%j.out"), *args, "--wrap", wrap,
        ]  # fmt: skip
        return self.run(argv).stdout.strip().split(";")[0]

    def scancel(self, job_id: str) -> None:
        self.run(["scancel", job_id])

    def sacct(self, *args: str, tz: str = "UTC") -> str:
        """``sacct ARGS`` with times printed in ``tz``."""
        return self.run(["sacct", *args], env={"TZ": tz}).stdout

    def job_state(self, job_id: str) -> str | None:
        out = self.sacct("-naPX", "-S", "2020-01-01", "-o", "State", "-j", job_id).strip()
        return out.splitlines()[0].split(" ")[0] if out else None

    def wait_for_state(self, job_id: str, states: set[str], timeout: float = 60) -> str:
        """Poll sacct until the job reaches one of ``states`` (sacct lags the scheduler)."""
        seen: list[str | None] = [None]

        def reached() -> bool:
            seen[0] = self.job_state(job_id)
            return seen[0] in states

        if not daemon.wait_until(reached, timeout, 0.3):
            raise ServiceError(
                f"job {job_id} did not reach {sorted(states)} in {timeout:g} s (last state {seen[0]}):\n"
                f"{log_tail(self.base / 'slurm-log' / 'slurmctld.log', 15)}"
            )
        return seen[0] or ""

    def cancel_all_jobs(self, timeout: float = 20) -> None:
        """scancel every job and wait until the queue is empty (slurmd stop leaves jobs running)."""
        try:
            ids = self.run(["squeue", "-h", "-o", "%A"], timeout=10, check=False).stdout.split()
            if ids:
                self.run(["scancel", *ids], timeout=10, check=False)
                queue_empty = lambda: not self.run(["squeue", "-h"], timeout=10, check=False).stdout.strip()  # noqa: E731
                daemon.wait_until(queue_empty, timeout, 0.2)
        except (OSError, subprocess.SubprocessError):
            pass

    def _leftover_job_processes(self) -> list[int]:
        """PIDs of job scripts under this cluster's spool dir, their slurmstepd and descendants."""
        parents: dict[int, int] = {}
        marked: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if str(self.base) in cmdline:
                marked.add(int(entry.name))
        for pid in list(marked):
            parent = parents.get(pid)
            try:
                if parent and Path(f"/proc/{parent}/cmdline").read_bytes().startswith(b"slurmstepd"):
                    marked.add(parent)
            except OSError:
                pass
        grew = True
        while grew:
            children = {pid for pid, parent in parents.items() if parent in marked} - marked
            grew = bool(children)
            marked |= children
        return sorted(marked)

    def stop(self) -> None:
        if "slurmctld" in self.pids:
            self.cancel_all_jobs()
        for name in ("slurmd", "slurmctld", "slurmdbd"):
            pid = self.pids.pop(name, None)
            if pid:
                daemon.stop(pid, timeout=15)
        if self.mariadb is not None:
            self.mariadb.stop()
            self.mariadb = None
        pid = self.pids.pop("munged", None)
        if pid:
            daemon.stop(pid, timeout=10)
        for pid in self._leftover_job_processes():  # jobs outlive slurmd: end ours by PID
            try:
                os.kill(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(self.base, ignore_errors=True)


def _install_dir(path: Path, owner: str, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    shutil.chown(path, owner, owner)
    path.chmod(mode)


def _wait_pidfile(path: Path, what: str, timeout: float = 15) -> int:
    if not daemon.wait_until(lambda: daemon.read_pid(path) is not None, timeout, 0.05):
        raise ServiceError(f"{what} wrote no pid file {path}")
    return daemon.read_pid(path)  # type: ignore[return-value]


def start_slurm() -> SlurmCluster:
    """Start the whole stack; on any failure stop what started and raise ServiceError."""
    base = Path(tempfile.mkdtemp(prefix="hpcsync-slurm-", dir="/tmp"))
    base.chmod(0o755)
    cluster = SlurmCluster(base, free_port(), free_port(), free_port())
    try:
        _start(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start(c: SlurmCluster) -> None:
    base = c.base
    for sub in ("etc", "jobs"):
        (base / sub).mkdir()
    (base / "etc").chmod(0o755)
    (base / "jobs").chmod(0o1777)  # jobs of every test user write their output here

    # munge: private key, socket and pid file.
    _install_dir(base / "munge", "munge", 0o700)
    _install_dir(base / "munge-run", "munge", 0o755)
    key = base / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    sock = base / "munge-run" / "munge.sock"
    subprocess.run(
        ["runuser", "-u", "munge", "--", "/usr/sbin/munged", f"--socket={sock}", f"--key-file={key}",
         f"--pid-file={base / 'munge-run' / 'munged.pid'}", f"--log-file={base / 'munge' / 'munged.log'}",
         f"--seed-file={base / 'munge' / 'munged.seed'}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    c.pids["munged"] = _wait_pidfile(base / "munge-run" / "munged.pid", "munged")

    def munge_works() -> bool:
        cred = subprocess.run(["munge", "-S", str(sock), "-n"], capture_output=True, timeout=5)
        return (
            cred.returncode == 0
            and subprocess.run(
                ["unmunge", "-S", str(sock)], input=cred.stdout, capture_output=True, timeout=5
            ).returncode
            == 0
        )

    if not daemon.wait_until(munge_works, 15, 0.1):
        raise ServiceError(f"munged did not answer on {sock}:\n{log_tail(base / 'munge' / 'munged.log')}")

    # MariaDB for slurmdbd.
    c.mariadb = start_mariadb(base / "mysql")
    c.mariadb.sql(
        "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw'; "
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    )

    for sub in ("slurm-state", "slurmd-spool", "slurm-run", "slurm-log"):
        _install_dir(base / sub, "slurm", 0o755)
    dbd_conf = base / "etc" / "slurmdbd.conf"
    dbd_conf.write_text(
        f"""AuthType=auth/munge
AuthInfo=socket={sock}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={c.dbd_port}
SlurmUser=slurm
DebugLevel=info
LogFile={base}/slurm-log/slurmdbd.log
PidFile={base}/slurm-run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={c.mariadb.port}
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
"""
    )
    shutil.chown(dbd_conf, "slurm", "slurm")
    dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read
    c.conf.write_text(
        f"""ClusterName={CLUSTER}
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmctldPort={c.ctld_port}
SlurmdPort={c.slurmd_port}
StateSaveLocation={base}/slurm-state
SlurmdSpoolDir={base}/slurmd-spool
SlurmctldPidFile={base}/slurm-run/slurmctld.pid
SlurmdPidFile={base}/slurm-run/slurmd.pid
SlurmctldLogFile={base}/slurm-log/slurmctld.log
SlurmdLogFile={base}/slurm-log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={c.dbd_port}
AccountingStoragePass={sock}
AccountingStorageEnforce=associations,limits,qos
PriorityType=priority/multifactor
KillWait=5
MinJobAge=30
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=long Nodes=localhost Default=NO MaxTime=INFINITE State=UP
"""
    )

    c.run(["/usr/sbin/slurmdbd"], timeout=30)  # daemonizes; reads slurmdbd.conf next to SLURM_CONF
    c.pids["slurmdbd"] = _wait_pidfile(base / "slurm-run" / "slurmdbd.pid", "slurmdbd")
    if not daemon.wait_until(lambda: c.run(["sacctmgr", "-n", "show", "cluster"], timeout=10).returncode == 0, 60, 0.2):
        raise ServiceError(f"slurmdbd did not answer:\n{log_tail(base / 'slurm-log' / 'slurmdbd.log')}")
    c.sacctmgr("add", "cluster", CLUSTER, check=False)

    c.run(["/usr/sbin/slurmctld", "-f", str(c.conf)], timeout=30)
    c.pids["slurmctld"] = _wait_pidfile(base / "slurm-run" / "slurmctld.pid", "slurmctld")
    if not daemon.wait_until(lambda: c.run(["scontrol", "ping"], timeout=10).returncode == 0, 60, 0.2):
        raise ServiceError(f"slurmctld did not answer:\n{log_tail(base / 'slurm-log' / 'slurmctld.log')}")

    c.run(["/usr/sbin/slurmd", "-f", str(c.conf), "-N", "localhost"], timeout=30)
    c.pids["slurmd"] = _wait_pidfile(base / "slurm-run" / "slurmd.pid", "slurmd")

    def node_ready() -> bool:
        out = c.run(["sinfo", "-h", "-N", "-o", "%t"], timeout=10).stdout.split()
        return bool(out) and out[0] in ("idle", "mix", "alloc")

    if not daemon.wait_until(node_ready, 60, 0.2):
        raise ServiceError(f"slurmd did not come up:\n{log_tail(base / 'slurm-log' / 'slurmd.log')}")


if __name__ == "__main__":  # manual check: python -m services.slurm (from tests/)
    started = time.monotonic()
    cluster = start_slurm()
    print(f"up in {time.monotonic() - started:.1f} s: export SLURM_CONF={cluster.conf}")
    try:
        print(cluster.run(["sinfo"]).stdout)
    finally:
        cluster.stop()
