"""drop the tables of agents not built yet, where an earlier 0001 created them

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000

Revision 0001 used to create tables for MxSync, EpnAlert, MpistatReporter and CloudSync
before any of those agents existed; no agent ever wrote to them. 0001 no longer creates
them (each agent adds its own tables in its own migration once it is built), so a database
created by the earlier 0001 has seven tables the models do not know. This revision drops
those that exist, children before the parents their foreign keys point to, and leaves a
database created by the current 0001 as it is. The tables are looked up first, so it runs
the same on SQLite, PostgreSQL and MariaDB whichever 0001 created the database.

Downgrade does nothing, on purpose: the tables are not recreated, since the 0001 a
downgrade returns to does not have them either (and no data of theirs was ever written by
hpcsync). Downgrading to 0001 and upgrading again is harmless.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: In drop order: tables with foreign keys before the tables they reference.
UNBUILT_AGENT_TABLES = (
    "cloudsync_objects",  # -> cloudsync_targets
    "cloudsync_targets",
    "mpistat_group_usage",  # -> mpistat_reports
    "mpistat_directory_usage",  # -> mpistat_reports
    "mpistat_reports",
    "mxsync_epn_transfers",
    "epnalert_alerts",
)


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name in UNBUILT_AGENT_TABLES:
        if name in existing:
            op.drop_table(name)  # its indexes and constraints go with it


def downgrade() -> None:
    """Nothing to undo (see the module docstring): the tables are not recreated."""
