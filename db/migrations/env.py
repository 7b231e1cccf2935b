"""Alembic environment for hpcsync.

Runs with the engine handed over by :mod:`hpcsync.db.engine` (``config.attributes``).
Concurrent upgrades (several agents starting on one fresh database) are serialised: SQLite
by its ``BEGIN IMMEDIATE`` write lock, PostgreSQL by a transaction advisory lock, MariaDB
by ``GET_LOCK``. The second migrator then finds the schema current and does nothing.
"""

from alembic import context
from sqlalchemy import text

from hpcsync.db.models import Base

LOCK_KEY = 7_310_554_212  # arbitrary, fixed: "hpcsync migrate"


def run_migrations() -> None:
    engine = context.config.attributes["engine"]
    backend = engine.dialect.name
    with engine.connect() as connection:
        if backend in ("mysql", "mariadb"):  # mariadb+pymysql:// URLs report "mariadb"
            got = connection.execute(text("SELECT GET_LOCK('hpcsync_migrate', 120)")).scalar()
            if got != 1:
                raise RuntimeError("timed out waiting for another process migrating this database")
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=backend == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                if backend == "postgresql":
                    connection.execute(text(f"SELECT pg_advisory_xact_lock({LOCK_KEY})"))
                context.run_migrations()
        finally:
            if backend in ("mysql", "mariadb"):
                connection.execute(text("SELECT RELEASE_LOCK('hpcsync_migrate')"))
                connection.commit()


run_migrations()
