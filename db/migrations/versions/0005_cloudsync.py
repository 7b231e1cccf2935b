"""the tables of CloudSync

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 16:00:00.000000

Reserved in the migration chain for CloudSync (targets, per-object content hashes, local
hash cache); it creates them when that agent lands, so the agents being built at the
same time keep one linear history. Until then it changes nothing.
"""

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
