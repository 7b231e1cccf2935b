"""The sync engine against the ColdFront emulator, with jobs from sacct-format dump files.

These exercise the ledger, pagination, outages and resumption without a Slurm cluster;
``test_agent_hub.py`` runs the same jobs against real Slurm through the real hub.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from hpcsync.agents.cli import main as hpcsync_main
from hpcsync.agents.slurmsync.options import SlurmSyncOptions, build_engine
from hpcsync.agents.slurmsync.slurm import Slurm
from hpcsync.agents.testing.coldfront import ColdFrontEmulator
from hpcsync.db import open_database
from hpcsync.db.models import SlurmJobPush

from .conftest import (
    ALICE,
    ALLOCATION_END,
    BOB,
    READER_TOKEN,
    STAFF_TOKEN,
    expected_amount,
    seed_world,
    write_profile,
    write_token,
)

ALICE_UID, BOB_UID = "5001", "5002"


def sacct_line(
    job_id: str,
    account: str,
    uid: str = ALICE_UID,
    *,
    state: str = "COMPLETED",
    partition: str = "debug",
    cpus: int = 1,
    start: str = "2024-07-01T10:00:00",
    end: str = "2024-07-01T11:00:00",
    nodes: str = "n0001",
    raw: str | None = None,
    submit: str = "2024-07-01T09:00:00",
) -> str:
    """A line of ``sacct -naPX --format=<SACCT_FIELDS>``: the seed's 15 fields, then JobIDRaw."""
    return "|".join([
        job_id, submit, start, end, uid, account, state, partition, "normal", nodes,
        str(cpus), "1", "1", "3600", "01:00:00", raw or job_id,
    ])  # fmt: skip


class World:
    """An emulator, a dump file, a ledger and log dir: what one engine run needs."""

    def __init__(self, emulator, tmp_path: Path):
        self.emulator = emulator
        self.tmp = tmp_path
        seed_world(emulator, ALICE_UID, BOB_UID)
        self.profile = write_profile(tmp_path / "profiles.yaml", emulator.api_url)
        self.token = write_token(tmp_path / "token")
        self.dump = tmp_path / "sacct.txt"
        self.db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
        self.log_dir = tmp_path / "logs"

    def write(self, lines: list[str]) -> None:
        self.dump.write_text("\n".join(lines) + "\n")

    def engine(self, **overrides):
        settings = SlurmSyncOptions(
            target="testbrc",
            profile_file=str(self.profile),
            token_file=f"file:{self.token}",
            sacct_file=str(self.dump),
            cluster_tz="America/Los_Angeles",
            db=self.db_url,
            log_dir=str(self.log_dir),
            api_retries=1,
            api_backoff=0.01,
            api_timeout=5,
        )
        for key, value in overrides.items():
            setattr(settings, key, value)
        return build_engine(settings)

    def ledger(self) -> dict[str, SlurmJobPush]:
        db = open_database(self.db_url)
        with db.session() as s:
            return {row.jobslurmid: row for row in s.scalars(select(SlurmJobPush))}


@pytest.fixture
def world(emulator, tmp_path):
    return World(emulator, tmp_path)


BASIC = [
    sacct_line("101", "pc_alpha", cpus=2),  # 2 CPUs x 1 h x 1800
    sacct_line("102", "pc_alpha", state="FAILED", start="2024-07-01T10:00:00", end="2024-07-01T10:00:30"),
    sacct_line("103", "fc_beta", BOB_UID, state="CANCELLED by 0", partition="long", nodes="n0[061-062].savio2"),
    sacct_line("103.batch", "fc_beta", BOB_UID),  # a step: ignored
    sacct_line("104", "fc_beta", state="RUNNING", end="Unknown"),  # still running: skipped
    sacct_line("105", "fc_beta", state="CANCELLED by 5001", start="Unknown", end="2024-07-01T10:00:00"),  # never ran
    sacct_line("106", "fc_beta", partition="gpu_unpriced"),  # unknown partition: 0 SU
]


