"""Execution history of VMs (exec, run-ts, run-js)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exec_logs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("vm_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("timed_out", sa.Boolean, nullable=False),
        sa.Column("stdout_tail", sa.Text, nullable=False),
        sa.Column("stderr_tail", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_exec_logs_vm_started", "exec_logs", ["vm_id", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_exec_logs_vm_started", "exec_logs")
    op.drop_table("exec_logs")
