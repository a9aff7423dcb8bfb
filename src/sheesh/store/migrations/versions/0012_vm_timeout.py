"""A VM's timeout: when it runs out, and what happens then

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("on_timeout", sa.String(16), nullable=False, server_default="delete"))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("on_timeout")
        batch.drop_column("expires_at")