def test_full_sync_dry_run_push_and_no_op_rerun(world):
    world.write(BASIC)
    dry = world.engine().full_sync(push=False)
    assert dry.ok and dry.complete, dry.message()
    assert (dry.to_push, dry.still_running, dry.never_started) == (4, 1, 1)
    assert dry.amount == Decimal("3600.00") + Decimal("15.00") + Decimal("3600.00")
    assert world.emulator.request_count("PUT") == 0 and world.emulator.usage("pc_alpha") == 0
    debug_log = world.log_dir / "full_sync_testbrc_debug.log"
    assert "101 COLLECTED : " in debug_log.read_text()

    pushed = world.engine().full_sync(push=True)
    assert pushed.ok and pushed.pushed == 4 and pushed.projects_without_allocation == ["ac_noalloc"], pushed.message()
    assert pushed.unknown_partitions == ["gpu_unpriced"]
    assert world.emulator.usage("pc_alpha") == Decimal("3615.00")
    assert world.emulator.usage("fc_beta") == Decimal("3600.00")
    assert world.emulator.user_usage("fc_beta", BOB) == Decimal("3600.00")
    job = world.emulator.job("103")
    assert job["nodes"] == [{"name": "n0061.savio2"}, {"name": "n0062.savio2"}]
    assert job["jobstatus"] == "CANCELLED" and job["startdate"] == "2024-07-01T17:00:00Z"  # 10:00 PDT
    assert world.emulator.job("101")["jobstatus"] == "COMPLETING"  # the banking plugins' word
    assert world.emulator.job("106")["amount"] == "0.00"
    assert "101 UPDATED : " in (world.log_dir / "full_sync_testbrc.log").read_text()
    assert {row.state for row in world.ledger().values()} == {"pushed"}

    puts = world.emulator.request_count("PUT")
    again = world.engine().full_sync(push=True)
    assert again.ok and (again.pushed, again.unchanged) == (0, 4), again.message()
    assert world.emulator.request_count("PUT") == puts

    # One job's data changes (a longer run): only it is pushed, usage moves by the difference.
    world.write([line.replace("2024-07-01T10:00:30", "2024-07-01T10:01:00") for line in BASIC])
    changed = world.engine().full_sync(push=True)
    assert (changed.pushed, changed.unchanged) == (1, 3)
    assert world.emulator.usage("pc_alpha") == Decimal("3600.00") + Decimal("30.00")


def test_every_page_is_fetched_once_and_nothing_is_capped(world):
    for n in range(246):
        world.emulator.add_project(f"ic_p{n:03d}", resource=None)
    world.write([sacct_line("1", "pc_alpha")])
    report = world.engine().full_sync(push=True)
    assert report.ok and report.projects_total == 250 and report.projects_done == 250
    pages = {url: n for url, n in world.emulator.requests_by_url().items() if url.startswith("GET /api/projects/")}
    assert sorted(pages) == ["GET /api/projects/", "GET /api/projects/?page=2", "GET /api/projects/?page=3"]
    assert set(pages.values()) == {1}


