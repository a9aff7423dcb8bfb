"""snapshots, and the snapshot a VM was restored from

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("vm_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cpu", sa.Integer, nullable=False),
        sa.Column("mem_mb", sa.Integer, nullable=False),
        sa.Column("image_id", sa.String(64), nullable=False),
        sa.Column("disk_size_mb", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("save_ms", sa.Float, nullable=False),
    )
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("snapshot_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("snapshot_id")
    op.drop_table("snapshots")
