"""The local side of SupRsync under faults a review and hostile runs found: stat errors that
are not "file gone", and files rewritten within their filesystem's timestamp resolution."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from hpcsync.agents.core.transfer import LocalRsyncBackend
from hpcsync.agents.suprsync import files as files_module
from hpcsync.agents.suprsync.deleter import delete_files

from .conftest import ARCHIVE, make_engine, md5, status_of, tc_now, write


@pytest.fixture
def stale_paths(monkeypatch):
    """Paths whose stat fails with ESTALE (an NFS server that restarted), as on a real mount."""
    stale: set[str] = set()
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if os.fspath(path) in stale:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(files_module.os, "stat", stat)
    return stale


def test_a_file_that_cannot_be_stated_is_not_missing_and_costs_no_attempt(ledger, src, dst, tmp_path, stale_paths):
    f = write(src / "a.g3", "payload")
    ledger.add_file(str(f), f"{tc_now()}/a.g3", ARCHIVE)
    stale_paths.add(str(f))
    engine = make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path)
    for _ in range(3):
        engine.iterate()
    (row,) = ledger.list_files(ARCHIVE, ("pending",), limit=5)
    assert (row.status, row.failed_copy_attempts) == ("pending", 0)
    assert "cannot stat local file" in row.last_error and "Stale file handle" in row.last_error
    assert engine.counters["errors_local"] == 3 and engine.counters["failed_copies"] == 0
    stale_paths.clear()  # the mount recovers: the file is copied
    engine.iterate()
    assert status_of(ledger)["copied"] == 1 and md5(dst / row.remote_path) == md5(f)


def test_the_deleter_never_records_a_file_it_cannot_stat_as_removed(ledger, src, dst, tmp_path, stale_paths):
    f = write(src / "b.g3", "payload")
    ledger.add_file(str(f), f"{tc_now()}/b.g3", ARCHIVE)
    make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path).iterate()
    stale_paths.add(str(f))
    report = delete_files(ledger, ARCHIVE, 0, now=time.time() + 1)
    assert (report.removed, report.gone, report.busy) == (0, 0, 1)
    assert f.name in os.listdir(src) and status_of(ledger)["copied"] == 1  # (stat is what fails)
    stale_paths.clear()
    assert delete_files(ledger, ARCHIVE, 0, now=time.time() + 1).removed == 1
    assert not f.exists() and status_of(ledger)["removed"] == 1


@pytest.fixture
def coarse_fs(tmp_path):
    """A real filesystem with whole-second timestamps: ext2 with 128-byte inodes, on a loop
    device (as on old NFS exports and ext3 volumes still in use)."""
    image, mountpoint = tmp_path / "coarse.img", tmp_path / "coarse"
    mountpoint.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext2", "-q", "-F", "-I", "128", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a loop filesystem: {mounted.stderr}"
    try:
        probe = mountpoint / "probe"
        probe.write_text("x")
        assert probe.stat().st_mtime_ns % 1_000_000_000 == 0, "expected whole-second timestamps"
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_a_file_rewritten_within_the_second_of_its_copy_is_sent_again_not_deleted(ledger, dst, tmp_path, coarse_fs):
    """Size, mtime, inode and ctime all stay the same on a whole-second filesystem when a
    file is rewritten in place within the second of its verified copy; its signature
    proves nothing and the new content must never be deleted unsent."""
    for trial in range(10):
        while time.time() % 1 > 0.3:  # start early in a second: copy and rewrite fit in it
            time.sleep(0.02)
        f = coarse_fs / f"racy-{trial}.dat"
        f.write_bytes(b"first content")
        ledger.add_file(str(f), f"{tc_now()}/racy-{trial}.dat", ARCHIVE)
        make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path).iterate()
        before = os.stat(f)
        with open(f, "r+b") as out:  # in place: same inode, same size
            out.write(b"other content")
        after = os.stat(f)
        same = (before.st_size, before.st_mtime_ns, before.st_ino, before.st_ctime_ns) == (
            after.st_size, after.st_mtime_ns, after.st_ino, after.st_ctime_ns)  # fmt: skip
        if same:
            break
        ledger.ignore_files(ARCHIVE, None, ("copied", "pending"), dry_run=False)
    else:
        pytest.fail("could not rewrite a file within the second of its copy in 10 trials")
    remote = dst / ledger.list_files(ARCHIVE, ("copied",), limit=5)[0].remote_path
    assert remote.read_bytes() == b"first content"
    report = delete_files(ledger, ARCHIVE, 0, now=time.time() + 1)
    assert report.removed == 0 and report.requeued == 1 and report.rehashed == 1
    assert f.read_bytes() == b"other content"  # still here: its new content was never sent
    make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path).iterate()
    assert remote.read_bytes() == b"other content"
    assert delete_files(ledger, ARCHIVE, 0, now=time.time() + 1).removed == 1 and not f.exists()


def test_a_file_last_changed_long_before_its_hash_is_trusted_and_not_read_again(ledger, src, dst, tmp_path):
    f = write(src / "old.dat", "settled content")
    long_ago = time.time() - 3600
    os.utime(f, (long_ago, long_ago))
    ledger.add_file(str(f), f"{tc_now()}/old.dat", ARCHIVE)
    make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path).iterate()
    report = delete_files(ledger, ARCHIVE, 0, now=time.time() + 1)
    assert (report.removed, report.rehashed) == (1, 0)


def test_the_deleter_never_leaves_the_archives_local_roots(ledger, tmp_path):
    """A producer that registered /etc/passwd (or a path that climbs out with '..' or
    through a symlinked directory) must not have the agent delete it."""
    root = tmp_path / "data"
    elsewhere = tmp_path / "home"
    inside = write(root / "obs" / "a.g3", "mine")
    outside = write(elsewhere / "thesis.tex", "not the archive's")
    climbing = write(elsewhere / "notes.txt", "not the archive's either")
    (root / "link").symlink_to(elsewhere)
    through_link = elsewhere / "draft.tex"
    write(through_link, "reached through a symlink")
    dst = tmp_path / "dst"
    dst.mkdir()
    tc = tc_now()
    ledger.add_files([(str(inside), f"{tc}/a.g3"), (str(outside), f"{tc}/thesis.tex"),
                      (str(root / ".." / "home" / "notes.txt"), f"{tc}/notes.txt"),
                      (str(root / "link" / "draft.tex"), f"{tc}/draft.tex")], ARCHIVE)  # fmt: skip
    make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path).iterate()
    assert status_of(ledger)["copied"] == 4
    report = delete_files(ledger, ARCHIVE, 0, now=time.time() + 1, local_roots=(str(root),))
    assert (report.removed, report.kept) == (1, 3)
    assert not inside.exists() and outside.exists() and climbing.exists() and through_link.exists()
    kept = ledger.list_files(ARCHIVE, ("copied",), limit=10)
    assert all("outside the archive's local roots" in r.last_error for r in kept) and len(kept) == 3
    assert delete_files(ledger, ARCHIVE, 0, now=time.time() + 1, local_roots=(str(root),)).kept == 0  # not retried


@pytest.fixture
def small_fs(tmp_path):
    """A real 8 MiB filesystem (ext2 on a loop device) to fill up."""
    image, mountpoint = tmp_path / "small.img", tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkfs.ext2", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a loop filesystem: {mounted.stderr}"
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_files_that_arrived_before_the_destination_filled_up_are_recorded_and_not_sent_again(
    ledger, src, tmp_path, small_fs
):
    """rsync stops at ENOSPC; the files it had put in place are whole and verified: they
    are copied, the rest stays pending with no attempt, and once there is room again only
    those are sent."""
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * 5_500_000)  # someone else's data: about three files still fit
    tc = tc_now()
    entries = [(str(write(src / f"f{i:02d}", os.urandom(600_000))), f"{tc}/f{i:02d}") for i in range(10)]
    ledger.add_files(entries, ARCHIVE)
    engine = make_engine(ledger, LocalRsyncBackend(str(small_fs)), tmp_path, max_copy_attempts=1)
    report = engine.iterate()
    assert not report.ok and report.unreachable and "No space left on device" in engine.last_error["message"]
    states = status_of(ledger)
    assert 0 < states["copied"] < 10 and states["copied"] + states["pending"] == 10 and states["failed"] == 0
    copied = {r.remote_path for r in ledger.list_files(ARCHIVE, ("copied",), limit=20)}
    local_of = {remote: local for local, remote in entries}
    assert all(md5(small_fs / r) == md5(local_of[r]) for r in copied)
    first_copies = {r: os.stat(small_fs / r).st_ino for r in copied}

    filler.unlink()  # the operator makes room
    assert engine.iterate().ok
    assert status_of(ledger)["copied"] == 10
    assert all(md5(small_fs / r) == md5(local) for local, r in entries)
    assert {r: os.stat(small_fs / r).st_ino for r in copied} == first_copies  # not sent again
