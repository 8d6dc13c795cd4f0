"""Drift reports (one row per check, one measure per feature or class) and task runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "drift_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column(
            "verdict",
            sa.Enum(
                "ok",
                "drift",
                "insufficient_data",
                name="driftverdict",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_reports")),
    )
    op.create_index(
        op.f("ix_drift_reports_created_at"), "drift_reports", ["created_at"], unique=False
    )
    op.create_index(
        "ix_drift_reports_model", "drift_reports", ["model_name", "model_version"], unique=False
    )
    op.create_table(
        "drift_measures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("window_value", sa.Float(), nullable=False),
        sa.Column("reference_value", sa.Float(), nullable=False),
        sa.Column("z", sa.Float(), nullable=False),
        sa.Column("effect", sa.Float(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["drift_reports.id"],
            name=op.f("fk_drift_measures_report_id_drift_reports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_measures")),
    )
    op.create_index(
        op.f("ix_drift_measures_report_id"), "drift_measures", ["report_id"], unique=False
    )
    op.create_table(
        "task_runs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_task_runs")),
    )


def downgrade() -> None:
    op.drop_table("task_runs")
    op.drop_index(op.f("ix_drift_measures_report_id"), table_name="drift_measures")
    op.drop_table("drift_measures")
    op.drop_index("ix_drift_reports_model", table_name="drift_reports")
    op.drop_index(op.f("ix_drift_reports_created_at"), table_name="drift_reports")
    op.drop_table("drift_reports")
