"""SQL helpers that differ by backend, for every agent's ledger queries.

hpcsync runs the same models on SQLite, PostgreSQL and MariaDB/MySQL. Two things an agent's
ledger often needs are spelled differently (or are limited differently) on each:

- :func:`insert_ignore`: insert rows, silently skipping those that hit a unique
  constraint (a concurrent writer inserted them first);
- :func:`chunked`: split a long list of keys so that each ``IN (...)`` list stays under
  every backend's bound-parameter limit (:data:`IN_CHUNK` values per statement);
- :func:`execute_many`: one statement run for many rows of parameters at driver speed
  (the statement compiled once, not each row's parameters built by the compiler).

Nothing here knows about any agent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

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


def execute_many(s: Session | Connection, stmt: Executable, rows: Sequence[dict[str, Any]]) -> None:
    """Run ``stmt`` once for each dict of bound values in ``rows`` (all with the same keys), in one DBAPI
    ``executemany`` on the session's connection (inside its transaction).

    SQLAlchemy's own executemany builds every row's parameters through the compiler, about
    20 us a row, which dominated a 5,000-row batch update. Here the statement is compiled
    once for the connection's dialect and each row becomes the driver's tuple (positional
    paramstyles) or dict (named ones), through each bind's type processor. A bind a row does
    not give keeps the value compiled into the statement (``status == "pending"``). Not for
    statements with expanding ``IN`` lists.
    """
    if not rows:
        return
    conn = s.connection() if isinstance(s, Session) else s
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect)
    if any(bind.expanding for bind in compiled.binds.values()):
        raise ValueError("execute_many cannot run a statement with an expanding IN list")
    fixed = compiled.params
    processors = {}
    for name, bind in compiled.binds.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    names = list(compiled.positiontup) if compiled.positional else list(fixed)
    missing = {n for n in names if compiled.binds[n].required} - set(rows[0])
    if missing:
        raise ValueError(f"execute_many: no value for the bound parameter(s) {sorted(missing)}")
    plan = [(name, name in rows[0], fixed.get(name), processors.get(name)) for name in names]
    params: list = []
    for row in rows:
        values = []
        for name, from_row, default, processor in plan:
            value = row[name] if from_row else default
            values.append(value if processor is None else processor(value))
        params.append(tuple(values) if compiled.positional else dict(zip(names, values, strict=True)))
    conn.exec_driver_sql(compiled.string, params)


__all__ = ["IN_CHUNK", "chunked", "execute_many", "insert_ignore"]
