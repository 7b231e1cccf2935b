"""CloudSync's engine on a local-directory remote and on the real S3 server (rclone serve
s3, SigV4): what lands on the remote, what comes back on disk, what is refused."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import tarfile

import pytest

from hpcsync.agents.cloudsync.engine import CloudSyncError
from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.transfer import Item


def _tree(home, hostile):
    home.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(hostile):
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_bytes(f"content {i}\n".encode() * (i + 1))
    (home / "empty" / "deeper").mkdir(parents=True)
    (home / "script.sh").write_text("#!/bin/sh\n")
    os.chmod(home / "script.sh", 0o750)
    os.utime(home / "script.sh", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    os.chmod(home / "empty", 0o701)


def _add(engine, name, home, **patterns):
    engine.store.add(name, str(home), **patterns)


def test_push_then_pull_elsewhere_restores_bytes_modes_times_and_empty_dirs(rig, tmp_path):
    home, other = tmp_path / "home", tmp_path / "other"
    _tree(home, rig.hostile)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("outside the tree")
    os.symlink(outside, home / "link-out")
    eng = rig.engine(home)
    _add(eng, "data", home)
    report = eng.push("data")
    assert report.ok and report.files_sent == len(rig.hostile) + 1 and not report.problems, report.message()
    for rel in rig.hostile:
        assert (rig.stored / "data" / rel).read_bytes() == (home / rel).read_bytes()
    # the symlink is recorded, never followed: nothing from outside the tree went up
    assert not (rig.stored / "data" / "link-out").exists()
    manifest = json.loads((rig.stored / "data.hpcsync.json").read_text())
    assert manifest["links"] == {"link-out": str(outside)} and "empty/deeper" in manifest["dirs"]

    eng2 = rig.engine(other, config="cfg2")
    other.mkdir()
    _add(eng2, "data", other)
    pulled = eng2.pull("data")
    assert pulled.ok and pulled.files_sent == len(rig.hostile) + 1 and not pulled.problems, pulled.message()
    for rel in [*rig.hostile, "script.sh"]:
        assert (other / rel).read_bytes() == (home / rel).read_bytes()
    st = (other / "script.sh").stat()
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_mtime_ns == 1_600_000_000_123_456_789
    assert (other / "empty" / "deeper").is_dir() and stat.S_IMODE((other / "empty").stat().st_mode) == 0o701
    assert os.readlink(other / "link-out") == str(outside)
    assert not [p for p in other.rglob("*hpcsync-*")], "a temporary was left behind"
    assert not (tmp_path / "x").exists() and not (home / "x").exists()


def test_a_same_size_edit_with_the_mtime_kept_is_sent_and_a_no_change_run_hashes_nothing(rig, tmp_path):
    home = tmp_path / "home"
    _tree(home, rig.hostile)
    eng = rig.engine(home)
    _add(eng, "data", home)
    assert eng.push("data").files_sent == len(rig.hostile) + 1
    again = eng.push("data")
    assert again.files_sent == 0 and again.hashed == 0 and again.files_unchanged == len(rig.hostile) + 1

    target = home / "with space.txt"
    before = target.stat()
    target.write_bytes(target.read_bytes().replace(b"content", b"CONTENT"))  # same size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # same mtime
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns
    edited = eng.push("data")
    assert edited.files_sent == 1 and edited.hashed == 1, edited.message()
    assert (rig.stored / "data" / "with space.txt").read_bytes().startswith(b"CONTENT")


def test_deletes_are_guarded_by_max_delete_and_unreadable_paths_keep_their_remote_copy(rig, tmp_path):
    home = tmp_path / "home"
    _tree(home, rig.hostile)
    eng = rig.engine(home)
    _add(eng, "data", home)
    eng.push("data")
    for rel in rig.hostile[:3]:
        (home / rel).unlink()
    refused = eng.push("data", max_delete=2)
    assert not refused.ok and "3 remote file(s) would be deleted" in refused.refused and "nothing" in refused.refused
    assert all((rig.stored / "data" / rel).exists() for rel in rig.hostile[:3])  # nothing changed
    done = eng.push("data", max_delete=3)
    assert done.ok and done.files_deleted == 3
    assert not any((rig.stored / "data" / rel).exists() for rel in rig.hostile[:3])
    assert (rig.stored / "data" / "script.sh").exists()


def test_pull_refuses_remote_paths_that_would_land_outside_the_directory(rig, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "ok.txt").write_text("ok")
    eng = rig.engine(home)
    _add(eng, "data", home)
    eng.push("data")
    manifest = json.loads((rig.stored / "data.hpcsync.json").read_text())
    manifest["files"]["../x"] = dict(manifest["files"]["ok.txt"])
    manifest["files"]["a/../../y"] = dict(manifest["files"]["ok.txt"])
    eng.backend.write_object("data.hpcsync.json", json.dumps(manifest).encode(), timeout=60)
    other = tmp_path / "deep" / "other"
    other.mkdir(parents=True)
    eng2 = rig.engine(other, config="cfg2")
    _add(eng2, "data", other)
    report = eng2.pull("data")
    assert set(report.problems) == {"../x", "a/../../y"} and all("refused" in v for v in report.problems.values())
    assert (other / "ok.txt").read_text() == "ok"
    assert not (tmp_path / "deep" / "x").exists() and not (tmp_path / "y").exists()


def test_encrypted_files_never_reach_the_remote_in_plaintext_and_bad_keys_or_objects_write_nothing(
    rig, tmp_path, passphrase
):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    secret = b"-----BEGIN OPENSSH PRIVATE KEY----- hunter2 " * 50_000  # ~2 MiB: several chunks
    (home / ".ssh" / "id_rsa").write_bytes(secret)
    (home / "plain.txt").write_text("public")
    eng = rig.engine(home, passphrase=passphrase)
    _add(eng, "data", home, encrypt=[".ssh/*"])
    assert eng.push("data").files_sent == 2
    for path in rig.stored.rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), f"plaintext in {path}"
    assert eng.push("data").files_sent == 0  # the HMAC'd hash compares without sending

    other = tmp_path / "other"
    other.mkdir()
    pulled = rig.engine(other, passphrase=passphrase, config="cfg2")
    _add(pulled, "data", other)
    assert pulled.pull("data").ok and (other / ".ssh" / "id_rsa").read_bytes() == secret

    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase")
    third = tmp_path / "third"
    third.mkdir()
    eng3 = rig.engine(third, passphrase=f"file:{wrong}", config="cfg3")
    _add(eng3, "data", third)
    with pytest.raises(CloudSyncError, match="wrong passphrase"):
        eng3.pull("data")
    assert list(third.iterdir()) == []

    obj = rig.stored / "data" / ".ssh" / "id_rsa"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    eng.backend.write_object("data/.ssh/id_rsa", bytes(data), timeout=60)
    fourth = tmp_path / "fourth"
    fourth.mkdir()
    eng4 = rig.engine(fourth, passphrase=passphrase, config="cfg4")
    _add(eng4, "data", fourth)
    report = eng4.pull("data")
    assert "failed authentication" in report.problems[".ssh/id_rsa"]
    assert not (fourth / ".ssh" / "id_rsa").exists() and (fourth / "plain.txt").read_text() == "public"
    assert not [p for p in fourth.rglob("*") if "hpcsync" in p.name]


def test_a_remote_made_by_alces_sync_is_pulled_and_its_dat_read_once(rig, tmp_path, passphrase):
    """alces's layout: plain files under <name>/, <name>.yml's permissions map, .empty
    markers, and <name>.dat from the real ``openssl enc -aes256`` (MD5 key derivation)."""
    src = tmp_path / "alces-src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("from alces")
    (src / ".ssh").mkdir()
    (src / ".ssh" / "id_rsa").write_text("KEY")
    tarball = tmp_path / "data.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src / ".ssh", arcname=".ssh")
    env = {**os.environ, "password": "correct horse battery staple"}
    argv = ["openssl", "enc", "-e", "-aes256", "-md", "md5", "-pass", "env:password", "-in", str(tarball)]
    dat = subprocess.run(argv, capture_output=True, env=env, check=True).stdout
    home = tmp_path / "home"
    home.mkdir()
    eng = rig.engine(home, passphrase=passphrase)
    b = eng.backend
    b.put([Item(str(src / "docs" / "a.txt"), "data/docs/a.txt")], timeout=60)
    b.write_object("data/empty/.empty", b"", timeout=60)
    b.write_object("data.yml", b":source: :home\n:files:\n  docs/a.txt: \"root:root:0600:1500000000:1500000000\"\n",
                   timeout=60)  # fmt: skip
    b.write_object("data.dat", dat, timeout=60)
    _add(eng, "data", home, encrypt=[".ssh/*"])
    report = eng.pull("data")
    assert report.ok and not report.problems, report.message()
    assert (home / "docs" / "a.txt").read_text() == "from alces"
    st = (home / "docs" / "a.txt").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and int(st.st_mtime) == 1_500_000_000
    assert (home / "empty").is_dir() and (home / ".ssh" / "id_rsa").read_text() == "KEY"
    # the next push stores the .dat's files encrypted properly and drops the .dat
    pushed = eng.push("data")
    assert pushed.ok, pushed.message()
    assert b.read_object("data.dat", timeout=60) is None
    assert b"KEY" not in (rig.stored / "data" / ".ssh" / "id_rsa").read_bytes()


def test_malformed_target_files_and_missing_passphrases_are_one_clear_line(rig, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "k").write_text("k")
    eng = rig.engine(home)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "sync.bad.yml").write_text("source: /tmp\ninclude: [unclosed\n")
    with pytest.raises(ConfigError, match=r"sync.bad.yml line \d+"):
        eng.push("bad")
    (tmp_path / "cfg" / "sync.odd.yml").write_text("source: /tmp\nexclued: ['*']\n")
    with pytest.raises(ConfigError, match="unknown key exclued"):
        eng.push("odd")
    _add(eng, "enc", home, encrypt=["k"])
    with pytest.raises(ConfigError, match="no passphrase is configured"):
        eng.push("enc")
    with pytest.raises(ConfigError, match="no target 'nope'"):
        eng.pull("nope")


def test_a_push_stopped_mid_way_records_what_it_sent_and_the_next_push_sends_the_rest(rig, tmp_path, monkeypatch):
    from hpcsync.agents.cloudsync import engine as engine_module

    monkeypatch.setattr(engine_module, "BATCH_FILES", 3)
    home = tmp_path / "home"
    home.mkdir()
    names = [f"f{i:02d}.txt" for i in range(30)]
    for i, name in enumerate(names):
        (home / name).write_text(f"first version of {i}")
    eng = rig.engine(home)
    _add(eng, "data", home)
    assert eng.push("data").files_sent == 30
    for i, name in enumerate(names):
        (home / name).write_text(f"second, longer version of {i}")

    def progress(**fields):
        if fields.get("activity") == "sending" and fields.get("files_done", 0) >= 3:  # the first batch is in
            eng.cancel.set()

    eng.progress = progress
    stopped = eng.push("data")
    # the first batch was sent; those under way beside it (SEND_AHEAD at once) may have been, whole or
    # in part; no batch started after the stop
    assert stopped.stopped and stopped.files_deleted == 0, stopped.message()
    assert 3 <= stopped.files_sent <= 3 * engine_module.SEND_AHEAD, stopped.message()
    manifest = json.loads((rig.stored / "data.hpcsync.json").read_text())
    new = {n for n in names if (rig.stored / "data" / n).read_text().startswith("second")}
    assert len(new) == stopped.files_sent and set(names[:3]) <= new
    for name in names:  # the manifest says what each object holds: the new content or the old
        assert manifest["files"][name]["hash"] == hashlib.sha256((rig.stored / "data" / name).read_bytes()).hexdigest()

    other = tmp_path / "other"
    other.mkdir()
    eng2 = rig.engine(other, config="cfg2")
    _add(eng2, "data", other)
    pulled = eng2.pull("data")
    assert pulled.ok and not pulled.problems and pulled.files_sent == 30, pulled.message()

    eng.cancel.clear()
    eng.progress = lambda **kw: None
    rest = eng.push("data")
    assert rest.ok and not rest.stopped and rest.files_sent == 30 - len(new), rest.message()
    assert rest.files_unchanged == len(new), rest.message()
    assert all((rig.stored / "data" / n).read_text().startswith("second") for n in names)


def test_a_push_that_changes_nothing_rewrites_no_manifest_and_a_mode_change_does(rig, tmp_path):
    home = tmp_path / "home"
    _tree(home, rig.hostile)
    eng = rig.engine(home)
    _add(eng, "data", home)
    eng.push("data")
    stored = rig.stored / "data.hpcsync.json"
    before = (stored.read_bytes(), stored.stat().st_mtime_ns)
    again = eng.push("data")
    assert again.ok and again.files_sent == 0 and again.attrs_updated == 0
    assert (stored.read_bytes(), stored.stat().st_mtime_ns) == before
    os.chmod(home / "script.sh", 0o700)
    changed = eng.push("data")
    assert changed.files_sent == 0 and changed.attrs_updated == 1
    assert json.loads(stored.read_text())["files"]["script.sh"]["mode"] == 0o700
