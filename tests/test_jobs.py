"""The core job runner every agent's ops use (agents/core/jobs.py), without a hub."""

from __future__ import annotations

import threading

import pytest

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.jobs import JobRunner, JobSpec, Result
from hpcsync.db import open_database
from hpcsync.db.runs import recent_runs


class FakeSession:
    def __init__(self, op_name: str):
        self.op_name = op_name
        self.data: dict = {}
        self.degraded = False
        self.status = "starting"

    def set_status(self, status: str) -> None:
        self.status = status


@pytest.fixture
def db(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'runs.db'}")
    yield database
    database.dispose()


def make_runner(db, published=None, errors=None):
    specs = {
        "push": JobSpec("push", changes_state=True, exclusive=True),
        "apply": JobSpec("apply", changes_state=True, exclusive=True),
        "listing": JobSpec("listing"),
        "loop": JobSpec("loop", changes_state=True, exclusive=True),
    }
    return JobRunner(
        agent_class="TestAgent",
        instance_id="unit",
        specs=specs,
        open_database=lambda: db,
        build_engine=lambda ctx: {"built_for": ctx.operation},
        publish=(lambda feed, message: published.append((feed, message))) if published is not None else None,
        log_error=(errors.append if errors is not None else None),
    )


def start_in_thread(runner, session, job, **kw):
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(reply=runner.run(session, job, **kw)), daemon=True)
    thread.start()
    return thread, out


def test_a_task_runs_on_its_engine_records_intent_and_outcome_and_fills_session_data(db):
    runner = make_runner(db)
    session = FakeSession("push")
    seen = {}

    def job(ctx):
        seen["engine"] = ctx.engine
        ctx.progress(activity="pushing", done=1)
        seen["progress"] = dict(session.data)
        seen["runs_during"] = [(r.operation, r.status) for r in recent_runs(db, "unit")]
        return Result(True, "pushed 3 jobs", {"pushed": 3})

    ok, message = runner.run(session, job, dry_run=False, fields={"target": "t"})
    assert (ok, message) == (True, "pushed 3 jobs")
    assert seen["engine"] == {"built_for": "push"}
    assert seen["progress"]["activity"] == "pushing" and seen["progress"]["progress"] == {"done": 1}
    assert seen["runs_during"] == [("push", "running")]  # intent committed before the job ran
    assert session.data["pushed"] == 3 and session.data["target"] == "t" and session.data["activity"] == "done"
    (run,) = recent_runs(db, "unit")
    assert (run.operation, run.status, run.dry_run) == ("push", "succeeded", False)
    assert '"pushed": 3' in run.summary and run.finished_at >= run.started_at


def test_a_read_only_op_is_not_recorded_and_a_failed_report_degrades(db):
    runner = make_runner(db)
    session = FakeSession("listing")
    ok, message = runner.run(session, lambda ctx: Result(False, "2 files failed", {"count": 2}))
    assert ok is False and message == "2 files failed"
    assert session.degraded is True and session.data["last_error"]["message"] == "2 files failed"
    assert recent_runs(db, "unit") == []
    ok, _ = runner.run(session, lambda ctx: Result(True, "fine"))
    assert ok is True and session.degraded is False


