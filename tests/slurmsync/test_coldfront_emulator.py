"""The ColdFront API emulator behaves like the real server, over real HTTP.

One test per rule the real myBRC/myLRC server was seen to follow (see the emulator's
docstring): the usage rule by prefix and allocation dates, UTC times, the answers' codes and
shapes.
"""

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
    assert created.status_code == 200  # the server's PUT answers 200 when it creates, too
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

    assert put("1", accountid="fc_beta").status_code == 200
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


def test_jobs_list_filters_on_startdate(emulator):
    seed_world(emulator)
    for n in range(240):
        body = job(str(n), "1.00", jobstatus="RUNNING" if n % 3 else "FAILED")
        requests.put(emulator.api_url + f"jobs/{n}/", json=body, headers=STAFF)
    base = {"jobstatus": "RUNNING", "start_time": 1719853200, "end_time": 1719853200}  # 2024-07-01T17:00Z
    page = requests.get(emulator.api_url + "jobs/", params=base, headers=STAFF).json()
    assert page["count"] == 160 and len(page["results"]) == 100 and page["total_amount"] == 160.0
    assert "jobstatus=RUNNING" in page["next"] and "page=2" in page["next"]
    later = requests.get(emulator.api_url + "jobs/", params={**base, "start_time": 1719853201}, headers=STAFF).json()
    assert later["count"] == 0


def test_fault_injection_and_dropped_replies(emulator):
    seed_world(emulator)
    emulator.inject_fault(status=503, after=1, count=1, methods=["PUT"])
    assert requests.put(emulator.api_url + "jobs/1/", json=job("1", "1.00"), headers=STAFF).status_code == 200
    assert requests.put(emulator.api_url + "jobs/2/", json=job("2", "1.00"), headers=STAFF).status_code == 503
    assert emulator.job("2") is None
    assert requests.put(emulator.api_url + "jobs/2/", json=job("2", "1.00"), headers=STAFF).status_code == 200
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


# -- the real server's rules, one test each -----------------------------------------------


def put_job(emulator, body: dict, url_id: str | None = None) -> requests.Response:
    return requests.put(emulator.api_url + f"jobs/{url_id or body['jobslurmid']}/", json=body, headers=STAFF)


def test_usage_rule_periodic_allowances_need_an_allocation_end_date_the_job_ended_by(emulator):
    seed_world(emulator)
    emulator.add_project("pc_open", resource="Savio Compute", start_date="2024-06-01", users=[ALICE])
    emulator.add_project("fc_year", resource="Savio Compute", start_date="2024-06-01", end_date="2024-07-01",
                         users=[ALICE])  # fmt: skip
    # No end date: stored and answered 200, usage left alone.
    stored = put_job(emulator, job("1", "10.00", accountid="pc_open"))
    assert stored.status_code == 200 and stored.json()["amount"] == "10.00"
    assert emulator.usage("pc_open") == 0 and emulator.user_usage("pc_open", ALICE) == 0
    # End date 2024-07-01: its last instant is 2024-07-01T23:59:59.999999 in Los Angeles.
    assert put_job(emulator, job("2", "5.00", accountid="fc_year", enddate="2024-07-02T06:59:59Z")).ok
    assert emulator.usage("fc_year") == Decimal("5.00")
    assert put_job(emulator, job("3", "7.00", accountid="fc_year", enddate="2024-07-02T07:00:00Z")).ok
    assert emulator.usage("fc_year") == Decimal("5.00") and emulator.job("3")["amount"] == "7.00"
    # POST (the plugin's RUNNING record) checks no end date: it charges in pc_open.
    running = job("4", "9.00", accountid="pc_open", jobstatus="RUNNING", enddate=None)
    assert requests.post(emulator.api_url + "jobs/", json=running, headers=STAFF).status_code == 201
    assert emulator.usage("pc_open") == Decimal("9.00")
    # ... and its final PUT then moves nothing: the estimate stays charged.
    assert put_job(emulator, job("4", "2.00", accountid="pc_open")).ok
    assert emulator.usage("pc_open") == Decimal("9.00") and emulator.job("4")["amount"] == "2.00"


def test_usage_rule_other_prefixes_do_not_check_the_end_date(emulator):
    seed_world(emulator)
    emulator.add_project("ac_recharge", resource="Savio Compute", start_date="2024-06-01", users=[ALICE])
    emulator.add_project("co_condo", resource="Savio Compute", start_date="2024-06-01", end_date="2024-06-30",
                         users=[ALICE])  # fmt: skip
    assert put_job(emulator, job("1", "3.00", accountid="ac_recharge")).ok
    assert put_job(emulator, job("2", "4.00", accountid="co_condo")).ok  # ended after 06-30: charged all the same
    assert emulator.usage("ac_recharge") == Decimal("3.00") and emulator.usage("co_condo") == Decimal("4.00")


def test_usage_rule_a_job_needs_its_dates_and_a_start_on_or_after_the_allocation_start(emulator):
    seed_world(emulator)
    emulator.add_project("ac_new", resource="Savio Compute", start_date="2024-07-01", users=[ALICE])
    emulator.add_project("ac_undated", resource="Savio Compute", users=[ALICE])
    # The allocation starts at 2024-07-01 00:00 in Los Angeles = 07:00 UTC.
    early = job("1", "2.00", accountid="ac_new", submitdate="2024-07-01T06:00:00Z", startdate="2024-07-01T06:59:59Z")
    assert put_job(emulator, early).ok and emulator.usage("ac_new") == 0
    on_time = job("2", "3.00", accountid="ac_new", submitdate="2024-07-01T06:00:00Z", startdate="2024-07-01T07:00:00Z")
    assert put_job(emulator, on_time).ok and emulator.usage("ac_new") == Decimal("3.00")
    assert put_job(emulator, job("3", "4.00", accountid="ac_new", enddate=None)).ok  # a PUT needs an end date
    assert put_job(emulator, job("4", "5.00", accountid="ac_undated")).ok  # no allocation start date
    assert emulator.usage("ac_new") == Decimal("3.00") and emulator.usage("ac_undated") == 0
    assert {emulator.job(n)["amount"] for n in "134"} == {"2.00", "4.00", "5.00"}  # all stored


