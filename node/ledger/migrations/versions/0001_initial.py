"""The ledger as aln-node 0.1 created it (associations, instances, state changes, deliveries).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "associations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("called_ae", sa.String(16), nullable=False),
        sa.Column("peer_host", sa.String(64), nullable=False),
        sa.Column("peer_port", sa.Integer, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("ended_at", TZ),
        sa.Column("instances", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("series_instance_uid", sa.String(64)),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("spool_path", sa.String(200), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("frames", sa.Integer),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("association_id", sa.Integer, sa.ForeignKey("associations.id")),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("stage", sa.String(16)),
        sa.Column("reason", sa.Text),
        sa.Column("duplicates", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("model_uid", sa.String(64)),
        sa.Column("probability", sa.String(32)),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False, index=True),
    )
    op.create_table(
        "state_changes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("instance_id", sa.Integer, sa.ForeignKey("instances.id"), nullable=False, index=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("instance_id", sa.Integer, sa.ForeignKey("instances.id"), nullable=False, index=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("result_uid", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", TZ, nullable=False),
    )


def downgrade() -> None:
    for table in ("deliveries", "state_changes", "instances", "associations"):
        op.drop_table(table)
