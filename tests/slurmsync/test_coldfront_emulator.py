"""The ColdFront API emulator behaves like the real server, over real HTTP."""

from __future__ import annotations

from decimal import Decimal

import requests

from .conftest import ALICE, BOB, READER_TOKEN, STAFF_TOKEN, seed_world

STAFF = {"Authorization": f"Token {STAFF_TOKEN}"}
READER = {"Authorization": f"Token {READER_TOKEN}"}


def job(jobslurmid: str, amount: str, **fields) -> dict:
    body = {
        "jobslurmid": jobslurmid, "submitdate": "2024-07-01T16:59:00Z", "startdate": "2024-07-01T17:00:00Z",
        "enddate": "2024-07-01T18:00:00Z", "userid": "5001", "accountid": "pc_alpha", "amount": amount,
        "jobstatus": "COMPLETING", "partition": "debug", "qos": "normal", "nodes": [{"name": "n0001"}],
        "num_cpus": 1, "num_req_nodes": 1, "num_alloc_nodes": 1, "raw_time": 1.0, "cpu_time": 1.0,
    }  # fmt: skip
    body.update(fields)
    return body


def test_token_auth_and_staff_only_writes(emulator):
    seed_world(emulator)
    api = emulator.api_url
    assert requests.get(api + "projects/").status_code == 401
    bare = requests.get(api + "projects/", headers={"Authorization": STAFF_TOKEN})
    assert bare.status_code == 401 and bare.json()["detail"] == "Authentication credentials were not provided."
    wrong = requests.get(api + "projects/", headers={"Authorization": "Token nope"})
    assert (wrong.status_code, wrong.json()["detail"]) == (401, "Invalid token.")
    assert requests.get(api + "projects/", headers=READER).status_code == 200
    put = requests.put(api + "jobs/1/", json=job("1", "1.00"), headers=READER)
    assert put.status_code == 403
    assert emulator.job("1") is None


def test_page_number_pagination_follows_drf(emulator):
    seed_world(emulator)
    for n in range(246):
        emulator.add_project(f"ic_p{n:03d}", resource=None)
    first = requests.get(emulator.api_url + "projects/", headers=STAFF).json()
    assert first["count"] == 250 and len(first["results"]) == 100 and first["previous"] is None
    assert first["next"] == emulator.api_url + "projects/?page=2"
    third = requests.get(first["next"].replace("page=2", "page=3"), headers=STAFF).json()
    assert len(third["results"]) == 50 and third["next"] is None
    assert third["previous"] == emulator.api_url + "projects/?page=2"
    missing = requests.get(emulator.api_url + "projects/?page=4", headers=STAFF)
    assert (missing.status_code, missing.json()) == (404, {"detail": "Invalid page."})
    assert emulator.requests_by_url()["GET /api/projects/?page=3"] == 1


def test_allocations_and_service_units(emulator):
    seed_world(emulator)
    api = emulator.api_url
    found = requests.get(
        api + "allocations/", params={"project": "pc_alpha", "resources": "Savio Compute"}, headers=STAFF
    )
    allocation = found.json()["results"][0]
    assert allocation["start_date"] == "2020-06-01" and allocation["resources"] == [{"name": "Savio Compute"}]
    attrs = requests.get(
        f"{api}allocations/{allocation['id']}/attributes/", params={"type": "Service Units"}, headers=STAFF
    )
    assert attrs.json()["results"][0]["value"] == "1000.00"
    assert attrs.json()["results"][0]["usage"]["value"] == "0.00"
    unknown = requests.get(api + "allocations/", params={"project": "nosuch"}, headers=STAFF)
    assert unknown.status_code == 400 and "nosuch is not one of the available choices" in unknown.text


def test_put_upsert_moves_usage_by_the_difference(emulator):
    seed_world(emulator)
    url = emulator.api_url + "jobs/7/"
    created = requests.put(url, json=job("7", "10.00"), headers=STAFF)
    assert created.status_code == 201
    assert emulator.usage("pc_alpha") == Decimal("10.00") and emulator.user_usage("pc_alpha", ALICE) == Decimal("10")
    again = requests.put(url, json=job("7", "10.00"), headers=STAFF)
    assert again.status_code == 200 and emulator.usage("pc_alpha") == Decimal("10.00")  # idempotent
    refund = requests.put(url, json=job("7", "4.50"), headers=STAFF)
    assert refund.json()["amount"] == "4.50" and emulator.usage("pc_alpha") == Decimal("4.50")
    # usage never goes below 0
    requests.put(emulator.api_url + "jobs/8/", json=job("8", "1.00", startdate="2019-01-01T00:00:00Z",
                                                        submitdate="2019-01-01T00:00:00Z"), headers=STAFF)  # fmt: skip
    assert emulator.usage("pc_alpha") == Decimal("4.50")  # started before the allocation: not charged
    requests.put(emulator.api_url + "jobs/8/", json=job("8", "0.00", startdate="2024-07-01T17:00:00Z"), headers=STAFF)
    assert emulator.usage("pc_alpha") == Decimal("3.50")
    requests.put(emulator.api_url + "jobs/7/", json=job("7", "0.00"), headers=STAFF)
    assert emulator.usage("pc_alpha") == Decimal("0.00")


