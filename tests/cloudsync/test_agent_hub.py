"""The CloudSync agent through the real hub, on the real S3 server: push, pull, list,
purge (dry run unless confirmed) and status, as an operator would call them."""

from __future__ import annotations

import json
import os
import time

import pytest

from hpcsync.db import open_database
from hpcsync.db.runs import recent_runs

pytestmark = pytest.mark.integration


def test_agent_ops_through_the_hub_on_s3(hub, s3_server, tmp_path):
    bucket = s3_server.make_bucket()
    creds = s3_server.credentials_file(tmp_path / "s3.credentials")
    home = tmp_path / "home"
    (home / "keep" / "empty").mkdir(parents=True)
    (home / "notes.txt").write_text("notes")
    (home / "keep" / "data.bin").write_bytes(b"\0" * 70_000)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "sync.data.yml").write_text(f"source: {home}\n")
    instance = "cloudsync-hub"
    hub.start_agent("CloudSync", instance, [
        "--remote", f"s3://{bucket}", "--endpoint-url", s3_server.endpoint_url, "--credentials-file", str(creds),
        "--config-dir", str(tmp_path / "cfg"), "--home", str(home), "--user", "alice",
        "--db", f"sqlite:///{tmp_path / 'hpcsync.db'}",
    ])  # fmt: skip
    try:
        client = hub.client(instance)
        listed = client.list()
        assert listed.session["success"] is True
        assert f"data: {home} <-> s3://{bucket}/sync/alice/data" in listed.session["data"]["lines"]

        pushed = client.push(target="data")
        data = pushed.session["data"]
        assert pushed.session["success"] is True, pushed
        assert data["files_sent"] == 2 and data["bytes_sent"] == 70_005 and data["activity"] == "done"
        stored = s3_server.bucket_dir(bucket) / "sync" / "alice"
        assert (stored / "data" / "keep" / "data.bin").read_bytes() == b"\0" * 70_000
        assert "keep/empty" in json.loads((stored / "data.hpcsync.json").read_text())["dirs"]
        assert s3_server.secret_key not in json.dumps(pushed.session)

        status = client.status()
        assert status.session["data"]["targets"]["data"]["last_push_files"] == 2

        (home / "notes.txt").unlink()
        pulled = client.pull(target="data")
        assert pulled.session["success"] is True and (home / "notes.txt").read_text() == "notes"

        dry = client.purge(target="data")
        assert dry.session["success"] is True and dry.session["data"]["dry_run"] is True
        assert (stored / "data" / "keep" / "data.bin").exists()
        done = client.purge(target="data", confirm=True)
        assert done.session["success"] is True
        assert not (stored / "data.hpcsync.json").exists() and not (stored / "data" / "notes.txt").exists()

        # read ops are open; ops that change state need the level-2 password
        anonymous = hub.client(instance, privs=1)
        assert anonymous.list().session["success"] is True
        refused = anonymous.push(target="data")
        assert "requires credential level 2" in refused.msg, refused
    finally:
        process = hub.agents.pop(instance, None)
        if process is not None:
            process.kill()


def _wait_for(client, what, predicate, limit: float = 60):
    """Poll the run process's session.data until ``predicate(data)``; fail naming ``what``."""
    deadline = time.monotonic() + limit
    data = {}
    while time.monotonic() < deadline:
        data = client.run.status().session.get("data") or {}
        if predicate(data):
            return data
        time.sleep(0.1)
    raise AssertionError(f"{what}: never seen; last session.data: {data}")


def test_the_run_process_pushes_every_interval_and_a_stop_ends_it_mid_transfer(hub, s3_server, tmp_path):
    """The run process through the real hub: its first cycle pushes the tree, a later one the
    file written meanwhile; a stop while a large file crawls up (--bwlimit) ends the process
    before that file could have arrived, no cycle starts after it, no partial object is
    left, and the agent still answers ops."""
    bucket = s3_server.make_bucket()
    creds = s3_server.credentials_file(tmp_path / "s3.credentials")
    home = tmp_path / "home"
    home.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (home / name).write_text(name)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "sync.data.yml").write_text(f"source: {home}\n")
    instance = "cloudsync-run"
    hub.start_agent("CloudSync", instance, [
        "--remote", f"s3://{bucket}", "--endpoint-url", s3_server.endpoint_url, "--credentials-file", str(creds),
        "--config-dir", str(tmp_path / "cfg"), "--home", str(home), "--user", "alice",
        "--db", f"sqlite:///{tmp_path / 'hpcsync.db'}", "--run-target", "data", "--interval", "600",
        "--bwlimit", "64",  # KiB/s: the 8 MiB file below would take 128 s
    ])  # fmt: skip
    stored = s3_server.bucket_dir(bucket) / "sync" / "alice"
    try:
        client = hub.client(instance)
        client.run.start(interval=1)
        first = _wait_for(client, "the first cycle", lambda d: d.get("counters", {}).get("cycles", 0) >= 1
                          and d.get("last_cycle", {}).get("files_sent") == 3)  # fmt: skip
        assert first["last_cycle"]["ok"] is True and first["targets"] == ["data"]
        assert (stored / "data" / "b.txt").read_text() == "b.txt"

        (home / "new.txt").write_text("written between two cycles")
        later = _wait_for(client, "a cycle sending new.txt", lambda d: d.get("last_cycle", {}).get("files_sent") == 1)
        assert later["counters"]["cycles"] >= 2 and (stored / "data" / "new.txt").exists()
        _wait_for(client, "a cycle with nothing to send", lambda d: d.get("counters", {}).get("cycles", 0)
                  > later["counters"]["cycles"] and d.get("last_cycle", {}).get("files_unchanged") == 4)  # fmt: skip

        (home / "big.bin").write_bytes(os.urandom(8 << 20))
        sending = _wait_for(client, "big.bin being sent", lambda d: d.get("activity") == "sending"
                            and (d.get("progress") or {}).get("current") == "big.bin")  # fmt: skip
        cycles = sending["counters"]["cycles"]
        client.run.stop()
        done = client.run.wait(timeout=30)  # the transfer alone would take 128 s
        assert done.session["status"] == "done" and done.session["success"] is True, done.session
        final = done.session["data"]
        assert final["activity"] == "stopped" and final["counters"]["cycles"] == cycles  # none started after
        assert "stopped" in final["last_cycle"]["message"], final["last_cycle"]
        assert not (stored / "data" / "big.bin").exists()  # S3 never shows a partial object
        db = open_database(f"sqlite:///{tmp_path / 'hpcsync.db'}")
        try:
            runs = recent_runs(db, instance, "run", limit=100)
        finally:
            db.dispose()
        assert len(runs) == cycles and runs[0].status == "stopped", [(r.status, r.message) for r in runs]
        assert all(r.status == "succeeded" for r in runs[1:])
        manifest = json.loads((stored / "data.hpcsync.json").read_text())
        assert set(manifest["files"]) == {"a.txt", "b.txt", "c.txt", "new.txt"}

        (home / "big.bin").unlink()
        after = client.push(target="data")  # the agent still takes ops; nothing is left to send
        assert after.session["success"] is True and after.session["data"]["files_sent"] == 0, after.session
    finally:
        process = hub.agents.pop(instance, None)
        if process is not None:
            process.kill()
