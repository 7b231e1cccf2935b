"""Access control through the real hub: who may start which op of an hpcsync agent.

Ops that only read are open; ops that change state need the level-2 password, whether the
client is ``OCSClient`` (password given, or looked up in ``OCS_PASSWORDS_FILE``) or ocs-web
(autobahn over ``/ws``; reproduced here call for call, without a browser). The password
comes from a policy file and never shows in the agent's argv, its logs or ``session.data``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpcsync.agents.core import access
from hpcsync.agents.testing.coldfront import ColdFrontEmulator
from services.hub import ADDRESS_ROOT

integration = pytest.mark.integration

SUPRSYNC = "suprsync-access"
SLURMSYNC = "slurmsync-access"
OK, ERROR = 0, -1  # ocs.OK, ocs.ERROR
PW2, PW3 = f"pw2-{secrets.token_hex(12)}", f"pw3-{secrets.token_hex(12)}"
API_TOKEN = secrets.token_hex(20)


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def suprsync_args(base: Path, policy: str) -> list[str]:
    (base / "remote").mkdir(parents=True, exist_ok=True)
    return [
        "--archive-name", "access", "--remote-basedir", str(base / "remote"),
        "--db-path", str(base / "ledger.db"), "--suprsync-file-root", str(base / "root"),
        "--sleep-time", "0.5", "--access-policy", policy,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    """A clear-text policy, so the agent holds the very passwords the tests look for."""
    base = tmp_path_factory.mktemp("access-policy")
    return write_private(base / "policy.yaml", f"password_2: {PW2}\npassword_3: {PW3}\n")


@pytest.fixture(scope="module")
def suprsync(hub, policy_file, tmp_path_factory):
    base = tmp_path_factory.mktemp("suprsync-access")
    agent = hub.start_agent("SupRsync", SUPRSYNC, suprsync_args(base, f"file:{policy_file}"))
    yield agent
    hub.agents.pop(SUPRSYNC, agent).kill()


@pytest.fixture(scope="module")
def slurmsync(hub, policy_file, tmp_path_factory):
    """SlurmSync against the ColdFront emulator (no projects, so no sacct call is needed)."""
    base = tmp_path_factory.mktemp("slurmsync-access")
    emulator = ColdFrontEmulator().start()
    emulator.seed({"users": [], "tokens": [{"key": API_TOKEN, "username": "syncbot", "is_staff": True}]})
    profile = base / "profiles.yaml"
    profile.write_text(
        f"profiles:\n  testbrc:\n    extends: mybrc\n    base_url: {emulator.api_url}\n"
        "    prices: {debug: 1, long: 1}\n"
    )
    token = write_private(base / "api.token", f"Token {API_TOKEN}\n")
    arguments = [
        "--target", "testbrc", "--profile-file", str(profile), "--token-file", f"file:{token}",
        "--db", f"sqlite:///{base / 'ledger.db'}", "--sync-log-dir", str(base / "logs"),
        "--sacct", "true", "--sacctmgr", "true", "--api-retries", "1", "--api-timeout", "10",
        "--access-policy", f"file:{policy_file}",
    ]  # fmt: skip
    agent = hub.start_agent("SlurmSync", SLURMSYNC, arguments)
    yield agent
    hub.agents.pop(SLURMSYNC, agent).kill()
    emulator.stop()


def ops_call(hub, instance_id: str, *args, password: str | None = None):
    """Exactly what ocs-web's ``AgentClient.dispatch`` sends (src/ocsbow.js):
    ``session.call('<root>.<id>.ops', [method, op_name, params], {password})``, where the
    password kwarg is present only when the user enabled escalation (the lock icon)."""
    kwargs = {} if password is None else {"password": password}
    return hub.wamp_call(f"{ADDRESS_ROOT}.{instance_id}.ops", list(args), kwargs)


def op_levels(hub, instance_id: str) -> dict[str, int]:
    """Each op's ``min_privs`` as get_api reports it (what ocs-web reads via ``get_api``)."""
    api = hub.wamp_call(f"{ADDRESS_ROOT}.{instance_id}", ["get_api"])
    return {name: info["min_privs"] for kind in ("tasks", "processes") for name, _session, info in api[kind]}


