"""SupRsync: registered files and timecode directories.

A file row moves ``pending`` -> ``copied`` (remote md5 verified) -> ``removed`` (local copy
deleted), or to ``failed`` (attempt limit reached), ``ignored`` (by an operator) or
``missing`` (local file vanished before it was copied, attempt limit reached). The loop's
queries select by ``(archive_name, status, ...)`` and never scan finished rows:

- ``(archive_name, status, registered_at)``: the next pending batch (oldest first), the
  oldest unfinished file (``finalized_until``), the newest file per status;
- ``(archive_name, status, deletable, copied_at)``: files whose delete-after delay has
  passed, and the most recently copied file;
- ``(archive_name, timecode, status)``: whether a timecode directory is fully synced.

``local_size``/``local_mtime``/``local_ino``/``local_ctime_ns`` are the local file's
*signature* (size, mtime, inode number, change time in ns) when ``local_md5sum`` was
computed (or, before that, when it was registered). A file that no longer matches them
changed after registration and is hashed again (socs#475); right before deletion, a changed
signature means the file is hashed again and, if its md5 is not the verified remote md5,
sent again instead of deleted. Size and mtime alone are not enough: ``cp -p``, ``rsync -t``
or ``mv`` can put different content of the same size under the same mtime, but not under
the same inode and ctime (users cannot set ctime). A row with any of the four unknown
(imported from socs, written before these columns existed) counts as changed: hashed again
before it is trusted. ``local_ino`` is stored as a signed 64-bit value (inode numbers of
2**63 and above wrap to negative). ``copied_at`` is the time the remote md5 was verified:
the delete-after delay counts from it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Double, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base

FILE_STATES = ("pending", "copied", "removed", "failed", "ignored", "missing")


class SupRsyncFile(Base):
    """One registered file of one archive (socs table ``supersync_v0``)."""

    __tablename__ = "suprsync_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    archive_name: Mapped[str] = mapped_column(String(64))
    local_path: Mapped[str] = mapped_column(Text)
    remote_path: Mapped[str] = mapped_column(Text)
    remote_path_hash: Mapped[str] = mapped_column(String(40))
    timecode: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    local_md5sum: Mapped[str | None] = mapped_column(String(32))
    local_size: Mapped[int | None] = mapped_column(BigInteger)
    local_mtime: Mapped[float | None] = mapped_column(Double)
    local_ino: Mapped[int | None] = mapped_column(BigInteger)
    local_ctime_ns: Mapped[int | None] = mapped_column(BigInteger)
    registered_at: Mapped[float] = mapped_column(Double)
    remote_md5sum: Mapped[str | None] = mapped_column(String(32))
    copied_at: Mapped[float | None] = mapped_column(Double)
    removed_at: Mapped[float | None] = mapped_column(Double)
    failed_copy_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_attempt_at: Mapped[float | None] = mapped_column(Double)
    last_error: Mapped[str | None] = mapped_column(Text)
    deletable: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (
        UniqueConstraint("archive_name", "remote_path_hash", name="uq_suprsync_files_archive_remote"),
        Index("ix_suprsync_files_archive_status_registered", "archive_name", "status", "registered_at"),
        Index("ix_suprsync_files_archive_status_deletable_copied", "archive_name", "status", "deletable", "copied_at"),
        Index("ix_suprsync_files_archive_timecode_status", "archive_name", "timecode", "status"),
    )


class TimecodeDir(Base):
    """A 5-digit timecode directory of one archive: completed, synced, finalized."""

    __tablename__ = "suprsync_timecode_dirs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    archive_name: Mapped[str] = mapped_column(String(64))
    timecode: Mapped[int] = mapped_column(Integer)
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    synced: Mapped[bool] = mapped_column(Boolean, default=False)
    finalized: Mapped[bool] = mapped_column(Boolean, default=False)
    finalized_at: Mapped[float | None] = mapped_column(Double)
    finalize_file_id: Mapped[int | None] = mapped_column(ForeignKey("suprsync_files.id", ondelete="SET NULL"))

    __table_args__ = (
        UniqueConstraint("archive_name", "timecode", name="uq_suprsync_timecode_dirs_archive_tc"),
        Index("ix_suprsync_timecode_dirs_archive_finalized", "archive_name", "finalized", "timecode"),
    )
