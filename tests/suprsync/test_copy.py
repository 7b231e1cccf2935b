"""The copy loop against a local destination (real rsync), with faults switched on:
attempts are counted and never lost, one bad file never blocks a batch, nothing is deleted
unverified, changed files are sent again, hostile names round-trip."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hpcsync.agents.core.transfer import LocalRsyncBackend
from hpcsync.agents.core.transfer.rsync import parse_md5sum_output
from hpcsync.agents.suprsync.copier import DEFAULT_FILES_PER_BATCH, Copier, CopySettings
from hpcsync.agents.suprsync.deleter import delete_files
from hpcsync.agents.suprsync.ledger import SupRsyncFilesManager

from .conftest import (
    ARCHIVE,
    HOSTILE_NAMES,
    FaultyBackend,
    files_under,
    make_engine,
    md5,
    status_of,
    tc_now,
    transfer_processes_naming,
    write,
)


def test_md5sum_output_with_escaped_names_is_parsed():
    out = (
        b"d41d8cd98f00b204e9800998ecf8427e  plain name.dat\n"
        b"\\0cc175b9c0f1b6a831c399e269772661  new\\nline\\\\back.dat\n"
        b"92eb5ffee6ae2fec3ad71c777531578f *-dash.dat\n"
        b"md5sum: gone.dat: No such file or directory\n"
    )
    assert parse_md5sum_output(out) == {
        "plain name.dat": "d41d8cd98f00b204e9800998ecf8427e",
        "new\nline\\back.dat": "0cc175b9c0f1b6a831c399e269772661",
        "-dash.dat": "92eb5ffee6ae2fec3ad71c777531578f",
    }


def test_hostile_names_round_trip_and_verify(ledger, src, dst, tmp_path):
    tc = tc_now()
    entries = []
    for i, name in enumerate(HOSTILE_NAMES):
        f = write(src / name, f"payload {i}\n")
        entries.append((str(f), f"{tc}/{name}/{name}"))
    ledger.add_files(entries, ARCHIVE)
    report = make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path).iterate()
    assert report.ok, report.errors
    assert status_of(ledger)["copied"] == len(HOSTILE_NAMES)
    for local, remote in entries:
        assert md5(dst / remote) == md5(local)
    assert not (dst / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_one_bad_file_never_blocks_the_batch_and_attempts_are_counted(ledger, src, dst, tmp_path):
    for i in range(10):
        ledger.add_file(str(write(src / f"f{i}", f"content {i}")), f"d/f{i}", ARCHIVE)
    backend = FaultyBackend(dst)
    backend.corrupt = {"d/f3"}  # arrives damaged
    backend.drop = {"d/f7"}  # rsync fails for it (exit 23)
    engine = make_engine(ledger, backend, tmp_path, max_copy_attempts=3)

    report = engine.iterate()
    assert report.batches[0].verified == 8
    assert engine.counters["errors_nonzero"] == 1 and engine.counters["failed_copies"] == 2
    assert status_of(ledger)["copied"] == 8 and status_of(ledger)["pending"] == 2

    engine.iterate()
    engine.iterate()  # third failed attempt: the limit
    assert status_of(ledger)["failed"] == 2
    bad = {r.remote_path: r for r in ledger.list_files(ARCHIVE)}
    assert bad["d/f3"].failed_copy_attempts == 3 and "differs from local md5" in bad["d/f3"].last_error
    assert "not found on the destination" in bad["d/f7"].last_error

    puts = backend.puts
    engine.iterate()  # nothing left to try: failed files are not retried
    assert backend.puts == puts

    backend.corrupt = set()
    backend.drop = set()
    assert ledger.retry_files(ARCHIVE) == 2
    engine.iterate()
    assert status_of(ledger)["copied"] == 10


def test_unreachable_destination_counts_no_attempt(ledger, src, dst, tmp_path):
    for i in range(5):
        ledger.add_file(str(write(src / f"f{i}", str(i))), f"f{i}", ARCHIVE)
    backend = FaultyBackend(dst)
    backend.unreachable = True
    engine = make_engine(ledger, backend, tmp_path, max_copy_attempts=1)
    for _ in range(3):
        report = engine.iterate()
        assert report.unreachable and not report.ok
    assert engine.counters["errors_unreachable"] == 3
    assert status_of(ledger)["pending"] == 5  # a down remote is not the files' fault
    assert all(r.failed_copy_attempts == 0 for r in ledger.get_copyable_files(ARCHIVE))
    backend.unreachable = False
    assert engine.iterate().ok
    assert status_of(ledger)["copied"] == 5


def test_a_vanished_local_file_counts_once_per_attempt(ledger, src, dst, tmp_path):
    f = write(src / "soon-gone", "x")
    ledger.add_file(str(f), "soon-gone", ARCHIVE)
    ledger.add_file(str(write(src / "ok", "y")), "ok", ARCHIVE)
    f.unlink()
    engine = make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path, max_copy_attempts=2)
    engine.iterate()
    row = ledger.list_files(ARCHIVE, ("pending",), limit=5)[0]
    assert row.failed_copy_attempts == 1 and "does not exist" in row.last_error
    engine.iterate()
    assert status_of(ledger) == {"pending": 0, "copied": 1, "removed": 0, "failed": 0, "ignored": 0, "missing": 1}


def test_a_batch_also_ends_at_its_byte_cap(ledger, tmp_path):
    """Big files do not pile into one endless rsync: a batch ends at max_batch_bytes,
    and a file bigger than the cap still goes (alone)."""
    src = tmp_path / "src"
    tc = tc_now()
    sizes_kib = [300, 300, 300, 300, 300, 300, 300, 2000, 100]
    entries = []
    for i, kib in enumerate(sizes_kib):
        path = src / f"f{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(kib * 1024))
        entries.append((str(path), f"{tc}/f{i}"))
    ledger.add_files(entries, ARCHIVE)
    engine = make_engine(ledger, LocalRsyncBackend(str(tmp_path / "dst")), tmp_path, max_batch_bytes=1000 * 1024)
    report = engine.iterate()
    assert report.ok, report.errors
    assert [b.size for b in report.batches] == [3, 3, 1, 1, 1]
    assert status_of(ledger)["copied"] == len(sizes_kib)


def test_delete_waits_for_the_delay_counted_from_the_verified_copy(ledger, src, dst, tmp_path):
    long_ago = time.time() - 10 * 86400
    f = write(src / "a", "a")
    ledger.add_file(str(f), "a", ARCHIVE, timestamp=long_ago)  # registered 10 days ago
    keep = write(src / "keep", "k")
    ledger.add_file(str(keep), "keep", ARCHIVE, deletable=False)
    engine = make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path, delete_after=3600)
    engine.iterate()
    assert f.exists(), "deleted although its verified copy is younger than the delay"
    assert delete_files(ledger, ARCHIVE, 3600, now=time.time() + 3601).removed == 1
    assert not f.exists() and (dst / "a").read_text() == "a"
    assert delete_files(ledger, ARCHIVE, 0).removed == 0
    assert keep.exists()
    assert status_of(ledger)["removed"] == 1


def test_nothing_unverified_is_ever_deleted(ledger, src, dst, tmp_path):
    good = write(src / "good", "g")
    bad = write(src / "bad", "b")
    ledger.add_files([(str(good), "good"), (str(bad), "bad")], ARCHIVE)
    backend = FaultyBackend(dst)
    backend.corrupt = {"bad"}
    engine = make_engine(ledger, backend, tmp_path, delete_after=0, max_copy_attempts=1)
    engine.iterate()
    assert not good.exists() and bad.exists()
    assert status_of(ledger)["failed"] == 1


def test_a_file_changed_after_registration_is_hashed_and_sent_again(ledger, src, dst, tmp_path):
    """socs#475: md5s were never refreshed. Here a rewrite before the copy is hashed at
    copy time, and a rewrite after the copy is caught right before deletion and re-sent."""
    f = write(src / "f", "version 1")
    ledger.add_file(str(f), "f", ARCHIVE)
    write(src / "f", "version 2, longer")  # changed before the first copy
    engine = make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path)
    engine.iterate()
    assert (dst / "f").read_text() == "version 2, longer"

    write(src / "f", "version 3 after the copy")
    os.utime(src / "f", (time.time() + 5, time.time() + 5))
    result = delete_files(ledger, ARCHIVE, 0)
    assert result.requeued == 1 and result.removed == 0 and f.exists()
    engine.iterate()
    assert (dst / "f").read_text() == "version 3 after the copy"
    assert delete_files(ledger, ARCHIVE, 0).removed == 1 and not f.exists()


def _ctime_advances(path: Path, before_ns: int, mtime_ns: int) -> None:
    """Set ``path``'s mtime to ``mtime_ns`` until its ctime is past ``before_ns``.

    ctime ticks with the kernel's coarse clock: a change within the same tick as the last
    one would keep it. The test needs the ctime a real later change would have."""
    while True:
        os.utime(path, ns=(mtime_ns, mtime_ns))
        if path.stat().st_ctime_ns != before_ns:
            return


@pytest.mark.parametrize("how", ["rewritten in place", "replaced by mv"])
def test_a_file_replaced_with_the_same_size_and_mtime_after_its_copy_is_sent_again_not_deleted(
    ledger, src, dst, tmp_path, how
):
    """The signature used to be (size, mtime): different content of the same size put in
    place with the old mtime (``cp -p``, ``rsync -t``, ``mv``) was deleted unsent. Inode
    and ctime are part of it now; rsync's size-and-mtime quick check no longer skips the
    re-send either."""
    f = write(src / "obs.g3", "content A, verified")
    ledger.add_file(str(f), "obs.g3", ARCHIVE)
    backend = FaultyBackend(dst)
    engine = make_engine(ledger, backend, tmp_path)
    engine.iterate()
    (row,) = ledger.get_known_files(ARCHIVE)
    assert row.status == "copied" and (dst / "obs.g3").read_text() == "content A, verified"
    before = f.stat()
    assert (row.local_ino, row.local_ctime_ns) == (before.st_ino, before.st_ctime_ns)

    if how == "rewritten in place":
        f.write_text("content B, not sent")
        target = f
    else:
        target = write(src / "incoming.tmp", "content B, not sent")
    _ctime_advances(target, before.st_ctime_ns, before.st_mtime_ns)
    if target != f:
        os.replace(target, f)
    after = f.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    result = delete_files(ledger, ARCHIVE, 0)
    assert result.removed == 0 and result.requeued == 1 and result.rehashed == 1
    assert f.read_text() == "content B, not sent"
    puts = backend.puts
    engine.iterate()
    assert backend.puts == puts + 1  # sent again
    (row,) = ledger.get_known_files(ARCHIVE)
    assert row.status == "copied" and row.failed_copy_attempts == 0
    assert (dst / "obs.g3").read_text() == "content B, not sent" and row.remote_md5sum == md5(f)
    assert delete_files(ledger, ARCHIVE, 0).removed == 1 and not f.exists()


def test_a_chmod_after_the_copy_is_hashed_again_and_still_deleted_without_a_re_send(
    ledger, src, dst, tmp_path, monkeypatch
):
    """A chmod changes only the ctime: the file is hashed again before deletion, its md5 is
    still the verified one, so it stays copied under its new signature and is deleted
    after the delay, not sent again."""
    import hpcsync.agents.suprsync.deleter as deleter

    f = write(src / "obs.g3", "same content")
    ledger.add_file(str(f), "obs.g3", ARCHIVE)
    backend = FaultyBackend(dst)
    engine = make_engine(ledger, backend, tmp_path, delete_after=3600)
    engine.iterate()
    before = f.stat()
    f.chmod(0o600)
    while f.stat().st_ctime_ns == before.st_ctime_ns:  # ctime ticks with a coarse clock
        f.chmod(0o640 if f.stat().st_mode & 0o040 == 0 else 0o600)
    chmodded = f.stat()
    hashed = []
    real_md5 = deleter.md5_file
    monkeypatch.setattr(deleter, "md5_file", lambda path, *a: hashed.append(path) or real_md5(path, *a))

    puts = backend.puts
    engine.iterate()  # the delay has not passed: nothing checked, nothing sent
    assert f.exists() and not hashed and backend.puts == puts
    result = delete_files(ledger, ARCHIVE, 3600, now=time.time() + 3601)
    assert (result.removed, result.requeued, result.rehashed) == (1, 0, 1) and hashed == [str(f)]
    assert not f.exists() and (dst / "obs.g3").read_text() == "same content"
    engine.iterate()
    assert backend.puts == puts  # never sent again
    (row,) = ledger.get_known_files(ARCHIVE)
    assert row.status == "removed" and (row.local_ino, row.local_ctime_ns) == (chmodded.st_ino, chmodded.st_ctime_ns)


def test_undeletable_files_are_not_retried_every_loop(ledger, src, dst, tmp_path, monkeypatch):
    f = write(src / "locked", "x")
    ledger.add_file(str(f), "locked", ARCHIVE)
    make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path).iterate()

    def refuse(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "remove", refuse)
    assert delete_files(ledger, ARCHIVE, 0).kept == 1
    assert delete_files(ledger, ARCHIVE, 0).kept == 0  # no longer a deletion candidate
    row = ledger.get_known_files(ARCHIVE)[0]
    assert not row.deletable and "Permission denied" in row.last_error and f.exists()


def test_a_stop_request_interrupts_a_long_rsync(ledger, src, tmp_path):
    """A stop during a slow rsync kills it mid-file: the batch ends stopped, no checksum is
    asked, no rsync is left running, nothing landed under the file's name, nothing is
    counted against the file."""
    import threading

    big = write(src / "big", os.urandom(4 << 20))
    ledger.add_file(str(big), "big", ARCHIVE)
    dst = tmp_path / "dst"
    backend = FaultyBackend(dst, bwlimit="200")  # 4 MiB at 200 KiB/s: ~20 s unless stopped
    cancel = threading.Event()
    copier = Copier(ledger, backend, CopySettings(ARCHIVE), cancel=cancel)
    threading.Timer(0.5, cancel.set).start()
    report = copier.copy_batch()
    assert report.stopped and report.verified == 0
    assert (backend.puts, backend.checks) == (1, 0)  # stopped inside the transfer, before its check
    assert transfer_processes_naming(dst) == [] and not (dst / "big").exists()
    row = ledger.get_known_files(ARCHIVE)[0]
    assert row.status == "pending" and row.failed_copy_attempts == 0  # a stop is not a failure


@pytest.mark.parametrize("batch", [1, 7])
def test_pipelined_batches_copy_each_file_once(ledger, src, dst, tmp_path, batch):
    entries = [(str(write(src / f"f{i}", str(i))), f"{tc_now()}/f{i}") for i in range(40)]
    ledger.add_files(entries, ARCHIVE)
    backend = FaultyBackend(dst)
    engine = make_engine(ledger, backend, tmp_path, files_per_batch=batch)
    report = engine.iterate()
    assert report.ok and sum(b.verified for b in report.batches) == 40
    assert backend.puts == -(-40 // batch)  # every file sent exactly once
    assert files_under(dst) == {remote: md5(local) for local, remote in entries}


def test_a_backlog_of_100000_files_with_default_settings(tmp_path):
    """100,000 registered files: registration in bulk, then copied and verified with the
    agent's defaults. Files live on tmpfs to keep the test short."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="suprsync-100k-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        src = base / "src"
        tc = tc_now()
        entries = []
        for d in range(100):
            (src / f"{d:03d}").mkdir(parents=True)
            for i in range(1000):
                p = src / f"{d:03d}" / f"{i:04d}"
                p.write_bytes(b"%d" % (d * 1000 + i))
                entries.append((str(p), f"{tc}/{d:03d}/{i:04d}"))
        manager = SupRsyncFilesManager(tmp_path / "l.db")
        started = time.perf_counter()
        assert manager.add_files(entries, ARCHIVE).added == 100_000
        registration = time.perf_counter() - started
        engine = make_engine(manager, LocalRsyncBackend(str(base / "dst")), tmp_path)
        started = time.perf_counter()
        while manager.has_pending(ARCHIVE):
            report = engine.iterate()
            assert report.ok, report.errors
            assert all(b.size <= DEFAULT_FILES_PER_BATCH for b in report.batches)
        copying = time.perf_counter() - started
        assert status_of(manager)["copied"] == 100_000
        print(f"\n100k files: registered in {registration:.1f} s, copied and verified in {copying:.1f} s")
        manager.dispose()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_path_that_is_both_file_and_directory_fails_alone(ledger, src, dst, tmp_path):
    """ "a" and "a/b" registered together cannot both exist: only one fails, the rest go."""
    ledger.add_files(
        [(str(write(src / "x", "x")), "a"), (str(write(src / "y", "y")), "a/b"), (str(write(src / "z", "z")), "c")],
        ARCHIVE,
    )
    engine = make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path, max_copy_attempts=1)
    engine.iterate()
    counts = status_of(ledger)
    assert counts["copied"] == 2 and counts["failed"] == 1
    assert (dst / "c").read_text() == "z"


