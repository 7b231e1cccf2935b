"""The real sacct/sacctmgr behind the engine and the ``hpcsync slurmsync`` commands (no hub)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from hpcsync.agents.cli import main as hpcsync_main
from hpcsync.agents.slurmsync.clock import ClusterClock
from hpcsync.agents.slurmsync.options import SlurmSyncOptions, build_engine
from hpcsync.agents.slurmsync.slurm import SACCT_FORMAT, SacctDump, Slurm

from .conftest import (
    ALICE,
    ARRAY_ACCOUNT,
    BOB,
    expected_amount,
    post_running,
    seed_array_world,
    seed_world,
    write_profile,
    write_token,
)

pytestmark = pytest.mark.integration


def test_a_saved_sacct_output_reads_exactly_like_live_sacct(slurm, tmp_path):
    """The dump format the CLI and the benchmark replay is what sacct really prints."""
    clock = ClusterClock("Asia/Tokyo")
    live = Slurm(clock, slurm_conf=str(slurm.cluster.conf))
    start, end = clock.parse_user_time("2020-01-01", "start"), clock.now()
    from_sacct = live.jobs_of_account("fc_beta", start, end)
    assert {j.state for j in from_sacct} >= {"FAILED", "COMPLETED", "RUNNING"}
    dump = tmp_path / "dump.txt"
    dump.write_text(
        slurm.cluster.run(["sacct", "-naPX", SACCT_FORMAT, "-A", "fc_beta", "-S", "2020-01-01"], env=clock.env()).stdout
    )

    def stable(jobs):  # a running job's CPUTimeRAW grows between two sacct calls
        return [j if not j.active else (j.job_id, j.state, j.start) for j in jobs]

    assert stable(SacctDump(dump, clock).jobs_of_account("fc_beta", start, end)) == stable(from_sacct)
    assert stable(live.jobs_by_id([j.job_id for j in from_sacct])) == stable(from_sacct)

    # Array tasks: keyed by their raw ids in the live reading and in the dump alike.
    tasks = live.jobs_of_account(ARRAY_ACCOUNT, start, end)
    assert sorted(j.sacct_id for j in tasks) == sorted(slurm.array_tasks())
    assert {j.job_id for j in tasks} == {row["raw"] for row in slurm.array_tasks().values()}
    dump.write_text(
        slurm.cluster.run(
            ["sacct", "-naPX", SACCT_FORMAT, "-A", ARRAY_ACCOUNT, "-S", "2020-01-01"], env=clock.env()
        ).stdout
    )
    raw_ids = sorted(j.job_id for j in tasks)
    assert SacctDump(dump, clock).jobs_by_id(raw_ids) == sorted(tasks, key=lambda j: raw_ids.index(j.job_id))


CLUSTER_TZ = "America/Los_Angeles"


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _cost(row: dict) -> Decimal:
    return expected_amount(row["partition"], row["cpus"], (_utc(row["end"]) - _utc(row["start"])).total_seconds())


def _array_engine(slurm, emulator, tmp_path):
    """A SlurmSync engine on the real cluster's sacct, against an emulator that knows only ic_gamma."""
    seed_array_world(emulator, slurm.uids[ALICE])
    settings = SlurmSyncOptions(
        target="testbrc",
        profile_file=str(write_profile(tmp_path / "profiles.yaml", emulator.api_url)),
        token_file=f"file:{write_token(tmp_path / 'token')}",
        db=f"sqlite:///{tmp_path / 'ledger.db'}",
        log_dir=str(tmp_path / "logs"),
        slurm_conf=str(slurm.cluster.conf),
        cluster_tz=CLUSTER_TZ,
        api_retries=1,
        api_backoff=0.01,
    )
    return lambda: build_engine(settings)


