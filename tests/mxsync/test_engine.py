"""MxSync against real parts: the portal emulator, sshd + rsync (a key user), an sftp-only
chroot user, and the ledger in SQLite. What is checked is what an operator checks: files
under <root>/<project>/<epn>/data/, the ledger's states, the report's sentences."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
import uuid

import pytest

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.transfer.tree import pull_tree

from .conftest import NOW, engine_for, finished, make_epn, ssh_extra, write_config

pytestmark = pytest.mark.integration


def test_dry_run_writes_nothing_then_execute_transfers_verifies_and_is_idempotent(portal, remote, sshd, tmp_path):
    dest = tmp_path / "scratch"
    dest.mkdir()
    files = make_epn(remote, "12282a")
    make_epn(remote, "13001b")
    make_epn(remote, "14444a")
    finished(portal, "12282a")
    finished(portal, "13001b", equipment=23, days_ago=5)
    finished(portal, "14444a")  # claimed by no project
    start = NOW - __import__("datetime").timedelta(hours=2)
    portal.add_visit(23, "12282c", start, NOW + __import__("datetime").timedelta(hours=20))  # still running
    make_epn(remote, "12282c")
    config = write_config(tmp_path / "config.yml", portal, dest, **ssh_extra(sshd, remote))

    engine = engine_for(config, tmp_path)
    dry = engine.sync(execute=False)
    assert dry.ok and not dry.degraded, dry.message()
    assert sorted(r.epn for r in dry.by_outcome("would-transfer")) == ["12282a", "13001b"]
    would = next(r for r in dry.results if r.epn == "12282a")
    assert would.files_sent == 4 and would.bytes_sent == sum(
        len(files[k]) for k in files if not k.startswith(".") or k == ".info"
    )
    assert dry.unmapped == ["14444a"]
    assert list(dest.iterdir()) == [] and engine.ledger.counts()["pending"] == 0

    live = engine.sync(execute=True)
    assert live.ok and not live.degraded, live.message()
    data = dest / "ny79" / "12282a" / "data"
    for rel, content in files.items():
        there = data / rel
        if rel.startswith(".") and rel != ".info":
            assert not there.exists(), rel
        else:
            assert there.read_bytes() == content, rel
    assert (dest / "ab12" / "13001b" / "data" / "frames" / "img_0001.cbf").exists()
    assert not (dest / "ny79" / "12282c").exists()  # a running experiment is never synced
    # ASSyncy's permission policy: directories setgid, group-writable, nothing for others to write
    mode = (data / "frames").stat().st_mode
    assert mode & stat.S_ISGID and mode & stat.S_IWGRP and not mode & stat.S_IWOTH
    rows = {r["epn"]: r for r in engine.ledger.rows()}
    assert rows["12282a"]["state"] == "done" and rows["12282a"]["verified_at"] and rows["12282a"]["files"] == 4
    assert rows["12282a"]["attempts"] == 1 and set(rows) == {"12282a", "13001b"}

    again = engine.sync(execute=True)
    assert again.results == [] and again.ledger["done"] == 2 and again.ok


def test_hostile_epn_names_from_the_portal_are_refused(portal, remote, sshd, tmp_path):
    dest = tmp_path / "scratch"
    dest.mkdir()
    for bad in ("../12282x", "/etc", "12282;touch x", "12282a\nrm", "-e12282", "12282/../../x", ".12282"):
        finished(portal, bad)
    finished(portal, "12282a")
    make_epn(remote, "12282a")
    engine = engine_for(write_config(tmp_path / "c.yml", portal, dest, **ssh_extra(sshd, remote)), tmp_path)
    report = engine.sync(execute=True)
    assert len(report.refused) == 7 and report.degraded
    assert any("'../12282x' from the portal (equipment 23) is refused: it contains '/'" in r for r in report.refused)
    assert any("starts with '-'" in r for r in report.refused)
    assert any("control character" in r for r in report.refused)
    assert [r.epn for r in report.by_outcome("done")] == ["12282a"]
    assert sorted(p.name for p in (dest / "ny79").iterdir()) == ["12282a"]
    assert sorted(os.listdir(dest)) == ["ny79"] and not (tmp_path / "x").exists()


def test_an_unreachable_portal_or_host_sets_degraded_and_nothing_is_lost(portal, remote, sshd, tmp_path):
    dest = tmp_path / "scratch"
    dest.mkdir()
    make_epn(remote, "12282a")
    finished(portal, "12282a")
    extra = ssh_extra(sshd, remote)
    engine = engine_for(write_config(tmp_path / "c.yml", portal, dest, **{**extra, "port": 9}), tmp_path)
    down = engine.sync(execute=True)
    assert not down.ok and down.degraded and "unreachable" in down.message()
    row = engine.ledger.rows()[0]
    assert row["state"] == "pending" and row["attempts"] == 0 and "unreachable" in row["last_error"]
    # The portal down: the pending EPN is still transferred once the host is back.
    portal.inject_fault("status", status=500)
    engine = engine_for(write_config(tmp_path / "c.yml", portal, dest, **extra), tmp_path, portal_retries=0)
    report = engine.sync(execute=True)
    assert not report.ok and "portal unavailable" in report.message() and "HTTP 500" in report.message()
    assert [r.epn for r in report.by_outcome("done")] == ["12282a"]


def test_done_only_when_rsync_exited_0_and_verification_passed(portal, remote, sshd, tmp_path, monkeypatch):
    dest = tmp_path / "scratch"
    dest.mkdir()
    make_epn(remote, "12282a")
    make_epn(remote, "12282b")
    os.chmod(remote / "12282b" / "frames" / "img_0002.cbf", 0)  # unreadable: rsync exits 23
    finished(portal, "12282a")
    finished(portal, "12282b")
    engine = engine_for(write_config(tmp_path / "c.yml", portal, dest, **ssh_extra(sshd, remote)), tmp_path)

    # rsync exits 0 but a file vanishes from the destination before the check: not done.
    import hpcsync.agents.mxsync.engine as engine_module

    def pull_then_lose_a_file(backend, prefix, local_dir, rules, **kw):
        outcome = pull_tree(backend, prefix, local_dir, rules, **kw)
        if not kw.get("dry_run") and prefix == "12282a":
            os.remove(os.path.join(local_dir, "frames", "img_0001.cbf"))
        return outcome

    monkeypatch.setattr(engine_module, "pull_tree", pull_then_lose_a_file)
    report = engine.sync(execute=True)
    by_epn = {r.epn: r for r in report.results}
    assert by_epn["12282a"].outcome == "failed" and "verification failed: 1 files missing" in by_epn["12282a"].error
    assert "frames/img_0001.cbf: missing" in by_epn["12282a"].error
    assert (
        by_epn["12282b"].outcome == "failed"
        and "transfer failed: rsync exited with status 23" in by_epn["12282b"].error
    )
    states = {r["epn"]: (r["state"], r["attempts"], r["verified_at"]) for r in engine.ledger.rows()}
    assert states == {"12282a": ("pending", 1, None), "12282b": ("pending", 1, None)}

    monkeypatch.setattr(engine_module, "pull_tree", pull_tree)
    os.chmod(remote / "12282b" / "frames" / "img_0002.cbf", 0o644)
    report = engine.sync(execute=True)
    assert sorted(r.epn for r in report.by_outcome("done")) == ["12282a", "12282b"]
    assert {r["state"] for r in engine.ledger.rows()} == {"done"}


def test_a_stop_mid_transfer_leaves_it_pending_and_the_next_cycle_finishes_it(portal, remote, sshd, tmp_path):
    dest = tmp_path / "scratch"
    dest.mkdir()
    make_epn(remote, "12282a", {f"f{i}.cbf": os.urandom(1 << 20) for i in range(6)})
    finished(portal, "12282a")
    cancel = threading.Event()
    config = write_config(tmp_path / "c.yml", portal, dest, **ssh_extra(sshd, remote))
    engine = engine_for(config, tmp_path, cancel=cancel)
    engine.backend.bwlimit = "2000"  # ~2 MB/s: 3 s for 6 MiB unless stopped
    threading.Timer(1.0, cancel.set).start()
    started = time.monotonic()
    report = engine.sync(execute=True)
    assert time.monotonic() - started < 3
    assert report.stopped and report.by_outcome("released")
    row = engine.ledger.rows()[0]
    assert row["state"] == "pending" and row["attempts"] == 0 and row["verified_at"] is None
    arrived = [p for p in (dest / "ny79" / "12282a" / "data").glob("f*.cbf")]
    assert len(arrived) < 6
    engine = engine_for(config, tmp_path)
    report = engine.sync(execute=True)
    done = report.by_outcome("done")
    assert [r.epn for r in done] == ["12282a"] and done[0].files_sent == 6 - len(arrived)
    assert engine.ledger.rows()[0]["state"] == "done"


def test_an_epn_is_never_queued_twice(portal, remote, sshd, tmp_path):
    dest = tmp_path / "scratch"
    dest.mkdir()
    make_epn(remote, "12282a", {"big.cbf": os.urandom(3 << 20)})
    finished(portal, "12282a")
    config = write_config(tmp_path / "c.yml", portal, dest, **ssh_extra(sshd, remote))
    slow = engine_for(config, tmp_path)
    slow.backend.bwlimit = "1500"
    first = threading.Thread(target=lambda: results.append(slow.sync(execute=True)))
    results: list = []
    first.start()
    time.sleep(0.8)
    other = engine_for(config, tmp_path)  # another process on the same ledger (or a sync_now)
    second = other.sync(execute=True)
    assert second.results == [] and second.ledger["running"] == 1  # running elsewhere: not queued again
    assert other.ledger.claim("12282a", other.owner, stale_after=60) is False
    first.join(30)
    assert [r.outcome for r in results[0].results] == ["done"]
    assert other.ledger.rows()[0]["attempts"] == 1


def test_an_sftp_only_host_works_through_paramiko(portal, sshd, tmp_path, request):
    root = sshd.sftp_upload_dir / f"data-{uuid.uuid4().hex[:10]}"
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    files = make_epn(root, "12282a")
    finished(portal, "12282a")
    dest = tmp_path / "scratch"
    dest.mkdir()
    extra = {
        "host": "127.0.0.1",
        "remote-user": "hsftponly",
        "port": sshd.port,
        "key-file": str(sshd.client_key),
        "known-hosts": str(sshd.known_hosts),
        "source-root": f"/upload/{root.name}",
        "transfer": "sftp",
        "verify-checksums": True,
    }
    engine = engine_for(write_config(tmp_path / "c.yml", portal, dest, **extra), tmp_path)
    assert engine.backend.describe().startswith("sftp hsftponly@127.0.0.1:/upload/")
    report = engine.sync(execute=True)
    assert report.ok and [r.epn for r in report.by_outcome("done")] == ["12282a"], report.message()
    data = dest / "ny79" / "12282a" / "data"
    assert (data / "frames" / "img_0002.cbf").read_bytes() == files["frames/img_0002.cbf"]
    assert (data / ".info").exists() and not (data / ".DS_Store").exists()
    assert not list(data.rglob(".hpcsync-partial"))


def test_a_malformed_config_names_the_key(portal, tmp_path):
    dest = tmp_path / "d"
    cases = {
        "max-tasks": ("three", "key 'max-tasks': expected a whole number, got 'three'"),
        "epn_cap_map": ({"12282": "../etc"}, "key 'epn_cap_map': project '../etc' of EPN 12282 cannot be"),
        "base-url": ("portal.example.org", "key 'base-url': 'portal.example.org' must start with http"),
        "equipment": ([{"username": "u"}], "key 'equipment': entry 1 has no 'password'"),
        "visit-day-range": (-1, "key 'visit-day-range': must be positive"),
    }
    for key, (value, expected) in cases.items():
        config = write_config(tmp_path / f"{key}.yml", portal, dest, **{key: value})
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
            engine_for(config, tmp_path)
    (tmp_path / "bad.yml").write_text("epn_cap_map: {\n  12282: ny79\n bad")
    with pytest.raises(ConfigError, match=r"bad.yml: line \d+ is not valid YAML"):
        engine_for(tmp_path / "bad.yml", tmp_path)


def test_ignore_yml_import_and_export(portal, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    ignore = tmp_path / "ignore.yml"
    ignore.write_text("previouslySynched:\n- 12282a\n- 13001b\n- ../evil\n")
    engine = engine_for(write_config(tmp_path / "c.yml", portal, dest, ignore=str(ignore)), tmp_path)
    added, refused = engine.ledger.import_ignore(str(ignore), engine.epn_map)
    assert added == 2 and len(refused) == 1 and "'../evil'" in refused[0]
    assert {r["epn"]: r["state"] for r in engine.ledger.rows()} == {"12282a": "done", "13001b": "done"}
    finished(portal, "12282a")
    assert engine.sync(execute=True).results == []  # synced by ASSyncy: not again
    out = tmp_path / "export.yml"
    assert engine.ledger.export_ignore(str(out)) == 2
    assert out.read_text() == "previouslySynched:\n- 12282a\n- 13001b\n"