def test_a_ledger_that_cannot_be_opened_degrades_and_is_retried(tmp_path, src, dst):
    from hpcsync.agents.suprsync.engine import EngineSettings, SupRsyncEngine
    from hpcsync.db.engine import DatabaseError

    attempts = []
    real = SupRsyncFilesManager(tmp_path / "l.db")
    real.add_file(str(write(src / "f", "f")), "f", ARCHIVE)

    def factory():
        attempts.append(1)
        if len(attempts) < 3:
            raise DatabaseError("database postgresql://db-host/suprsync: connection refused")
        return real

    engine = SupRsyncEngine(factory, LocalRsyncBackend(str(dst)), EngineSettings(ARCHIVE, str(tmp_path / "r"), "i"))
    report = engine.iterate()
    assert not report.ok and engine.counters["errors_db"] >= 1 and "connection refused" in engine.last_error["message"]
    for _ in range(3):
        report = engine.iterate()
    assert report.ok and (dst / "f").read_text() == "f"
    real.dispose()


def test_a_full_destination_costs_no_attempt(ledger, src, dst, tmp_path):
    """rsync aborting with ENOSPC is the destination's fault: the batch stays pending
    with no attempt counted (it used to count one per file until all were failed)."""
    enospc = 'rsync: [receiver] write failed on "/dst/a": No space left on device (28)'
    fake = write(tmp_path / "bin" / "rsync", f"#!/bin/sh\ncat >/dev/null\necho '{enospc}' >&2\nexit 11\n")
    fake.chmod(0o755)
    for i in range(3):
        ledger.add_file(str(write(src / f"f{i}", str(i))), f"d/f{i}", ARCHIVE)
    engine = make_engine(ledger, LocalRsyncBackend(str(dst), rsync_program=str(fake)), tmp_path, max_copy_attempts=1)
    report = engine.iterate()
    assert not report.ok and report.unreachable
    assert "No space left on device" in engine.last_error["message"]
    assert status_of(ledger)["pending"] == 3 and status_of(ledger)["failed"] == 0


