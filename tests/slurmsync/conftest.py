"""SlurmSync fixtures: the ColdFront emulator (per test) and a real Slurm cluster (per session).

The session's Slurm cluster gets two Slurm accounts (``pc_alpha``, ``fc_beta``), two Unix
users, and five real jobs that end COMPLETED (one on 2 CPUs), FAILED, CANCELLED (after it
ran) and one left RUNNING. The emulator knows the same projects and users, plus a project
without a compute allocation and an excluded ``vector_`` project. Every allocation has the
dates the real server needs to charge a job (a start date; and for the periodic allowances
``fc_``/``ic_``/``pc_`` an end date): ``ALLOCATION_START`` .. ``ALLOCATION_END``.

A third account, ``ic_gamma``, holds one array job of two tasks (``sbatch --array=1-2``),
both COMPLETED: sacct shows them as ``<array>_1`` and ``<array>_2``, each with its own raw
job id. ``seed_world`` leaves ``ic_gamma`` out, so only the tests that seed it see them.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import requests

from hpcsync.agents.testing.coldfront import ColdFrontEmulator
from services.slurm import SlurmCluster, ensure_unix_user, start_slurm

STAFF_TOKEN = "0123456789abcdef0123456789abcdef01234567"
READER_TOKEN = "fedcba9876543210fedcba9876543210fedcba98"
#: Prices per CPU-hour, large so that jobs of a few seconds cost whole service units.
PRICES = {"debug": Decimal("1800"), "long": Decimal("3600")}
ALICE, BOB = "ssync_alice", "ssync_bob"
ARRAY_ACCOUNT = "ic_gamma"
#: The test allocations' dates: every job of the tests (dumps from 2024, Slurm's jobs of
#: today) ran between them, so the server charges each one.
ALLOCATION_START, ALLOCATION_END = "2020-06-01", "2099-05-31"


def seed_world(emulator: ColdFrontEmulator, alice_uid: str = "5001", bob_uid: str = "5002") -> None:
    emulator.seed({
        "users": [{"username": ALICE, "cluster_uid": alice_uid}, {"username": BOB, "cluster_uid": bob_uid}],
        "tokens": [
            {"key": STAFF_TOKEN, "username": "syncbot", "is_staff": True},
            {"key": READER_TOKEN, "username": "viewer"},
        ],
        "resources": ["Savio Compute", "Vector Compute"],
        "projects": [
            {"name": "pc_alpha", "resource": "Savio Compute", "service_units": "1000.00",
             "start_date": ALLOCATION_START, "end_date": ALLOCATION_END, "users": [ALICE]},
            {"name": "fc_beta", "resource": "Savio Compute", "service_units": "500.00",
             "start_date": ALLOCATION_START, "end_date": ALLOCATION_END, "users": [ALICE, BOB]},
            {"name": "ac_noalloc", "resource": None},
            {"name": "vector_x", "resource": "Vector Compute", "service_units": "100.00",
             "start_date": ALLOCATION_START, "users": [ALICE]},
        ],
    })  # fmt: skip


@pytest.fixture
def emulator():
    emu = ColdFrontEmulator(period_start_month=6).start()
    yield emu
    emu.stop()


def write_profile(path: Path, api_url: str, name: str = "testbrc") -> Path:
    """A profile file: the myBRC profile, pointed at ``api_url``, with the test prices."""
    path.write_text(
        textwrap.dedent(
            f"""\
            profiles:
              {name}:
                extends: mybrc
                base_url: {api_url}
                prices: {{debug: {PRICES["debug"]}, long: {PRICES["long"]}}}
            """
        )
    )
    return path


def write_token(path: Path, token: str = STAFF_TOKEN) -> Path:
    path.write_text(f"Token {token}\n")
    path.chmod(0o600)
    return path


def post_running(emulator: ColdFrontEmulator, job_id: str, row: dict) -> None:
    """What the banking plugin posts when a job starts: RUNNING, with an upper-bound cost.

    ``job_id`` is the id the plugin knows: the raw job id (an array task's own id).
    """
    body = {
        "jobslurmid": job_id, "submitdate": row["start"] + "Z", "startdate": row["start"] + "Z",
        "userid": row["uid"], "accountid": row["account"], "amount": "100.00", "jobstatus": "RUNNING",
        "partition": row["partition"], "qos": "normal",
    }  # fmt: skip
    reply = requests.post(emulator.api_url + "jobs/", json=body, headers={"Authorization": f"Token {STAFF_TOKEN}"})
    assert reply.status_code == 201, reply.text


def expected_amount(partition: str, cpus: int, seconds: float) -> Decimal:
    """The reference formula, written out independently of the engine."""
    return (PRICES.get(partition, Decimal(0)) * cpus * Decimal(str(seconds)) / 3600).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP
    )


def seed_array_world(emulator: ColdFrontEmulator, alice_uid: str) -> None:
    """Only the array job's project (``ic_gamma``, Alice a member), the users and tokens."""
    emulator.seed({
        "users": [{"username": ALICE, "cluster_uid": alice_uid}],
        "tokens": [{"key": STAFF_TOKEN, "username": "syncbot", "is_staff": True}],
        "projects": [{"name": ARRAY_ACCOUNT, "resource": "Savio Compute", "service_units": "1000.00",
                      "start_date": ALLOCATION_START, "end_date": ALLOCATION_END, "users": [ALICE]}],
    })  # fmt: skip


@dataclass
class SlurmWorld:
    cluster: SlurmCluster
    uids: dict[str, str]
    jobs: dict[str, str] = field(default_factory=dict)  # name -> job id
    array_id: str = ""  # the array job's id as sbatch printed it

    def array_tasks(self) -> dict[str, dict]:
        """The array's tasks as sacct shows them with TZ=UTC, by JobID (``<array>_<task>``)."""
        out = self.cluster.sacct(
            "-naPX", "-S", "2020-01-01", "-o", "JobID,JobIDRaw,Partition,AllocCPUS,Start,End,State,Account,UID",
            "-j", self.array_id,
        )  # fmt: skip
        rows = {}
        for line in out.splitlines():
            job_id, raw, partition, cpus, start, end, state, account, uid = line.split("|")
            rows[job_id] = {
                "raw": raw, "partition": partition, "cpus": int(cpus), "start": start, "end": end,
                "state": state.split(" ")[0], "account": account, "uid": uid,
            }  # fmt: skip
        return rows

    def sacct_utc(self) -> dict[str, dict]:
        """The jobs as sacct shows them with TZ=UTC (an independent reading)."""
        ids = ",".join(self.jobs.values())
        out = self.cluster.sacct(
            "-naPX", "-S", "2020-01-01", "-o", "JobID,Partition,AllocCPUS,Start,End,State,Account,UID", "-j", ids
        )
        rows = {}
        for line in out.splitlines():
            job_id, partition, cpus, start, end, state, account, uid = line.split("|")
            rows[job_id] = {
                "partition": partition, "cpus": int(cpus), "start": start, "end": end,
                "state": state.split(" ")[0], "account": account, "uid": uid,
            }  # fmt: skip
        return rows


@pytest.fixture(scope="session")
def slurm():
    """A real Slurm cluster with accounts, users and jobs in every state the sync handles."""
    cluster = start_slurm()
    try:
        uids = {name: str(ensure_unix_user(name)) for name in (ALICE, BOB)}
        world = SlurmWorld(cluster, uids)
        cluster.sacctmgr("add", "account", "pc_alpha", "Description=alpha", "Organization=test")
        cluster.sacctmgr("add", "account", "fc_beta", "Description=beta", "Organization=test")
        cluster.sacctmgr("add", "user", ALICE, "Account=pc_alpha")
        cluster.sacctmgr("add", "user", ALICE, "Account=fc_beta")
        cluster.sacctmgr("add", "user", BOB, "Account=fc_beta")
        cluster.sacctmgr("add", "account", ARRAY_ACCOUNT, "Description=gamma", "Organization=test")
        cluster.sacctmgr("add", "user", ALICE, f"Account={ARRAY_ACCOUNT}")
        jobs = world.jobs
        # Submitted in this order on a 2-CPU node: the 2-CPU job runs alone first.
        jobs["completed_2cpu"] = cluster.sbatch(ALICE, "-A", "pc_alpha", "-c", "2", wrap="sleep 2")
        jobs["failed"] = cluster.sbatch(BOB, "-A", "fc_beta", wrap="sleep 1; exit 3")
        jobs["cancelled"] = cluster.sbatch(ALICE, "-A", "pc_alpha", "-p", "long", wrap="sleep 300")
        jobs["running"] = cluster.sbatch(BOB, "-A", "fc_beta", "-p", "long", wrap="sleep 900")
        jobs["completed"] = cluster.sbatch(ALICE, "-A", "fc_beta", wrap="sleep 1")
        world.array_id = cluster.sbatch(ALICE, "-A", ARRAY_ACCOUNT, "--array=1-2", wrap="sleep 1")
        cluster.wait_for_state(jobs["cancelled"], {"RUNNING"}, timeout=90)
        cluster.scancel(jobs["cancelled"])
        cluster.wait_for_state(jobs["completed_2cpu"], {"COMPLETED"}, timeout=90)
        cluster.wait_for_state(jobs["failed"], {"FAILED"}, timeout=90)
        cluster.wait_for_state(jobs["cancelled"], {"CANCELLED"}, timeout=90)
        cluster.wait_for_state(jobs["completed"], {"COMPLETED"}, timeout=90)
        cluster.wait_for_state(jobs["running"], {"RUNNING"}, timeout=90)
        for task in ("1", "2"):
            cluster.wait_for_state(f"{world.array_id}_{task}", {"COMPLETED"}, timeout=90)
        yield world
    finally:
        cluster.stop()
