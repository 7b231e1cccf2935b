"""Hostile inputs and faults: DST, malformed API answers, looping pages, echoed tokens, names
that are not shell-safe. Each test checks what an operator would look at: the run's report
(what ``session.data`` shows), the API's jobs and usage, the files a run writes.
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal

import pytest

from hpcsync.agents.core.process import CommandError, CommandResult
from hpcsync.agents.slurmsync.slurm import AccountLimit

from .conftest import STAFF_TOKEN
from .test_sync_engine import World, sacct_line


@pytest.fixture
def world(emulator, tmp_path):
    return World(emulator, tmp_path)


def dst_line(job_id: str, submit: str, start: str, end: str, seconds: int, cpus: int = 1) -> str:
    """A sacct line (cluster time America/Los_Angeles) whose CPUTimeRAW is ``seconds x cpus``."""
    parts = sacct_line(job_id, "pc_alpha", start=start, end=end, cpus=cpus).split("|")
    parts[1], parts[13] = submit, str(seconds * cpus)
    return "|".join(parts)


def test_jobs_across_the_dst_fall_back_are_priced_by_their_real_duration(world):
    # 2024-11-03 in Los Angeles: 01:00-01:59 happens twice (PDT, then PST).
    world.write([
        # ran 01:50 PDT -> 01:10 PST: 20 minutes, although "01:10" < "01:50" on the wall clock
        dst_line("1", "2024-11-03T01:40:00", "2024-11-03T01:50:00", "2024-11-03T01:10:00", 20 * 60),
        # ran 00:30 PDT -> 01:20 PST: 110 minutes (the first reading of 01:20 would give 50)
        dst_line("2", "2024-11-03T00:20:00", "2024-11-03T00:30:00", "2024-11-03T01:20:00", 110 * 60, cpus=2),
        # ran 01:20 PDT -> 01:40 PDT: 20 minutes, inside the first pass of the hour
        dst_line("3", "2024-11-03T01:10:00", "2024-11-03T01:20:00", "2024-11-03T01:40:00", 20 * 60),
    ])  # fmt: skip
    report = world.engine().full_sync(push=True)
    assert report.ok and (report.pushed, report.rejected) == (3, 0), report.message()
    one, two, three = (world.emulator.job(n) for n in ("1", "2", "3"))
    # 01:50 PDT (UTC-7) and 01:10 PST (UTC-8); the server answers in UTC.
    assert (one["startdate"], one["enddate"]) == ("2024-11-03T08:50:00Z", "2024-11-03T09:10:00Z")
    assert one["amount"] == "600.00"  # 1800 SU/h x 1 CPU x 1/3 h
    assert two["enddate"] == "2024-11-03T09:20:00Z" and two["amount"] == "6600.00"  # 2 CPUs x 110 min
    assert three["enddate"] == "2024-11-03T08:40:00Z" and three["amount"] == "600.00"
    assert world.emulator.usage("pc_alpha") == Decimal("7800.00")


def test_malformed_api_answers_fail_the_run_with_a_clear_error(world, monkeypatch):
    world.write([sacct_line("1", "pc_alpha")])
    render = world.emulator._project_out
    monkeypatch.setattr(world.emulator, "_project_out", lambda p: {k: v for k, v in render(p).items() if k != "name"})
    report = world.engine().full_sync(push=True)
    assert not report.ok
    assert report.error.startswith("GET projects/: the API's answer is not in the expected shape")
    assert "project #1 has no 'name'" in report.error
    assert json.dumps(report.summary())  # still JSON-safe for session.data
    monkeypatch.undo()

    monkeypatch.setattr(world.emulator, "_allocation_out", lambda a: {"status": "Active"})
    report = world.engine().full_sync(push=True)
    assert not report.ok and "the allocation has no integer 'id'" in report.error
    assert "Failed at project fc_beta" in report.message()
    monkeypatch.undo()

    for n in ("1", "2"):
        world.emulator.jobs[n] = {"jobslurmid": n, "jobstatus": "RUNNING"}
    monkeypatch.setattr(world.emulator, "_list_jobs", lambda q, b: (200, {"count": 1, "next": None, "results": [{}]}))
    report = world.engine().sync_running_jobs(push=True)
    assert not report.ok and "job #1 has no 'jobslurmid'" in report.error
    assert world.emulator.request_count("PUT") == 0


def test_a_next_link_that_loops_back_is_refused_and_no_page_is_fetched_twice(world, monkeypatch):
    for n in range(246):  # 250 projects: three pages
        world.emulator.add_project(f"ic_p{n:03d}", resource=None)
    page_url = world.emulator._page_url

    def looping(base, query, number):
        # page 2 says "next: page 1", as DRF writes it (no page parameter, keys sorted)
        return page_url(base, query, 1 if number == 3 else number)

    monkeypatch.setattr(world.emulator, "_page_url", looping)
    world.write([sacct_line("1", "pc_alpha")])
    report = world.engine().full_sync(push=True)
    assert not report.ok and "points back to a page already fetched" in report.error
    pages = {url: n for url, n in world.emulator.requests_by_url().items() if url.startswith("GET /api/projects/")}
    assert pages == {"GET /api/projects/": 1, "GET /api/projects/?page=2": 1}


def test_a_server_that_echoes_the_token_does_not_leak_it(world, monkeypatch):
    def echo(data, instance):
        raise __import__("hpcsync.agents.testing.coldfront", fromlist=["x"])._validation_error(
            {"detail": [f"bad request with Authorization: Token {STAFF_TOKEN}"]}
        )

    monkeypatch.setattr(world.emulator, "_validate_job", echo)
    world.write([sacct_line("1", "pc_alpha")])
    report = world.engine().full_sync(push=True)
    assert report.ok and report.rejected == 1 and "Authorization: ***" in report.problems[0]
    written = [json.dumps(report.summary()), report.message(), world.ledger()["1"].error]
    written += [p.read_text() for p in world.log_dir.iterdir()]
    assert not [text for text in written if STAFF_TOKEN in text]

    monkeypatch.setattr(world.emulator, "_route", lambda *a: (_ for _ in ()).throw(ValueError(STAFF_TOKEN)))
    failed = world.engine().full_sync(push=False)  # a 500 page that shows the token, on a GET
    assert not failed.ok and STAFF_TOKEN not in failed.error + json.dumps(failed.summary())


class StubSlurm:
    """sacctmgr's view of the accounts (the real one cannot create such names)."""

    commands_run = 0

    def __init__(self, accounts: list[str], refuse: str):
        self.accounts, self.refuse, self.set = accounts, refuse, {}

    def describe(self) -> str:
        return "stub"

    def account_limits(self):
        return {name: AccountLimit(name, "") for name in self.accounts}

    def set_account_minutes(self, account: str, minutes: int):
        if account == self.refuse:
            result = CommandResult(["sacctmgr"], 1, "", " Nothing modified\n", 0.01)
            raise CommandError(f"sacctmgr modified nothing for account {account}", result)
        self.set[account] = minutes


