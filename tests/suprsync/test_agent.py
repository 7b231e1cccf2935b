"""The agent shell without a hub: what ``session.data`` and the feeds carry between
iterations (ocs-web shows session.data raw; InfluxDB takes the record feeds)."""

from __future__ import annotations

import re
import threading
import time
from unittest.mock import MagicMock

from hpcsync.agents.suprsync.agent import SupRsync, make_parser

from .conftest import ARCHIVE, tc_now, write


class FakeSession:
    def __init__(self):
        self.data = {}
        self.degraded = False
        self.status = "starting"

    def set_status(self, status):
        self.status = status


def start(args: list[str]):
    agent = MagicMock()
    parsed = make_parser().parse_args(args)
    parsed.instance_id = "sync-unit"
    suprsync = SupRsync(agent, parsed)
    session = FakeSession()
    thread = threading.Thread(target=suprsync.run, args=(session, None), daemon=True)
    thread.start()
    return suprsync, session, thread, agent


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_last_copy_keeps_the_last_batch_with_files_and_feeds_are_valid_records(ledger, src, dst, tmp_path):
    """An idle iteration used to overwrite ``last_copy`` with an empty copy, so ocs-web
    showed no files a minute after every batch."""
    ledger.add_file(str(write(src / "a.g3", "a")), f"{tc_now()}/a.g3", ARCHIVE)
    args = ["--archive-name", ARCHIVE, "--remote-basedir", str(dst), "--db-path", str(ledger.db.engine.url.database),
            "--suprsync-file-root", str(tmp_path / "root"), "--sleep-time", "0.05"]  # fmt: skip
    suprsync, session, thread, agent = start(args)
    try:
        wait_for(lambda: session.data.get("counters", {}).get("iterations", 0) >= 3, "three iterations")
    finally:
        suprsync.jobs.stop("run")
        thread.join(10)
    data = session.data
    assert data["activity"] == "stopped" and data["counters"]["copies"] == 1
    assert data["last_copy"]["files"] == [[str(src / "a.g3"), True]] and data["last_copy"]["verified"] == 1
    assert isinstance(data["timestamp"], float) and not session.degraded

    for call in agent.publish_to_feed.call_args_list:
        feed, message = call.args
        assert feed in ("transfer_stats", "archive_stats")
        assert set(message) == {"block_name", "timestamp", "data"} and message["data"]
        for name, value in message["data"].items():
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,254}", name), name
            assert isinstance(value, (int, float, str, bool)), (name, value)