def test_running_jobs_over_many_pages(world):
    lines = []
    for n in range(1, 231):
        job_id = str(1000 + n)
        start = "2024-07-01T10:00:00"
        body = {
            "jobslurmid": job_id, "submitdate": "2024-07-01T16:00:00Z", "startdate": "2024-07-01T17:00:00Z",
            "userid": ALICE_UID, "accountid": "pc_alpha", "amount": "100.00", "jobstatus": "RUNNING",
            "partition": "debug",
        }  # fmt: skip
        requests.post(world.emulator.api_url + "jobs/", json=body, headers={"Authorization": f"Token {STAFF_TOKEN}"})
        state, end = ("RUNNING", "Unknown") if n % 10 == 0 else ("COMPLETED", "2024-07-01T10:00:10")
        lines.append(sacct_line(job_id, "pc_alpha", state=state, start=start, end=end))
    world.write(lines)
    assert world.emulator.usage("pc_alpha") == Decimal("23000.00")  # 230 upper-bound estimates
    kwargs = {"start": datetime(2024, 6, 1, tzinfo=UTC), "end": None}
    dry = world.engine().sync_running_jobs(push=False, **kwargs)
    assert (dry.listed_running, dry.to_push, dry.still_running) == (230, 207, 23)
    report = world.engine().sync_running_jobs(push=True, **kwargs)
    assert report.ok and report.pushed == 207, report.message()
    pages = [url for url in world.emulator.requests_by_url() if url.startswith("GET /api/jobs/")]
    assert len(pages) == 3  # three pages, each fetched once by each of the two runs
    assert all(world.emulator.requests_by_url()[url] == 2 for url in pages)
    # 23 still running keep their estimate; 207 finished cost 10 s x 1800/h = 5.00 each
    assert world.emulator.usage("pc_alpha") == Decimal("2300.00") + 207 * Decimal("5.00")
    rerun = world.engine().sync_running_jobs(push=True, **kwargs)
    assert (rerun.listed_running, rerun.pushed, rerun.still_running) == (23, 0, 23)


def test_api_outage_mid_push_then_rerun_charges_each_job_once(world):
    lines = [sacct_line(str(n), "pc_alpha") for n in range(1, 9)] + [
        sacct_line(str(n), "fc_beta") for n in range(9, 13)
    ]
    world.write(lines)
    world.emulator.inject_fault(status=503, after=5, methods=["PUT"])
    failed = world.engine(workers=1).full_sync(push=True)
    assert not failed.ok and "503" in failed.error and "gave up after 2 tries" in failed.error
    # Projects go in name order: fc_beta's 4 jobs, then 1 of pc_alpha's before the outage.
    assert failed.pushed == 5 and failed.resume_at == "pc_alpha"
    assert "The next push run over the same window resumes at project pc_alpha" in failed.message()
    assert world.emulator.usage("fc_beta") == 4 * Decimal("1800.00")
    assert world.emulator.usage("pc_alpha") == Decimal("1800.00")
    ledger = world.ledger()
    assert ledger["2"].state == "failed" and ledger["2"].http_status is None and "503" in ledger["2"].error
    assert ledger["3"].state == "pending" and "not sent" in ledger["3"].error  # halted before its PUT

    world.emulator.clear_faults()
    resumed = world.engine(workers=3).full_sync(push=True)
    assert resumed.ok and resumed.resumed_from == "pc_alpha", resumed.message()
    assert (resumed.pushed, resumed.unchanged) == (7, 1)
    assert world.emulator.usage("pc_alpha") == 8 * Decimal("1800.00")
    assert world.emulator.usage("fc_beta") == 4 * Decimal("1800.00")
    assert {row.state for row in world.ledger().values()} == {"pushed"}


def test_a_lost_reply_is_resent_without_charging_twice(world):
    world.write([sacct_line("1", "pc_alpha"), sacct_line("2", "pc_alpha")])
    world.emulator.inject_fault(mode="drop", count=1, methods=["PUT"])
    report = world.engine().full_sync(push=True)
    assert report.ok and report.pushed == 2
    assert world.emulator.request_count("PUT") == 3  # one PUT was committed, its reply lost, and sent again
    assert world.emulator.usage("pc_alpha") == 2 * Decimal("1800.00")


