"""The shared database: migrations, models and concurrency on SQLite, PostgreSQL, MariaDB."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text

from hpcsync.db import DatabaseError, open_database
from hpcsync.db.models import AgentRun, Base, SupRsyncFile, path_hash
from hpcsync.db.runs import get_cursor, recent_runs, record_run, set_cursor

EXPECTED_TABLES = {
    "agent_runs",
    "sync_cursors",
    "suprsync_files",
    "suprsync_timecode_dirs",
    "slurmsync_job_pushes",
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
        assert set(db.tables()) >= EXPECTED_TABLES
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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_processes_migrate_and_write_without_lock_errors(backend, tmp_path, request):
    """Four processes open one fresh database at once and write; none fails, nothing is lost."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        url = request.getfixturevalue("postgres").create_database(f"hpcsync_conc_{tmp_path.name[-8:]}")
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
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    hpcsync = [sys.executable, "-m", "hpcsync.agents.cli"]
    current = subprocess.run([*hpcsync, "db", "--db", url, "current"], capture_output=True, text=True, timeout=60)
    assert current.returncode == 1 and "revision none" in current.stdout
    up = subprocess.run([*hpcsync, "db", "--db", url, "upgrade"], capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    assert "empty -> 0001" in up.stdout
    current = subprocess.run([*hpcsync, "db", "--db", url, "current"], capture_output=True, text=True, timeout=60)
    assert current.returncode == 0 and "revision 0001" in current.stdout
