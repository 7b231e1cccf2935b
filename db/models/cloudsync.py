"""CloudSync: the local hash cache and each target's last push and pull.

``cloudsync_hashes`` keeps the SHA-256 of each local file under a target's directory,
keyed by the directory (``scope``: the first 40 hex digits of the SHA-1 of its absolute
path) and the file's path below it (``path_hash``: SHA-1 of the path, since MariaDB cannot
index long text). A row holds the file's *signature* when it was hashed: size, mtime (ns),
inode and change time (ns). A file whose signature still matches is not read again, so a
push that changes nothing hashes nothing; one whose content was replaced with the same size
and mtime (``cp -p``, ``touch -r``) has another ctime and is hashed again. A run loads its
scope's rows with one query (index ``(scope, path_hash)``, unique).

``cloudsync_targets`` has one row per (instance, target name): where it syncs and what
the last push and pull did, for ``status``; ``legacy_imported`` records that an alces
``<name>.dat`` was read into the directory, so a later push may replace it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Double, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class CloudSyncHash(Base):
    """The content hash of one local file, valid while its signature matches."""

    __tablename__ = "cloudsync_hashes"
    __table_args__ = (UniqueConstraint("scope", "path_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(40))
    path_hash: Mapped[str] = mapped_column(String(40))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    ino: Mapped[int] = mapped_column(BigInteger)
    ctime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    hashed_at: Mapped[float] = mapped_column(Double)


class CloudSyncTarget(Base):
    """A target's last push and pull, as this instance saw them."""

    __tablename__ = "cloudsync_targets"
    __table_args__ = (UniqueConstraint("instance_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    local_dir: Mapped[str] = mapped_column(Text)
    remote: Mapped[str] = mapped_column(Text)
    last_push_at: Mapped[float | None] = mapped_column(Double)
    last_push_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_push_files: Mapped[int | None] = mapped_column(Integer)
    last_push_bytes: Mapped[int | None] = mapped_column(BigInteger)
    last_pull_at: Mapped[float | None] = mapped_column(Double)
    last_pull_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_pull_files: Mapped[int | None] = mapped_column(Integer)
    last_message: Mapped[str | None] = mapped_column(Text)
    legacy_imported: Mapped[bool] = mapped_column(Boolean, default=False)