def test_times_are_stored_and_answered_in_utc_and_naive_times_read_as_utc(emulator):
    seed_world(emulator)
    naive = put_job(emulator, job("6", "1.00", submitdate="2024-07-01T09:00:00", startdate="2024-07-01T10:00:00",
                                  enddate="2024-07-01T14:30:00+02:00"))  # fmt: skip
    assert naive.json()["startdate"] == "2024-07-01T10:00:00Z"
    assert naive.json()["enddate"] == "2024-07-01T12:30:00Z"
    listed = requests.get(emulator.api_url + "jobs/", params={"start_time": 0, "end_time": 2e9}, headers=STAFF)
    assert listed.json()["results"][0]["submitdate"] == "2024-07-01T09:00:00Z"


def test_a_creating_put_answers_200_and_the_body_names_the_job_not_the_url(emulator):
    seed_world(emulator)
    created = put_job(emulator, job("21", "2.00"), url_id="20")
    assert created.status_code == 200 and created.json()["jobslurmid"] == "21"
    assert emulator.job("20") is None and emulator.job("21")["amount"] == "2.00"
    assert emulator.usage("pc_alpha") == Decimal("2.00")
    # The URL names job 21, the body job 22: job 22 is created and charged, 21 is untouched.
    assert put_job(emulator, job("22", "3.00"), url_id="21").status_code == 200
    assert emulator.job("21")["amount"] == "2.00" and emulator.job("22")["amount"] == "3.00"
    assert emulator.usage("pc_alpha") == Decimal("5.00")
    # The body names an existing job under another URL: the primary key's unique check.
    taken = put_job(emulator, job("22", "1.00"), url_id="99")
    assert taken.status_code == 400 and taken.json() == {"jobslurmid": ["job with this jobslurmid already exists."]}


def test_a_job_id_with_a_dot_matches_no_url(emulator):
    seed_world(emulator)
    for method in ("PUT", "GET"):
        reply = requests.request(method, emulator.api_url + "jobs/7.batch/", json=job("7.batch", "1.00"))
        assert reply.status_code == 404 and reply.headers["Content-Type"].startswith("text/html")
        assert "<h1>Not Found</h1>" in reply.text  # Django's page: no view, not even the token check
    assert emulator.all_jobs() == []


def test_node_errors_are_nested_per_node(emulator):
    seed_world(emulator)
    bad = put_job(emulator, job("1", "1.00", nodes=[{"name": "n0001"}, {"name": "n" * 31}, {}, "n0002"]))
    assert bad.status_code == 400
    assert bad.json() == {"nodes": [
        {}, {"name": ["Ensure this field has no more than 30 characters."]}, {"name": ["This field is required."]},
        {"non_field_errors": ["Invalid data. Expected a dictionary, but got str."]},
    ]}  # fmt: skip
    flat = put_job(emulator, job("1", "1.00", nodes="n0001"))
    assert flat.json() == {"nodes": {"non_field_errors": ['Expected a list of items but got type "str".']}}


def test_total_amount_is_a_number(emulator):
    seed_world(emulator)
    put_job(emulator, job("1", "1.25"))
    put_job(emulator, job("2", "2.50"))
    page = requests.get(emulator.api_url + "jobs/", params={"start_time": 0, "end_time": 2e9}, headers=STAFF).json()
    assert page["total_amount"] == 3.75 and isinstance(page["total_cpu_time"], float)
    assert [j["amount"] for j in page["results"]] == ["1.25", "2.50"]  # the serializer's fields stay strings
    empty = requests.get(emulator.api_url + "jobs/", params={"account": "fc_beta"}, headers=STAFF).json()
    assert empty["total_amount"] == 0.0 and empty["count"] == 0


def test_a_missing_job_says_no_job_matches(emulator):
    seed_world(emulator)
    missing = requests.get(emulator.api_url + "jobs/404/", headers=STAFF)
    assert (missing.status_code, missing.json()) == (404, {"detail": "No Job matches the given query."})


def test_project_items_carry_integer_status_and_every_model_field(emulator):
    seed_world(emulator)
    project = requests.get(emulator.api_url + "projects/", headers=STAFF).json()["results"][0]
    assert set(project) == {"id", "created", "modified", "name", "title", "description", "field_of_science",
                            "status", "force_review", "requires_review"}  # fmt: skip
    assert project["status"] == 2 and project["field_of_science"] == 149  # ids: Active, the default field
    assert project["created"].endswith("Z")


def test_an_allocation_filter_on_a_known_resource_the_project_lacks_is_empty(emulator):
    seed_world(emulator)
    lacking = requests.get(
        emulator.api_url + "allocations/", params={"project": "pc_alpha", "resources": "Vector Compute"}, headers=STAFF
    )
    assert (lacking.status_code, lacking.json()["count"], lacking.json()["results"]) == (200, 0, [])
    unknown = requests.get(
        emulator.api_url + "allocations/", params={"project": "pc_alpha", "resources": "Nowhere"}, headers=STAFF
    )
    assert unknown.status_code == 400 and "Nowhere is not one of the available choices" in unknown.text
