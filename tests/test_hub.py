"""The real hub harness end to end: crossbar + an agent process + OCSClient."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration


def test_hub_serves_agent_ops_through_ocsclient(hub):
    agent = hub.start_agent("FakeDataAgent", "fake-hub-test", ["--mode", "idle", "--num-channels", "2"])
    client = hub.client("fake-hub-test")

    started = time.monotonic()
    reply = client.delay_task(delay=0.01, succeed=True)
    round_trip = time.monotonic() - started
    assert reply.status == 0, reply
    assert reply.session["success"] is True
    assert reply.session["data"]["requested_delay"] == 0.01

    client.acq.start(test_mode=False)
    deadline = time.monotonic() + 20
    data = {}
    while time.monotonic() < deadline:
        data = client.acq.status().session["data"]
        if data.get("fields"):
            break
        time.sleep(0.1)
    assert data.get("fields"), "the acq process never published session data"
    client.acq.stop()
    reply = client.acq.wait(timeout=20)
    assert reply.session["status"] == "done"

    print(
        f"\nhub ready in {hub.started_in:.2f} s; agent registered in {agent.started_in:.2f} s; "
        f"task round trip {round_trip * 1000:.1f} ms"
    )


def test_bad_parameter_is_refused_before_the_op_runs(hub):
    hub.start_agent("FakeDataAgent", "fake-param-test", ["--mode", "idle"])
    client = hub.client("fake-param-test")
    reply = client.delay_task.start(delay="soon")
    assert reply.status != 0
    assert "delay" in reply.msg