# -- ops declare their level -----------------------------------------------------------


@integration
def test_ops_that_change_state_need_level_2_and_reading_ops_level_1(hub, suprsync, slurmsync):
    suprsync_levels = op_levels(hub, SUPRSYNC)
    assert suprsync_levels["status"] == access.READ and suprsync_levels["list_failed"] == access.READ
    assert suprsync_levels["ignore_files"] == access.CHANGE and suprsync_levels["retry_failed"] == access.CHANGE
    assert suprsync_levels["run"] == access.CHANGE
    slurmsync_levels = op_levels(hub, SLURMSYNC)
    assert {slurmsync_levels[op] for op in ("full_sync", "reverse_sync", "sync_running_jobs")} == {access.CHANGE}


# -- OCSClient -------------------------------------------------------------------------


@integration
def test_ocsclient_without_password_is_refused_and_told_the_level(hub, suprsync, slurmsync):
    for instance_id, op in ((SUPRSYNC, "ignore_files"), (SUPRSYNC, "retry_failed"), (SLURMSYNC, "full_sync")):
        for privs in (1, "not-the-password"):
            reply = getattr(hub.client(instance_id, privs=privs), op).start()
            assert reply.status == ERROR, (instance_id, op, privs, reply)
            assert "requires credential level 2" in reply.msg and "only level 1" in reply.msg, reply.msg


@integration
def test_ocsclient_with_the_password_starts_a_change_op(hub, suprsync, slurmsync):
    reply = hub.client(SUPRSYNC, privs=PW2).ignore_files()
    assert reply.status == OK and reply.session["success"] is True, reply
    assert reply.session["cred_level"] == 2 and reply.session["data"]["dry_run"] is True
    reply = hub.client(SUPRSYNC, privs=PW3).retry_failed()
    assert reply.status == OK and reply.session["cred_level"] == 3, reply
    reply = hub.client(SLURMSYNC, privs=PW2).full_sync()
    assert reply.status == OK and reply.session["success"] is True, reply


@integration
def test_ocsclient_finds_the_password_in_ocs_passwords_file(hub, suprsync, tmp_path, monkeypatch):
    # The most specific rule wins (ocs.access.client_get_password): the default is wrong.
    rows = [{"default": True, "password_2": "wrong"}, {"instance_id": SUPRSYNC, "password_2": PW2}]
    monkeypatch.setenv("OCS_PASSWORDS_FILE", str(write_private(tmp_path / "pw.yaml", yaml.safe_dump(rows))))
    reply = hub.client(SUPRSYNC, privs=2).ignore_files()
    assert reply.status == OK and reply.session["success"] is True, reply


# -- ocs-web ---------------------------------------------------------------------------


@integration
def test_ocs_web_sees_access_control_and_its_start_needs_the_password(hub, suprsync):
    api = hub.wamp_call(f"{ADDRESS_ROOT}.{SUPRSYNC}", ["get_api"])
    assert api["access_control"]["policy"] == "file"  # ocs-web shows the lock only if this is set

    code, message, _session = ops_call(hub, SUPRSYNC, "start", "ignore_files", {})
    assert code == ERROR and "requires credential level 2" in message
    code, message, _session = ops_call(hub, SUPRSYNC, "start", "ignore_files", {}, password="wrong")
    assert code == ERROR and "only level 1" in message

    code, message, session = ops_call(hub, SUPRSYNC, "start", "ignore_files", {}, password=PW2)
    assert code == OK, message
    assert session["cred_level"] == 2
    code, _message, session = ops_call(hub, SUPRSYNC, "wait", "ignore_files", {}, password=PW2)
    assert code == OK and session["success"] is True, session


@integration
def test_ocs_web_stop_of_a_change_process_needs_the_password(hub, suprsync):
    """ocs-web's stop_proc sends ``('stop', name, [])``; OCS checks min_privs for stops too."""
    assert hub.client(SUPRSYNC, privs=1).run.status().session["status"] == "running"
    code, message, _session = ops_call(hub, SUPRSYNC, "stop", "run", [])
    assert code == ERROR and "requires credential level 2" in message
    code, message, _session = ops_call(hub, SUPRSYNC, "stop", "run", [], password=PW2)
    assert code == OK, message
    client = hub.client(SUPRSYNC, privs=1)
    wait_for(lambda: client.run.status().session["status"] == "done", 20, "run to stop")
    code, message, _session = ops_call(hub, SUPRSYNC, "start", "run", {}, password=PW2)
    assert code == OK, message
    wait_for(lambda: client.run.status().session["status"] == "running", 20, "run to start again")