def test_post_create_running_then_put_refunds(emulator):
    seed_world(emulator)
    running = job("9", "50.00", jobstatus="RUNNING", enddate=None)
    assert requests.post(emulator.api_url + "jobs/", json=running, headers=STAFF).status_code == 201
    assert emulator.usage("pc_alpha") == Decimal("50.00")
    duplicate = requests.post(emulator.api_url + "jobs/", json=running, headers=STAFF)
    assert duplicate.status_code == 400 and "already exists" in duplicate.text
    requests.put(emulator.api_url + "jobs/9/", json=job("9", "12.25"), headers=STAFF)
    assert emulator.usage("pc_alpha") == Decimal("12.25")
    patch = requests.patch(emulator.api_url + "jobs/9/", json={"amount": "1.00"}, headers=STAFF)
    assert patch.json() == {"failure": "This method is not supported."}


def test_serializer_rules(emulator):
    seed_world(emulator)

    def put(jid: str, **fields):
        body = {**job(jid, "1.00"), **fields}
        return requests.put(emulator.api_url + f"jobs/{jid}/", json=body, headers=STAFF)

    assert put("1", accountid="fc_beta").status_code == 201
    not_member = put("2", userid="5002")  # bob is not in pc_alpha
    assert not_member.status_code == 400 and f"User {BOB} is not a member of account pc_alpha." in not_member.text
    backwards = put("3", enddate="2024-07-01T16:00:00Z")
    assert backwards.status_code == 400 and "occurs before Job start date" in backwards.text
    no_alloc = put("4", accountid="ac_noalloc")
    assert "Account ac_noalloc has no active compute allocation." in no_alloc.text
    moved = put("1", accountid="pc_alpha")
    assert moved.status_code == 400 and "does not match already associated account fc_beta" in moved.text
    cents = put("5", amount="1.234")
    assert "no more than 2 decimal places" in cents.text
    naive = put("6", startdate="2024-07-01T10:00:00", submitdate="2024-07-01T09:00:00")
    assert naive.json()["startdate"] == "2024-07-01T10:00:00-07:00"  # naive = the server's zone


def test_jobs_list_filters_on_startdate(emulator):
    seed_world(emulator)
    for n in range(240):
        body = job(str(n), "1.00", jobstatus="RUNNING" if n % 3 else "FAILED")
        requests.put(emulator.api_url + f"jobs/{n}/", json=body, headers=STAFF)
    base = {"jobstatus": "RUNNING", "start_time": 1719853200, "end_time": 1719853200}  # 2024-07-01T17:00Z
    page = requests.get(emulator.api_url + "jobs/", params=base, headers=STAFF).json()
    assert page["count"] == 160 and len(page["results"]) == 100 and page["total_amount"] == "160.00"
    assert "jobstatus=RUNNING" in page["next"] and "page=2" in page["next"]
    later = requests.get(emulator.api_url + "jobs/", params={**base, "start_time": 1719853201}, headers=STAFF).json()
    assert later["count"] == 0


def test_fault_injection_and_dropped_replies(emulator):
    seed_world(emulator)
    emulator.inject_fault(status=503, after=1, count=1, methods=["PUT"])
    assert requests.put(emulator.api_url + "jobs/1/", json=job("1", "1.00"), headers=STAFF).status_code == 201
    assert requests.put(emulator.api_url + "jobs/2/", json=job("2", "1.00"), headers=STAFF).status_code == 503
    assert emulator.job("2") is None
    assert requests.put(emulator.api_url + "jobs/2/", json=job("2", "1.00"), headers=STAFF).status_code == 201
    emulator.inject_fault(mode="drop", count=1, methods=["PUT"])
    session = requests.Session()
    try:
        session.put(emulator.api_url + "jobs/3/", json=job("3", "1.00"), headers=STAFF, timeout=5)
        raise AssertionError("the reply should have been dropped")
    except requests.ConnectionError:
        pass
    assert emulator.job("3") is not None  # committed although the client never heard back
    assert emulator.usage("pc_alpha") == Decimal("3.00")


def test_admin_endpoints_over_http(emulator):
    seed_world(emulator)
    base = emulator.url + "/_emulator/"
    requests.post(
        base + "faults", json={"status": 500, "after": 0, "methods": ["GET"], "path_prefix": "/api/projects/"}
    )
    assert requests.get(emulator.api_url + "projects/", headers=STAFF).status_code == 500
    requests.delete(base + "faults")
    assert requests.get(emulator.api_url + "projects/", headers=STAFF).status_code == 200
    assert requests.get(base + "requests").json()["by_url"]["GET /api/projects/"] == 2
    assert requests.get(base + "usage").json()["pc_alpha"]["usage"] == "0.00"
