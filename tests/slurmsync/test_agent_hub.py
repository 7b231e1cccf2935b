"""SlurmSync end to end: a real Slurm cluster, the real hub, the agent process, the emulator.

Each test starts its own agent instance (own ledger and log directory) against its own
emulator; the Slurm cluster and its jobs are shared by the session. What is checked is
what an operator would check: the op's reply, the API's jobs and usage, Slurm's limits.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from .conftest import ALICE, BOB, STAFF_TOKEN, expected_amount, post_running, seed_world, write_profile, write_token

pytestmark = pytest.mark.integration
CLUSTER_TZ = "America/Los_Angeles"  # not the machine's zone: times must still come out right


@pytest.fixture
def agent(hub, slurm, emulator, tmp_path, request):
    """Start a SlurmSync instance for this test; returns (client, paths)."""
    seed_world(emulator, slurm.uids[ALICE], slurm.uids[BOB])
    instance_id = "slurmsync-" + request.node.name.replace("_", "-")[5:40].strip("-")
    paths = {
        "profile": write_profile(tmp_path / "profiles.yaml", emulator.api_url),
        "token": write_token(tmp_path / "api.token"),
        "logs": tmp_path / "logs",
        "db": f"sqlite:///{tmp_path / 'ledger.db'}",
        "instance_id": instance_id,
    }

    def start(*extra: str):
        arguments = [
            "--target", "testbrc", "--profile-file", str(paths["profile"]),
            "--token-file", f"file:{paths['token']}", "--db", paths["db"], "--sync-log-dir", str(paths["logs"]),
            "--slurm-conf", str(slurm.cluster.conf), "--cluster-tz", CLUSTER_TZ,
            "--api-retries", "1", "--api-backoff", "0.05", "--api-timeout", "10", *extra,
        ]  # fmt: skip
        hub.start_agent("SlurmSync", instance_id, arguments)
        return hub.client(instance_id)

    yield start, paths
    process = hub.agents.pop(instance_id, None)
    if process is not None:
        process.kill()


def finished_jobs(slurm) -> dict[str, dict]:
    return {job_id: row for job_id, row in slurm.sacct_utc().items() if row["state"] != "RUNNING"}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def cost(row: dict) -> Decimal:
    return expected_amount(row["partition"], row["cpus"], (utc(row["end"]) - utc(row["start"])).total_seconds())


def expected_usage(rows: dict[str, dict]) -> dict[str, Decimal]:
    usage = {"pc_alpha": Decimal("0.00"), "fc_beta": Decimal("0.00")}
    for row in rows.values():
        usage[row["account"]] += cost(row)
    return usage


def test_full_sync_dry_run_push_and_rerun(agent, slurm, emulator):
    start, paths = agent
    client = start()
    finished = finished_jobs(slurm)
    assert sorted(r["state"] for r in finished.values()) == ["CANCELLED", "COMPLETED", "COMPLETED", "FAILED"]

    dry = client.full_sync()
    assert dry.session["success"] is True, dry
    data = dry.session["data"]
    assert data["dry_run"] is True and data["complete"] is True
    assert data["jobs"]["to_push"] == 4 and data["jobs"]["still_running"] == 1
    assert data["projects"]["without_allocation"] == ["ac_noalloc"]
    assert emulator.request_count("PUT") == 0 and emulator.all_jobs() == []
    assert (paths["logs"] / "full_sync_testbrc_debug.log").exists()

    pushed = client.full_sync(push=True)
    assert pushed.session["success"] is True, pushed
    assert pushed.session["data"]["jobs"]["pushed"] == 4
    for job_id, row in finished.items():
        job = emulator.job(job_id)
        assert Decimal(job["amount"]) == cost(row), (job_id, row, job)
        # sacct printed Los Angeles time for the agent; the API got the same instants.
        assert datetime.fromisoformat(job["startdate"]) == utc(row["start"])
        assert datetime.fromisoformat(job["enddate"]) == utc(row["end"])
        assert job["jobstatus"] == {"COMPLETED": "COMPLETING"}.get(row["state"], row["state"])
        assert job["userid"] == row["uid"] and job["nodes"] == [{"name": "localhost"}]
    usage = expected_usage(finished)
    assert emulator.usage("pc_alpha") == usage["pc_alpha"] > 0
    assert emulator.usage("fc_beta") == usage["fc_beta"] > 0
    assert STAFF_TOKEN not in (paths["logs"] / "full_sync_testbrc.log").read_text()

    puts = emulator.request_count("PUT")
    again = client.full_sync(push=True)
    assert again.session["success"] is True
    assert again.session["data"]["jobs"]["pushed"] == 0 and again.session["data"]["jobs"]["unchanged"] == 4
    assert emulator.request_count("PUT") == puts
    assert emulator.usage("pc_alpha") == usage["pc_alpha"]


def test_sync_running_jobs_dry_run_push_and_rerun(agent, slurm, emulator):
    start, _paths = agent
    client = start()
    rows = slurm.sacct_utc()
    for job_id, row in rows.items():
        post_running(emulator, job_id, row)
    assert emulator.usage("pc_alpha") == Decimal("200.00") and emulator.usage("fc_beta") == Decimal("300.00")

    dry = client.sync_running_jobs()
    data = dry.session["data"]
    assert dry.session["success"] is True and data["dry_run"] is True
    assert (data["listed_running"], data["jobs"]["to_push"], data["jobs"]["still_running"]) == (5, 4, 1)
    assert emulator.usage("pc_alpha") == Decimal("200.00")

    pushed = client.sync_running_jobs(push=True)
    assert pushed.session["success"] is True, pushed
    assert pushed.session["data"]["jobs"]["pushed"] == 4
    usage = expected_usage(finished_jobs(slurm))
    # The upper-bound estimates are refunded down to the real cost; the running job keeps its estimate.
    assert emulator.usage("pc_alpha") == usage["pc_alpha"]
    assert emulator.usage("fc_beta") == usage["fc_beta"] + Decimal("100.00")
    assert emulator.job(slurm.jobs["failed"])["jobstatus"] == "FAILED"
    assert emulator.job(slurm.jobs["running"])["jobstatus"] == "RUNNING"

    again = client.sync_running_jobs(push=True)
    data = again.session["data"]
    assert (data["listed_running"], data["jobs"]["pushed"], data["jobs"]["still_running"]) == (1, 0, 1)


def test_api_outage_mid_push_then_rerun_gives_correct_totals(agent, slurm, emulator):
    start, _paths = agent
    client = start("--workers", "1")
    emulator.inject_fault(status=503, after=2, methods=["PUT"])
    failed = client.full_sync(push=True)
    assert failed.session["success"] is False and failed.session["degraded"] is True
    data = failed.session["data"]
    assert data["jobs"]["pushed"] == 2 and "503" in data["error"] and data["resume_at"] in ("fc_beta", "pc_alpha")
    resumes = "The next push run over the same window resumes at project"
    assert any(resumes in text for _, text in failed.session["messages"])

    emulator.clear_faults()
    resumed = client.full_sync(push=True)
    assert resumed.session["success"] is True and resumed.session["degraded"] is False
    assert resumed.session["data"]["resumed_from"] == data["resume_at"]
    usage = expected_usage(finished_jobs(slurm))
    assert emulator.usage("pc_alpha") == usage["pc_alpha"]
    assert emulator.usage("fc_beta") == usage["fc_beta"]


def test_reverse_sync_writes_commands_and_applies_limits_only_when_asked(agent, slurm):
    start, paths = agent
    client = start()

    def limits() -> dict[str, str]:
        out = slurm.cluster.run(["sacctmgr", "-nP", "show", "assoc", "format=Account,User,GrpTRESMins"]).stdout
        return {a: tres for a, user, tres in (line.split("|") for line in out.splitlines()) if not user}

    before = limits()
    dry = client.reverse_sync()
    assert dry.session["success"] is True, dry
    data = dry.session["data"]
    expected = [
        "sacctmgr -i modify account where name=fc_beta set GrpTRESMins=cpu=30000",
        "sacctmgr -i modify account where name=pc_alpha set GrpTRESMins=cpu=60000",
    ]
    assert data["commands"] == expected
    assert data["excluded"] == ["vector_x"] and data["without_allocation"] == ["ac_noalloc"]
    script = (paths["logs"] / "reverse_sync_output_testbrc.sh").read_text()
    assert all(command in script for command in expected)
    assert limits() == before  # a dry run changes nothing in Slurm

    applied = client.reverse_sync(apply=True)
    assert applied.session["success"] is True and applied.session["data"]["applied"] == 2
    after = limits()
    assert after["pc_alpha"] == "cpu=60000" and after["fc_beta"] == "cpu=30000"
    again = client.reverse_sync()
    assert again.session["data"]["limits_to_change"] == 0 and again.session["data"]["limits_unchanged"] == 2


def test_bad_inputs_fail_the_op_and_the_agent_stays_up(agent):
    start, paths = agent
    paths["token"].unlink()
    client = start()

    missing = client.full_sync()
    assert missing.session["success"] is False and missing.session["degraded"] is True
    assert f"file {paths['token']} does not exist" in missing.session["data"]["last_error"]["message"]

    write_token(paths["token"], "wrong-token")
    refused = client.full_sync()
    assert refused.session["success"] is False
    assert "HTTP 401" in refused.session["data"]["error"] and "token was refused" in refused.session["data"]["error"]

    write_token(paths["token"])
    fixed = client.full_sync()
    assert fixed.session["success"] is True and fixed.session["degraded"] is False

    paths["profile"].write_text("profiles:\n  testbrc:\n    extends: mybrc\n    colour: blue\n")
    broken = client.reverse_sync()
    assert broken.session["success"] is False
    message = broken.session["data"]["last_error"]["message"]
    assert str(paths["profile"]) in message and "unknown key(s) colour" in message

    bad_param = client.full_sync.start(start="yesterday")
    assert bad_param.status != 0 and "start" in bad_param.msg


def test_run_process_patches_running_jobs_and_stops_promptly(agent, slurm, emulator):
    start, _paths = agent
    client = start("--interval", "600")
    job_id = slurm.jobs["completed"]
    row = slurm.sacct_utc()[job_id]
    post_running(emulator, job_id, row)

    client.run.start(push=True)
    deadline = time.monotonic() + 30
    data = {}
    while time.monotonic() < deadline:
        data = client.run.status().session["data"]
        if data.get("last_cycle"):
            break
        time.sleep(0.2)
    assert data.get("last_cycle", {}).get("pushed") == 1, data
    assert data["activity"] == "waiting" and data["counters"]["cycles"] == 1
    assert emulator.job(job_id)["jobstatus"] == "COMPLETING"

    asked = time.monotonic()
    client.run.stop()
    done = client.run.wait(timeout=10)
    assert done.session["status"] == "done" and done.session["success"] is True
    assert time.monotonic() - asked < 5  # sleeping 600 s, yet it stops at once


def test_a_stop_against_a_very_slow_api_ends_the_op_and_a_second_sync_is_refused_meanwhile(agent, slurm, emulator):
    start, _paths = agent
    client = start()  # --api-timeout 10: a held PUT would keep the op for 10 s
    emulator.inject_fault(mode="delay", delay=60, methods=["PUT"])
    client.full_sync.start(push=True)
    deadline = time.monotonic() + 30
    while emulator.request_count("PUT") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emulator.request_count("PUT") > 0, "no PUT reached the API"

    # One sync at a time: a second one is refused by name, not run over the same ledger.
    refused = client.sync_running_jobs(push=True)
    assert refused.session["success"] is False
    assert any("full_sync is still running on this instance" in text for _, text in refused.session["messages"])
    assert refused.session["data"]["activity"] == "not started"

    client.full_sync.abort()
    done = client.full_sync.wait(timeout=3)  # well inside the 10 s the held PUT would take
    assert done.session["status"] == "done", done.session
    assert any("stopped on request" in text for _, text in done.session["messages"])

    emulator.clear_faults()  # the held PUTs are answered; the background run records them
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        again = client.full_sync(push=True)
        if again.session["success"]:
            break
        time.sleep(0.2)
    assert again.session["success"] is True, again.session["messages"]
    usage = {p: emulator.usage(p) for p in ("pc_alpha", "fc_beta")}
    assert usage == expected_usage(finished_jobs(slurm))  # each job charged once


def test_audit_is_read_only_needs_no_password_and_finds_what_drifted(agent, slurm, hub, emulator):
    start, paths = agent
    client = start()
    assert client.full_sync(push=True).session["data"]["jobs"]["pushed"] == 4
    puts = emulator.request_count("PUT") + emulator.request_count("POST")
    reader = hub.client(paths["instance_id"], privs=1)  # no password: a reading op

    clean = reader.audit()
    data = clean.session["data"]
    assert clean.session["success"] is True and data["clean"] is True, data
    assert data["jobs"] == {"in_api": 4, "in_slurm": 5} and data["projects"] == 3  # the running job is not in the API

    # The plugin lost the end of the failed job: the API says RUNNING again, with its estimate.
    failed = slurm.jobs["failed"]
    charged = Decimal(emulator.job(failed)["amount"])
    emulator.delete_job(failed)
    post_running(emulator, failed, slurm.sacct_utc()[failed])
    drifted = reader.audit()
    data = drifted.session["data"]
    assert drifted.session["success"] is True and data["clean"] is False
    assert data["drift"]["stale_running"] == 1 and data["findings"][0]["jobslurmid"] == failed
    # fc_beta's usage still holds the failed job's charge on top of the new estimate.
    assert data["usage_differs"][0]["project"] == "fc_beta" and Decimal(data["usage_drift_su"]) == charged
    assert emulator.request_count("PUT") + emulator.request_count("POST") == puts + 1  # only the planted POST
    assert (paths["logs"] / "audit_testbrc.log").exists()
