"""Agent core: subprocess runner, HTTP client, secrets, op state, site configs, hub config."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hpcsync.agents.core.daemon import pid_alive
from hpcsync.agents.core.http import ApiAuthError, ApiClient, ApiError, ApiUnavailable
from hpcsync.agents.core.hub import crossbar_config
from hpcsync.agents.core.opstate import MAX_TEXT, OpState, StopFlag, json_safe
from hpcsync.agents.core.process import CommandCancelled, CommandError, CommandTimeout, run_command
from hpcsync.agents.core.secrets import SecretError, load_secret, redact
from hpcsync.agents.core.siteconfig import SiteConfigError, load_site_config

# -- subprocess runner ----------------------------------------------------------------


def test_run_command_captures_output_without_a_shell():
    result = run_command(["printf", "%s|", "a b", "$HOME", ";rm"])
    assert result.stdout == "a b|$HOME|;rm|" and result.ok


def test_nonzero_exit_names_program_status_and_stderr():
    with pytest.raises(CommandError, match=r"sh exited with status 3: boom") as info:
        run_command(["sh", "-c", "echo boom >&2; exit 3"])
    assert info.value.result.returncode == 3


def test_missing_program_is_a_clear_error():
    with pytest.raises(CommandError, match="cannot run no-such-program-xyz"):
        run_command(["no-such-program-xyz"])


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="timed out after 0.5 s"):
        # The grandchild would outlive a plain kill of its parent shell.
        run_command(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert not pid_alive(int(pidfile.read_text()))


def test_cancel_event_stops_a_command_quickly():
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(CommandCancelled):
        run_command(["sleep", "30"], cancel=cancel)
    assert time.monotonic() - started < 2


def test_stdin_is_closed_so_prompts_get_eof():
    result = run_command(["sh", "-c", "read answer; echo got:$answer"], check=False, timeout=10)
    assert result.stdout.strip() == "got:"


# -- HTTP client ------------------------------------------------------------------------


class _ScriptedHandler(BaseHTTPRequestHandler):
    script: list[tuple[int, object]] = []
    seen: list[tuple[str, str, str | None]] = []

    def _reply(self):
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        status, body = self.script.pop(0) if self.script else (200, {"ok": True})
        if status == "hang":
            time.sleep(body)
            status, body = 200, {"late": True}
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the timeout test), as intended

    do_GET = do_PUT = _reply

    def log_message(self, *args):
        pass


@pytest.fixture
def api_server():
    _ScriptedHandler.script = []
    _ScriptedHandler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, _ScriptedHandler
    server.shutdown()
    server.server_close()


def _client(server, **kw):
    return ApiClient(f"http://127.0.0.1:{server.server_port}/api/", backoff=0.01, **kw)


def test_5xx_is_retried_then_succeeds(api_server):
    server, handler = api_server
    handler.script = [(503, {}), (502, {}), (200, {"value": 42})]
    assert _client(server, headers={"Authorization": "Token abc"}).get_json("/thing/") == {"value": 42}
    assert len(handler.seen) == 3 and handler.seen[0][2] == "Token abc"
    assert handler.seen[0][1] == "/api/thing/"  # no doubled slash


def test_retries_are_bounded(api_server):
    server, handler = api_server
    handler.script = [(500, {})] * 10
    with pytest.raises(ApiUnavailable, match="gave up after 3 tries: HTTP 500"):
        _client(server, retries=2).get_json("x/")
    assert len(handler.seen) == 3


def test_401_is_an_auth_error_without_retry_and_without_the_token(api_server):
    server, handler = api_server
    handler.script = [(401, {"detail": "Invalid token."})]
    with pytest.raises(ApiAuthError, match="HTTP 401") as info:
        _client(server, headers={"Authorization": "Token sekrit"}).get_json("x/?access_token=sekrit")
    assert "sekrit" not in str(info.value)
    assert len(handler.seen) == 1


def test_4xx_shows_the_api_message(api_server):
    server, handler = api_server
    handler.script = [(400, {"amount": ["Ensure this value is less than or equal to 100000000."]})]
    with pytest.raises(ApiError, match="HTTP 400.*less than or equal"):
        _client(server).request("PUT", "jobs/1/", data={"amount": "1e12"})


def test_timeouts_are_retried(api_server):
    server, handler = api_server
    handler.script = [("hang", 1.0), (200, {"fine": 1})]
    assert _client(server, timeout=0.3).get_json("slow/") == {"fine": 1}


def test_non_json_answer_is_a_clear_error(api_server):
    server, handler = api_server
    handler.script = [(200, b"<html>proxy error</html>")]
    with pytest.raises(ApiError, match="not JSON: <html>proxy error"):
        _client(server).get_json("x/")


def test_pagination_follows_next_once_per_page(api_server):
    server, handler = api_server
    base = f"http://127.0.0.1:{server.server_port}/api/items/"
    handler.script = [
        (200, {"count": 3, "next": base + "?page=2", "results": [1]}),
        (200, {"count": 3, "next": base + "?page=3", "results": [2]}),
        (200, {"count": 3, "next": None, "results": [3]}),
    ]
    pages = list(_client(server).paginate("items/"))
    assert [p["results"] for p in pages] == [[1], [2], [3]]
    assert [s[1] for s in handler.seen] == ["/api/items/", "/api/items/?page=2", "/api/items/?page=3"]


def test_a_next_link_to_another_origin_never_gets_the_token(api_server):
    """A proxy that builds ``http://`` links (or a hostile server) must not receive the
    token in clear text: ``next`` is resolved against the base URL, and a link to another
    scheme, host or port is refused before anything is sent there."""
    server, handler = api_server
    other = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        for elsewhere in (f"http://127.0.0.1:{other.server_port}/api/items/?page=2",
                          f"https://127.0.0.1:{server.server_port}/api/items/?page=2",
                          f"http://localhost:{server.server_port}/api/items/?page=2"):  # fmt: skip
            handler.seen.clear()
            handler.script = [(200, {"count": 2, "next": elsewhere, "results": [1]})]
            client = _client(server, headers={"Authorization": "Token sekrit"}, retries=0)
            with pytest.raises(ApiError, match="points to another server") as info:
                list(client.paginate("items/"))
            assert "sekrit" not in str(info.value)
            assert [s[1] for s in handler.seen] == ["/api/items/"]  # nothing was sent to the other origin
    finally:
        other.shutdown()
        other.server_close()
    # A relative link is resolved against the base URL.
    handler.seen.clear()
    handler.script = [(200, {"count": 2, "next": "/api/items/?page=2", "results": [1]}),
                      (200, {"count": 2, "next": None, "results": [2]})]  # fmt: skip
    assert [p["results"] for p in _client(server).paginate("items/")] == [[1], [2]]
    assert [s[1] for s in handler.seen] == ["/api/items/", "/api/items/?page=2"]


def test_pagination_stops_at_max_pages_with_the_resume_link(api_server):
    server, handler = api_server
    base = f"http://127.0.0.1:{server.server_port}/api/items/"
    handler.script = [(200, {"count": 9, "next": base + f"?page={n + 1}", "results": [n]}) for n in range(1, 4)]
    pages = list(_client(server).paginate("items/", max_pages=2))
    assert len(pages) == 2 and pages[-1]["next"].endswith("?page=3")


# -- secrets ----------------------------------------------------------------------------


def test_secret_from_file_is_stripped_and_never_printed(tmp_path):
    path = tmp_path / "token"
    path.write_text("Token abc123\n")
    path.chmod(0o600)
    secret = load_secret(f"file:{path}", what="API token")
    assert secret.reveal() == "Token abc123"
    assert "abc123" not in repr(secret) and "abc123" not in str(secret) and str(path) in repr(secret)
    assert redact("header was Token abc123", secret) == "header was ***"


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("HPCSYNC_TEST_TOKEN", "xyz")
    assert load_secret("env:HPCSYNC_TEST_TOKEN").reveal() == "xyz"


@pytest.mark.parametrize(
    ("reference", "message"),
    [("file:/nonexistent/token", "does not exist"), ("env:HPCSYNC_UNSET_VAR", "is not set"), ("", "no secret given")],
)
def test_secret_errors_name_the_reference(reference, message):
    with pytest.raises(SecretError, match=message):
        load_secret(reference)


def test_empty_secret_file_is_refused(tmp_path):
    (tmp_path / "t").write_text("  \n")
    with pytest.raises(SecretError, match="is empty"):
        load_secret(str(tmp_path / "t"))


# -- op state ---------------------------------------------------------------------------


class _Session:
    data: dict = {}
    degraded = False


def test_opstate_keeps_session_data_small_safe_and_timestamped():
    session = _Session()
    state = OpState(session, activity="idle")
    state.update(progress={"done": 3, "rate": float("nan")}, log="x" * 10_000, items=list(range(1000)))
    state.count("copies", 5)
    state.error("remote unreachable", counter="errors_ssh")
    data = session.data
    assert data["activity"] == "idle" and data["progress"] == {"done": 3, "rate": None}
    assert len(data["log"]) == MAX_TEXT and len(data["items"]) == 50
    assert data["counters"] == {"copies": 5, "errors_ssh": 1}
    assert data["last_error"]["message"] == "remote unreachable"
    assert session.degraded is True and time.time() - data["timestamp"] < 5
    json.dumps(data, allow_nan=False)
    state.recovered()
    assert session.degraded is False


def test_json_safe_handles_odd_values():
    assert json_safe({"t": (1, 2), 3: float("inf")}) == {"t": [1, 2], "3": None}


def test_stop_flag_wakes_a_sleep_at_once():
    flag = StopFlag()
    threading.Timer(0.1, flag.stop).start()
    started = time.monotonic()
    assert flag.sleep(30) is True
    assert time.monotonic() - started < 2


# -- site config and hub config ---------------------------------------------------------

SITE = """
hub:
  wamp_server: ws://127.0.0.1:18001/ws
  wamp_http: http://127.0.0.1:18001/call
  wamp_realm: test_realm
  address_root: observatory