def test_a_missing_local_base_dir_costs_no_attempt(ledger, src, tmp_path):
    ledger.add_file(str(write(src / "a", "a")), "d/a", ARCHIVE)
    engine = make_engine(ledger, LocalRsyncBackend(str(tmp_path / "unmounted" / "base")), tmp_path, max_copy_attempts=1)
    report = engine.iterate()
    assert report.unreachable and "does not exist" in engine.last_error["message"]
    assert status_of(ledger)["pending"] == 1 and status_of(ledger)["failed"] == 0


class _WritesDuringCopy(LocalRsyncBackend):
    """A producer appends to the file after the copier hashed it, before rsync reads it."""

    def __init__(self, basedir, growing: Path):
        super().__init__(basedir)
        self.growing = growing
        self.appends = 0

    def put_prepared(self, prepared, *, timeout, cancel=None):
        if self.appends < 3:
            self.appends += 1
            with open(self.growing, "a") as f:
                f.write(f"line {self.appends}\n")
            os.utime(self.growing, ns=(0, (1_700_000_000 + self.appends) * 10**9))
        return super().put_prepared(prepared, timeout=timeout, cancel=cancel)


def test_a_file_written_while_it_is_copied_costs_no_attempt_and_is_sent_again(ledger, src, dst, tmp_path):
    """A growing file used to pay a failed attempt each loop (md5 of the old content vs.
    the newer content rsync sent) and end up ``failed`` after --max-copy-attempts."""
    growing = write(src / "growing.log", "line 0\n")
    ledger.add_file(str(growing), "logs/growing.log", ARCHIVE)
    engine = make_engine(ledger, _WritesDuringCopy(str(dst), growing), tmp_path, max_copy_attempts=2)
    for _ in range(3):
        engine.iterate()
    (row,) = ledger.get_known_files(ARCHIVE)
    assert row.status == "pending" and row.failed_copy_attempts == 0 and "changed" in row.last_error
    engine.iterate()  # the producer is done: the final content is hashed, sent, verified
    (row,) = ledger.get_known_files(ARCHIVE)
    assert row.status == "copied" and md5(dst / "logs/growing.log") == md5(growing) == row.remote_md5sum