def test_array_tasks_are_pushed_once_each_under_their_raw_job_ids(slurm, emulator, tmp_path):
    tasks = slurm.array_tasks()  # sacct's JobID (<array>_1, <array>_2) -> JobIDRaw, times, ...
    assert sorted(tasks) == [f"{slurm.array_id}_1", f"{slurm.array_id}_2"]
    assert {row["state"] for row in tasks.values()} == {"COMPLETED"}
    by_raw = {row["raw"]: row for row in tasks.values()}
    assert len(by_raw) == 2 and not set(by_raw) & set(tasks)
    engine = _array_engine(slurm, emulator, tmp_path)
    # The banking plugin recorded each task when it started, under its raw id, with an estimate.
    for raw, row in by_raw.items():
        post_running(emulator, raw, row)
    assert emulator.usage(ARRAY_ACCOUNT) == Decimal("200.00")

    report = engine().full_sync(push=True)
    assert report.ok and report.complete and (report.pushed, report.jobs_found) == (2, 2), report.message()
    # Each task is one job in the API, under the id the plugin used: no second "<array>_1" job.
    assert sorted(job["jobslurmid"] for job in emulator.all_jobs()) == sorted(by_raw)
    for raw, row in by_raw.items():
        job = emulator.job(raw)
        assert job["jobstatus"] == "COMPLETING" and Decimal(job["amount"]) == _cost(row), (raw, row, job)
        assert datetime.fromisoformat(job["startdate"]) == _utc(row["start"])
    # The estimates are replaced by the real costs: each task charged once.
    assert emulator.usage(ARRAY_ACCOUNT) == sum((_cost(row) for row in by_raw.values()), Decimal("0.00"))
    log = (tmp_path / "logs" / "full_sync_testbrc.log").read_text()
    assert all(f"{raw} UPDATED : " in log for raw in by_raw) and f"{slurm.array_id}_1" not in log
    ledger = engine().ledger
    assert {raw: ledger.get(raw).state for raw in by_raw} == dict.fromkeys(by_raw, "pushed")

    puts = emulator.request_count("PUT")
    again = engine().full_sync(push=True)
    assert again.ok and (again.pushed, again.unchanged) == (0, 2), again.message()
    assert emulator.request_count("PUT") == puts and len(emulator.all_jobs()) == 2


def test_running_jobs_sync_finds_array_tasks_the_api_lists_under_their_raw_ids(slurm, emulator, tmp_path):
    by_raw = {row["raw"]: row for row in slurm.array_tasks().values()}
    engine = _array_engine(slurm, emulator, tmp_path)
    for raw, row in by_raw.items():
        post_running(emulator, raw, row)

    dry = engine().sync_running_jobs(push=False)
    assert dry.ok and (dry.listed_running, dry.jobs_found, dry.to_push) == (2, 2, 2), dry.message()
    assert dry.not_in_slurm == []

    report = engine().sync_running_jobs(push=True)
    assert report.ok and report.pushed == 2 and report.not_in_slurm == [], report.message()
    for raw, row in by_raw.items():
        job = emulator.job(raw)
        assert job["jobstatus"] == "COMPLETING" and Decimal(job["amount"]) == _cost(row)
    assert len(emulator.all_jobs()) == 2
    assert emulator.usage(ARRAY_ACCOUNT) == sum((_cost(row) for row in by_raw.values()), Decimal("0.00"))
    rerun = engine().sync_running_jobs(push=True)
    assert (rerun.listed_running, rerun.pushed) == (0, 0)


def test_cli_reverse_sync_prints_and_writes_the_commands(slurm, emulator, tmp_path, capsys):
    seed_world(emulator, slurm.uids[ALICE], slurm.uids[BOB])
    profile = write_profile(tmp_path / "profiles.yaml", emulator.api_url)
    token = write_token(tmp_path / "token")
    argv = [
        "slurmsync", "reverse-sync", "-T", "testbrc", "--profile-file", str(profile), "--token-file", str(token),
        "--slurm-conf", str(slurm.cluster.conf), "--log-dir", str(tmp_path), "--db", f"sqlite:///{tmp_path}/l.db",
    ]  # fmt: skip
    assert hpcsync_main(argv) == 0
    out = capsys.readouterr().out
    assert "reverse sync of testbrc:" in out and "not applied: apply=True sets them" in out
    script = (tmp_path / "reverse_sync_output_testbrc.sh").read_text()
    for line in out.splitlines():
        if line.startswith("sacctmgr "):
            assert line in script
    assert (tmp_path / "reverse_sync_testbrc_debug.log").exists()
    assert hpcsync_main([*argv, "--sacctmgr", "/nonexistent/sacctmgr"]) == 1
    assert "cannot run /nonexistent/sacctmgr" in capsys.readouterr().out