hosts:
  localhost:
    agent-instances:
      - {agent-class: SupRsync, instance-id: smurf-sync, arguments: [[--archive-name, smurf], ['--sleep-time', 5]]}
"""


def test_site_config_is_read_and_arguments_flattened(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(SITE)
    site = load_site_config(path)
    (inst,) = site.instances()
    assert inst.arguments == ["--archive-name", "smurf", "--sleep-time", "5"]
    assert site.hub_port == 18001 and site.hub_interface == "127.0.0.1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("instance-id: smurf-sync", "instance-id: smurf.sync"), "may hold only"),
        (("wamp_realm: test_realm", "wamp_realm: ''"), "hub.wamp_realm"),
        (("ws://127.0.0.1", "http://127.0.0.1"), "ws:// URL"),
        (("arguments: [[--archive-name, smurf], ['--sleep-time', 5]]", "arguments: --archive-name"), "must be a list"),
        (("hosts:", "hosts: [\n"), "not valid YAML"),
    ],
)
def test_malformed_site_config_names_the_problem(tmp_path, change, message):
    path = tmp_path / "site.yaml"
    path.write_text(SITE.replace(*change))
    with pytest.raises(SiteConfigError, match=message) as info:
        load_site_config(path).instances()
    assert str(path) in str(info.value)


def test_duplicate_instance_ids_are_refused(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(SITE + "  other:\n    agent-instances:\n      - {agent-class: X, instance-id: smurf-sync}\n")
    with pytest.raises(SiteConfigError, match="used twice"):
        load_site_config(path)


def test_crossbar_config_binds_loopback_and_limits_roles():
    cfg = crossbar_config(realm="r", address_root="obs", port=1234)
    transport = cfg["workers"][0]["transports"][0]
    assert transport["endpoint"] == {"type": "tcp", "port": 1234, "interface": "127.0.0.1"}
    assert transport["paths"]["ws"]["options"]["auto_ping_size"] >= 12
    roles = {r["name"]: r["permissions"][0] for r in cfg["workers"][0]["realms"][0]["roles"]}
    assert roles["iocs_controller"]["allow"]["register"] is False
    assert all(p["uri"] == "obs." for p in roles.values())


# A stand-in for sacct/sacctmgr: appends its own argv (NUL-separated, as the kernel
# holds it) to a record file, lingers so the sampler can see it, prints nothing.
_RECORDING_PROGRAM = """#!/bin/sh
{{ cat /proc/$$/cmdline; printf '\\n'; }} >> '{record}'
sleep 0.3
"""


def _descendants(root: int) -> dict[int, bytes]:
    """pid -> /proc/<pid>/cmdline of every live descendant of ``root``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    found: dict[int, bytes] = {}
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor and ancestor != root:
            ancestor = parents.get(ancestor)
        if ancestor == root:
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                pass
    return found