def test_max_jobs_stops_says_where_and_the_next_run_resumes_there(world):
    world.write(
        [sacct_line(str(n), "fc_beta") for n in range(1, 5)] + [sacct_line(str(n), "pc_alpha") for n in range(5, 9)]
    )
    first = world.engine().full_sync(push=True, max_jobs=3)
    assert first.ok and not first.complete and first.pushed == 3
    assert first.stopped_reason == "max_jobs=3 reached" and first.resume_at == "fc_beta"
    second = world.engine().full_sync(push=True, max_jobs=3)
    assert second.resumed_from == "fc_beta" and (second.pushed, second.unchanged) == (3, 3)
    assert second.resume_at == "pc_alpha"
    third = world.engine().full_sync(push=True, max_jobs=3)
    assert third.complete and third.resumed_from == "pc_alpha" and third.pushed == 2
    assert world.emulator.usage("fc_beta") + world.emulator.usage("pc_alpha") == 8 * Decimal("1800.00")
    final = world.engine().full_sync(push=True)
    assert final.complete and final.resumed_from is None and final.pushed == 0


def test_a_job_the_api_rejects_is_reported_and_the_rest_pushed(world):
    world.write([sacct_line("1", "pc_alpha", BOB_UID), sacct_line("2", "pc_alpha")])  # bob is not in pc_alpha
    report = world.engine().full_sync(push=True)
    assert report.ok and (report.pushed, report.rejected) == (1, 1)
    assert "1 rejected by the API" in report.message()
    assert any(f"User {BOB} is not a member of account pc_alpha" in p for p in report.problems)
    assert world.ledger()["1"].state == "rejected" and world.ledger()["1"].http_status == 400


def test_refused_tokens_fail_the_run_with_a_clear_error(world):
    world.write([sacct_line("1", "pc_alpha")])
    write_token(world.token, READER_TOKEN)  # can read, cannot write
    read_only = world.engine().full_sync(push=True)
    assert not read_only.ok and "HTTP 403" in read_only.error and "token was refused" in read_only.error
    write_token(world.token, "not-a-token")
    wrong = world.engine().full_sync(push=False)
    assert not wrong.ok and "HTTP 401" in wrong.error
    world.token.unlink()
    with pytest.raises(Exception, match=f"file {world.token} does not exist"):
        world.engine()


def test_malformed_sacct_output_and_missing_sacct_are_named(world):
    world.write([sacct_line("1", "pc_alpha"), sacct_line("2", "pc_alpha").replace("|n0001|1|", "|n0001|x|")])
    report = world.engine().full_sync(push=False)
    assert not report.ok and f"sacct dump {world.dump} line 2: job 2: field AllocCPUS 'x'" in report.error
    assert "Failed at project pc_alpha" in report.message()

    engine = world.engine()
    engine.slurm = Slurm(engine.clock, sacct="/nonexistent/sacct")
    missing = engine.full_sync(push=False)
    assert not missing.ok and "cannot run /nonexistent/sacct" in missing.error


def test_fewer_than_ten_jobs_and_no_token_in_any_file(world):
    world.write([sacct_line("1", "pc_alpha")])
    report = world.engine().full_sync(push=True)
    assert report.ok and report.pushed == 1
    for path in [*world.log_dir.iterdir(), world.tmp / "ledger.db"]:
        assert STAFF_TOKEN.encode() not in path.read_bytes(), path


def test_cli_full_sync_and_clear_errors(world, capsys, monkeypatch):
    world.write(BASIC)
    monkeypatch.chdir(world.tmp)
    common = ["slurmsync", "full-sync", "-T", "testbrc", "--profile-file", str(world.profile),
              "--sacct-file", str(world.dump), "--db", world.db_url, "--cluster-tz", "America/Los_Angeles"]  # fmt: skip
    assert hpcsync_main([*common, "--token-file", str(world.token), "--PUSH"]) == 0
    out = capsys.readouterr().out
    assert "full sync of testbrc: pushed 4 jobs (7215.00 SU)" in out
    assert (world.tmp / "full_sync_testbrc.log").exists()  # the seed's log name, in the cwd
    # Without --token-file the seed's config file name is used; it does not exist here.
    assert hpcsync_main(common) == 1
    err = capsys.readouterr().err
    assert "full_sync_testbrc.conf does not exist" in err
    assert hpcsync_main([*common, "--token-file", str(world.token), "-s", "2024-02-30"]) == 1
    assert "-s/--start '2024-02-30' is not a time" in capsys.readouterr().err


