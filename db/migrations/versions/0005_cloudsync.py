"""the tables of CloudSync

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 16:00:00.000000

``cloudsync_hashes`` (the local hash cache: a file's SHA-256 while its size, mtime, inode
and ctime match) and ``cloudsync_targets`` (each target's last push and pull, per
instance). See ``db/models/cloudsync.py``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cloudsync_hashes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=40), nullable=False),
        sa.Column("path_hash", sa.String(length=40), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("ino", sa.BigInteger(), nullable=False),
        sa.Column("ctime_ns", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("hashed_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cloudsync_hashes")),
        sa.UniqueConstraint("scope", "path_hash", name=op.f("uq_cloudsync_hashes_scope")),
    )
    op.create_table(
        "cloudsync_targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("local_dir", sa.Text(), nullable=False),
        sa.Column("remote", sa.Text(), nullable=False),
        sa.Column("last_push_at", sa.Double(), nullable=True),
        sa.Column("last_push_ok", sa.Boolean(), nullable=True),
        sa.Column("last_push_files", sa.Integer(), nullable=True),
        sa.Column("last_push_bytes", sa.BigInteger(), nullable=True),
        sa.Column("last_pull_at", sa.Double(), nullable=True),
        sa.Column("last_pull_ok", sa.Boolean(), nullable=True),
        sa.Column("last_pull_files", sa.Integer(), nullable=True),
        sa.Column("last_message", sa.Text(), nullable=True),
        sa.Column("legacy_imported", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cloudsync_targets")),
        sa.UniqueConstraint("instance_id", "name", name=op.f("uq_cloudsync_targets_instance_id")),
    )


def downgrade() -> None:
    op.drop_table("cloudsync_targets")
    op.drop_table("cloudsync_hashes")
