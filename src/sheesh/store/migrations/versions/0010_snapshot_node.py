"""The node a snapshot's files live on

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(sa.Column("node", sa.String(64), nullable=False, server_default="local"))


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("node")
