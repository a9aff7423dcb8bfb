"""Nodes (name, region, address, state) as JSON records

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("doc", sa.JSON, nullable=False),
    )
    op.create_index("ix_nodes_owner_id", "nodes", ["owner_id"])


def downgrade() -> None:
    op.drop_index("ix_nodes_owner_id", "nodes")
    op.drop_table("nodes")