def test_a_second_exclusive_run_is_refused_by_name_and_cannot_clear_the_first_ones_stop(db):
    runner = make_runner(db)
    release = threading.Event()
    observed = {}

    def slow_push(ctx):
        release.wait(30)  # a PUT that does not notice the stop
        observed["cancelled_at_end"] = ctx.cancel.is_set()
        return Result(True, "pushed")

    first = FakeSession("push")
    thread, out = start_in_thread(runner, first, slow_push)
    # The first run holds the instance: the second is refused, naming the first.
    refused_session = FakeSession("apply")
    for _ in range(200):
        ok, message = runner.run(refused_session, lambda ctx: Result(True, "applied"))
        if not ok:
            break
    assert ok is False and message.startswith("apply not started: push is still running on this instance")
    assert refused_session.data["activity"] == "not started"

    # Abort the push, then press start again while it is still finishing its call.
    runner.stop("push")
    thread.join(5)
    assert out["reply"][0] is True and "stopped on request" in out["reply"][1]
    assert not release.is_set()  # the op returned while the job was still in its call
    again = runner.run(FakeSession("push"), lambda ctx: Result(True, "second push"))
    assert again[0] is False and "push is still running" in again[1]
    release.set()
    for _ in range(100):
        if "cancelled_at_end" in observed:
            break
        threading.Event().wait(0.05)
    # The refused start did not clear the aborted run's stop: it saw it to the end.
    assert observed["cancelled_at_end"] is True
    (run,) = [r for r in recent_runs(db, "unit") if r.operation == "push"]
    assert run.status == "succeeded" and run.finished_at is not None


def test_a_crash_is_logged_with_its_traceback_and_the_runner_carries_on(db):
    errors: list[str] = []
    runner = make_runner(db, errors=errors)

    def broken(ctx):
        return {}["missing"]

    ok, message = runner.run(FakeSession("push"), broken)
    assert ok is False and message.startswith("push failed: KeyError: 'missing' (a bug")
    assert any("Traceback" in e and "broken" in e for e in errors)
    (run,) = recent_runs(db, "unit")
    assert run.status == "failed"
    assert runner.run(FakeSession("push"), lambda ctx: Result(True, "fine")) == (True, "fine")


def test_a_user_error_fails_the_op_with_its_message_and_no_traceback(db):
    errors: list[str] = []
    runner = make_runner(db, errors=errors)

    def bad_config(ctx):
        raise ConfigError("--token-file /x: file does not exist")

    session = FakeSession("push")
    ok, message = runner.run(session, bad_config)
    assert (ok, message) == (False, "push failed: --token-file /x: file does not exist")
    assert session.degraded and "Traceback" not in "".join(errors)


def test_a_process_repeats_skips_a_busy_cycle_publishes_feeds_and_stops_at_once(db):
    published: list = []
    runner = make_runner(db, published=published)
    cycles: list[int] = []

    class Cycle(Result):
        def feed_records(self):
            return [("stats", "loop", {"n": len(cycles), "label": "x", "skip": None})]

    def cycle(ctx):
        cycles.append(1)
        return Cycle(True, f"cycle {len(cycles)}", {"n": len(cycles)})

    session = FakeSession("loop")
    out: dict = {}
    thread = threading.Thread(
        target=lambda: out.update(reply=runner.repeat(session, cycle, interval=3600)), daemon=True
    )
    thread.start()
    for _ in range(200):
        if session.data.get("activity") == "waiting":
            break
        threading.Event().wait(0.02)
    assert session.status == "running" and session.data["last_cycle"]["n"] == 1
    assert session.data["last_success_at"] >= session.data["last_cycle"]["finished_at"] - 1
    assert session.data["counters"]["cycles"] == 1
    assert published and published[0][0] == "stats" and published[0][1]["data"] == {"n": 1, "label": "x"}
    runner.stop("loop")  # it sleeps an hour between cycles, yet it stops now
    thread.join(5)
    assert not thread.is_alive() and out["reply"] == (True, "loop stopped")
    assert session.data["activity"] == "stopped" and len(cycles) == 1
    assert [r.operation for r in recent_runs(db, "unit")] == ["loop"]


def test_a_refused_request_fails_the_op_without_degrading_the_agent(db):
    from hpcsync.agents.core.errors import Refused

    runner = make_runner(db)
    session = FakeSession("push")

    def already_done(ctx):
        raise Refused("a report for 2026-12-01 is already stored (pass replace=True to replace it)")

    ok, message = runner.run(session, already_done)
    assert (ok, message) == (False, "push refused: a report for 2026-12-01 is already stored "
                                    "(pass replace=True to replace it)")  # fmt: skip
    assert session.degraded is False and session.data["activity"] == "refused"
    assert "last_error" not in session.data