class _ReregistersDuringCopy(LocalRsyncBackend):
    """A producer registers a new local file for the same remote path while it is copied."""

    def __init__(self, basedir, manager, newer: Path):
        super().__init__(basedir)
        self.manager, self.newer, self.done = manager, newer, False

    def put_prepared(self, prepared, *, timeout, cancel=None):
        if not self.done:
            self.done = True
            self.manager.add_file(str(self.newer), prepared.items[0].remote_path, ARCHIVE)
        return super().put_prepared(prepared, timeout=timeout, cancel=cancel)


def test_a_file_registered_again_during_its_copy_is_not_marked_copied_with_the_old_content(ledger, src, dst, tmp_path):
    """The batch's outcome used to overwrite the new registration: the row became
    ``copied`` with the old md5, and the new file was never sent."""
    old = write(src / "v1.g3", "version 1")
    new = write(src / "v2.g3", "version 2, longer")
    ledger.add_file(str(old), "obs/data.g3", ARCHIVE)
    engine = make_engine(ledger, _ReregistersDuringCopy(str(dst), ledger, new), tmp_path)
    engine.iterate()
    (row,) = ledger.get_known_files(ARCHIVE)
    assert row.local_path == str(new) and row.status == "pending"
    engine.iterate()
    (row,) = ledger.get_known_files(ARCHIVE)
    assert row.status == "copied" and row.remote_md5sum == md5(new) == md5(dst / "obs/data.g3")


