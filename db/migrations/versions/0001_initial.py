"""initial schema: run ledger, cursors, SupRsync and SlurmSync tables

Revision ID: 0001
Revises:
Create Date: 2026-11-23 01:23:52.528420

Until revision 0002 this revision also created tables designed for agents not built yet
(MxSync, EpnAlert, MpistatReporter, CloudSync). They were taken out of it: each agent adds
its own tables in its own migration when it is built. Databases created by the earlier
version of this revision still have them; 0002 drops them there.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("agent_class", sa.String(length=64), nullable=False),
        sa.Column("instance_id", sa.String(length=128), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_runs")),
    )
    with op.batch_alter_table("agent_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_agent_runs_instance_op_started",
            ["instance_id", "operation", "started_at"],
            unique=False,
        )

    op.create_table(
        "slurmsync_job_pushes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("api_url_hash", sa.String(length=16), nullable=False),
        sa.Column("api_url", sa.Text(), nullable=False),
        sa.Column("jobslurmid", sa.String(length=150), nullable=False),
        sa.Column("account", sa.String(length=150), nullable=True),
        sa.Column("jobstatus", sa.String(length=50), nullable=True),
        sa.Column("amount", sa.Numeric(precision=11, scale=2), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("payload_hash", sa.String(length=64), nullable=True),
        sa.Column("pushed_hash", sa.String(length=64), nullable=True),
        sa.Column("attempted_at", sa.Double(), nullable=True),
        sa.Column("pushed_at", sa.Double(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slurmsync_job_pushes")),
        sa.UniqueConstraint("target", "api_url_hash", "jobslurmid", name="uq_slurmsync_job_pushes_target_api_job"),
    )
    with op.batch_alter_table("slurmsync_job_pushes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_slurmsync_job_pushes_target_api_state", ["target", "api_url_hash", "state"], unique=False
        )

    op.create_table(
        "suprsync_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("archive_name", sa.String(length=64), nullable=False),
        sa.Column("local_path", sa.Text(), nullable=False),
        sa.Column("remote_path", sa.Text(), nullable=False),
        sa.Column("remote_path_hash", sa.String(length=40), nullable=False),
        sa.Column("timecode", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("local_md5sum", sa.String(length=32), nullable=True),
        sa.Column("local_size", sa.BigInteger(), nullable=True),
        sa.Column("local_mtime", sa.Double(), nullable=True),
        sa.Column("local_ino", sa.BigInteger(), nullable=True),
        sa.Column("local_ctime_ns", sa.BigInteger(), nullable=True),
        sa.Column("registered_at", sa.Double(), nullable=False),
        sa.Column("remote_md5sum", sa.String(length=32), nullable=True),
        sa.Column("copied_at", sa.Double(), nullable=True),
        sa.Column("removed_at", sa.Double(), nullable=True),
        sa.Column("failed_copy_attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", sa.Double(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("deletable", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suprsync_files")),
        sa.UniqueConstraint("archive_name", "remote_path_hash", name="uq_suprsync_files_archive_remote"),
    )
    with op.batch_alter_table("suprsync_files", schema=None) as batch_op:
        batch_op.create_index(
            "ix_suprsync_files_archive_status_deletable_copied",
            ["archive_name", "status", "deletable", "copied_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_suprsync_files_archive_status_registered",
            ["archive_name", "status", "registered_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_suprsync_files_archive_timecode_status",
            ["archive_name", "timecode", "status"],
            unique=False,
        )

    op.create_table(
        "sync_cursors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_cursors")),
        sa.UniqueConstraint("scope", "name", name="uq_sync_cursors_scope_name"),
    )
    op.create_table(
        "suprsync_timecode_dirs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("archive_name", sa.String(length=64), nullable=False),
        sa.Column("timecode", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("synced", sa.Boolean(), nullable=False),
        sa.Column("finalized", sa.Boolean(), nullable=False),
        sa.Column("finalized_at", sa.Double(), nullable=True),
        sa.Column("finalize_file_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["finalize_file_id"],
            ["suprsync_files.id"],
            name=op.f("fk_suprsync_timecode_dirs_finalize_file_id_suprsync_files"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suprsync_timecode_dirs")),
        sa.UniqueConstraint("archive_name", "timecode", name="uq_suprsync_timecode_dirs_archive_tc"),
    )
    with op.batch_alter_table("suprsync_timecode_dirs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_suprsync_timecode_dirs_archive_finalized",
            ["archive_name", "finalized", "timecode"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("suprsync_timecode_dirs", schema=None) as batch_op:
        batch_op.drop_index("ix_suprsync_timecode_dirs_archive_finalized")

    op.drop_table("suprsync_timecode_dirs")
    op.drop_table("sync_cursors")
    with op.batch_alter_table("suprsync_files", schema=None) as batch_op:
        batch_op.drop_index("ix_suprsync_files_archive_timecode_status")
        batch_op.drop_index("ix_suprsync_files_archive_status_registered")
        batch_op.drop_index("ix_suprsync_files_archive_status_deletable_copied")

    op.drop_table("suprsync_files")
    with op.batch_alter_table("slurmsync_job_pushes", schema=None) as batch_op:
        batch_op.drop_index("ix_slurmsync_job_pushes_target_api_state")

    op.drop_table("slurmsync_job_pushes")
    with op.batch_alter_table("agent_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_runs_instance_op_started")

    op.drop_table("agent_runs")