# -- reading stays open ----------------------------------------------------------------


@integration
def test_read_ops_need_no_password(hub, suprsync):
    client = hub.client(SUPRSYNC, privs=1)
    for op in (client.status, client.list_failed):
        reply = op()
        assert reply.status == OK and reply.session["success"] is True, reply
        assert reply.session["cred_level"] == 1
    code, message, _session = ops_call(hub, SUPRSYNC, "start", "status", {})
    assert code == OK, message
    code, _message, session = ops_call(hub, SUPRSYNC, "status", "run", [])
    assert code == OK and session["status"] == "running"


# -- the password stays a secret -------------------------------------------------------


@integration
def test_password_never_in_argv_logs_or_session_data(hub, suprsync, slurmsync):
    # Exercise ops first so there is session data and log output to search.
    hub.client(SUPRSYNC, privs=PW2).ignore_files()
    hub.client(SLURMSYNC, privs=PW2).full_sync()
    for agent in (suprsync, slurmsync):
        # ocs sets the process title over argv; the environment is checked as well.
        argv = Path(f"/proc/{agent.pid}/cmdline").read_bytes().decode(errors="replace")
        argv += Path(f"/proc/{agent.pid}/environ").read_bytes().decode(errors="replace")
        assert agent.instance_id in argv
        logs = [agent.log, *sorted((hub.base / "logs").glob(f"*{agent.instance_id}*"))]
        texts = {str(path): path.read_text(errors="replace") for path in logs}
        assert any("access policy file:" in t for t in texts.values()), "the agent does not log its policy"
        api = hub.wamp_call(f"{ADDRESS_ROOT}.{agent.instance_id}", ["get_api"])
        sessions = json.dumps(api)
        for name, _s, _i in api["tasks"] + api["processes"]:
            sessions += json.dumps(ops_call(hub, agent.instance_id, "status", name, []))
        for secret in (PW2, PW3):
            assert secret not in argv, f"{agent.instance_id}: password in argv"
            for path, text in texts.items():
                assert secret not in text, f"password in {path}"
            assert secret not in sessions, f"{agent.instance_id}: password in get_api or session.data"
    assert PW2 not in (hub.base / "crossbar.log").read_text(errors="replace")


# -- the policy file -------------------------------------------------------------------


def _start_and_fail(hub, tmp_path: Path, policy: str) -> subprocess.CompletedProcess:
    hub.add_instance("SupRsync", "suprsync-bad-policy", suprsync_args(tmp_path, policy))
    cli = str(Path(sys.executable).parent / "ocs-agent-cli")
    argv = [cli, *hub.client_args, "--instance-id", "suprsync-bad-policy"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=dict(os.environ))


@integration
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("password_3: only-level-3\n", "password_2 must be a non-empty string"),
        ("password_2: ''\n", "password_2 must be a non-empty string"),
        ("password_2: [unclosed\n", "not valid YAML"),
        ("password_2: x\npasword_3: typo\n", "unknown key pasword_3"),
        ("override:,pw3\n", "expected 'override:PW2,PW3'"),
    ],
)
def test_a_bad_policy_file_ends_the_agent_with_one_line_naming_it(hub, tmp_path, content, message):
    path = tmp_path / "policy.yaml"
    if content is not None:
        write_private(path, content)
    result = _start_and_fail(hub, tmp_path, f"file:{path}")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("SupRsync suprsync-bad-policy: access policy") and str(path) in last, result.stderr
    assert message in last and "Traceback" not in result.stderr


@integration
def test_inline_override_passwords_are_refused(hub, tmp_path):
    result = _start_and_fail(hub, tmp_path, "override:pw2,pw3")
    assert result.returncode != 0
    assert "passwords on the command line" in result.stderr.strip().splitlines()[-1]


