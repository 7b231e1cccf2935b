"""Engine and session factory for the hpcsync database.

SQLite is the embedded default: WAL journal (readers never block the writer), a busy
timeout (a writer waits instead of failing with "database is locked"), foreign keys on,
and every transaction started with ``BEGIN IMMEDIATE`` so that two processes can never
deadlock upgrading read locks to write locks. PostgreSQL (``postgresql+psycopg://``) and
MariaDB/MySQL (``mysql+pymysql://``) URLs take the same models.

The schema is kept by Alembic migrations (``db/migrations``). :func:`open_database`
upgrades to the newest revision unless told not to; ``hpcsync db upgrade`` does it alone.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

#: Seconds a SQLite writer waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT = 60.0

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class DatabaseError(RuntimeError):
    """The database URL is malformed, the server unreachable, or the schema unusable."""


def default_url() -> str:
    """``$HPCSYNC_DB_URL``, else a SQLite file under ``$XDG_STATE_HOME/hpcsync``."""
    url = os.environ.get("HPCSYNC_DB_URL")
    if url:
        return url
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "hpcsync"
    return f"sqlite:///{state / 'hpcsync.db'}"


def url_from_path_or_url(value: str) -> str:
    """Accept a database URL or a plain SQLite file path (socs's ``--db-path``)."""
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def _mask_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # pysqlite's own transaction handling would issue a deferred BEGIN; we issue ours.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


#: Execution option of :meth:`Database.reading` sessions.
READ_ONLY = "hpcsync_read_only"


def _sqlite_begin(conn) -> None:
    # Writers take the write lock up front (no deadlocking upgrade from a read lock later);
    # readers stay deferred: under WAL they never block a writer, nor wait for one.
    if conn.get_execution_options().get(READ_ONLY):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, echo: bool = False, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    """Create an engine for ``url`` with hpcsync's connection settings."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseError(f"database URL {_mask_password(url)!r} is malformed: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    try:
        return create_engine(
            parsed,
            echo=echo,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            pool_recycle=3600,
        )
    except (ArgumentError, ImportError) as exc:
        raise DatabaseError(f"cannot use database URL {parsed.render_as_string()}: {exc}") from None


class Database:
    """An engine plus a session factory. Use :meth:`session` as a context manager."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._factory = sessionmaker(engine, expire_on_commit=False)
        self._read_factory = sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    @property
    def url(self) -> str:
        """The URL with any password hidden (safe to log)."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any exception."""
        with self._factory() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """A transaction that only reads. On SQLite it begins deferred, so status reports and
        listings never hold the write lock producers and agents wait for; a write in it fails
        on SQLite's upgrade rules rather than silently taking the lock (use :meth:`session`)."""
        with self._read_factory() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    # -- schema -----------------------------------------------------------------------

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(_alembic_config(self)).get_current_head()

    def upgrade(self, revision: str = "head") -> None:
        """Run migrations up to ``revision`` (safe when several processes start at once)."""
        from alembic import command

        command.upgrade(_alembic_config(self), revision)

    def tables(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())


def _alembic_config(db: Database):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = db.engine
    return cfg


def open_database(url: str | None = None, *, upgrade: bool = True, echo: bool = False, **pool) -> Database:
    """Open the database at ``url`` (default :func:`default_url`); upgrade its schema.

    Raises :class:`DatabaseError` with the (password-free) URL and the reason when the
    database cannot be reached or migrated.
    """
    db = Database(make_engine(url_from_path_or_url(url or default_url()), echo=echo, **pool))
    try:
        if upgrade and db.current_revision() != db.head_revision():
            db.upgrade()
    except (OperationalError, SQLAlchemyError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        db.dispose()
        raise DatabaseError(f"database {db.url}: {reason}") from None
    return db
