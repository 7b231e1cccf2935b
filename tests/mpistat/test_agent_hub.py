"""MpistatReporter through the real hub: the agent process, slapd, a dump of a real tree.

What is checked is what an operator sees: each op's reply and session.data, the TSV and
the split directory on disk, a second report refused by name, the run process doing a new
set once, and the LDAP password nowhere in replies or the agent's log.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from services.slapd import GROUP_BASE, PEOPLE_BASE, READER_DN

from .conftest import NOW
from .dumps import write_dump

pytestmark = pytest.mark.integration


@pytest.fixture
def agent(hub, ldap_groups, tree, tmp_path, request):
    _, entries = tree
    date = dt.date.fromtimestamp(NOW)
    write_dump(entries, "wrstat-5.2", tmp_path / "dumps" / f"{date:%Y%m%d}_999.dat.gz", bad_lines={3: "oops\n"},
               mtime=NOW)  # fmt: skip
    secret = tmp_path / "ldap.pw"
    secret.write_text(ldap_groups.reader_password)
    secret.chmod(0o600)
    instance_id = "mpistat-" + request.node.name.replace("_", "-")[5:30].strip("-")

    def start(*extra: str):
        arguments = [
            "--dump-dir", str(tmp_path / "dumps"), "--output-dir", str(tmp_path / "out"), "--volumes", "999",
            "--db", f"sqlite:///{tmp_path / 'mpistat.db'}", "--ldap-url", ldap_groups.url,
            "--ldap-group-base", GROUP_BASE, "--ldap-people-base", PEOPLE_BASE, "--ldap-bind-dn", READER_DN,
            "--ldap-password-file", f"file:{secret}", "--passwd-command", "getent passwd root",
            "--group-command", "getent group root", *extra,
        ]  # fmt: skip
        hub.start_agent("MpistatReporter", instance_id, arguments)
        return hub.client(instance_id)

    yield start, tmp_path, date
    process = hub.agents.pop(instance_id, None)
    if process is not None:
        process.kill()


def test_report_status_split_through_the_hub(agent, hub, ldap_groups):
    start, tmp_path, date = agent
    client = start()

    status = client.status()
    assert status.session["success"] is True
    assert status.session["data"]["newest_set"]["date"] == date.isoformat()
    assert status.session["data"]["report_pending"] is True

    report = client.report()
    assert report.session["success"] is True, report
    data = report.session["data"]
    assert data["groups"] == 3 and data["malformed"]["total"] == 1
    assert data["malformed"]["first"] == [f"{date:%Y%m%d}_999.dat.gz:3: wrong column count"]
    assert report.session["degraded"] is True  # done, but a line was skipped
    tsv = tmp_path / "out" / "report-output-files" / f"report-{date:%Y%m%d}.tsv"
    assert [line.split("\t")[2] for line in tsv.read_text().splitlines()[1:]] == ["gamma", "alpha", "beta"]

    again = client.report()
    assert again.session["success"] is False
    # Refused by name, not broken: the op fails, says why, and the agent is not degraded.
    assert f"a report for {date.isoformat()} is already stored" in again.session["data"]["refused"]
    assert again.session["degraded"] is False
    assert client.status().session["data"]["report_pending"] is False

    split = client.split()
    assert split.session["success"] is True, split
    assert sorted(p.name for p in (tmp_path / "out" / "groups" / f"{date:%Y%m%d}").iterdir()) == [
        "alpha.dat.gz", "beta.dat.gz", "groupfile", "index.txt", "passwdfile"]  # fmt: skip

    instance_id = next(iid for iid in hub.agents if iid.startswith("mpistat-"))
    reader = hub.client(instance_id, privs=1)  # no password: reading ops only
    assert reader.status().session["success"] is True
    refused = reader.report.start(replace=True)
    assert refused.status != 0 and "2" in refused.msg
    log = hub.agents[instance_id].log.read_text(errors="replace")
    assert ldap_groups.reader_password not in log
    for reply in (status, report, again, split):
        assert ldap_groups.reader_password not in repr(reply.session)


def test_run_process_reports_a_new_set_once_and_stops(agent):
    start, tmp_path, date = agent
    client = start("--interval", "600", "--run-jobs", "report")
    client.run.start()
    deadline = time.monotonic() + 60
    data = {}
    while time.monotonic() < deadline:
        data = client.run.status().session["data"]
        if data.get("last_cycle"):
            break
        time.sleep(0.2)
    assert data["last_cycle"]["ok"] is True and data["last_cycle"]["ran"] == ["report"], data
    assert data["last_cycle"]["date"] == date.isoformat()
    assert (tmp_path / "out" / "report-output-files" / f"report-{date:%Y%m%d}.tsv").exists()
    client.run.stop()
    done = client.run.wait(timeout=10)
    assert done.session["success"] is True
