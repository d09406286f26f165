"""Job plane: claims with heartbeats, scheduled retries, the workers registry, unique deliveries.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(128)))
        batch.add_column(sa.Column("heartbeat_at", TZ))
        batch.add_column(sa.Column("retry_at", TZ))
        batch.add_column(sa.Column("first_failure_at", TZ))
    # Older ledgers could hold several rows for one (instance, destination, result): keep the newest.
    op.execute(
        "DELETE FROM deliveries WHERE id NOT IN "
        "(SELECT MAX(id) FROM deliveries GROUP BY instance_id, destination, result_uid)"
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.create_unique_constraint("uq_delivery", ["instance_id", "destination", "result_uid"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("queues", sa.String(64), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("last_seen", TZ, nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("workers")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("uq_delivery", type_="unique")
    with op.batch_alter_table("instances") as batch:
        for name in ("first_failure_at", "retry_at", "heartbeat_at", "claimed_by"):
            batch.drop_column(name)
