"""Each attempt's results under their own prefix; model sizes past 2 GiB.

Downgrading fails while a job records a model over 2 GiB (it would not fit an INTEGER).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("output_prefix", sa.String(128), nullable=True))
        batch.alter_column("model_size", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("model_size", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
        batch.drop_column("output_prefix")
