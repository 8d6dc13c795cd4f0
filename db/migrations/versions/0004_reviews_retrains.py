"""Operator reviews, retrain triggers (at most one open, enforced by a unique slot), token roles.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGER_STATUS = ("queued", "running", "succeeded", "failed")


def upgrade() -> None:
    op.create_table(
        "retrain_triggers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*TRIGGER_STATUS, name="triggerstatus", native_enum=False, length=16),
            nullable=False,
        ),
        # 1 while the trigger is queued or running, NULL once closed; unique, so the
        # database refuses a second open trigger (NULLs never collide).
        sa.Column("open_slot", sa.Integer(), nullable=True),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("data_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("n_train_reviews", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("model_name", sa.String(length=200), nullable=True),
        sa.Column("model_version", sa.String(length=32), nullable=True),
        sa.Column("champion_version", sa.String(length=32), nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("gate", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_triggers")),
        sa.UniqueConstraint("open_slot", name=op.f("uq_retrain_triggers_open_slot")),
    )
    op.create_index(
        op.f("ix_retrain_triggers_created_at"), "retrain_triggers", ["created_at"], unique=False
    )
    op.create_index(
        op.f("ix_retrain_triggers_reason"), "retrain_triggers", ["reason"], unique=False
    )

    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("defects", sa.JSON(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("reviewer_id", sa.String(length=32), nullable=True),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_reviews_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_id"],
            ["stations.id"],
            name=op.f("fk_reviews_reviewer_id_stations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index(op.f("ix_reviews_created_at"), "reviews", ["created_at"], unique=False)
    op.create_index(op.f("ix_reviews_job_id"), "reviews", ["job_id"], unique=False)

    # Existing tokens become station tokens: the server default fills the rows.
    with op.batch_alter_table("station_tokens") as batch_op:
        batch_op.add_column(
            sa.Column("role", sa.String(length=16), server_default="station", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("station_tokens") as batch_op:
        batch_op.drop_column("role")
    op.drop_index(op.f("ix_reviews_job_id"), table_name="reviews")
    op.drop_index(op.f("ix_reviews_created_at"), table_name="reviews")
    op.drop_table("reviews")
    op.drop_index(op.f("ix_retrain_triggers_reason"), table_name="retrain_triggers")
    op.drop_index(op.f("ix_retrain_triggers_created_at"), table_name="retrain_triggers")
    op.drop_table("retrain_triggers")
