"""Input statistics gain `texture` (eldefect.stats), the feature that shows poly vs mono drift.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: rows served before this revision have no texture, and drift skips it for them.
    with op.batch_alter_table("input_stats") as batch:
        batch.add_column(sa.Column("texture", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("input_stats") as batch:
        batch.drop_column("texture")