def test_formula_matches_the_reference(world):
    # 3 CPUs on `long` for 1234 s; the test's own formula agrees with the engine's payload.
    world.write([sacct_line("1", "pc_alpha", partition="long", cpus=3, end="2024-07-01T10:20:34")])
    world.engine().full_sync(push=True)
    assert Decimal(world.emulator.job("1")["amount"]) == expected_amount("long", 3, 1234)
    assert world.emulator.job("1")["raw_time"] == pytest.approx(1234 / 3600, abs=1e-6)
    assert world.emulator.job("1")["userid"] == ALICE_UID and ALICE in world.emulator.users


def test_cli_running_jobs_from_a_sacct_dump(world, capsys):
    world.write([sacct_line("1", "pc_alpha"), sacct_line("2", "pc_alpha", state="RUNNING", end="Unknown")])
    for job_id in ("1", "2"):
        body = {
            "jobslurmid": job_id, "submitdate": "2024-07-01T16:00:00Z", "startdate": "2024-07-01T17:00:00Z",
            "userid": ALICE_UID, "accountid": "pc_alpha", "amount": "9.00", "jobstatus": "RUNNING",
        }  # fmt: skip
        requests.post(world.emulator.api_url + "jobs/", json=body, headers={"Authorization": f"Token {STAFF_TOKEN}"})
    argv = ["slurmsync", "running-jobs", "-T", "testbrc", "--profile-file", str(world.profile),
            "--token-file", f"file:{world.token}", "--sacct-file", str(world.dump), "--db", world.db_url,
            "--log-dir", str(world.log_dir), "--cluster-tz", "America/Los_Angeles", "-s", "2024-06-01"]  # fmt: skip
    assert hpcsync_main(argv) == 0
    assert "1 jobs would be pushed" in capsys.readouterr().out
    assert world.emulator.job("1")["jobstatus"] == "RUNNING"
    assert hpcsync_main([*argv, "--PUSH"]) == 0
    assert "pushed 1 jobs (1800.00 SU)" in capsys.readouterr().out
    assert world.emulator.job("1")["jobstatus"] == "COMPLETING"
    assert world.emulator.usage("pc_alpha") == Decimal("1809.00")  # job 2 keeps its 9.00 estimate


def test_two_apis_of_one_target_sharing_a_database_keep_separate_ledgers_and_cursors(world):
    # Staging and production instances of `testbrc` (same profile, --api-url differs), one database.
    production = ColdFrontEmulator(period_start_month=6).start()
    try:
        seed_world(production, ALICE_UID, BOB_UID)
        world.write(
            [sacct_line(str(n), "fc_beta") for n in range(1, 5)] + [sacct_line(str(n), "pc_alpha") for n in range(5, 9)]
        )
        staging_url = world.emulator.api_url
        # Staging stops inside pc_alpha: its ledger has fc_beta's jobs, its cursor says pc_alpha.
        staged = world.engine(api_url=staging_url).full_sync(push=True, max_jobs=5)
        assert staged.pushed == 5 and staged.resume_at == "pc_alpha", staged.message()

        prod = world.engine(api_url=production.api_url).full_sync(push=True)
        assert prod.ok and prod.complete and prod.resumed_from is None, prod.message()
        assert (prod.pushed, prod.unchanged) == (8, 0)
        assert production.usage("fc_beta") == production.usage("pc_alpha") == 4 * Decimal("1800.00")
        assert production.request_count("PUT") == 8

        # Staging still resumes where it stopped and pushes only what it has not; the same
        # URL spelled differently (here: no trailing slash) is the same API.
        respelled = staging_url.rstrip("/")
        assert respelled != staging_url
        resumed = world.engine(api_url=respelled).full_sync(push=True)
        assert resumed.resumed_from == "pc_alpha" and (resumed.pushed, resumed.unchanged) == (3, 1), resumed.message()
        assert world.emulator.usage("pc_alpha") == 4 * Decimal("1800.00")
        assert world.emulator.request_count("PUT") == 8

        # What an operator sees in the ledger: one row per job and API, each naming its API.
        db = open_database(world.db_url)
        with db.session() as s:
            rows = [(r.api_url, r.jobslurmid, r.state) for r in s.scalars(select(SlurmJobPush))]
        assert sorted({url for url, _, _ in rows}) == sorted({staging_url, production.api_url})
        assert len(rows) == 16 and {state for _, _, state in rows} == {"pushed"}
    finally:
        production.stop()


