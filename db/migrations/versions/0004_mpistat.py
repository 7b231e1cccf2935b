"""the tables of MpistatReporter

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:00:00.000000

lurge's tables (pi, unix_group, volume, lustre_usage, directory, filetype, file_size), each
prefixed ``mpistat_``, and ``mpistat_directory_set`` (an inspection's directories, made
current all at once). ``mpistat_lustre_usage`` is also the usage history. The file types
lurge used are inserted here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FILETYPES = ("BAM", "CRAM", "VCF", "PEDBED", "SAM", "FASTQ")


def upgrade() -> None:
    op.create_table(
        "mpistat_pi",
        sa.Column("pi_id", sa.Integer(), nullable=False),
        sa.Column("pi_name", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("pi_id", name=op.f("pk_mpistat_pi")),
        sa.UniqueConstraint("pi_name", name=op.f("uq_mpistat_pi_pi_name")),
    )
    op.create_table(
        "mpistat_unix_group",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("group_name", sa.String(length=255), nullable=False),
        sa.Column("gid", sa.BigInteger(), nullable=True),
        sa.Column("is_humgen", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("group_id", name=op.f("pk_mpistat_unix_group")),
        sa.UniqueConstraint("group_name", name=op.f("uq_mpistat_unix_group_group_name")),
    )
    op.create_table(
        "mpistat_volume",
        sa.Column("volume_id", sa.Integer(), nullable=False),
        sa.Column("scratch_disk", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("volume_id", name=op.f("pk_mpistat_volume")),
        sa.UniqueConstraint("scratch_disk", name=op.f("uq_mpistat_volume_scratch_disk")),
    )
    filetype = op.create_table(
        "mpistat_filetype",
        sa.Column("filetype_id", sa.Integer(), nullable=False),
        sa.Column("filetype_name", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("filetype_id", name=op.f("pk_mpistat_filetype")),
        sa.UniqueConstraint("filetype_name", name=op.f("uq_mpistat_filetype_filetype_name")),
    )
    op.bulk_insert(filetype, [{"filetype_id": i, "filetype_name": name} for i, name in enumerate(FILETYPES, 1)])
    op.create_table(
        "mpistat_lustre_usage",
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("record_date", sa.Date(), nullable=False),
        sa.Column("volume_id", sa.Integer(), nullable=False),
        sa.Column("unix_id", sa.Integer(), nullable=False),
        sa.Column("pi_id", sa.Integer(), nullable=True),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("quota", sa.BigInteger(), nullable=True),
        sa.Column("last_modified", sa.Double(), nullable=True),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("archived_path", sa.Text(), nullable=True),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("warning", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["pi_id"], ["mpistat_pi.pi_id"], name=op.f("fk_mpistat_lustre_usage_pi_id_mpistat_pi")),
        sa.ForeignKeyConstraint(
            ["unix_id"],
            ["mpistat_unix_group.group_id"],
            name=op.f("fk_mpistat_lustre_usage_unix_id_mpistat_unix_group"),
        ),
        sa.ForeignKeyConstraint(
            ["volume_id"], ["mpistat_volume.volume_id"], name=op.f("fk_mpistat_lustre_usage_volume_id_mpistat_volume")
        ),
        sa.PrimaryKeyConstraint("record_id", name=op.f("pk_mpistat_lustre_usage")),
        sa.UniqueConstraint("record_date", "volume_id", "unix_id", name="uq_mpistat_lustre_usage_date_volume_group"),
    )
    with op.batch_alter_table("mpistat_lustre_usage", schema=None) as batch_op:
        batch_op.create_index(
            "ix_mpistat_lustre_usage_group_volume_date", ["unix_id", "volume_id", "record_date"], unique=False
        )
    op.create_table(
        "mpistat_directory_set",
        sa.Column("set_id", sa.Integer(), nullable=False),
        sa.Column("volume_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("record_date", sa.Date(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["volume_id"], ["mpistat_volume.volume_id"], name=op.f("fk_mpistat_directory_set_volume_id_mpistat_volume")
        ),
        sa.PrimaryKeyConstraint("set_id", name=op.f("pk_mpistat_directory_set")),
    )
    with op.batch_alter_table("mpistat_directory_set", schema=None) as batch_op:
        batch_op.create_index("ix_mpistat_directory_set_volume_status", ["volume_id", "status"], unique=False)
    op.create_table(
        "mpistat_directory",
        sa.Column("directory_id", sa.Integer(), nullable=False),
        sa.Column("set_id", sa.Integer(), nullable=False),
        sa.Column("project_name", sa.Text(), nullable=False),
        sa.Column("directory_path", sa.Text(), nullable=False),
        sa.Column("num_files", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("last_modified", sa.Double(), nullable=True),
        sa.Column("pi_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("volume_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["mpistat_unix_group.group_id"],
            name=op.f("fk_mpistat_directory_group_id_mpistat_unix_group"),
        ),
        sa.ForeignKeyConstraint(["pi_id"], ["mpistat_pi.pi_id"], name=op.f("fk_mpistat_directory_pi_id_mpistat_pi")),
        sa.ForeignKeyConstraint(
            ["set_id"],
            ["mpistat_directory_set.set_id"],
            name=op.f("fk_mpistat_directory_set_id_mpistat_directory_set"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["volume_id"], ["mpistat_volume.volume_id"], name=op.f("fk_mpistat_directory_volume_id_mpistat_volume")
        ),
        sa.PrimaryKeyConstraint("directory_id", name=op.f("pk_mpistat_directory")),
    )
    with op.batch_alter_table("mpistat_directory", schema=None) as batch_op:
        batch_op.create_index("ix_mpistat_directory_set", ["set_id"], unique=False)
    op.create_table(
        "mpistat_file_size",
        sa.Column("file_size_id", sa.Integer(), nullable=False),
        sa.Column("directory_id", sa.Integer(), nullable=False),
        sa.Column("filetype_id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["directory_id"],
            ["mpistat_directory.directory_id"],
            name=op.f("fk_mpistat_file_size_directory_id_mpistat_directory"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["filetype_id"],
            ["mpistat_filetype.filetype_id"],
            name=op.f("fk_mpistat_file_size_filetype_id_mpistat_filetype"),
        ),
        sa.PrimaryKeyConstraint("file_size_id", name=op.f("pk_mpistat_file_size")),
    )
    with op.batch_alter_table("mpistat_file_size", schema=None) as batch_op:
        batch_op.create_index("ix_mpistat_file_size_directory", ["directory_id"], unique=False)


def downgrade() -> None:
    for table in ("mpistat_file_size", "mpistat_directory", "mpistat_directory_set", "mpistat_lustre_usage",
                  "mpistat_filetype", "mpistat_volume", "mpistat_unix_group", "mpistat_pi"):  # fmt: skip
        op.drop_table(table)
