"""The CloudSync agent through the real hub, on the real S3 server: push, pull, list,
purge (dry run unless confirmed) and status, as an operator would call them."""

from __future__ import annotations

import json

import pytest

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