def test_api_urls_are_normalised_before_keying_the_ledger():
    from hpcsync.agents.slurmsync.ledger import api_url_hash, normalize_api_url

    same = [
        "https://mybrc.example.org/api/",
        "HTTPS://MyBRC.example.org:443/api",
        "https://user:secret@mybrc.example.org//api//?x=1#f",
    ]
    assert {normalize_api_url(url) for url in same} == {"https://mybrc.example.org/api/"}
    assert len({api_url_hash(url) for url in same}) == 1
    different = [
        "http://mybrc.example.org/api/",
        "https://mybrc.example.org:8443/api/",
        "https://mybrc-staging.example.org/api/",
        "https://mybrc.example.org/staging/api/",
    ]
    assert len({api_url_hash(url) for url in [same[0], *different]}) == 5


def test_jobs_the_server_stores_without_charge_are_predicted_said_and_recorded(world):
    # pc_alpha's allocation lost its end date (a periodic allowance: nothing is charged);
    # fc_beta's starts while job 3 ran (full sync reads the jobs that ran since the start).
    world.emulator.set_allocation_dates("pc_alpha", start_date="2020-06-01", end_date=None)
    world.emulator.set_allocation_dates("fc_beta", start_date="2024-07-02", end_date=ALLOCATION_END)
    world.write([
        sacct_line("1", "pc_alpha"), sacct_line("2", "pc_alpha", cpus=2),
        sacct_line("3", "fc_beta", start="2024-07-01T23:00:00", end="2024-07-02T01:00:00"),
        sacct_line("4", "fc_beta", start="2024-07-02T10:00:00", end="2024-07-02T11:00:00"),
    ])  # fmt: skip
    dry = world.engine().full_sync(push=False)
    assert (dry.to_push, dry.stored_uncharged, dry.amount, dry.uncharged_amount) == (4, 3, 1800, 9000), dry.message()
    assert "3 of them would be stored by the server without charge (9000.00 SU" in dry.message()
    assert "the allocation of pc_alpha (a periodic allowance) has no end date" in dry.uncharged_reasons
    assert "the job started before the allocation of fc_beta (2024-07-02)" in dry.uncharged_reasons
    assert "3 NOT CHARGED : 3600.00 SU" in (world.log_dir / "full_sync_testbrc_debug.log").read_text()

    pushed = world.engine().full_sync(push=True)
    assert (pushed.pushed, pushed.stored_uncharged, pushed.amount) == (1, 3, 1800), pushed.message()
    assert "3 were stored by the server without charge" in pushed.message()
    # The prediction was right: the server holds the jobs and charged only job 4.
    assert world.emulator.usage("pc_alpha") == 0 and world.emulator.usage("fc_beta") == Decimal("1800.00")
    assert len(world.emulator.all_jobs()) == 4
    ledger = world.ledger()
    assert {n: ledger[n].state for n in "1234"} == {
        "1": "stored_uncharged", "2": "stored_uncharged", "3": "stored_uncharged", "4": "pushed",
    }  # fmt: skip
    assert "has no end date" in ledger["1"].error and ledger["1"].pushed_hash == ledger["1"].payload_hash
    again = world.engine().full_sync(push=True)
    assert (again.pushed, again.stored_uncharged, again.unchanged) == (0, 0, 4)


