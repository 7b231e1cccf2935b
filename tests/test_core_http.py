"""The keep-alive JSON sender of agents/core/http.py against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hpcsync.agents.core.http import (
    ApiAuthError,
    ApiError,
    ApiUnavailable,
    KeepAliveSender,
    RequestsSender,
    RetryPolicy,
    json_sender,
)

TOKEN = "Token s3cr3t-value-123"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_PUT(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.seen.append((self.path, body, self.headers.get("Authorization"), id(self.connection)))
        status, text, close = server.script.pop(0) if server.script else (200, b"{}", False)
        self.send_response(status)
        self.send_header("Content-Length", str(len(text)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(text)
        if server.drop_after_reply:
            # The server forgets the idle keep-alive connection (as a reverse proxy's idle
            # timeout does): the client only finds out on its next request.
            self.close_connection = True


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.seen, srv.script, srv.drop_after_reply = [], [], False
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def sender(server, **kw) -> KeepAliveSender:
    policy = RetryPolicy(timeout=5, retries=kw.pop("retries", 3), backoff=0.01)
    return KeepAliveSender(f"http://127.0.0.1:{server.server_port}/api/", {"Authorization": TOKEN}, policy)


def test_requests_share_one_connection_and_paths_join_the_base_url(server):
    s = sender(server)
    assert [s.send("PUT", f"jobs/{n}/", {"n": n}) for n in range(3)] == [200, 200, 200]
    assert [p for p, *_ in server.seen] == ["/api/jobs/0/", "/api/jobs/1/", "/api/jobs/2/"]
    assert len({conn for *_, conn in server.seen}) == 1 and s.requests_made == 3
    assert all(auth == TOKEN for _, _, auth, _ in server.seen)
    s.close()


def test_5xx_is_retried_then_succeeds_and_gives_up_after_the_bound(server):
    s = sender(server)
    server.script = [(503, b"busy", False), (502, b"bad gateway", False)]
    assert s.send("PUT", "jobs/1/", {}) == 200 and s.requests_made == 3
    server.script = [(503, b"busy", False)] * 5
    with pytest.raises(ApiUnavailable, match=r"gave up after 4 tries: HTTP 503"):
        s.send("PUT", "jobs/2/", {})


def test_refused_token_and_bad_request_are_final_and_never_echo_the_token(server):
    s = sender(server)
    server.script = [(401, b"", False)]
    with pytest.raises(ApiAuthError, match="token was refused"):
        s.send("PUT", "jobs/1/", {})
    server.script = [(400, f'{{"detail": "bad header {TOKEN}"}}'.encode(), False)]
    with pytest.raises(ApiError) as info:
        s.send("PUT", "jobs/2/", {})
    assert info.value.status == 400 and "s3cr3t" not in str(info.value) and "***" in str(info.value)
    assert s.requests_made == 2  # neither was retried


def test_a_keep_alive_connection_the_server_dropped_costs_one_free_retry(server):
    s = sender(server, retries=0)  # no retries at all: only the stale-connection retry remains
    server.drop_after_reply = True
    assert s.send("PUT", "jobs/1/", {"a": 1}) == 200
    assert s.send("PUT", "jobs/2/", {"a": 2}) == 200
    assert [p for p, *_ in server.seen] == ["/api/jobs/1/", "/api/jobs/2/"]


def test_a_stop_request_ends_the_backoff_at_once(server):
    cancel = threading.Event()
    policy = RetryPolicy(timeout=5, retries=5, backoff=30, cancel=cancel)
    s = KeepAliveSender(f"http://127.0.0.1:{server.server_port}/api/", {}, policy)
    server.script = [(503, b"busy", False)] * 6
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(ApiUnavailable, match="stopped while retrying"):
        s.send("PUT", "jobs/1/", {})
    assert s.requests_made == 1  # it did not wait out the 30 s backoff to try again


def test_a_proxy_from_the_environment_is_honoured_by_falling_back_to_requests(server, monkeypatch):
    url = f"http://127.0.0.1:{server.server_port}/api/"
    policy = RetryPolicy(timeout=5, retries=0, backoff=0.01)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert isinstance(json_sender(url, {}, policy), RequestsSender)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = json_sender(url, {"Authorization": TOKEN}, policy)
    assert isinstance(direct, KeepAliveSender) and direct.send("PUT", "jobs/9/", {"x": 1}) == 200
