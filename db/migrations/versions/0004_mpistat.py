"""the tables of MpistatReporter

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:00:00.000000

Reserved in the migration chain for MpistatReporter (lurge's pi, unix_group, volume, lustre_usage, directory, filetype, file_size tables and the usage history); it creates them when that agent lands, so the
agents being built at the same time keep one linear history. Until then it changes nothing.
"""

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
