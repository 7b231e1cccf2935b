"""MxSync and EpnAlert as OCS agents through the real hub: ops with no parameters, a live
sync moving real files, the ledger ops, the run process stopping within a second, and
EpnAlert's check rendering without mailing."""

from __future__ import annotations

import time

import pytest

from .conftest import engine_for, finished, make_epn, write_config

pytestmark = pytest.mark.integration


def test_mxsync_ops_through_the_hub(hub, portal, tmp_path):
    source = tmp_path / "data" / "mx"
    dest = tmp_path / "scratch"
    dest.mkdir()
    files = make_epn(source, "12282a")
    finished(portal, "12282a")
    finished(portal, "14444a")
    make_epn(source, "14444a")
    config = write_config(tmp_path / "config.yml", portal, dest, **{"source-root": str(source)})
    args = ["--config", str(config), "--db", f"sqlite:///{tmp_path / 'ledger.db'}"]
    hub.start_agent("MxSync", "mxsync-hubtest", args)
    client = hub.client("mxsync-hubtest")
    try:
        dry = client.sync_now()  # no parameters: a dry run
        data = dry.session["data"]
        assert dry.session["success"] is True, dry
        assert data["dry_run"] is True and data["unmapped"] == ["14444a"]
        assert [e["outcome"] for e in data["epns"]] == ["would-transfer"] and list(dest.iterdir()) == []

        live = client.sync_now(execute=True)
        assert live.session["success"] is True and live.session["data"]["transferred"] == 1, live
        assert (dest / "ny79" / "12282a" / "data" / "frames" / "img_0001.cbf").read_bytes() == files[
            "frames/img_0001.cbf"
        ]
        listed = client.list_epns().session["data"]["epns"]
        assert [(e["epn"], e["state"]) for e in listed] == [("12282a", "done")] and listed[0]["verified_at"]
        status = client.status().session["data"]
        assert status["ledger"]["done"] == 1 and status["projects"] == ["ab12", "ny79"]
        assert "secret" not in str(status)
        assert client.retry(epn="12282a").session["data"]["requeued"] == 1

        client.run.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            data = client.run.status().session.get("data") or {}
            if data.get("last_cycle"):
                break
            time.sleep(0.2)
        assert data["last_cycle"]["ok"] and data["dry_run"] is True  # --execute not given: dry runs
        asked = time.monotonic()
        client.run.stop()
        client.run.wait(timeout=5)
        assert time.monotonic() - asked < 2.5
    finally:
        hub.agents.pop("mxsync-hubtest").kill()
    engine = engine_for(config, tmp_path)
    assert engine.ledger.rows()[0]["state"] == "pending"  # retried, and the run process only dry-ran


def test_epnalert_check_renders_and_send_writes_the_mail(hub, portal, tmp_path):
    source = tmp_path / "data" / "mx"
    for epn in ("12282a", "14444a"):
        (source / epn).mkdir(parents=True)
    finished(portal, "14444a")
    config = write_config(
        tmp_path / "config.yml",
        portal,
        tmp_path / "d",
        **{
            "source-root": str(source),
            "epnalert-email-to": "help@example.edu",
            "epnalert-email-from": "mx@example.edu",
        },
    )
    mails = tmp_path / "mail"
    args = ["--config", str(config), "--db", f"sqlite:///{tmp_path / 'ledger.db'}", "--mail-dir", str(mails)]
    hub.start_agent("EpnAlert", "epnalert-hubtest", args)
    client = hub.client("epnalert-hubtest")
    try:
        check = client.check()
        assert check.session["success"] is True, check
        assert check.session["data"]["due"] == ["14444a"] and not mails.exists()
        sent = client.send()
        assert sent.session["success"] is True and sent.session["data"]["sent_to"], sent
        [mail] = list(mails.glob("*.eml"))
        assert "Epn 14444a on" in mail.read_text()
        assert client.send().session["data"]["due"] == []
        assert [a["epn"] for a in client.alerts().session["data"]["alerts"]] == ["14444a"]
    finally:
        hub.agents.pop("epnalert-hubtest").kill()
