"""Ledgers of the repatriation, alert, report and cloud-sync agents.

MxSync records each EPN transfer, EpnAlert each alert sent (so alerts are not repeated
daily), MpistatReporter each report and its rows, CloudSync its targets and a per-object
checksum cache (so a push compares checksums without re-reading unchanged files).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Double, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base


class EpnTransfer(Base):
    """MxSync: one experiment (EPN) repatriated into a project tree."""

    __tablename__ = "mxsync_epn_transfers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(64))
    epn: Mapped[str] = mapped_column(String(32))
    project: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[float | None] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double)
    returncode: Mapped[int | None] = mapped_column(Integer)
    files_transferred: Mapped[int | None] = mapped_column(Integer)
    bytes_transferred: Mapped[int | None] = mapped_column(BigInteger)
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("site", "epn", name="uq_mxsync_epn_transfers_site_epn"),
        Index("ix_mxsync_epn_transfers_site_state", "site", "state"),
    )


class EpnAlert(Base):
    """EpnAlert: an unmapped EPN the helpdesk was told about."""

    __tablename__ = "epnalert_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(64))
    epn: Mapped[str] = mapped_column(String(32))
    first_seen_at: Mapped[float] = mapped_column(Double)
    last_alerted_at: Mapped[float | None] = mapped_column(Double)
    alert_count: Mapped[int] = mapped_column(Integer, default=0)
    recipients: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (
        UniqueConstraint("site", "epn", name="uq_epnalert_alerts_site_epn"),
        Index("ix_epnalert_alerts_site_resolved", "site", "resolved_at"),
    )


class UsageReport(Base):
    """MpistatReporter: one report (group usage, inspector or split) built from dumps."""

    __tablename__ = "mpistat_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    report_date: Mapped[str] = mapped_column(String(10))
    source_digest: Mapped[str] = mapped_column(String(64))
    source_files: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[float] = mapped_column(Double)
    finished_at: Mapped[float | None] = mapped_column(Double)
    row_count: Mapped[int | None] = mapped_column(Integer)
    output_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("kind", "report_date", "source_digest", name="uq_mpistat_reports_kind_date_digest"),
    )


class GroupUsage(Base):
    """MpistatReporter: usage of one unix group on one volume in one report."""

    __tablename__ = "mpistat_group_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("mpistat_reports.id", ondelete="CASCADE"))
    volume: Mapped[str] = mapped_column(String(64))
    gid: Mapped[int] = mapped_column(BigInteger)
    group_name: Mapped[str | None] = mapped_column(String(255))
    pi: Mapped[str | None] = mapped_column(String(255))
    used_bytes: Mapped[int] = mapped_column(BigInteger)
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    last_modified_days: Mapped[float | None] = mapped_column(Double)
    archived_dirs: Mapped[str | None] = mapped_column(Text)
    is_humgen: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_mpistat_group_usage_report_volume_gid", "report_id", "volume", "gid"),)


class DirectoryUsage(Base):
    """MpistatReporter: one project directory from the project inspector."""

    __tablename__ = "mpistat_directory_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("mpistat_reports.id", ondelete="CASCADE"))
    volume: Mapped[str] = mapped_column(String(64))
    project: Mapped[str | None] = mapped_column(String(255))
    directory_path: Mapped[str] = mapped_column(Text)
    num_files: Mapped[int] = mapped_column(BigInteger, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    last_modified_days: Mapped[float | None] = mapped_column(Double)
    pi: Mapped[str | None] = mapped_column(String(255))
    group_name: Mapped[str | None] = mapped_column(String(255))
    category_bytes: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_mpistat_directory_usage_report_volume", "report_id", "volume"),)


class CloudTarget(Base):
    """CloudSync: a named sync target, local directory <-> S3 prefix."""

    __tablename__ = "cloudsync_targets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    local_dir: Mapped[str] = mapped_column(Text)
    bucket: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(Text)
    encrypt_patterns: Mapped[str | None] = mapped_column(Text)
    exclude_patterns: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Double)
    last_push_at: Mapped[float | None] = mapped_column(Double)
    last_pull_at: Mapped[float | None] = mapped_column(Double)


class CloudObject(Base):
    """CloudSync: what was last pushed for one file of a target (checksum cache)."""

    __tablename__ = "cloudsync_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("cloudsync_targets.id", ondelete="CASCADE"))
    relpath: Mapped[str] = mapped_column(Text)
    relpath_hash: Mapped[str] = mapped_column(String(40))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Double)
    sha256: Mapped[str] = mapped_column(String(64))
    etag: Mapped[str | None] = mapped_column(String(80))
    mode: Mapped[int | None] = mapped_column(Integer)
    owner: Mapped[str | None] = mapped_column(String(64))
    group: Mapped[str | None] = mapped_column(String(64))
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    pushed_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (UniqueConstraint("target_id", "relpath_hash", name="uq_cloudsync_objects_target_path"),)
