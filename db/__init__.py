"""The shared hpcsync database: engine/session factory, typed models, migrations.

>>> from hpcsync.db import open_database
>>> db = open_database("sqlite:////var/lib/hpcsync/ledger.db")   # upgrades the schema
>>> with db.session() as s: ...

Times are stored as float Unix seconds everywhere (portable across SQLite, PostgreSQL and
MariaDB, cheap to compare in indexed queries).
"""

from .engine import Database, DatabaseError, default_url, open_database

__all__ = ["Database", "DatabaseError", "default_url", "open_database"]
