"""EpnAlert against real parts: EPN directories on the real sshd (rsync listing and the
sftp-only chroot user), the portal emulator, and a real SMTP server requiring STARTTLS and
AUTH. What is checked is the mail the server received and the alert ledger."""

from __future__ import annotations

import shutil
import threading
import uuid
from datetime import datetime, timedelta

import pytest
from mxsync.conftest import CLIENT, CLIENT_PW, NOW, USER, USER_PW, finished, write_config

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.jobs import JobContext
from hpcsync.agents.epnalert.options import EpnAlertOptions
from hpcsync.agents.testing.synchrotron_portal import person
from hpcsync.db import open_database

pytestmark = pytest.mark.integration


@pytest.fixture
def portal(synchrotron_portal):
    synchrotron_portal.add_client(CLIENT, CLIENT_PW)
    synchrotron_portal.add_user(USER, USER_PW, [23])
    return synchrotron_portal


@pytest.fixture
def remote(sshd):
    root = sshd.make_remote_dir()
    for epn in ("12282a", "14444a", "15001b", "15002c"):
        (root / epn).mkdir()
        (root / epn / "f.cbf").write_text("x")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def options(tmp_path, config, smtp, **kw) -> EpnAlertOptions:
    password = tmp_path / "smtp.pw"
    password.write_text(smtp.password)
    password.chmod(0o600)
    return EpnAlertOptions(
        config=str(config),
        db=f"sqlite:///{tmp_path / 'ledger.db'}",
        smtp_ca_file=str(smtp.ca_file),
        smtp_user=smtp.user,
        smtp_password=f"file:{password}",
        **kw,
    )


def engine_of(opts: EpnAlertOptions, tmp_path):
    db = open_database(opts.db)
    return opts.build_engine(JobContext("test", threading.Event()), lambda: db)


def config_for(tmp_path, portal, sshd, remote, smtp, **extra):
    return write_config(
        tmp_path / "config.yml",
        portal,
        tmp_path / "dest",
        **{
            "host": "127.0.0.1",
            "remote-user": "hsyncuser",
            "port": sshd.port,
            "key-file": str(sshd.client_key),
            "known-hosts": str(sshd.known_hosts),
            "source-root": str(remote),
            "epnalert-email-to": "help@example.edu",
            "epnalert-email-from": "mx@example.edu",
            "epnalert-email-smtp": f"127.0.0.1:{smtp.port}",
            **extra,
        },
    )


def test_unknown_epns_are_mailed_once_with_visit_details(portal, sshd, remote, smtp_server, tmp_path):
    smtp_server.clear()
    start = NOW - timedelta(days=2)
    portal.add_visit(
        23,
        "14444a",
        start,
        start + timedelta(hours=8),
        principal_scientist=person("Rosalind", "Franklin", "rf@example.edu"),
        data_scientists=[person("Max", "<b>Perutz</b>", "mp@example.edu")],
    )
    opts = options(tmp_path, config_for(tmp_path, portal, sshd, remote, smtp_server), smtp_server)
    engine = engine_of(opts, tmp_path)

    rendered = engine.check(send=False)
    assert rendered.ok and rendered.unknown == ["14444a", "15001b", "15002c"] and rendered.due == rendered.unknown
    assert "Epn 14444a on" in rendered.text and "Rosalind Franklin rf@example.edu" in rendered.text
    assert smtp_server.messages() == [] and engine.alerts() == []

    sent = engine.check(send=True)
    assert sent.ok and sent.sent_to, sent.message()
    [(envelope, msg)] = smtp_server.messages()
    assert envelope["tls"] and envelope["rcpt_tos"] == ["help@example.edu"]
    assert msg["Subject"] == "Unknown ownership of EPNs" and msg["From"] == "mx@example.edu"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Epn 14444a on" in text and "Max" in text and "15001b  15002c" in text and "12282a" not in text
    assert "&lt;b&gt;Perutz&lt;/b&gt;" in html and "<b>Perutz</b>" not in html  # portal text cannot inject markup
    assert sorted(a["epn"] for a in engine.alerts()) == ["14444a", "15001b", "15002c"]

    again = engine.check(send=True)
    assert again.due == [] and again.not_due == ["14444a", "15001b", "15002c"] and "no mail" in again.message()
    assert len(smtp_server.messages()) == 1
    (remote / "16000a").mkdir()
    newer = engine.check(send=True)
    assert newer.due == ["16000a"] and len(smtp_server.messages()) == 2
    reminder = engine_of(options(tmp_path, tmp_path / "config.yml", smtp_server, reminder_days=0), tmp_path)
    assert reminder.check(send=False).due == ["14444a", "15001b", "15002c", "16000a"]


