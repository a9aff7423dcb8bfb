"""VM inbound firewall rules and port forwards

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("firewall", sa.JSON, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("ports", sa.JSON, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("ports")
        batch.drop_column("firewall")
