"""``hpcsync up | status | down`` on a site config, as an operator runs them."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcsync.agents.core.daemon import pid_alive, read_pid
from services import free_port

pytestmark = pytest.mark.integration

HPCSYNC = [sys.executable, "-m", "hpcsync.agents.cli"]


def _site(tmp_path: Path, instances: list[dict]) -> Path:
    port = free_port()
    path = tmp_path / "site.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "hub": {
                    "wamp_server": f"ws://127.0.0.1:{port}/ws",
                    "wamp_http": f"http://127.0.0.1:{port}/call",
                    "wamp_realm": "test_realm",
                    "address_root": "observatory",
                },
                "hosts": {"localhost": {"agent-instances": instances}},
            }
        )
    )
    return path


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*HPCSYNC, *args], capture_output=True, text=True, timeout=timeout)


def test_up_status_down_round_trip(tmp_path):
    site = _site(
        tmp_path,
        [
            {"agent-class": "BarebonesAgent", "instance-id": "bare-1", "arguments": ["--mode", "idle"]},
            {"agent-class": "FakeDataAgent", "instance-id": "fake-1", "arguments": ["--mode", "idle"]},
        ],
    )
    run_dir = tmp_path / "run"
    common = ["--site-file", str(site), "--run-dir", str(run_dir)]
    try:
        up = _run("up", *common)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "bare-1: up" in up.stdout and "fake-1: up" in up.stdout

        again = _run("up", *common)
        assert again.returncode == 0 and "already running" in again.stdout

        status = _run("status", *common, "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["hub"]["ready"]
        agents = {a["instance_id"]: a for a in report["agents"]}
        assert agents["bare-1"]["registered"] and agents["fake-1"]["registered"]
        assert agents["fake-1"]["degraded"] is False and agents["fake-1"]["last_error"] is None
        assert agents["bare-1"]["ops"]["count"]["kind"] == "process"
        assert agents["fake-1"]["ops"]["delay_task"]["status"] == "no_history"
        assert (run_dir / "logs" / "crossbar.log").exists() and (run_dir / "logs" / "fake-1.log").exists()

        text = _run("status", *common).stdout
        assert "bare-1 [BarebonesAgent]: registered, healthy" in text
        pids = [read_pid(run_dir / "pids" / f"{n}.pid") for n in ("crossbar", "bare-1", "fake-1")]
    finally:
        down = _run("down", *common)
    assert down.returncode == 0, down.stderr
    assert "hub: stopped crossbar" in down.stdout
    assert not any(pid_alive(p) for p in pids if p)
    assert not list((run_dir / "pids").glob("*.pid"))
    after = _run("status", *common)
    assert after.returncode == 3 and "not answering" in after.stdout


def test_a_bad_argument_is_caught_before_anything_starts(tmp_path):
    site = _site(tmp_path, [{"agent-class": "BarebonesAgent", "instance-id": "bad-1", "arguments": ["--mode", "x"]}])
    run_dir = tmp_path / "run"
    up = _run("up", "--site-file", str(site), "--run-dir", str(run_dir))
    assert up.returncode == 1 and up.stdout == ""
    assert up.stderr.splitlines() == [
        f"hpcsync up: {site}: bad-1: argument --mode: invalid choice: 'x' (choose from 'idle', 'count')",
        "hpcsync up: 1 problem(s); nothing was started",
    ]
    assert not (run_dir / "pids").exists()


def test_an_agent_degraded_at_its_first_cycle_fails_up_and_shows_in_status(tmp_path, sshd):
    """Item 3: a destination that cannot take files (the remote user may read but not write
    there, which no check sees without writing) fails 'up' and shows in 'status'."""
    import shutil

    from hpcsync.agents.suprsync.ledger import SupRsyncFilesManager

    remote = sshd.make_remote_dir()
    shutil.chown(remote, "root", "root")
    remote.chmod(0o755)
    db = tmp_path / "ledger.db"
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 100)
    SupRsyncFilesManager(str(db)).add_file(str(data), "a/data.bin", "arch")
    args = [
        "--archive-name", "arch", "--remote-basedir", str(remote), "--db-path", str(db),
        "--suprsync-file-root", str(tmp_path / "root"), "--ssh-host", sshd.shell_destination,
        "--ssh-key", str(sshd.client_key), "--ssh-port", str(sshd.port), "--ssh-known-hosts", str(sshd.known_hosts),
        "--sleep-time", "1",
    ]  # fmt: skip
    (tmp_path / "root").mkdir()
    site = _site(tmp_path, [{"agent-class": "SupRsync", "instance-id": "sick-1", "arguments": args}])
    common = ["--site-file", str(site), "--run-dir", str(tmp_path / "run")]
    try:
        up = _run("up", *common)
        assert up.returncode == 1, up.stdout + up.stderr
        assert "sick-1: up (pid" in up.stdout and "sick-1: degraded: " in up.stdout
        assert up.stderr.strip() == (
            "hpcsync up: 1 agent(s) came up degraded: sick-1 (they keep running; 'hpcsync status' shows their "
            "last error)"
        )
        report = json.loads(_run("status", *common, "--json").stdout)
        (agent,) = report["agents"]
        assert agent["degraded"] is True and agent["ops"]["run"]["degraded"] is True
        assert "\n" not in agent["last_error"] and "transfer failed: rsync exited with status 23" in agent["last_error"]
        text = _run("status", *common).stdout
        assert "sick-1 [SupRsync]: registered, DEGRADED" in text
        assert f"      last error: {agent['last_error']}" in text
    finally:
        _run("down", *common)


def test_broken_site_config_is_one_clear_line(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("hub: {}\n")
    result = _run("up", "--site-file", str(site), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"hpcsync up: site config {site}: hub.wamp_server must be a non-empty string"


def test_the_shipped_demo_comes_up_and_copies_a_registered_file(tmp_path):
    """``site-configs/default.yaml`` as the README starts it (on a free port, paths in tmp)."""
    import time

    shipped = (Path(__file__).resolve().parents[1] / "site-configs" / "default.yaml").read_text()
    port = free_port()
    demo = tmp_path / "demo"
    site = tmp_path / "default.yaml"
    site.write_text(shipped.replace(":8001/", f":{port}/").replace("/tmp/hpcsync-demo", str(demo)))
    common = ["--site-file", str(site), "--run-dir", str(tmp_path / "run")]
    try:
        up = _run("up", *common)
        assert up.returncode == 0, up.stdout + up.stderr
        report = json.loads(_run("status", *common, "--json").stdout)
        agents = {a["instance_id"]: a for a in report["agents"]}
        assert all(a["registered"] and a["degraded"] is False for a in agents.values()), agents
        agent = agents["suprsync-demo"]
        assert agent["registered"] and agent["ops"]["run"]["status"] == "running"
        assert agent["degraded"] is False and agent["last_success_age"] is not None
        assert "created --remote-basedir directory" in up.stdout  # the demo asks for its directories

        # Access control on with no manual step: a policy for the agent, passwords for clients.
        policy, passwords = demo / "access" / "policy.yaml", demo / "access" / "ocs-passwords.yaml"
        assert f"export OCS_PASSWORDS_FILE={passwords}" in up.stdout
        assert stat.S_IMODE(policy.stat().st_mode) == 0o600 and stat.S_IMODE(passwords.stat().st_mode) == 0o600
        assert agent["access_policy"] == "file"
        (row,) = yaml.safe_load(passwords.read_text())
        assert row["default"] is True and row["password_2"] not in policy.read_text()
        assert row["password_2"] not in (tmp_path / "run" / "logs" / "suprsync-demo.log").read_text()
        again = _run("up", *common)
        assert again.returncode == 0 and f"using demo policy {policy}" in again.stdout
        assert yaml.safe_load(passwords.read_text()) == [row], "a second 'up' must keep the passwords"

        data = tmp_path / "data.bin"
        data.write_bytes(b"demo payload\n" * 100)
        # The command the demo's own comment shows: the instance's ledger and archive.
        add = _run("suprsync", "add", "--site-file", str(site), "--instance", "suprsync-demo", str(data), "a/data.bin")
        assert add.returncode == 0, add.stderr
        assert f"in archive demo of ledger {demo / 'ledger.db'}" in add.stdout
        copied = demo / "remote" / "a" / "data.bin"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not copied.exists():
            time.sleep(0.5)
        assert copied.read_bytes() == data.read_bytes()
    finally:
        _run("down", *common)
