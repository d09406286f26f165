"""Retention: which jobs' files were deleted, and the counts of pruned ledger rows (node/retention.py).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    if not insp.has_table("retention_deleted"):  # ledgers where node.retention.ensure_tables made them
        op.create_table(
            "retention_deleted",
            sa.Column("instance_id", sa.Integer, sa.ForeignKey("instances.id"), primary_key=True),
            sa.Column("deleted_at", TZ, nullable=False),
            sa.Column("reason", sa.String(16), nullable=False),
            sa.Column("bytes", sa.BigInteger, nullable=False),
        )
    if not insp.has_table("retention_pruned"):
        op.create_table(
            "retention_pruned",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("pruned_at", TZ, nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("period", sa.String(7), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("count", sa.Integer, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("retention_pruned")
    op.drop_table("retention_deleted")
