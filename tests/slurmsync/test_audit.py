"""The audit against the emulator and sacct dumps: nothing on a clean world, and each kind of
drift planted in the API found, named and counted (``test_agent_hub.py`` runs the op
through the real hub against real Slurm)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import requests

from hpcsync.agents.cli import main as hpcsync_main

from .conftest import ALICE, BOB, STAFF_TOKEN
from .test_sync_engine import ALICE_UID, BASIC, BOB_UID, World, sacct_line


@pytest.fixture
def world(emulator, tmp_path):
    return World(emulator, tmp_path)


def post_running(world: World, job_id: str, account: str, uid: str, start: str = "2024-07-01T17:00:00Z") -> None:
    """The banking plugin's record of a job that starts: RUNNING, charged an estimate of 100 SU."""
    body = {
        "jobslurmid": job_id, "submitdate": start, "startdate": start, "userid": uid, "accountid": account,
        "amount": "100.00", "jobstatus": "RUNNING", "partition": "debug",
    }  # fmt: skip
    staff = {"Authorization": f"Token {STAFF_TOKEN}"}
    reply = requests.post(world.emulator.api_url + "jobs/", json=body, headers=staff)
    assert reply.status_code == 201, reply.text


def synced_world(world: World) -> None:
    """BASIC pushed, and the plugin's RUNNING record of job 104 (still running in Slurm)."""
    world.write(BASIC)
    post_running(world, "104", "fc_beta", ALICE_UID)
    assert world.engine().full_sync(push=True).pushed == 4


def test_a_clean_world_has_no_finding(world):
    synced_world(world)
    report = world.engine().audit()
    assert report.ok and report.clean, report.table()
    assert report.message().startswith("audit of testbrc: clean: 3 projects, 5 jobs in the API and 5 in Slurm agree")
    rows = {(r.project, r.user): r for r in report.usage}
    assert rows[("pc_alpha", None)].usage == rows[("pc_alpha", None)].chargeable == Decimal("3615.00")
    assert rows[("fc_beta", BOB)].usage == Decimal("3600.00") and rows[("fc_beta", ALICE)].usage == Decimal("100.00")
    assert report.projects_without_allocation == ["ac_noalloc"]
    summary = report.summary()
    assert summary["clean"] is True and set(summary["drift"].values()) == {0} and summary["usage_drift_su"] == "0.00"
    assert "findings" not in summary and "usage_differs" not in summary


def test_each_kind_of_planted_drift_is_found(world):
    synced_world(world)
    emulator = world.emulator
    # 1. Usage changed behind the ledger's back (an administrator's hand edit).
    emulator.set_usage("pc_alpha", emulator.usage("pc_alpha") + 50)
    # 2. An uncharged periodic job: pc_open's allocation has no end date; its job is pushed.
    emulator.add_project("pc_open", resource="Savio Compute", start_date="2020-06-01", users=[ALICE])
    world.write([sacct_line("201", "pc_open")])
    assert world.engine().full_sync(push=True).stored_uncharged == 1
    # 3. A missing job: deleted on the server, its charge left in the usage.
    emulator.delete_job("103")
    # 4. A stale RUNNING job: the plugin recorded 107's start, nobody its end.
    post_running(world, "107", "pc_alpha", ALICE_UID)
    # 5. A job the API has and Slurm does not.
    post_running(world, "999", "fc_beta", BOB_UID)
    # 6. Slurm's data changed since the push (102 ran longer): the API's amount is old.
    lines = [line.replace("2024-07-01T10:00:30", "2024-07-01T10:01:00") for line in BASIC]
    world.write([*lines, sacct_line("107", "pc_alpha"), sacct_line("201", "pc_open")])

    report = world.engine().audit()
    assert report.ok and not report.clean
    found = {(f.kind, f.project, f.jobslurmid) for f in report.findings}
    assert found == {
        ("uncharged", "pc_open", "201"),
        ("missing_in_api", "fc_beta", "103"),
        ("stale_running", "pc_alpha", "107"),
        ("amount_differs", "pc_alpha", "102"),
        ("missing_in_slurm", "fc_beta", "999"),
    }, report.table()
    details = {f.jobslurmid: f.detail for f in report.findings}
    assert "has no end date" in details["201"]
    assert "RUNNING in the API (100.00 SU), COMPLETED in Slurm" in details["107"]
    assert details["102"] == "15.00 SU in the API, 30.00 SU in Slurm"
    drift = {(r.project, r.user): r.drift for r in report.drifting}
    # pc_alpha: the 50 SU added by hand; fc_beta (and Bob): the deleted job's 3600 SU.
    assert drift == {("pc_alpha", None): 50, ("fc_beta", None): 3600, ("fc_beta", BOB): 3600}
    counts = report.summary()["drift"]
    assert counts == {"stale_running": 1, "missing_in_api": 1, "missing_in_slurm": 1, "amount_differs": 1,
                      "uncharged": 1, "usage_projects": 2, "usage_users": 1}  # fmt: skip
    assert report.summary()["usage_drift_su"] == "3650.00"
    feed, block, data = report.feed_records()[0]
    assert (feed, block, data["clean"], data["usage_drift_su"], data["stale_running"]) == ("audit", "audit", 0, 3650, 1)
    log = (world.log_dir / "audit_testbrc.log").read_text()
    assert "107 STALE_RUNNING : pc_alpha" in log and "USAGE DIFFERS" in log


def test_cli_audit_prints_a_table_or_json_and_exits_2_on_drift(world, capsys):
    synced_world(world)
    argv = ["slurmsync", "audit", "-T", "testbrc", "--profile-file", str(world.profile),
            "--token-file", f"file:{world.token}", "--sacct-file", str(world.dump), "--db", world.db_url,
            "--log-dir", str(world.log_dir), "--cluster-tz", "America/Los_Angeles"]  # fmt: skip
    assert hpcsync_main(argv) == 0
    out = capsys.readouterr().out
    assert "PROJECT" in out and "DRIFT" in out and "audit of testbrc: clean" in out
    world.emulator.set_usage("fc_beta", "1.00", username=BOB)
    assert hpcsync_main([*argv, "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["clean"] is False and data["drift"]["usage_users"] == 1
    assert {"project": "fc_beta", "user": BOB, "usage": "1.00", "jobs_total": "3600.00", "chargeable": "3600.00",
            "drift": "-3599.00"} in data["usage"]  # fmt: skip
    assert hpcsync_main([*argv, "-s", "2024-13-01"]) == 1
    assert "-s/--start '2024-13-01' is not a time" in capsys.readouterr().err


def test_a_window_after_the_allocation_start_compares_jobs_but_not_usage(world):
    synced_world(world)
    world.emulator.set_usage("pc_alpha", "1.00")
    july_2 = world.engine().audit(start=datetime(2024, 7, 2, tzinfo=UTC))
    # Usage covers the whole allocation period: a later window cannot account for it.
    assert july_2.clean and july_2.usage == [] and (july_2.jobs_in_api, july_2.jobs_in_slurm) == (0, 0)
    assert july_2.usage_not_compared == ["fc_beta", "pc_alpha", "vector_x"]
    july = world.engine().audit(start=datetime(2024, 7, 1, tzinfo=UTC))
    assert (july.jobs_in_api, july.jobs_in_slurm) == (5, 5) and july.usage == []  # July 1 UTC > June 1 LA
    whole = world.engine().audit()
    assert [(r.project, r.user) for r in whole.drifting] == [("pc_alpha", None)]