@pytest.mark.integration
def test_no_secret_reaches_the_argv_of_any_child_an_agent_starts(hub, tmp_path):
    """SlurmSync's real ops through the hub: every sacct/sacctmgr it runs, and every other
    descendant seen while they run, shows neither the API token nor the access password."""
    import secrets

    from hpcsync.agents.testing.coldfront import ColdFrontEmulator

    token, password = f"tok{secrets.token_hex(20)}", f"pw{secrets.token_hex(16)}"
    record = tmp_path / "argv.record"
    programs = {}
    for name in ("sacct", "sacctmgr"):
        programs[name] = tmp_path / name
        programs[name].write_text(_RECORDING_PROGRAM.format(record=record))
        programs[name].chmod(0o755)
    (tmp_path / "api.token").write_text(f"Token {token}\n")
    (tmp_path / "policy").write_text(f"override:{password}\n")
    for secret_file in ("api.token", "policy"):
        (tmp_path / secret_file).chmod(0o600)
    emulator = ColdFrontEmulator(period_start_month=6).start()
    emulator.seed(
        {
            "users": [{"username": "alice", "cluster_uid": "5001"}],
            "tokens": [{"key": token, "username": "syncbot", "is_staff": True}],
            "projects": [
                {"name": "pc_alpha", "resource": "Savio Compute", "service_units": "100.00",
                 "start_date": "2020-06-01", "users": ["alice"]},
            ],
        }
    )  # fmt: skip
    (tmp_path / "profiles.yaml").write_text(
        f"profiles:\n  testbrc:\n    extends: mybrc\n    base_url: {emulator.api_url}\n"
        "    prices: {debug: 1, long: 1}\n"
    )
    instance = "slurmsync-argv"
    agent = hub.start_agent(
        "SlurmSync",
        instance,
        [
            "--target", "testbrc", "--profile-file", str(tmp_path / "profiles.yaml"),
            "--token-file", f"file:{tmp_path / 'api.token'}", "--db", f"sqlite:///{tmp_path / 'ledger.db'}",
            "--sync-log-dir", str(tmp_path / "logs"), "--sacct", str(programs["sacct"]),
            "--sacctmgr", str(programs["sacctmgr"]), "--access-policy", f"file:{tmp_path / 'policy'}",
        ],
    )  # fmt: skip
    seen: dict[int, bytes] = {}
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            seen.update(_descendants(agent.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        client = hub.client(instance, privs=password)
        for op in (client.full_sync, client.reverse_sync, client.sync_running_jobs):
            reply = op()
            assert reply.session["success"] is True, reply
    finally:
        sampling.set()
        sampler.join(timeout=5)
        hub.agents.pop(instance, agent).kill()
        emulator.stop()

    recorded = [line.split(b"\0") for line in record.read_bytes().splitlines() if line]
    programs_run = {Path(argv[1].decode()).name for argv in recorded if len(argv) > 1}
    assert programs_run == {"sacct", "sacctmgr"}, recorded
    assert any(programs["sacct"].name.encode() in cmdline for cmdline in seen.values()), "sampler saw no child"
    everything = b"\n".join([record.read_bytes(), *seen.values()])
    assert b"pc_alpha" in everything  # the argv really carries the job's parameters
    for secret in (token, password):
        assert secret.encode() not in everything, "a secret reached a child's command line"


def test_no_python_runs_between_fork_and_exec(monkeypatch):
    """A ``preexec_fn`` runs Python (a dlopen) in the child of a threaded process, which
    can deadlock on a lock another thread held at fork time; the parent-death signal is set
    by setpriv after exec instead."""
    import subprocess

    seen = {}
    real_popen = subprocess.Popen

    def recording_popen(args, **kwargs):
        seen.update(kwargs, args=list(args))
        return real_popen(args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    assert run_command(["echo", "hello"]).stdout == "hello\n"
    assert seen.get("preexec_fn") is None
    assert seen["args"][:3] == ["/usr/bin/setpriv", "--pdeathsig", "KILL"] and seen["args"][-1] == "hello"
    with pytest.raises(CommandError, match="cannot run no-such-program-x: No such file or directory"):
        run_command(["no-such-program-x", "a"])
    with pytest.raises(CommandError, match="cannot run /nonexistent/sacct: No such file or directory"):
        run_command(["/nonexistent/sacct", "a"])
    with pytest.raises(CommandError, match="cannot run /etc: Permission denied"):
        run_command(["/etc"])


def test_a_command_dies_with_the_process_that_started_it(tmp_path):
    """A SIGKILLed agent leaves no rsync behind to race its restarted successor."""
    import signal
    import subprocess
    import sys

    pidfile = tmp_path / "child.pid"
    code = (
        "from hpcsync.agents.core.process import run_command; "
        f"run_command(['sh', '-c', 'echo $$ > {pidfile}; exec sleep 60'], timeout=120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (pidfile.exists() and pidfile.read_text().strip()):
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert pid_alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive(child):
        time.sleep(0.05)
    assert not pid_alive(child)


def test_a_stopped_command_gets_sigterm_first_then_sigkill(tmp_path):
    """rsync keeps a partial file and removes its temp files on SIGTERM, not on SIGKILL;
    a program that ignores SIGTERM is killed all the same."""
    import threading

    marker = tmp_path / "terminated"
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    polite = f'trap "echo saved > {marker}; exit 1" TERM; sleep 60 & wait'
    with pytest.raises(CommandCancelled):
        run_command(["sh", "-c", polite], cancel=cancel, timeout=30)
    assert marker.read_text().strip() == "saved"
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(CommandCancelled):  # ignores SIGTERM: SIGKILL follows
        run_command(["sh", "-c", 'trap "" TERM; sleep 60 & wait'], cancel=cancel, timeout=30)
