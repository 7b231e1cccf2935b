"""The shared database: migrations, models and concurrency on SQLite, PostgreSQL, MariaDB."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import bindparam, func, select, text, update

from hpcsync.db import DatabaseError, open_database
from hpcsync.db.dialect import IN_CHUNK, chunked, execute_many, insert_ignore
from hpcsync.db.engine import _alembic_config
from hpcsync.db.models import AgentRun, Base, SupRsyncFile, SyncCursor, path_hash
from hpcsync.db.runs import get_cursor, recent_runs, record_run, set_cursor

#: The tables revision 0001 makes today (each agent built since adds its own in its revision).
INITIAL_TABLES = {"agent_runs", "sync_cursors", "suprsync_files", "suprsync_timecode_dirs", "slurmsync_job_pushes"}
#: MpistatReporter's tables (revision 0004).
MPISTAT_TABLES = {"mpistat_pi", "mpistat_unix_group", "mpistat_volume", "mpistat_lustre_usage",
                  "mpistat_directory_set", "mpistat_directory", "mpistat_filetype", "mpistat_file_size"}  # fmt: skip
EXPECTED_TABLES = {
    "agent_runs",
    "sync_cursors",
    "suprsync_files",
    "suprsync_timecode_dirs",
    "slurmsync_job_pushes",
    "cloudsync_hashes",
    "cloudsync_targets",
    *MPISTAT_TABLES,
    "mxsync_epn_transfers",
    "epnalert_alerts",
}
#: Tables the first 0001 created for agents not built yet; 0002 drops them.
UNBUILT_AGENT_TABLES = {
    "mxsync_epn_transfers",
    "epnalert_alerts",
    "mpistat_reports",
    "mpistat_group_usage",
    "mpistat_directory_usage",
    "cloudsync_targets",
    "cloudsync_objects",
}


def test_fresh_database_is_migrated_to_head(db_url):
    db = open_database(db_url)
    try:
        assert set(db.tables()) == EXPECTED_TABLES | {"alembic_version"}
        assert db.current_revision() == db.head_revision()
    finally:
        db.dispose()


def test_models_and_migrations_agree(db_url):
    """Every model change must come with a migration: autogenerate finds nothing to do."""
    db = open_database(db_url)
    try:
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    finally:
        db.dispose()


# The unbuilt agents' tables as the first revision 0001 created them (indexes, foreign keys),
# in portable DDL, plus one row each.
_OLD_0001_DDL = [
    "CREATE TABLE cloudsync_targets (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(64) NOT NULL UNIQUE, "
    "local_dir TEXT NOT NULL, bucket VARCHAR(255) NOT NULL, prefix TEXT NOT NULL, encrypt_patterns TEXT, "
    "exclude_patterns TEXT, created_at DOUBLE PRECISION NOT NULL, last_push_at DOUBLE PRECISION, "
    "last_pull_at DOUBLE PRECISION)",
    "CREATE TABLE epnalert_alerts (id INTEGER NOT NULL PRIMARY KEY, site VARCHAR(64) NOT NULL, "
    "epn VARCHAR(32) NOT NULL, first_seen_at DOUBLE PRECISION NOT NULL, last_alerted_at DOUBLE PRECISION, "
    "alert_count INTEGER NOT NULL, recipients TEXT, resolved_at DOUBLE PRECISION, "
    "CONSTRAINT uq_epnalert_alerts_site_epn UNIQUE (site, epn))",
    "CREATE INDEX ix_epnalert_alerts_site_resolved ON epnalert_alerts (site, resolved_at)",
    "CREATE TABLE mpistat_reports (id INTEGER NOT NULL PRIMARY KEY, kind VARCHAR(16) NOT NULL, "
    "report_date VARCHAR(10) NOT NULL, source_digest VARCHAR(64) NOT NULL, source_files TEXT NOT NULL, "
    "status VARCHAR(16) NOT NULL, started_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION, "
    "row_count INTEGER, output_path TEXT, error TEXT, "
    "CONSTRAINT uq_mpistat_reports_kind_date_digest UNIQUE (kind, report_date, source_digest))",
    "CREATE TABLE mxsync_epn_transfers (id INTEGER NOT NULL PRIMARY KEY, site VARCHAR(64) NOT NULL, "
    "epn VARCHAR(32) NOT NULL, project VARCHAR(64), state VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL, "
    "started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION, returncode INTEGER, files_transferred INTEGER, "
    "bytes_transferred BIGINT, verified BOOLEAN NOT NULL, error TEXT, "
    "CONSTRAINT uq_mxsync_epn_transfers_site_epn UNIQUE (site, epn))",
    "CREATE INDEX ix_mxsync_epn_transfers_site_state ON mxsync_epn_transfers (site, state)",
    "CREATE TABLE cloudsync_objects (id INTEGER NOT NULL PRIMARY KEY, target_id INTEGER NOT NULL, "
    "relpath TEXT NOT NULL, relpath_hash VARCHAR(40) NOT NULL, size BIGINT NOT NULL, "
    "mtime DOUBLE PRECISION NOT NULL, sha256 VARCHAR(64) NOT NULL, etag VARCHAR(80), mode INTEGER, "
    "owner VARCHAR(64), {group} VARCHAR(64), encrypted BOOLEAN NOT NULL, pushed_at DOUBLE PRECISION NOT NULL, "
    "CONSTRAINT fk_cloudsync_objects_target_id_cloudsync_targets FOREIGN KEY (target_id) "
    "REFERENCES cloudsync_targets (id) ON DELETE CASCADE, "
    "CONSTRAINT uq_cloudsync_objects_target_path UNIQUE (target_id, relpath_hash))",
    "CREATE TABLE mpistat_directory_usage (id INTEGER NOT NULL PRIMARY KEY, report_id INTEGER NOT NULL, "
    "volume VARCHAR(64) NOT NULL, project VARCHAR(255), directory_path TEXT NOT NULL, num_files BIGINT NOT NULL, "
    "size_bytes BIGINT NOT NULL, last_modified_days DOUBLE PRECISION, pi VARCHAR(255), group_name VARCHAR(255), "
    "category_bytes TEXT, CONSTRAINT fk_mpistat_directory_usage_report_id_mpistat_reports FOREIGN KEY (report_id) "
    "REFERENCES mpistat_reports (id) ON DELETE CASCADE)",
    "CREATE INDEX ix_mpistat_directory_usage_report_volume ON mpistat_directory_usage (report_id, volume)",
    "CREATE TABLE mpistat_group_usage (id INTEGER NOT NULL PRIMARY KEY, report_id INTEGER NOT NULL, "
    "volume VARCHAR(64) NOT NULL, gid BIGINT NOT NULL, group_name VARCHAR(255), pi VARCHAR(255), "
    "used_bytes BIGINT NOT NULL, quota_bytes BIGINT, last_modified_days DOUBLE PRECISION, archived_dirs TEXT, "
    "is_humgen BOOLEAN NOT NULL, CONSTRAINT fk_mpistat_group_usage_report_id_mpistat_reports "
    "FOREIGN KEY (report_id) REFERENCES mpistat_reports (id) ON DELETE CASCADE)",
    "CREATE INDEX ix_mpistat_group_usage_report_volume_gid ON mpistat_group_usage (report_id, volume, gid)",
    "INSERT INTO cloudsync_targets (id, name, local_dir, bucket, prefix, created_at) "
    "VALUES (1, 't', '/d', 'b', 'p', 1.0)",
    "INSERT INTO cloudsync_objects (id, target_id, relpath, relpath_hash, size, mtime, sha256, encrypted, pushed_at) "
    "VALUES (1, 1, 'a', 'h', 1, 1.0, 's', FALSE, 1.0)",
    "INSERT INTO mpistat_reports (id, kind, report_date, source_digest, source_files, status, started_at) "
    "VALUES (1, 'group', '2026-01-01', 'd', 'f', 'done', 1.0)",
    "INSERT INTO mpistat_group_usage (id, report_id, volume, gid, used_bytes, is_humgen) "
    "VALUES (1, 1, 'v', 1, 1, FALSE)",
    "INSERT INTO mpistat_directory_usage (id, report_id, volume, directory_path, num_files, size_bytes) "
    "VALUES (1, 1, 'v', '/p', 1, 1)",
    "INSERT INTO mxsync_epn_transfers (id, site, epn, state, attempts, verified) VALUES (1, 's', 'e', 'done', 0, TRUE)",
    "INSERT INTO epnalert_alerts (id, site, epn, first_seen_at, alert_count) VALUES (1, 's', 'e', 1.0, 1)",
]


def test_a_database_created_by_the_first_0001_upgrades_to_head(db_url):
    """A database made by the first revision 0001 still has the unbuilt agents' tables
    (with foreign keys, indexes and rows): 0002 drops them, and the schema is then exactly
    the models'. Upgrading a second time, and a database made by the current 0001, are no-ops."""
    db = open_database(db_url, upgrade=False)
    try:
        db.upgrade("0001")
        with db.engine.begin() as conn:
            group = conn.dialect.identifier_preparer.quote("group")  # a reserved word
            for statement in _OLD_0001_DDL:
                conn.execute(text(statement.replace("{group}", group)))
        assert set(db.tables()) >= INITIAL_TABLES | UNBUILT_AGENT_TABLES
        assert db.current_revision() == "0001"
    finally:
        db.dispose()
    db = open_database(db_url)  # upgrades to head
    try:
        assert db.current_revision() == db.head_revision() != "0001"
        assert set(db.tables()) == EXPECTED_TABLES | {"alembic_version"}
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
        command.downgrade(_alembic_config(db), "0001")  # harmless: recreates nothing
        assert set(db.tables()) == INITIAL_TABLES | {"alembic_version"} and db.current_revision() == "0001"
        db.upgrade()
        assert db.current_revision() == db.head_revision()
    finally:
        db.dispose()


