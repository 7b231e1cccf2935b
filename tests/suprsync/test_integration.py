"""The SupRsync agent through the real hub, copying over a real sshd with rsync.

What an operator checks: files a producer registers from another process arrive on the
remote with the right md5, the local copies go away after the delay, finalization files
appear remotely, an ssh outage degrades the agent and costs nothing, a SIGKILL mid-copy
loses and duplicates nothing, and every operator task runs with no parameters.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpcsync.agents.suprsync.ledger import SupRsyncFilesManager

from .conftest import HOSTILE_NAMES, files_under, tc_now, transfer_processes_naming, write

pytestmark = pytest.mark.integration

ARCHIVE = "smurf"
HPCSYNC = str(Path(sys.executable).parent / "hpcsync")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def agent_args(sshd, remote: Path, db: str, file_root: Path, *extra: str) -> list[str]:
    return [
        "--archive-name", ARCHIVE, "--remote-basedir", str(remote), "--db-path", db,
        "--ssh-host", sshd.shell_destination, "--ssh-key", str(sshd.client_key), "--ssh-port", str(sshd.port),
        "--ssh-known-hosts", str(sshd.known_hosts), "--ssh-connect-timeout", "3",
        "--suprsync-file-root", str(file_root), "--sleep-time", "0.5", *extra,
    ]  # fmt: skip


def run_data(client) -> dict:
    return client.run.status().session["data"]


def statuses(manager: SupRsyncFilesManager) -> dict[str, int]:
    s = manager.status_summary(ARCHIVE).get(ARCHIVE, {})
    return {k: s.get(k, 0) for k in ("pending", "copied", "removed", "failed", "missing", "ignored")}


@pytest.fixture
def remote(sshd):
    d = sshd.make_remote_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_files_from_another_process_are_copied_verified_deleted_and_finalized(hub, sshd, remote, tmp_path):
    db = str(tmp_path / "ledger.db")
    old_tc, new_tc = tc_now(-3), tc_now()
    data = tmp_path / "data"
    expected = {}
    for i, name in enumerate(HOSTILE_NAMES):
        f = write(data / "outputs" / name, f"hostile {i}\n" * 100)
        expected[f"{old_tc}/outputs/{name}"] = hashlib.md5(f.read_bytes()).hexdigest()
    agent = hub.start_agent("SupRsync", "suprsync-main", agent_args(sshd, remote, db, tmp_path / "root",
                                                                   "--delete-local-after", "2"))  # fmt: skip
    client = hub.client("suprsync-main")

    # A producer registers files from its own processes while the agent runs.
    subprocess.run([HPCSYNC, "suprsync", "--db", db, "add-tree", str(data), "--archive", ARCHIVE,
                    "--remote-prefix", str(old_tc), "--last-edit", "0"], check=True, timeout=60)  # fmt: skip
    late = write(tmp_path / "late" / "now.g3", "current timecode")
    expected[f"{new_tc}/now.g3"] = hashlib.md5(late.read_bytes()).hexdigest()
    subprocess.run([HPCSYNC, "suprsync", "--db", db, "add", str(late), f"{new_tc}/now.g3", "--archive", ARCHIVE],
                   check=True, timeout=60)  # fmt: skip

    manager = SupRsyncFilesManager(db)
    try:
        # copied, verified by md5, and deleted locally two seconds after verification
        # (by path: the finalization file is removed too and must not stand in for a data file)
        def removed_paths():
            return {r.remote_path for r in manager.get_known_files(ARCHIVE) if r.status == "removed"}

        wait_for(lambda: set(expected) <= removed_paths(), 60, "every file removed locally")
        assert not any(data.rglob("*.dat")) and not late.exists()
        remote_files = files_under(remote)
        for rel, digest in expected.items():
            assert remote_files.get(rel) == digest, rel
        for row in manager.get_known_files(ARCHIVE):
            assert row.local_md5sum == row.remote_md5sum and row.copied_at <= row.removed_at

        # the old timecode dir was finalized and its YAML sent to the socs path
        def finalization():
            found = [p for p in files_under(remote) if p.endswith(f"_{ARCHIVE}_{old_tc}_finalized.yaml")]
            return found[0] if found else None

        rel = wait_for(finalization, 30, "the finalization file on the remote")
        assert rel.startswith(f"{new_tc}/suprsync/suprsync-main/")
        summary = yaml.safe_load((remote / rel).read_text())
        assert summary["timecode"] == old_tc and summary["num_files"] == len(HOSTILE_NAMES)
        assert summary["subdirs"] == ["outputs"] and summary["instance_id"] == "suprsync-main"
        assert summary["archive_name"] == ARCHIVE

        # what ocs-web shows: small, timestamped session.data with socs's keys
        reply = client.run.status()
        data_ = reply.session["data"]
        assert reply.session["status"] == "running" and not reply.session.get("degraded")
        assert {"activity", "timestamp", "last_copy", "archive_stats", "counters"} <= set(data_)
        assert data_["counters"]["copies"] >= len(expected) and data_["counters"]["errors_unreachable"] == 0
        stats = data_["archive_stats"][ARCHIVE]
        assert stats["num_files"] >= len(expected) + 1 and stats["failed_files"] == 0
        assert len(repr(data_)) < 20_000

        # every operator task starts with no parameters
        for task in ("status", "list_failed", "retry_failed", "ignore_files"):
            reply = getattr(client, task)()
            assert reply.status == 0 and reply.session["success"], (task, reply)
        assert client.status().session["data"]["archives"][ARCHIVE]["removed"] >= len(expected)
        reply = client.ignore_files()
        assert "dry run" in reply.msg or any("dry run" in m for _t, m in reply.session["messages"])
        assert reply.session["data"]["dry_run"] is True
        from hpcsync.db.runs import recent_runs

        assert [r.operation for r in recent_runs(manager.db, "suprsync-main")][:2] == ["ignore_files", "ignore_files"]
        # the file named "$(touch pwned).dat" was never run by a shell on either side
        assert not list(remote.rglob("pwned")) and not Path("/home/hsyncuser/pwned").exists()

        # a stop ends the loop: nothing registered afterwards is sent, no transfer is left running
        client.run.stop()
        reply = client.run.wait(timeout=10)
        assert reply.session["status"] == "done"
        after = write(tmp_path / "after" / "stop.g3", "registered after the stop")
        manager.add_file(str(after), f"{new_tc}/after-stop.g3", ARCHIVE)
        wait_for(lambda: not transfer_processes_naming(remote), 10, "no rsync or ssh of the run left")
        time.sleep(2)  # four periods (--sleep-time 0.5) of a loop that would have sent it
        (row,) = [r for r in manager.get_known_files(ARCHIVE) if r.remote_path.endswith("after-stop.g3")]
        assert row.status == "pending" and row.last_attempt_at is None
        assert not (remote / f"{new_tc}/after-stop.g3").exists() and after.exists()
    finally:
        manager.dispose()
        agent.kill()


def test_ssh_outage_degrades_then_recovers_with_nothing_lost(hub, sshd, remote, tmp_path, postgres):
    """PostgreSQL as the shared ledger; one attempt allowed per file, so a single attempt
    counted during the outage would show up as a failed file."""
    db = postgres.create_database("suprsync_outage")
    src = tmp_path / "src"
    manager = SupRsyncFilesManager(db)
    agent = hub.start_agent("SupRsync", "suprsync-outage", agent_args(sshd, remote, db, tmp_path / "root",
                                                                     "--max-copy-attempts", "1"))  # fmt: skip
    client = hub.client("suprsync-outage")
    try:
        tc = tc_now()
        manager.add_files([(str(write(src / f"a{i}", f"a{i}")), f"{tc}/a{i}") for i in range(20)], ARCHIVE)
        wait_for(lambda: statuses(manager)["copied"] == 20, 30, "the first files copied")

        sshd.stop()
        manager.add_files([(str(write(src / f"b{i}", f"b{i}")), f"{tc}/b{i}") for i in range(20)], ARCHIVE)
        wait_for(lambda: client.run.status().session.get("degraded"), 30, "the run process degraded")
        data = run_data(client)
        assert data["counters"]["errors_unreachable"] >= 1
        assert "unreachable" in data["last_error"]["message"]
        assert client.run.status().session["status"] == "running"  # the agent did not crash
        assert statuses(manager)["failed"] == 0 and statuses(manager)["pending"] == 20

        sshd.start_again()
        wait_for(lambda: statuses(manager)["copied"] == 40, 60, "every file copied after the outage")
        wait_for(lambda: not client.run.status().session.get("degraded"), 30, "degraded cleared")
        assert statuses(manager)["failed"] == 0
        assert files_under(remote) == {f"{tc}/{n}{i}": hashlib.md5(f"{n}{i}".encode()).hexdigest()
                                       for n in "ab" for i in range(20)}  # fmt: skip
    finally:
        if not _alive(sshd.pid):
            sshd.start_again()
        manager.dispose()
        agent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_sigkill_mid_copy_and_restart_copies_every_file_exactly_once(hub, sshd, remote, tmp_path):
    db = str(tmp_path / "ledger.db")
    src = tmp_path / "src"
    tc = tc_now()
    entries = [(str(write(src / f"f{i:02d}.g3", os.urandom(200_000))), f"{tc}/obs/f{i:02d}.g3") for i in range(30)]
    digests = {rel: hashlib.md5(Path(local).read_bytes()).hexdigest() for local, rel in entries}
    manager = SupRsyncFilesManager(db)
    manager.add_files(entries, ARCHIVE)
    # ~6 MB at 1 MB/s in batches of 5: the kill lands in the middle of a batch
    slow = agent_args(sshd, remote, db, tmp_path / "root", "--delete-local-after", "0", "--files-per-batch", "5",
                      "--bwlimit", "1000")  # fmt: skip
    agent = hub.start_agent("SupRsync", "suprsync-kill", slow)
    try:
        wait_for(lambda: 5 <= statuses(manager)["removed"] + statuses(manager)["copied"] < 25, 40, "a few batches done")
        agent.kill()
        # Nothing was deleted without a verified copy.
        done = {r.remote_path for r in manager.get_known_files(ARCHIVE) if r.status in ("copied", "removed")}
        for local, rel in entries:
            if rel not in done:
                assert Path(local).exists(), f"{local} deleted without a verified copy"
            else:
                row = next(r for r in manager.get_known_files(ARCHIVE) if r.remote_path == rel)
                assert row.remote_md5sum == digests[rel]
        assert statuses(manager)["pending"] > 0

        agent = hub.start_agent("SupRsync", "suprsync-kill", slow[:-2])  # restarted (no bandwidth limit)
        wait_for(lambda: statuses(manager)["removed"] == 30, 60, "every file copied and removed after the restart")
        rows = manager.get_known_files(ARCHIVE)
        assert len(rows) == 30 and {r.remote_path for r in rows} == set(digests)
        assert all(r.local_md5sum == r.remote_md5sum == digests[r.remote_path] for r in rows)
        assert all(r.failed_copy_attempts == 0 for r in rows)
        # exactly one copy of each file at its place (rsync renames into place: no partial files)
        wait_for(lambda: files_under(remote) == digests, 30, "the remote tree to hold exactly the files")
    finally:
        manager.dispose()
        agent.kill()