def test_reverse_sync_file_is_shell_safe_and_one_refused_account_does_not_stop_the_rest(world, tmp_path):
    hostile = "pc_x; touch PWNED #"
    newline = "pc_y\ntouch PWNED2"
    for name, units in ((hostile, "2.00"), (newline, "3.00"), ("pc_neg", "-5.00"), ("pc_ok", "4.50")):
        world.emulator.add_project(name, resource="Savio Compute", service_units=units, start_date="2020-06-01")
    stub_sacctmgr = tmp_path / "sacctmgr"
    stub_sacctmgr.write_text('#!/bin/sh\nprintf "%s|" "$@" >> "$0.calls"; echo >> "$0.calls"\n')
    stub_sacctmgr.chmod(0o755)
    engine = world.engine(sacctmgr=str(stub_sacctmgr))
    engine.slurm = StubSlurm(["pc_alpha", "fc_beta", hostile, "pc_neg", "pc_ok"], refuse="fc_beta")

    report = engine.reverse_sync(apply=True)
    # fc_beta refused by sacctmgr: named, the others still set; the negative limit never set
    assert report.set_failed == ["fc_beta: sacctmgr modified nothing for account fc_beta"]
    assert engine.slurm.set == {"pc_alpha": 60000, hostile: 120, "pc_ok": 270}
    assert "pc_neg" in report.without_service_units and newline in report.missing_in_slurm
    assert not report.ok and "1 failed (fc_beta: sacctmgr modified nothing" in report.message()

    # The reviewable file, run by an operator, runs exactly the sacctmgr commands, nothing else.
    output = tmp_path / "run"
    output.mkdir()
    subprocess.run(["sh", report.output_file], cwd=output, check=True)
    assert not list(output.iterdir()), "the command file ran something else"
    calls = (tmp_path / "sacctmgr.calls").read_text().splitlines()
    assert f"-i|modify|account|where|name={hostile}|set|GrpTRESMins=cpu=120|" in calls
    assert len(calls) == 4 and not any("PWNED" in c and "name=" not in c for c in calls)
    log_lines = (world.log_dir / "reverse_sync_testbrc.log").read_text().splitlines()
    assert all(line[:4].isdigit() for line in log_lines), "a name from the API forged a log line"