def test_policy_text_forms():
    clear = access.parse_policy_text("override:a,b", "x")
    assert (clear.password_2, clear.password_3, clear.hash) == ("a", "b", "none")
    assert access.parse_policy_text("override:a", "x").password_3 is None
    hashed = access.parse_policy_text("hash: md5\npassword_2: 0123456789abcdef\n", "x")
    assert hashed.hash == "md5" and "0123" not in repr(hashed)
    levels = {rule.cred_level: rule.hashed_pass for rule in hashed.rules()}
    assert levels[1].check(None) and levels[2].check(None) is False and levels[3].check("anything") is False
    with pytest.raises(access.AccessPolicyError, match="hash must be one of"):
        access.parse_policy_text("hash: sha1\npassword_2: x\n", "x")


def test_demo_credentials_match_and_are_private(tmp_path):
    from ocs.access import HashedPass, client_get_password

    policy, passwords = tmp_path / "a" / "policy.yaml", tmp_path / "b" / "pw.yaml"
    assert access.ensure_demo_credentials(policy, passwords) is True
    assert access.ensure_demo_credentials(policy, passwords) is False
    for path in (policy, passwords):
        assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    loaded = access.load_policy(f"file:{policy}")
    os.environ["OCS_PASSWORDS_FILE"] = str(passwords)
    try:
        clear = client_get_password(2, "SupRsync", "any")
    finally:
        del os.environ["OCS_PASSWORDS_FILE"]
    assert clear not in policy.read_text()
    assert HashedPass(hash=loaded.hash, value=loaded.password_2).check(clear)
    passwords.unlink()
    with pytest.raises(access.AccessPolicyError, match="remove"):
        access.ensure_demo_credentials(policy, passwords)


# -- AccessDirector --------------------------------------------------------------------


def _forge_open_rules(hub, director_id: str) -> None:
    """Publish on the director's control feed what the director would send: a free level 3."""
    rule = {"hashed_pass": {"hash": "none", "value": ""}, "cred_level": 3, "scope_spec": {"default": True}}
    message = {"reset": True, "ac_version": 1, "step": 10**6, "rules": [rule]}
    hub.wamp_publish(f"{ADDRESS_ROOT}.{director_id}.feeds.controls", [[message, {}]])


@integration
def test_director_policy_takes_hashed_passwords_from_the_access_director(hub, tmp_path):
    director = "access-dir-test"
    config = {
        "passwords_block_default_hashfunc": "md5",  # the values below are md5 hashes
        "passwords": [{"default": True, "password_1": "", "password_2": access._hash_md5(PW2)}],
    }
    write_private(tmp_path / "access-director.yaml", yaml.safe_dump(config))
    hub.start_agent("AccessDirector", director, ["--config-file", str(tmp_path / "access-director.yaml")])
    instance = "suprsync-director"
    try:
        hub.start_agent("SupRsync", instance, suprsync_args(tmp_path / "agent", f"director:{director}"))
        reader = hub.client(instance, privs=1)
        # Blocked until the director's rules arrive (agent_poll on join, or its next broadcast).
        wait_for(lambda: reader.status.start().status == OK, 90, "the director's rules")
        refused = reader.ignore_files.start()
        assert refused.status == ERROR and "requires credential level 2" in refused.msg
        reply = hub.client(instance, privs=PW2).ignore_files()
        assert reply.status == OK and reply.session["success"] is True, reply

        # Why the shipped configs use file policies: on a hub that lets every client publish
        # (as OCS's crossbar setup does), anyone can forge the director's rules.
        _forge_open_rules(hub, director)
        opened = wait_for(lambda: reader.ignore_files.start().status == OK, 10, "forged rules to apply")
        assert opened
    finally:
        for iid in (instance, director):
            process = hub.agents.pop(iid, None)
            if process is not None:
                process.kill()


@integration
def test_forged_director_rules_do_not_open_a_file_policy_agent(hub, suprsync):
    _forge_open_rules(hub, "access-director")
    time.sleep(1)
    reply = hub.client(SUPRSYNC, privs=1).ignore_files.start()
    assert reply.status == ERROR and "requires credential level 2" in reply.msg