def test_dialect_helpers_on_every_backend(db_url):
    """insert_ignore skips rows a concurrent writer inserted first; chunked keeps IN lists
    under every backend's parameter limit, whatever the number of keys."""
    db = open_database(db_url)
    rows = [{"scope": "s", "name": f"n{i}", "value": "first", "updated_at": 1.0} for i in range(1200)]
    try:
        with db.session() as s:
            insert_ignore(s, SyncCursor, rows[:700])
        with db.session() as s:
            insert_ignore(s, SyncCursor, [{**r, "value": "second"} for r in rows])  # 700 duplicates
            insert_ignore(s, SyncCursor, [])
        names = [f"n{i}" for i in range(0, 1200, 1)] + [f"missing{i}" for i in range(40_000)]
        found: dict[str, str] = {}
        with db.session() as s:
            parts = list(chunked(names))
            assert len(parts) == -(-len(names) // IN_CHUNK) and max(len(p) for p in parts) == IN_CHUNK
            for part in parts:
                q = select(SyncCursor.name, SyncCursor.value).where(SyncCursor.name.in_(part))
                found.update(s.execute(q).all())
        assert len(found) == 1200
        assert sum(v == "first" for v in found.values()) == 700 and found["n1199"] == "second"

        # execute_many: per-row values, a value compiled into the statement (only rows
        # still "second" are touched), a None, and a required value missing is refused
        t = SyncCursor.__table__
        stmt = (
            update(t)
            .where(t.c.name == bindparam("b_name"), t.c.value == "second")
            .values(value=bindparam("b_value"), updated_at=bindparam("b_at"))
        )
        with db.session() as s:
            execute_many(s, stmt, [{"b_name": f"n{i}", "b_value": f"v{i}", "b_at": i + 0.5} for i in range(690, 710)])
            execute_many(s, stmt, [])
        with db.session() as s:
            got = dict(
                s.execute(select(t.c.name, t.c.value).where(t.c.name.in_([f"n{i}" for i in range(690, 710)]))).all()
            )
            at = s.scalar(select(t.c.updated_at).where(t.c.name == "n705"))
        assert got == {**{f"n{i}": "first" for i in range(690, 700)}, **{f"n{i}": f"v{i}" for i in range(700, 710)}}
        assert at == 705.5
        with db.session() as s, pytest.raises(ValueError, match="b_at"):
            execute_many(s, stmt, [{"b_name": "n1", "b_value": "x"}])
    finally:
        db.dispose()
    assert [list(p) for p in chunked(iter(range(5)), 2)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        list(chunked([1], 0))


def test_long_paths_are_unique_per_archive(db_url):
    """4 KiB paths fit and stay unique on every backend (MariaDB cannot index long text)."""
    db = open_database(db_url)
    long_path = "d/" * 2000 + "file.dat"
    try:
        with db.session() as s:
            for archive in ("a", "b"):
                s.add(
                    SupRsyncFile(
                        archive_name=archive,
                        local_path="/data/" + long_path,
                        remote_path=long_path,
                        remote_path_hash=path_hash(long_path),
                        registered_at=1.0,
                    )
                )
        with pytest.raises(Exception, match="(?i)unique|duplicate"), db.session() as s:
            s.add(
                SupRsyncFile(
                    archive_name="a",
                    local_path="/x",
                    remote_path=long_path,
                    remote_path_hash=path_hash(long_path),
                    registered_at=2.0,
                )
            )
        with db.session() as s:
            row = s.scalar(select(SupRsyncFile).where(SupRsyncFile.archive_name == "b"))
            assert row.remote_path == long_path and row.status == "pending" and row.failed_copy_attempts == 0
    finally:
        db.dispose()


def test_sqlite_connection_settings(tmp_path):
    db = open_database(str(tmp_path / "plain-path.db"))  # socs-style --db-path
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000
    db.dispose()


def test_an_open_sqlite_read_never_blocks_a_writer(tmp_path):
    """A status report or listing (a read transaction) used to begin IMMEDIATE and hold the
    write lock: a producer registering a file waited behind it. Readers begin deferred."""
    import threading

    db = open_database(f"sqlite:///{tmp_path / 'rw.db'}")
    writer_db = open_database(f"sqlite:///{tmp_path / 'rw.db'}")
    in_read, written = threading.Event(), threading.Event()
    order: list[str] = []

    def write() -> None:
        in_read.wait(10)
        with writer_db.session() as s:
            s.add(AgentRun(agent_class="T", instance_id="producer", operation="add", started_at=time.time()))
        order.append("writer committed")
        written.set()

    thread = threading.Thread(target=write)
    thread.start()
    with db.reading() as s:
        s.scalar(select(func.count()).select_from(AgentRun))
        in_read.set()
        written.wait(30)  # with BEGIN IMMEDIATE the writer could not commit until this read ends
        order.append("reader still open")
    thread.join(30)
    assert order == ["writer committed", "reader still open"]
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(AgentRun)) == 1
    db.dispose()
    writer_db.dispose()


_OPEN_AND_WRITE = textwrap.dedent(
    """
    import sys, time
    from hpcsync.db import open_database
    from hpcsync.db.models import AgentRun
    db = open_database(sys.argv[1])
    for i in range(int(sys.argv[2])):
        with db.session() as s:
            n = s.query(AgentRun).count()  # read, then write in the same transaction
            s.add(AgentRun(agent_class="T", instance_id=sys.argv[3], operation="w", started_at=time.time()))
    print("done")
    """
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql", "mariadb"])
def test_concurrent_processes_migrate_and_write_without_lock_errors(backend, tmp_path, request):
    """Four processes open one fresh database at once and write; none fails, nothing is lost.

    ``mariadb+pymysql://`` URLs report the dialect ``mariadb``, not ``mysql``: both must
    take the migration lock."""
    name = f"hpcsync_conc_{backend[:2]}_{tmp_path.name[-8:]}"
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    elif backend == "postgresql":
        url = request.getfixturevalue("postgres").create_database(name)
    else:
        url = request.getfixturevalue("mariadb").create_database(name)
        if backend == "mariadb":
            url = url.replace("mysql+pymysql://", "mariadb+pymysql://", 1)
    per_process = 60
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AND_WRITE, url, str(per_process), f"writer-{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outcomes = [p.communicate(timeout=180) for p in procs]
    for p, (_out, err) in zip(procs, outcomes, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "locked" not in err
    db = open_database(url)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(AgentRun)) == 4 * per_process
        assert s.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    db.dispose()


def test_run_ledger_brackets_success_and_failure(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'runs.db'}")
    with record_run(db, agent_class="SlurmSync", instance_id="brc", operation="full_sync", dry_run=True) as run:
        run.summary["jobs"] = 12
    with (
        pytest.raises(RuntimeError, match="API down"),
        record_run(db, agent_class="SlurmSync", instance_id="brc", operation="full_sync"),
    ):
        raise RuntimeError("API down")
    failed, ok = recent_runs(db, "brc", "full_sync")
    assert ok.status == "succeeded" and ok.dry_run and json.loads(ok.summary) == {"jobs": 12}
    assert ok.finished_at >= ok.started_at
    assert failed.status == "failed" and failed.message == "API down"


def test_cursors_resume_and_clear(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'cursor.db'}")
    assert get_cursor(db, "slurmsync:mybrc", "full_sync") is None
    set_cursor(db, "slurmsync:mybrc", "full_sync", {"project": "fc_x", "page": 7})
    set_cursor(db, "slurmsync:mybrc", "full_sync", {"project": "fc_y", "page": 2})
    assert get_cursor(db, "slurmsync:mybrc", "full_sync") == {"project": "fc_y", "page": 2}
    set_cursor(db, "slurmsync:mybrc", "full_sync", None)
    assert get_cursor(db, "slurmsync:mybrc", "full_sync") is None


def test_malformed_url_is_a_clear_error():
    with pytest.raises(DatabaseError, match="malformed") as info:
        open_database("postgresql+psycopg://user:hunter2@host:notaport/db")
    assert "hunter2" not in str(info.value)


def test_unreachable_server_error_hides_the_password():
    with pytest.raises(DatabaseError) as info:
        open_database("postgresql+psycopg://sync:s3cret-pw@127.0.0.1:1/nodb?connect_timeout=2")
    assert "127.0.0.1" in str(info.value)
    assert "s3cret-pw" not in str(info.value)


def test_cli_upgrades_and_reports_revision(tmp_path):
    from alembic.script import ScriptDirectory

    from hpcsync.db.engine import MIGRATIONS_DIR

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    hpcsync = [sys.executable, "-m", "hpcsync.agents.cli"]
    current = subprocess.run([*hpcsync, "db", "--db", url, "current"], capture_output=True, text=True, timeout=60)
    assert current.returncode == 1 and "revision none" in current.stdout
    up = subprocess.run([*hpcsync, "db", "--db", url, "upgrade"], capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    assert f"empty -> {head}" in up.stdout
    current = subprocess.run([*hpcsync, "db", "--db", url, "current"], capture_output=True, text=True, timeout=60)
    assert current.returncode == 0 and f"revision {head} (newest {head})" in current.stdout
