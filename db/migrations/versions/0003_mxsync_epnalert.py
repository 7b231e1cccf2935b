"""the tables of MxSync and EpnAlert: mxsync_epn_transfers, epnalert_alerts

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 16:00:00.000000

MxSync's EPN ledger (replacing ASSyncy's ignore.yml: one row per scope and EPN, with its
state, bytes, files, attempts, last error and verification time) and EpnAlert's record of
the EPNs it mailed about (so each is alerted once, then only after a reminder interval).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mxsync_epn_transfers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=128), nullable=False),
        sa.Column("epn", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=128), nullable=True),
        sa.Column("equipment_id", sa.String(length=32), nullable=True),
        sa.Column("visit_end", sa.Double(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("heartbeat_at", sa.Double(), nullable=True),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("found_at", sa.Double(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("verified_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mxsync_epn_transfers")),
        sa.UniqueConstraint("scope", "epn", name="uq_mxsync_epn_transfers_scope_epn"),
    )
    with op.batch_alter_table("mxsync_epn_transfers", schema=None) as batch_op:
        batch_op.create_index("ix_mxsync_epn_transfers_scope_state", ["scope", "state"], unique=False)

    op.create_table(
        "epnalert_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=128), nullable=False),
        sa.Column("epn", sa.String(length=64), nullable=False),
        sa.Column("first_alerted_at", sa.Double(), nullable=False),
        sa.Column("last_alerted_at", sa.Double(), nullable=False),
        sa.Column("times_alerted", sa.Integer(), nullable=False),
        sa.Column("recipients", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_epnalert_alerts")),
        sa.UniqueConstraint("scope", "epn", name="uq_epnalert_alerts_scope_epn"),
    )
    with op.batch_alter_table("epnalert_alerts", schema=None) as batch_op:
        batch_op.create_index("ix_epnalert_alerts_scope_last", ["scope", "last_alerted_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("epnalert_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_epnalert_alerts_scope_last")
    op.drop_table("epnalert_alerts")
    with op.batch_alter_table("mxsync_epn_transfers", schema=None) as batch_op:
        batch_op.drop_index("ix_mxsync_epn_transfers_scope_state")
    op.drop_table("mxsync_epn_transfers")
