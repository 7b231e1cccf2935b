"""SQL helpers that differ by backend, for every agent's ledger queries.

hpcsync runs the same models on SQLite, PostgreSQL and MariaDB/MySQL. Two things an agent's
ledger often needs are spelled differently (or are limited differently) on each:

- :func:`insert_ignore`: insert rows, silently skipping those that hit a unique
  constraint (a concurrent writer inserted them first);
- :func:`chunked`: split a long list of keys so that each ``IN (...)`` list stays under
  every backend's bound-parameter limit (:data:`IN_CHUNK` values per statement).

Nothing here knows about any agent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

#: Values per ``IN (...)`` list: well under SQLite's 32,766 (999 before 3.32) bound
#: parameters, PostgreSQL's 65,535 and MariaDB's 65,535, with room for the other terms.
IN_CHUNK = 500

T = TypeVar("T")


def chunked(values: Iterable[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``values`` in consecutive slices of at most ``size`` (the last may be shorter).

    For queries such as ``col.in_(part)``: one statement per slice. A sequence is sliced
    as it is; any other iterable is read into a list first.
    """
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    seq = values if isinstance(values, Sequence) else list(values)
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def insert_ignore(s: Session | Connection, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT ``rows`` into ``model`` (a mapped class or a Table), skipping every row that
    would violate a unique constraint or primary key, in one executemany.

    SQLite and PostgreSQL: ``ON CONFLICT DO NOTHING``; MariaDB/MySQL: ``INSERT IGNORE``.
    A Core insert is used (no ORM bookkeeping per row). Nothing is done for no rows.
    """
    if not rows:
        return
    table: Table = getattr(model, "__table__", model)
    name = s.get_bind().dialect.name if isinstance(s, Session) else s.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).on_conflict_do_nothing()
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table).on_conflict_do_nothing()
    elif name in ("mysql", "mariadb"):
        stmt = insert(table).prefix_with("IGNORE")
    else:  # pragma: no cover - hpcsync supports the three backends above
        stmt = insert(table)
    s.execute(stmt, list(rows))


__all__ = ["IN_CHUNK", "chunked", "insert_ignore"]
