"""MpistatReporter: lurge's tables (pi, unix_group, volume, lustre_usage, directory,
filetype, file_size), prefixed ``mpistat_``, plus the directory *sets* that make an
inspection's replacement atomic.

- ``mpistat_lustre_usage``: one row per (record date, volume, group): used bytes, quota,
  last modified (days), archive, warning level. It is also the usage history: the
  ``(unix_id, volume_id, record_date)`` index serves a group's history and the
  ``(record_date, volume_id)`` one a date's report. A date is written in one transaction.
- ``mpistat_directory_set``: one inspection of one volume. Its directories are written
  while it is ``building``; one transaction then makes it ``current`` and the previous
  current set ``old`` (deleted right after). Readers only read the ``current`` set, so
  they see the old directories or the new ones, never a mix; a failed run leaves a
  ``building`` set that the next run deletes.
- ``mpistat_directory`` / ``mpistat_file_size``: an inspection's directories and their
  per-type sizes (``mpistat_filetype``: BAM, CRAM, VCF, PEDBED, SAM, FASTQ). Sizes are in
  bytes (lurge stored GiB as floats).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, Date, Double, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base

FILETYPES = ("BAM", "CRAM", "VCF", "PEDBED", "SAM", "FASTQ")
SET_STATES = ("building", "current", "old")


class MpistatPi(Base):
    __tablename__ = "mpistat_pi"

    pi_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pi_name: Mapped[str] = mapped_column(String(255), unique=True)


class MpistatUnixGroup(Base):
    __tablename__ = "mpistat_unix_group"

    group_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_name: Mapped[str] = mapped_column(String(255), unique=True)
    gid: Mapped[int | None] = mapped_column(BigInteger)
    is_humgen: Mapped[bool] = mapped_column(Boolean, default=False)


class MpistatVolume(Base):
    __tablename__ = "mpistat_volume"

    volume_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scratch_disk: Mapped[str] = mapped_column(String(255), unique=True)


class MpistatLustreUsage(Base):
    __tablename__ = "mpistat_lustre_usage"

    record_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_date: Mapped[dt.date] = mapped_column(Date)
    volume_id: Mapped[int] = mapped_column(ForeignKey("mpistat_volume.volume_id"))
    unix_id: Mapped[int] = mapped_column(ForeignKey("mpistat_unix_group.group_id"))
    pi_id: Mapped[int | None] = mapped_column(ForeignKey("mpistat_pi.pi_id"))
    used: Mapped[int] = mapped_column(BigInteger)
    quota: Mapped[int | None] = mapped_column(BigInteger)
    last_modified: Mapped[float | None] = mapped_column(Double)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    archived_path: Mapped[str | None] = mapped_column(Text)
    entries: Mapped[int] = mapped_column(BigInteger, default=0)
    warning: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("record_date", "volume_id", "unix_id", name="uq_mpistat_lustre_usage_date_volume_group"),
        Index("ix_mpistat_lustre_usage_group_volume_date", "unix_id", "volume_id", "record_date"),
    )


class MpistatDirectorySet(Base):
    __tablename__ = "mpistat_directory_set"

    set_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    volume_id: Mapped[int] = mapped_column(ForeignKey("mpistat_volume.volume_id"))
    status: Mapped[str] = mapped_column(String(16), default="building")
    record_date: Mapped[dt.date] = mapped_column(Date)
    created_at: Mapped[float] = mapped_column(Double)
    source: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_mpistat_directory_set_volume_status", "volume_id", "status"),)


class MpistatDirectory(Base):
    __tablename__ = "mpistat_directory"

    directory_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("mpistat_directory_set.set_id", ondelete="CASCADE"))
    project_name: Mapped[str] = mapped_column(Text)
    directory_path: Mapped[str] = mapped_column(Text)
    num_files: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    last_modified: Mapped[float | None] = mapped_column(Double)
    pi_id: Mapped[int | None] = mapped_column(ForeignKey("mpistat_pi.pi_id"))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("mpistat_unix_group.group_id"))
    volume_id: Mapped[int] = mapped_column(ForeignKey("mpistat_volume.volume_id"))

    __table_args__ = (Index("ix_mpistat_directory_set", "set_id"),)


class MpistatFiletype(Base):
    __tablename__ = "mpistat_filetype"

    filetype_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filetype_name: Mapped[str] = mapped_column(String(32), unique=True)


class MpistatFileSize(Base):
    __tablename__ = "mpistat_file_size"

    file_size_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    directory_id: Mapped[int] = mapped_column(ForeignKey("mpistat_directory.directory_id", ondelete="CASCADE"))
    filetype_id: Mapped[int] = mapped_column(ForeignKey("mpistat_filetype.filetype_id"))
    size: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_mpistat_file_size_directory", "directory_id"),)
