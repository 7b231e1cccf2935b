"""The real hub harness end to end with an hpcsync agent: crossbar + SupRsync + OCSClient.

SupRsync copies to a local destination, so nothing but the hub and the agent runs. What
the other integration tests rely on is checked here once: the agent registers, get_api
lists its ops and their access levels, a task round-trips, the startup process runs and
copies, the harness's client carries the level-2 password, and a bad parameter is refused
before the op runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcsync.agents.core.access import CHANGE, READ

pytestmark = pytest.mark.integration

INSTANCE = "suprsync-hub-test"
HPCSYNC = str(Path(sys.executable).parent / "hpcsync")


@pytest.fixture(scope="module")
def suprsync(hub, tmp_path_factory):
    base = tmp_path_factory.mktemp("suprsync-hub")
    (base / "remote").mkdir()
    arguments = [
        "--archive-name", "hubtest", "--remote-basedir", str(base / "remote"),
        "--db-path", str(base / "ledger.db"), "--suprsync-file-root", str(base / "root"),
        "--sleep-time", "0.3",
    ]  # fmt: skip
    agent = hub.start_agent("SupRsync", INSTANCE, arguments)
    yield agent, base
    hub.agents.pop(INSTANCE, agent).kill()


def test_agent_registers_and_get_api_lists_its_ops_with_their_levels(hub, suprsync):
    agent, _base = suprsync
    api = hub.wamp_call(f"observatory.{INSTANCE}", ["get_api"])
    assert api["agent_class"] == "SupRsync"
    assert api["access_control"]["policy"] == "file"  # the harness's default policy
    levels = {name: info["min_privs"] for kind in ("tasks", "processes") for name, _s, info in api[kind]}
    assert levels == {
        "run": CHANGE,
        "status": READ,
        "list_failed": READ,
        "retry_failed": CHANGE,
        "ignore_files": CHANGE,
    }
    print(f"\nhub ready in {hub.started_in:.2f} s; agent registered in {agent.started_in:.2f} s")


def test_read_task_round_trip(hub, suprsync):
    client = hub.client(INSTANCE, privs=1)
    started = time.monotonic()
    reply = client.status()
    round_trip = time.monotonic() - started
    assert reply.status == 0 and reply.session["success"] is True, reply
    assert isinstance(reply.session["data"]["archives"], dict)
    assert reply.session["data"]["timestamp"] > 0
    print(f"\nstatus task round trip {round_trip * 1000:.1f} ms")


def test_startup_process_copies_a_file_registered_by_another_process(hub, suprsync, tmp_path):
    _agent, base = suprsync
    data = tmp_path / "payload.bin"
    data.write_bytes(b"harness payload\n" * 64)
    add = subprocess.run(
        [HPCSYNC, "suprsync", "--db", str(base / "ledger.db"), "add", "--archive", "hubtest", str(data), "x/p.bin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert add.returncode == 0, add.stderr
    copied = base / "remote" / "x" / "p.bin"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not copied.exists():
        time.sleep(0.2)
    assert copied.read_bytes() == data.read_bytes()
    run = hub.client(INSTANCE, privs=1).run.status().session
    assert run["status"] == "running" and run["data"]["archive_name"] == "hubtest"


def test_harness_client_carries_the_change_password(hub, suprsync):
    reply = hub.client(INSTANCE).ignore_files()  # default: the harness's level-2 password
    assert reply.status == 0 and reply.session["success"] is True, reply
    refused = hub.client(INSTANCE, privs=1).ignore_files.start()
    assert refused.status != 0 and "credential level 2" in refused.msg


def test_bad_parameter_is_refused_before_the_op_runs(hub, suprsync):
    client = hub.client(INSTANCE, privs=1)
    before = client.list_failed.status().session.get("session_id")
    reply = client.list_failed.start(limit="many")
    assert reply.status != 0 and "limit" in reply.msg
    reply = client.list_failed.start(limit=0)
    assert reply.status != 0 and "limit" in reply.msg
    assert client.list_failed.status().session.get("session_id") == before, "a refused start must not run"


def test_with_a_crossbar_timeout_an_agent_stops_its_ops_and_exits_when_the_hub_is_gone(tmp_path):
    """ocs stops every running op when the hub has been gone past --crossbar-timeout, but
    without a credential: under access control its own stop was refused and the process
    hung on with no reactor, never to register again. Now it stops its ops and exits."""
    from hpcsync.agents.core import daemon
    from services.hub import start_hub

    private = start_hub(tmp_path / "hub")
    try:
        remote = tmp_path / "remote"
        remote.mkdir()
        args = ["--archive-name", "t", "--remote-basedir", str(remote), "--db-path", str(tmp_path / "l.db"),
                "--suprsync-file-root", str(tmp_path / "root"), "--sleep-time", "1"]  # fmt: skip
        agent = private.start_agent("SupRsync", "suprsync-timeout", args, env={"CROSSBAR_TIMEOUT": "2"})
        assert private.client("suprsync-timeout").run.status().session["status"] == "running"
        daemon.stop(private.pid, sig=9, timeout=5)  # the hub is gone for good
        exited = daemon.wait_until(lambda: not agent.alive(), 60, 0.2)
        log = agent.log.read_text(errors="replace")
        assert exited, f"the agent did not exit:\n{log[-2000:]}"
        assert "Rejected underprivileged" not in log
    finally:
        private.stop()