def test_the_running_jobs_sync_says_when_an_estimate_stays_charged(world):
    world.emulator.set_allocation_dates("pc_alpha", start_date="2020-06-01", end_date=None)
    body = {
        "jobslurmid": "1", "submitdate": "2024-07-01T16:00:00Z", "startdate": "2024-07-01T17:00:00Z",
        "userid": ALICE_UID, "accountid": "pc_alpha", "amount": "9000.00", "jobstatus": "RUNNING",
    }  # fmt: skip
    requests.post(world.emulator.api_url + "jobs/", json=body, headers={"Authorization": f"Token {STAFF_TOKEN}"})
    world.write([sacct_line("1", "pc_alpha")])
    window = {"start": datetime(2024, 6, 1, tzinfo=UTC), "end": None}
    report = world.engine().sync_running_jobs(push=True, **window)
    assert (report.pushed, report.stored_uncharged) == (0, 1), report.message()
    assert any("the RUNNING estimate it charged (9000.00 SU) stays charged" in p for p in report.problems)
    assert world.emulator.usage("pc_alpha") == Decimal("9000.00")  # as predicted: the PUT moved nothing
    assert world.ledger()["1"].state == "stored_uncharged"


def test_a_job_the_api_refused_is_not_sent_again_unless_its_data_changed_or_a_retry_is_asked(world):
    world.write([sacct_line("1", "pc_alpha", BOB_UID), sacct_line("2", "pc_alpha")])  # bob is not in pc_alpha
    first = world.engine().full_sync(push=True)
    assert (first.pushed, first.rejected) == (1, 1)
    puts = world.emulator.request_count("PUT")

    dry = world.engine().full_sync(push=False)
    assert (dry.to_push, dry.unchanged, dry.rejected_earlier) == (0, 1, 1), dry.message()
    assert "0 jobs would be pushed" in dry.message() and "1 refused by the API before" in dry.message()
    again = world.engine().full_sync(push=True)
    assert (again.pushed, again.rejected, again.rejected_earlier) == (0, 0, 1)
    assert world.emulator.request_count("PUT") == puts and not again.degraded

    retried = world.engine().full_sync(push=True, retry_rejected=True)
    assert (retried.rejected, retried.rejected_earlier) == (1, 0)
    assert world.emulator.request_count("PUT") == puts + 1

    world.emulator.add_member("pc_alpha", BOB)  # fixed on the server, and the job ran longer
    world.write([sacct_line("1", "pc_alpha", BOB_UID, end="2024-07-01T12:00:00"), sacct_line("2", "pc_alpha")])
    changed = world.engine().full_sync(push=True)
    assert (changed.pushed, changed.rejected_earlier) == (1, 0) and world.ledger()["1"].state == "pushed"


def test_a_resumed_full_sync_over_a_new_window_starts_at_the_first_project(world):
    # fc_beta's jobs ran in June, pc_alpha's in July. A run over July stops inside pc_alpha.
    june_times = {"submit": "2024-06-15T09:00:00", "start": "2024-06-15T10:00:00", "end": "2024-06-15T11:00:00"}
    world.write(
        [sacct_line(str(n), "fc_beta", **june_times) for n in range(1, 5)]
        + [sacct_line(str(n), "pc_alpha") for n in range(5, 9)]
    )
    july = world.engine().full_sync(push=True, start=datetime(2024, 7, 1, tzinfo=UTC), max_jobs=1)
    assert july.resume_at == "pc_alpha" and july.pushed == 1, july.message()
    # The next run asks for June too: resuming at pc_alpha would leave fc_beta's jobs out.
    june = world.engine().full_sync(push=True, start=datetime(2024, 6, 1, tzinfo=UTC))
    assert june.complete and june.resumed_from is None, june.message()
    assert "over another window" in june.resume_ignored and "started at the first project" in june.message()
    assert (june.pushed, june.unchanged, june.projects_done) == (7, 1, 4)
    assert world.emulator.usage("fc_beta") == world.emulator.usage("pc_alpha") == 4 * Decimal("1800.00")
