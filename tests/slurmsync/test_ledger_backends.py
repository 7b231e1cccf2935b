"""The push ledger on every backend (SQLite, PostgreSQL, MariaDB): re-runs push only what
changed, and a job no API can accept (an absurd cost) is rejected alone.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from .test_sync_engine import World, sacct_line


@pytest.fixture
def world(emulator, tmp_path, db_url):
    world = World(emulator, tmp_path)
    world.db_url = db_url
    return world


def test_ledger_on_every_backend_pushes_only_what_changed(world):
    lines = [sacct_line(str(n), "pc_alpha") for n in range(1, 6)]
    # 2,000,000 CPUs for an hour at 1800 SU/h: 3.6e9 SU, more than any API or ledger column holds
    absurd = sacct_line("6", "pc_alpha", cpus=2_000_000)
    world.write([*lines, absurd])
    first = world.engine().full_sync(push=True)
    assert first.ok and (first.pushed, first.rejected) == (5, 1), first.message()
    assert any("job 6:" in p and "amount" in p for p in first.problems)
    rows = world.ledger()
    assert {rows[str(n)].state for n in range(1, 6)} == {"pushed"} and rows["6"].state == "rejected"

    again = world.engine().full_sync(push=True)
    # the rejected one is not sent again with the same data
    assert (again.pushed, again.unchanged, again.rejected, again.rejected_earlier) == (0, 5, 0, 1)
    world.write([*lines[:4], lines[4].replace("2024-07-01T11:00:00", "2024-07-01T12:00:00")])
    changed = world.engine().full_sync(push=True)
    assert (changed.pushed, changed.unchanged) == (1, 4), changed.message()
    assert world.emulator.usage("pc_alpha") == 4 * Decimal("1800.00") + Decimal("3600.00")


def test_two_runs_pushing_one_job_leave_the_ledger_saying_what_the_api_got_last(db_url):
    # Run A prepares the job (1 h); run B, started later, sees it longer (2 h). B's PUT lands
    # first, A's last: the API holds A's data, so the next run must push B's data again.
    from hpcsync.agents.slurmsync.coldfront import PushResult
    from hpcsync.agents.slurmsync.ledger import JobLedger, PreparedJob, payload_hash
    from hpcsync.db import open_database

    ledger = JobLedger(open_database(db_url), "testbrc", "http://127.0.0.1:9/api/")

    def job(hours: int) -> PreparedJob:
        payload = {"jobslurmid": "7", "amount": f"{hours}.00"}
        return PreparedJob("7", "pc_alpha", "COMPLETING", Decimal(hours), payload, payload_hash(payload))

    a, b = job(1), job(2)
    ledger.record_intent([a])
    ledger.record_intent([b])
    ledger.record_outcomes([PushResult("7", "pushed", 200)], {"7": b.hash})
    ledger.record_outcomes([PushResult("7", "pushed", 200)], {"7": a.hash})
    assert ledger.already_pushed([b]) == set(), "the ledger claims the API has data it was not sent last"
    assert ledger.already_pushed([a]) == {"7"}
