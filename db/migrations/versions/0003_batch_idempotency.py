"""Batches take an Idempotency-Key, unique per station like the jobs' one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot add a constraint to an existing table in place.
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.create_unique_constraint(
            "uq_batches_station_idempotency", ["station_id", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_constraint("uq_batches_station_idempotency", type_="unique")
        batch.drop_column("idempotency_key")
