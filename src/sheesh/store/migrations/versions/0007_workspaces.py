"""The rerobots surface: workspace types, deployments, instances, reservations, VPN clients, CI projects and jobs

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLES = ("workspace_types", "deployments", "instances", "reservations", "vpn_clients", "ci_projects", "ci_jobs")


def upgrade() -> None:
    for name in TABLES:
        op.create_table(
            name,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("owner_id", sa.String(64), nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("doc", sa.JSON, nullable=False),
        )
        op.create_index(f"ix_{name}_owner_id", name, ["owner_id"])


def downgrade() -> None:
    for name in TABLES:
        op.drop_index(f"ix_{name}_owner_id", name)
        op.drop_table(name)
