"""the tables of MxSync and EpnAlert

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 16:00:00.000000

Reserved in the migration chain for MxSync and EpnAlert (mxsync_epn_transfers, epnalert_alerts); it creates them when that agent lands, so the
agents being built at the same time keep one linear history. Until then it changes nothing.
"""

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
