"""Declarative base and column helpers shared by every model module."""

from __future__ import annotations

import hashlib

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names, so Alembic migrations can name what they alter.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def path_hash(path: str) -> str:
    """Fixed-width key for a long path: MariaDB cannot index a 4 KiB text column."""
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()
