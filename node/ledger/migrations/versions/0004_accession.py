"""The Accession Number of each received instance, to find a job by it (``alnnode status --accession``).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    cols = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("instances")}
    if "accession_number" not in cols:
        with op.batch_alter_table("instances") as batch:
            batch.add_column(sa.Column("accession_number", sa.String(16), nullable=True))
            batch.create_index("ix_instances_accession_number", ["accession_number"])


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_accession_number")
        batch.drop_column("accession_number")
