"""The files ledger: registration, queries that touch only pending rows, operator actions,
the socs import, and several processes sharing one ledger."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
import time

import pytest
from sqlalchemy import event, select

from hpcsync.agents.core.transfer import LocalRsyncBackend
from hpcsync.agents.suprsync.deleter import delete_files
from hpcsync.agents.suprsync.files import CopyResult, RemotePathError, SupRsyncError, normalize_remote_path
from hpcsync.agents.suprsync.ledger import CHUNK, SupRsyncFilesManager
from hpcsync.agents.suprsync.socs_import import import_socs_database

from .conftest import ARCHIVE, make_engine, md5, status_of, tc_now, write


def test_add_file_stats_the_file_and_creates_its_timecode_dir(ledger, src):
    f = write(src / "a.g3", "data")
    tc = tc_now()
    row = ledger.add_file(str(f), f"{tc}/obs1/a.g3", ARCHIVE)
    assert row.status == "pending" and row.local_md5sum is None  # hashed when copied, not now
    assert row.local_size == 4 and abs(row.local_mtime - f.stat().st_mtime) < 1e-3
    assert row.timecode == tc and row.deletable
    assert [d.timecode for d in ledger.open_timecode_dirs(ARCHIVE)] == [tc]
    assert ledger.open_timecode_dirs("other") == []


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside", "a/../../outside", "a/..", "", "/", ".", "./", "a\0b"])
def test_remote_paths_that_escape_the_base_dir_are_refused(ledger, src, bad):
    f = write(src / "a", "x")
    with pytest.raises(RemotePathError):
        ledger.add_file(str(f), bad, ARCHIVE)
    assert status_of(ledger) == {}


def test_remote_paths_are_normalized():
    assert normalize_remote_path("16000//obs/./a.g3") == "16000/obs/a.g3"
    assert normalize_remote_path("./a") == "a"
    assert normalize_remote_path("a..b/..c") == "a..b/..c"  # dots inside names are fine


def test_missing_or_odd_local_files_are_refused_with_the_path(ledger, src):
    with pytest.raises(SupRsyncError, match="does not exist"):
        ledger.add_file(str(src / "nope"), "x", ARCHIVE)
    with pytest.raises(SupRsyncError, match="not a regular file"):
        ledger.add_file(str(src), "x", ARCHIVE)


def test_bulk_registration_is_cheap_and_reregistration_is_an_upsert(ledger, src, monkeypatch):
    """Registering 5,000 files reads none of them (no md5 yet) and costs one transaction per
    chunk of 2,000 with a few statements each, however many files: not one per file."""
    import builtins

    entries = [(str(write(src / f"d{i % 10}" / f"f{i}", str(i))), f"{tc_now()}/d{i % 10}/f{i}") for i in range(5000)]
    opened: list = []
    statements: list[str] = []
    real_open = builtins.open

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    monkeypatch.setattr(builtins, "open", lambda file, *a, **k: opened.append(file) or real_open(file, *a, **k))
    event.listen(ledger.db.engine, "before_cursor_execute", capture)
    try:
        report = ledger.add_files(entries, ARCHIVE)
    finally:
        event.remove(ledger.db.engine, "before_cursor_execute", capture)
        monkeypatch.undo()
    assert report.added == 5000
    assert not [f for f in opened if str(f).startswith(str(src))], "registration read file contents"
    chunks = -(-5000 // CHUNK)
    assert sum(s.startswith("BEGIN") for s in statements) == chunks  # one transaction per chunk
    # a lookup per 500 paths, one batched insert, one for the timecode dirs: not per file
    assert len(statements) <= 8 * chunks, statements

    again = ledger.add_files(entries, ARCHIVE)
    assert (again.added, again.requeued, again.unchanged) == (0, 0, 5000)
    assert status_of(ledger)["pending"] == 5000

    # The producer rewrites one file and registers it again: it is sent again.
    ledger.record_results([CopyResult(1, "verified", "0" * 32, 1, 1.0, "0" * 32)], 5)
    write(src / "d0" / "f0", "rewritten, longer")
    report = ledger.add_files([entries[0]], ARCHIVE)
    assert report.requeued == 1
    row = ledger.get_known_files(ARCHIVE, limit=1)[0]
    assert row.status == "pending" and row.local_size == len("rewritten, longer") and row.remote_md5sum is None


def test_registering_again_a_file_replaced_with_the_same_size_and_mtime_sends_it_again(ledger, src, dst, tmp_path):
    """Re-registration compared size and mtime only: a file replaced with other content of
    the same size and mtime was "unchanged", stayed copied and was later deleted unsent."""
    f = write(src / "a.g3", "content A")
    ledger.add_file(str(f), "16000/a.g3", ARCHIVE)
    make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path).iterate()
    st = f.stat()
    replacement = write(src / "a.g3.tmp", "content B")
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, f)
    report = ledger.add_file(str(f), "16000/a.g3", ARCHIVE)
    assert report.status == "pending" and report.local_ino == f.stat().st_ino
    assert ledger.add_files([(str(f), "16000/a.g3")], ARCHIVE).unchanged == 1  # now it is the same
    make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path).iterate()
    assert (dst / "16000/a.g3").read_text() == "content B"


def test_archive_stats_and_finalized_until(ledger, src):
    t0 = 1_700_000_000.0
    ids = [
        ledger.add_file(str(write(src / f"f{i}", str(i))), f"{tc_now()}/f{i}", ARCHIVE, timestamp=t0 + i).id
        for i in range(4)
    ]
    ledger.add_file(str(write(src / "other", "o")), "other", "smurf", timestamp=t0 - 100)
    assert ledger.get_finalized_until(ARCHIVE) == t0 - 1
    ledger.record_results(
        [
            CopyResult(ids[0], "verified", "a" * 32, 1, 1.0, "a" * 32),
            CopyResult(ids[1], "verified", "b" * 32, 1, 1.0, "b" * 32),
        ],
        5,
    )
    stats = ledger.get_archive_stats(ARCHIVE)
    assert stats["num_files"] == 4 and stats["uncopied_files"] == 2 and stats["failed_files"] == 0
    assert stats["finalized_until"] == t0 + 2 - 1
    assert stats["last_file_added"].endswith("f3")
    assert stats["last_file_copied"].endswith(("f0", "f1"))
    ledger.ignore_files(ARCHIVE, [ids[2]], statuses=["pending"])
    assert ledger.get_finalized_until(ARCHIVE) == t0 + 3 - 1  # ignored files do not hold it back
    # num_files follows new rows incrementally
    ledger.add_file(str(write(src / "f9", "9")), "f9", ARCHIVE)
    assert ledger.get_archive_stats(ARCHIVE)["num_files"] == 5


def test_operator_actions(ledger, src):
    ids = [ledger.add_file(str(write(src / f"f{i}", str(i))), f"f{i}", ARCHIVE).id for i in range(3)]
    for _ in range(2):
        ledger.record_results([CopyResult(ids[0], "failed", error="remote md5 x differs")], max_copy_attempts=2)
    ledger.record_results([CopyResult(ids[1], "missing", error="local file gone")], max_copy_attempts=1)
    assert status_of(ledger) == {"pending": 1, "copied": 0, "removed": 0, "failed": 1, "ignored": 0, "missing": 1}
    listed = ledger.list_files(ARCHIVE)
    assert {r.id for r in listed} == {ids[0], ids[1]} and "differs" in listed[0].last_error
    assert ledger.ignore_files(ARCHIVE, dry_run=True) == 2
    assert status_of(ledger)["failed"] == 1  # a dry run changes nothing
    assert ledger.retry_files(ARCHIVE, [ids[0]]) == 1
    row = ledger.get_copyable_files(ARCHIVE)[0]
    assert row.id == ids[0] and row.failed_copy_attempts == 0
    assert ledger.ignore_files(ARCHIVE, statuses=["missing"]) == 1
    summary = ledger.status_summary()[ARCHIVE]
    assert summary["ignored"] == 1 and summary["pending"] == 2 and summary["total"] == 3
    with pytest.raises(SupRsyncError, match="unknown file status"):
        ledger.retry_files(ARCHIVE, statuses=["bogus"])


def test_the_idle_loop_only_seeks_indexes(ledger, src, tmp_path):
    """Every query of an idle iteration (copy, delete, finalize, stats) is an index search:
    EXPLAIN QUERY PLAN shows no scan of the files table."""
    for i in range(50):
        ledger.add_file(str(write(src / f"f{i}", str(i))), f"{tc_now(-3)}/f{i}", ARCHIVE)
    engine = make_engine(ledger, FakeNothing(), tmp_path, delete_after=3600)
    ledger.record_results(
        [CopyResult(r.id, "verified", "a" * 32, 1, 1.0, "a" * 32) for r in ledger.get_copyable_files(ARCHIVE)], 5
    )
    engine.iterate()  # finalizes the old timecode dir; registers its finalization file
    ledger.record_results(
        [CopyResult(r.id, "verified", "a" * 32, 1, 1.0, "a" * 32) for r in ledger.get_copyable_files(ARCHIVE)], 5
    )
    engine.iterate()  # first full count of rows happens here, once
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(ledger.db.engine, "before_cursor_execute", capture)
    try:
        report = engine.iterate()
    finally:
        event.remove(ledger.db.engine, "before_cursor_execute", capture)
    assert report.ok, report.errors
    assert statements, "the idle loop ran no query at all?"
    raw = sqlite3.connect(ledger.db.engine.url.database)
    for statement, params in statements:
        plan = " / ".join(row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + statement, params or ()))
        assert "SCAN suprsync_files" not in plan, f"{statement}\n-> {plan}"
    raw.close()


class FakeNothing:
    """A backend that must not be used (idle loop)."""

    basedir = "/nowhere"

    def describe(self):
        return "nowhere"

    def connection(self, cancel=None):
        raise AssertionError("the idle loop opened a connection to the destination")

    def put(self, *a, **k):
        raise AssertionError("put called in an idle loop")

    def prepare_put(self, *a, **k):
        raise AssertionError("prepare_put called in an idle loop")

    def checksum(self, *a, **k):
        raise AssertionError("checksum called in an idle loop")


def test_ledger_on_every_backend(db_url, tmp_path):
    """Registration, batches, outcomes, stats and timecode dirs on SQLite, PostgreSQL, MariaDB."""
    manager = SupRsyncFilesManager(db_url)
    try:
        src = tmp_path / "src"
        entries = [(str(write(src / f"f{i}", str(i))), f"{tc_now(-2)}/sub/f{i}") for i in range(30)]
        entries.append((str(write(src / "long", "L")), "d/" * 1500 + "long"))
        assert manager.add_files(entries, ARCHIVE).added == 31
        assert manager.add_files(entries[:5], ARCHIVE).unchanged == 5
        first = manager.next_batch(ARCHIVE, 10)
        second = manager.next_batch(ARCHIVE, 10, after=(first[-1].registered_at, first[-1].id))
        assert len(first) == len(second) == 10 and not {t.id for t in first} & {t.id for t in second}
        manager.record_results([CopyResult(t.id, "verified", "a" * 32, 1, 1.0, "a" * 32) for t in first], 5)
        manager.record_results([CopyResult(t.id, "failed", error="x") for t in second], 1)
        stats = manager.get_archive_stats(ARCHIVE)
        assert (stats["num_files"], stats["uncopied_files"], stats["failed_files"]) == (31, 21, 10)
        assert manager.timecode_dir_unsynced(ARCHIVE, tc_now(-2)) == 20
        assert manager.retry_files(ARCHIVE) == 10
        assert manager.status_summary(ARCHIVE)[ARCHIVE]["pending"] == 21
    finally:
        manager.dispose()


def _producer(url: str, root: str, worker: int, n: int) -> None:
    manager = SupRsyncFilesManager(url)
    for i in range(n):
        path = os.path.join(root, f"w{worker}", f"f{i}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"{worker}-{i}")
        archive = ARCHIVE if worker % 2 == 0 else "smurf"
        manager.add_file(path, f"{tc_now()}/w{worker}/f{i}", archive)  # one transaction per file
    manager.dispose()


def test_producers_in_other_processes_and_two_agents_share_one_sqlite_ledger(ledger, tmp_path):
    """Three producer processes register files one by one into two archives while two copy
    loops (one per archive, as two agents) run and operator queries read: nobody sees
    "database is locked", every file is copied by the loop of its archive."""
    import threading

    from hpcsync.agents.core.transfer import LocalRsyncBackend
    from hpcsync.agents.suprsync.copier import CopySettings
    from hpcsync.agents.suprsync.engine import EngineSettings, SupRsyncEngine

    url = str(ledger.db.engine.url)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_producer, args=(url, str(tmp_path / "src"), w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    other = SupRsyncFilesManager(url)  # the second agent has its own connections
    engines = {
        ARCHIVE: make_engine(ledger, LocalRsyncBackend(str(tmp_path / "dst1")), tmp_path, files_per_batch=100),
        "smurf": SupRsyncEngine(
            lambda: other,
            LocalRsyncBackend(str(tmp_path / "dst2")),
            EngineSettings("smurf", str(tmp_path / "root2"), "sync-2", copy=CopySettings("smurf", files_per_batch=100)),
        ),
    }
    errors = []

    def loop(engine, manager, archive):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            report = engine.iterate()
            if not report.ok:
                errors.append(report.errors)
            manager.status_summary()
            if not any(p.is_alive() for p in procs) and not manager.has_pending(archive):
                return

    threads = [
        threading.Thread(target=loop, args=(engines[ARCHIVE], ledger, ARCHIVE)),
        threading.Thread(target=loop, args=(engines["smurf"], other, "smurf")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert not errors
    assert status_of(ledger)["copied"] == 300 and status_of(ledger, "smurf")["copied"] == 150
    assert all(e.counters["errors_db"] == 0 for e in engines.values())
    assert len(list((tmp_path / "dst2").rglob("f*"))) == 150
    other.dispose()


def test_import_of_a_socs_database(tmp_path, ledger):
    socs = tmp_path / "socs.db"
    conn = sqlite3.connect(socs)
    conn.executescript(
        """
        CREATE TABLE supersync_v0 (id INTEGER PRIMARY KEY, local_path VARCHAR NOT NULL,
            local_md5sum VARCHAR NOT NULL, archive_name VARCHAR NOT NULL, remote_path VARCHAR NOT NULL,
            timestamp FLOAT NOT NULL, remote_md5sum VARCHAR, copied FLOAT, removed FLOAT,
            failed_copy_attempts INTEGER, deletable BOOLEAN, ignore BOOLEAN);
        CREATE TABLE timecode_dirs_v0 (id INTEGER PRIMARY KEY, timecode INTEGER, archive_name VARCHAR,
            completed BOOLEAN, synced BOOLEAN, finalized BOOLEAN, finalize_file_id INTEGER);
        """
    )
    live = write(tmp_path / "data" / "live.g3", "live")
    rows = [
        (1, "/gone/a", "m1", "smurf", "16000/a", 1.0, "m1", 2.0, 3.0, 0, 1, 0),  # removed
        (2, str(live), "m2", "smurf", "16000/b", 1.0, "m2", 2.0, None, 0, 1, 0),  # copied
        (3, str(live), "m3", "smurf", "16000/c", 1.0, None, None, None, 1, 1, 0),  # pending
        (4, str(live), "m4", "smurf", "16000/d", 1.0, "xx", None, None, 5, 1, 0),  # failed
        (5, str(live), "m5", "smurf", "16000/e", 1.0, None, None, None, 0, 1, 1),  # ignored
        (6, str(live), "m6", "smurf", "../escape", 1.0, None, None, None, 0, 1, 0),  # refused
        (7, str(live), "m7", "smurf", "16000/c", 5.0, None, None, None, 0, 1, 0),  # duplicate of 3: newest wins
        (8, "/f/fin.yaml", "m8", "smurf", "16001/suprsync/x/fin.yaml", 4.0, "m8", 4.5, None, 0, 1, 0),
    ]
    conn.executemany("INSERT INTO supersync_v0 VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.execute("INSERT INTO timecode_dirs_v0 VALUES (1, 16000, 'smurf', 1, 1, 1, 8)")
    conn.commit()
    conn.close()

    report = import_socs_database(socs, ledger)
    assert report.files == 8 and report.imported == 6 and report.duplicates == 1 and len(report.refused) == 1
    assert report.by_status == {"removed": 1, "copied": 2, "pending": 1, "failed": 1, "ignored": 1}
    summary = ledger.status_summary("smurf")["smurf"]
    assert summary["total"] == 6 and summary["timecode_dirs_finalized"] == 1
    pending = ledger.get_copyable_files("smurf")
    assert [r.remote_path for r in pending] == ["16000/c"] and pending[0].registered_at == 5.0
    assert pending[0].local_md5sum is None  # hashed again when copied
    assert import_socs_database(socs, ledger).already_known == 6  # a second run adds nothing


def test_non_utf8_names_are_refused_clearly_and_the_ledger_stays_usable(ledger, src):
    """A name with bytes that are not UTF-8 (``os.fsdecode`` gives surrogates) used to
    crash registration with a bare UnicodeEncodeError from the database driver."""
    raw = os.fsencode(str(src)) + b"/caf\xe9.g3"
    with open(raw, "wb") as f:
        f.write(b"latin-1 name")
    local = os.fsdecode(raw)
    with pytest.raises(SupRsyncError, match="not valid UTF-8"):
        ledger.add_file(local, "16000/ok.g3", ARCHIVE)
    with pytest.raises(SupRsyncError, match="not valid UTF-8"):
        ledger.add_file(raw, "16000/ok.g3", ARCHIVE)
    good = write(src / "good.g3", "x")
    with pytest.raises(RemotePathError, match="not valid UTF-8"):
        ledger.add_file(str(good), "16000/caf\udce9.g3", ARCHIVE)
    # with skip_bad, the good entries of the same call are registered and the bad one listed
    report = ledger.add_files([(local, "16000/bad.g3"), (str(good), "16000/good.g3")], ARCHIVE, skip_bad=True)
    assert report.added == 1 and len(report.refused) == 1 and "not valid UTF-8" in report.refused[0]
    assert status_of(ledger)["pending"] == 1


def test_imported_socs_rows_are_rehashed_before_delete_or_copy(tmp_path, ledger, src, dst):
    """socs never refreshed md5s (socs#475): a file changed after socs hashed it must not
    be deleted as "copied" on the strength of socs's old md5, nor fail forever when retried.
    The import used to record the file's current size/mtime as if they matched socs's md5."""
    socs = tmp_path / "socs.db"
    conn = sqlite3.connect(socs)
    conn.execute(
        "CREATE TABLE supersync_v0 (id INTEGER PRIMARY KEY, local_path VARCHAR NOT NULL, local_md5sum VARCHAR "
        "NOT NULL, archive_name VARCHAR NOT NULL, remote_path VARCHAR NOT NULL, timestamp FLOAT NOT NULL, "
        "remote_md5sum VARCHAR, copied FLOAT, removed FLOAT, failed_copy_attempts INTEGER, deletable BOOLEAN, "
        "ignore BOOLEAN)"
    )
    old_md5 = hashlib.md5(b"old content").hexdigest()
    grown = write(src / "grown.g3", "old content, then more written after socs copied it")
    retried = write(src / "retried.g3", "content changed after socs registered it")
    conn.executemany(
        "INSERT INTO supersync_v0 VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [
            (1, str(grown), old_md5, ARCHIVE, "16000/grown.g3", 1.0, old_md5, 2.0, None, 0, 1, 0),  # copied
            (2, str(retried), old_md5, ARCHIVE, "16000/retried.g3", 1.0, "ffff", None, None, 5, 1, 0),  # failed
        ],
    )
    conn.commit()
    conn.close()
    assert import_socs_database(socs, ledger).by_status == {"copied": 1, "failed": 1}

    delete_files(ledger, ARCHIVE, 0)
    assert grown.exists(), "a file whose content was never sent was deleted"
    assert ledger.retry_files(ARCHIVE) == 1
    engine = make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path, max_copy_attempts=1)
    assert engine.iterate().ok
    assert status_of(ledger)["copied"] == 2 and status_of(ledger)["failed"] == 0
    assert md5(dst / "16000/grown.g3") == md5(grown) and md5(dst / "16000/retried.g3") == md5(retried)


def test_rows_without_inode_and_ctime_are_hashed_again_before_delete(tmp_path, ledger, src, dst, monkeypatch):
    """A socs-imported row has no signature and an older row no inode or ctime: neither is
    trusted at deletion. The imported file whose content is the verified one is hashed,
    keeps its copy and is deleted; the older row's file, replaced with different content
    of the same size and mtime, used to be deleted on its matching size and mtime."""
    import hpcsync.agents.suprsync.deleter as deleter
    from hpcsync.db.models import SupRsyncFile

    same = write(src / "same.g3", "content socs verified")
    socs = tmp_path / "socs.db"
    conn = sqlite3.connect(socs)
    conn.execute(
        "CREATE TABLE supersync_v0 (id INTEGER PRIMARY KEY, local_path VARCHAR NOT NULL, local_md5sum VARCHAR "
        "NOT NULL, archive_name VARCHAR NOT NULL, remote_path VARCHAR NOT NULL, timestamp FLOAT NOT NULL, "
        "remote_md5sum VARCHAR, copied FLOAT, removed FLOAT, failed_copy_attempts INTEGER, deletable BOOLEAN, "
        "ignore BOOLEAN)"
    )
    conn.execute(
        "INSERT INTO supersync_v0 VALUES (1, ?, ?, ?, '16000/same.g3', 1.0, ?, 2.0, NULL, 0, 1, 0)",
        (str(same), md5(same), ARCHIVE, md5(same)),
    )
    conn.commit()
    conn.close()
    assert import_socs_database(socs, ledger).by_status == {"copied": 1}
    (imported,) = ledger.get_known_files(ARCHIVE)
    assert imported.local_ino is None and imported.local_ctime_ns is None

    older = write(src / "older.g3", "content A, verified")
    ledger.add_file(str(older), "16000/older.g3", ARCHIVE)
    make_engine(ledger, LocalRsyncBackend(str(dst)), tmp_path).iterate()
    with ledger.session() as s:  # as written before inode and ctime were recorded
        row = s.scalar(select(SupRsyncFile).where(SupRsyncFile.remote_path == "16000/older.g3"))
        assert row.status == "copied" and row.local_ino is not None
        row.local_ino = row.local_ctime_ns = None
    st = older.stat()
    older.write_text("content B, not sent")
    os.utime(older, ns=(st.st_atime_ns, st.st_mtime_ns))

    hashed = []
    real_md5 = deleter.md5_file
    monkeypatch.setattr(deleter, "md5_file", lambda path, *a: hashed.append(path) or real_md5(path, *a))
    result = delete_files(ledger, ARCHIVE, 0)
    assert sorted(hashed) == sorted([str(same), str(older)]) and result.rehashed == 2
    assert (result.removed, result.requeued) == (1, 1)
    assert not same.exists() and older.read_text() == "content B, not sent"
    rows = {r.remote_path: r for r in ledger.get_known_files(ARCHIVE)}
    assert rows["16000/same.g3"].status == "removed"
    assert rows["16000/older.g3"].status == "pending" and rows["16000/older.g3"].local_ino == older.stat().st_ino


def test_producers_keep_importing_the_ledger_from_hpcsync_db_suprsync():
    """socs's producers import ``hpcsync.db.suprsync.SupRsyncFilesManager``: it is the
    agent's ledger class, and so are the other names that module has always offered;
    ``hpcsync.db`` itself still imports no agent code."""
    import subprocess
    import sys

    import hpcsync.agents.suprsync.files as files
    import hpcsync.agents.suprsync.ledger as ledger_module
    import hpcsync.agents.suprsync.socs_import as socs_import
    import hpcsync.db.suprsync as shim

    assert shim.SupRsyncFilesManager is ledger_module.SupRsyncFilesManager
    assert shim.ALL_STATES == ledger_module.ALL_STATES
    assert shim.import_socs_database is socs_import.import_socs_database
    for name in ("SupRsyncError", "RemotePathError", "normalize_remote_path", "check_timecode", "split_path"):
        assert getattr(shim, name) is getattr(files, name)
    assert set(shim.__all__) <= set(dir(shim))
    with pytest.raises(AttributeError):
        _ = shim.no_such_name
    probe = (
        "import sys, hpcsync.db, hpcsync.db.models, hpcsync.db.dialect, hpcsync.db.runs, hpcsync.db.suprsync;"
        "print(sorted(m for m in sys.modules if m.startswith('hpcsync.agents')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