class _FailsOnSecondPut(FaultyBackend):
    def put_prepared(self, prepared, *, timeout, cancel=None):
        if self.puts == 1:
            self.unreachable = True
        return super().put_prepared(prepared, timeout=timeout, cancel=cancel)


def test_no_batch_staging_is_left_behind_when_the_destination_goes_away(ledger, src, dst, tmp_path):
    """Each batch is staged while the previous one is sent. When the destination goes away
    after the first batch, the batch staged but never sent is removed as well: nothing of
    the run is left in the staging directory, and every file stays pending with no attempt
    counted (the first batch cannot be checked either)."""
    entries = [(str(write(src / f"f{i}", str(i))), f"{tc_now()}/d{i % 3}/f{i}") for i in range(40)]
    ledger.add_files(entries, ARCHIVE)
    backend = _FailsOnSecondPut(dst, tmp_root=str(tmp_path / "stage"))
    (tmp_path / "stage").mkdir()
    report = make_engine(ledger, backend, tmp_path, files_per_batch=5).iterate()
    assert backend.puts == 1 and not report.ok
    assert sum(b.verified for b in report.batches) == 0
    assert list((tmp_path / "stage").iterdir()) == []
    rows = ledger.get_known_files(ARCHIVE)
    assert {(row.status, row.failed_copy_attempts) for row in rows} == {("pending", 0)} and len(rows) == 40
