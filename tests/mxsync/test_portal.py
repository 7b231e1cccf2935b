"""The portal client against the portal emulator: tokens, re-authentication on 401, faults
reported as errors (never an empty list), the token kept out of every message and log."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

import pytest
import requests

from hpcsync.agents.core.secrets import Secret
from hpcsync.agents.mxsync.portal import PORTAL_TZ, Equipment, PortalClient, PortalError
from hpcsync.agents.testing.synchrotron_portal import SynchrotronPortalEmulator, person

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=PORTAL_TZ)


@pytest.fixture
def portal():
    emulator = SynchrotronPortalEmulator().start()
    emulator.add_client("mxclient", "client-secret")
    emulator.add_user("syncbot", "user-secret", [23, 24])
    emulator.add_visit(
        23,
        "12282a",
        NOW - timedelta(days=3),
        NOW - timedelta(days=2),
        data_scientists=[person("Max", "Perutz", "max@example.edu")],
    )
    emulator.add_visit(24, "13001b", NOW - timedelta(hours=2), NOW + timedelta(hours=20))
    emulator.add_visit(23, "99999a", NOW - timedelta(days=400), NOW - timedelta(days=399))
    yield emulator
    emulator.stop()


def equipment(eid="23", user_password="user-secret", client_password="client-secret") -> Equipment:
    return Equipment(eid, "syncbot", Secret(user_password, "test"), "mxclient", Secret(client_password, "test"))


def client(portal, *entries, **kw) -> PortalClient:
    return PortalClient(portal.url, entries or [equipment("23"), equipment("24")], retries=1, backoff=0.01, **kw)


def test_visits_of_every_equipment_in_a_window(portal):
    visits, problems = client(portal).all_visits(NOW - timedelta(days=10), NOW)
    assert problems == []
    assert sorted((v.epn, v.equipment_id) for v in visits) == [("12282a", "23"), ("13001b", "24")]
    first = next(v for v in visits if v.epn == "12282a")
    assert first.end == NOW - timedelta(days=2)
    assert first.data_scientists == ({"first_names": "Max", "last_name": "Perutz", "email": "max@example.edu"},)
    assert first.principal_scientist["email"] == "ada@example.edu"


def test_an_expired_token_is_renewed_once_and_the_call_retried(portal):
    c = client(portal, equipment("23"))
    c.all_visits(NOW - timedelta(days=10), NOW)
    assert portal.request_count("/api/v1/oauth/token") == 1
    portal.expire_tokens()
    visits, _ = c.all_visits(NOW - timedelta(days=10), NOW)
    assert [v.epn for v in visits] == ["12282a"]
    assert portal.request_count("/api/v1/oauth/token") == 2
    # A portal that refuses every token, even a fresh one: an error after one renewal.
    portal.inject_fault("expire", path_prefix="/api/v1/equipment/")
    with pytest.raises(PortalError, match="refused the access token even just after issuing it"):
        c.all_visits(NOW - timedelta(days=10), NOW)
    assert portal.request_count("/api/v1/oauth/token") == 3


def test_wrong_credentials_name_the_client_and_user_not_the_password(portal):
    for bad in (equipment(user_password="nope-user-pw"), equipment(client_password="nope-client-pw")):
        with pytest.raises(PortalError) as err:
            client(portal, bad).all_visits(NOW - timedelta(days=1), NOW)
        text = str(err.value)
        assert "'mxclient'" in text and "'syncbot'" in text and "HTTP 401" in text
        assert "nope" not in text and "secret" not in text


def test_faults_are_errors_never_an_empty_list(portal):
    c = client(portal, equipment("23"))
    portal.inject_fault("status", status=500, path_prefix="/api/v1/equipment/")
    with pytest.raises(PortalError, match="gave up after 2 tries: HTTP 500"):
        c.all_visits(NOW - timedelta(days=10), NOW)
    portal.clear_faults()
    portal.inject_fault("malformed", path_prefix="/api/v1/equipment/")
    with pytest.raises(PortalError, match="not JSON"):
        c.all_visits(NOW - timedelta(days=10), NOW)
    portal.clear_faults()
    # A slow answer: the timeout ends it, the retry too, and it is reported.
    portal.inject_fault("delay", delay=5, path_prefix="/api/v1/equipment/")
    slow = PortalClient(portal.url, [equipment("23")], timeout=0.3, retries=1, backoff=0.01)
    with pytest.raises(PortalError, match="no answer within 0.3 s"):
        slow.all_visits(NOW - timedelta(days=10), NOW)
    portal.clear_faults()
    # An unreachable portal.
    dead = PortalClient("http://127.0.0.1:9", [equipment("23")], retries=0, timeout=2)
    with pytest.raises(PortalError, match="cannot connect"):
        dead.all_visits(NOW - timedelta(days=1), NOW)
    # A stop request ends the retry wait at once.
    cancel = threading.Event()
    cancel.set()
    portal.inject_fault("status", status=503, path_prefix="/api/v1/equipment/")
    stopped = PortalClient(portal.url, [equipment("23")], retries=5, backoff=30, cancel=cancel)
    with pytest.raises(PortalError, match="stopped while retrying"):
        stopped.all_visits(NOW - timedelta(days=1), NOW)


def test_unreadable_visits_are_named_and_the_others_kept(portal):
    portal.add_visit(23, "12290a", "yesterday", NOW.isoformat())
    portal.visits["23"].append({"start_time": NOW.isoformat()})  # no epn at all
    visits, problems = client(portal, equipment("23")).all_visits(NOW - timedelta(days=10), NOW)
    assert [v.epn for v in visits] == ["12282a"]
    assert len(problems) == 2
    assert "start_time of EPN '12290a' 'yesterday' is not an ISO 8601 time" in problems[0]
    assert "has no epn" in problems[1]


def test_the_token_never_shows_in_errors_or_logs(portal, caplog):
    c = client(portal, equipment("23"))
    with caplog.at_level(logging.DEBUG):
        c.all_visits(NOW - timedelta(days=1), NOW)
        token = c._tokens["23"].reveal()
        portal.inject_fault("status", status=500, path_prefix="/api/v1/equipment/")
        with pytest.raises(PortalError) as err:
            c.all_visits(NOW - timedelta(days=1), NOW)
    assert token not in str(err.value) and token not in repr(c._tokens["23"])
    assert "access_token=" in caplog.text  # urllib3 logged the URL ...
    assert token not in caplog.text  # ... without the token
    assert "user-secret" not in caplog.text and "client-secret" not in caplog.text


def test_the_emulator_follows_the_api_rules(portal):
    # wrong grant type, no basic auth, access to equipment, a bad time
    r = requests.post(
        f"{portal.url}/api/v1/oauth/token",
        auth=("mxclient", "client-secret"),
        data={"username": "syncbot", "password": "user-secret", "grant_type": "client_credentials"},
    )
    assert r.status_code == 400 and "grant type" in r.json()["meta"]["error_message"]
    r = requests.post(f"{portal.url}/api/v1/oauth/token", data={"grant_type": "password"})
    assert r.status_code == 401
    portal.add_user("other", "pw", [24])
    r = requests.post(
        f"{portal.url}/api/v1/oauth/token",
        auth=("mxclient", "client-secret"),
        data={"username": "other", "password": "pw", "grant_type": "password"},
    )
    token = r.json()["data"]["access_token"]
    url = f"{portal.url}/api/v1/equipment/23/visits"
    assert requests.get(url, params={"access_token": token, "start_time": "x", "end_time": "y"}).status_code == 403
    url = f"{portal.url}/api/v1/equipment/24/visits"
    assert requests.get(url, params={"access_token": token, "start_time": "x"}).status_code == 400
    # naive times are Melbourne time; a visit overlapping the window is listed
    ok = requests.get(
        url,
        params={
            "access_token": token,
            "start_time": NOW.replace(tzinfo=None).isoformat(),
            "end_time": (NOW + timedelta(hours=1)).replace(tzinfo=None).isoformat(),
        },
    )
    assert [v["epn"] for v in ok.json()["data"]["visits"]] == ["13001b"]