def test_no_unknown_epns_means_no_mail(portal, sshd, remote, smtp_server, tmp_path):
    smtp_server.clear()
    extra = {"epn_cap_map": {"12282": "ny79", "14444": "a", "15001": "b", "15002": "c"}}
    engine = engine_of(
        options(tmp_path, config_for(tmp_path, portal, sshd, remote, smtp_server, **extra), smtp_server), tmp_path
    )
    report = engine.check(send=True)
    assert report.ok and report.unknown == [] and "no mail" in report.message() and smtp_server.messages() == []


def test_assyncy_templates_hostile_names_sftp_listing_and_a_portal_outage(portal, sshd, smtp_server, tmp_path, request):
    smtp_server.clear()
    root = sshd.sftp_upload_dir / f"alert-{uuid.uuid4().hex[:10]}"
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    for name in ("14444a", "-rf", "a;b", "x y"):
        (root / name).mkdir(parents=True)
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "epnalert-text.j2").write_text("Work instructions\n\n{{ epn_details }}\n\nUnknown:\n{{ unknown_epns }}")
    (folder / "epnalert-html.j2").write_text("<html><pre>{{ epn_details }}{{ unknown_epns }}</pre></html>")
    portal.inject_fault("status", status=500)
    config = config_for(
        tmp_path,
        portal,
        sshd,
        root,
        smtp_server,
        **{
            "remote-user": "hsftponly",
            "source-root": f"/upload/{root.name}",
            "transfer": "sftp",
            "epnalert-template-folder": str(folder),
        },
    )
    opts = options(tmp_path, config, smtp_server, portal_retries=0)
    report = engine_of(opts, tmp_path).check(send=True)
    assert report.unknown == ["14444a"] and len(report.refused) == 3 and report.degraded
    assert any("'-rf'" in r and "starts with '-'" in r for r in report.refused)
    assert "HTTP 500" in report.portal_error and report.sent_to
    [(_, msg)] = smtp_server.messages()
    assert (
        msg.get_body(("plain",))
        .get_content()
        .replace("\r\n", "\n")
        .startswith("Work instructions\n\n\n\nUnknown:\n14444a")
    )


def test_mail_failures_are_errors_and_nothing_is_recorded(portal, sshd, remote, smtp_server, tmp_path):
    config = config_for(tmp_path, portal, sshd, remote, smtp_server)
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password")
    opts = options(tmp_path, config, smtp_server)
    opts.smtp_password = f"file:{wrong}"
    engine = engine_of(opts, tmp_path)
    report = engine.check(send=True)
    assert not report.ok and "refused the login of 'alerts'" in report.mail_error
    assert "not-the-password" not in report.message() and engine.alerts() == []
    plain = options(tmp_path, config, smtp_server, smtp_security="none")
    report = engine_of(plain, tmp_path).check(send=True)
    assert (not report.ok and "STARTTLS" in report.mail_error) or "AUTH" in report.mail_error
    untrusted = options(tmp_path, config, smtp_server)
    untrusted.smtp_ca_file = None
    report = engine_of(untrusted, tmp_path).check(send=True)
    assert not report.ok and "TLS failed" in report.mail_error and engine.alerts() == []
    bad = options(tmp_path, config, smtp_server)
    bad.smtp_password = "hunter2"
    with pytest.raises(ConfigError, match="never the password itself") as err:
        bad.mail_settings(bad.read_config())
    assert "hunter2" not in str(err.value)


def test_the_daily_process_checks_once_a_day_at_the_configured_time(portal, sshd, remote, smtp_server, tmp_path):
    opts = options(tmp_path, config_for(tmp_path, portal, sshd, remote, smtp_server), smtp_server, run_at="01:30")
    engine = engine_of(opts, tmp_path)
    times = iter(
        [
            datetime(2026, 12, 1, 1, 0),
            datetime(2026, 12, 1, 1, 31),
            datetime(2026, 12, 1, 9, 0),
            datetime(2026, 12, 2, 1, 45),
        ]
    )
    engine.local_clock = lambda: next(times)
    assert engine.daily(send=False).idle == "next check today at 01:30"
    assert engine.daily(send=False).unknown == ["14444a", "15001b", "15002c"]
    assert engine.daily(send=False).idle == "next check tomorrow at 01:30"
    assert engine.daily(send=False).idle is None
    assert NOW  # the portal clock is the real one: visits are found relative to it
    finished(portal, "14444a")
