"""The schema. Alembic migrations under `db/migrations/` must match it (a test checks)."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Length of jobs.filename: a longer client file name is stored cut (db.jobs.create_job).
FILENAME_LENGTH = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """The same instant in UTC (a naive time is read as UTC).

    SQLite keeps times as UTC text without an offset and compares them as given, so a time
    with another offset must be converted before it is compared there.
    """
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


# Named constraints, so later migrations can drop or alter them (SQLite batch mode needs names).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
    }


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class Station(Base):
    __tablename__ = "stations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TokenRole(enum.StrEnum):
    station = "station"  # submits images, reads its own jobs
    operator = "operator"  # reads every station's jobs, reviews, drift and retraining


class StationToken(Base):
    """A station's bearer token, stored as its SHA-256 hex digest (the token is shown once)."""

    __tablename__ = "station_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    station_id: Mapped[str] = mapped_column(
        ForeignKey("stations.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # What the token may do (TokenRole); tokens made before roles existed are station tokens.
    role: Mapped[str] = mapped_column(String(16), default="station", server_default="station")

    station: Mapped[Station] = relationship()


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("station_id", "idempotency_key", name="uq_batches_station_idempotency"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    station_id: Mapped[str] = mapped_column(
        ForeignKey("stations.id", ondelete="CASCADE"), index=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("station_id", "idempotency_key", name="uq_jobs_station_idempotency"),
        Index("ix_jobs_status_enqueued_at", "status", "enqueued_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    station_id: Mapped[str] = mapped_column(
        ForeignKey("stations.id", ondelete="CASCADE"), index=True
    )
    batch_id: Mapped[str | None] = mapped_column(
        ForeignKey("batches.id", ondelete="SET NULL"), index=True, default=None
    )
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, validate_strings=True),
        default=JobStatus.queued,
    )
    # Order of the file within its batch (the batch answers its jobs in upload order).
    batch_position: Mapped[int | None] = mapped_column(Integer, default=None)
    module_id: Mapped[str | None] = mapped_column(String(200), default=None)
    cell_id: Mapped[str | None] = mapped_column(String(200), default=None)
    filename: Mapped[str | None] = mapped_column(String(FILENAME_LENGTH), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # A claim by a worker holds until this time; the sweep requeues running jobs past it.
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)

    image: Mapped[JobImage] = relationship(back_populates="job", cascade="all, delete-orphan")
    result: Mapped[Result | None] = relationship(back_populates="job", cascade="all, delete-orphan")
    # Every review, oldest first (the last one is in force); loaded with the job in one query.
    reviews: Mapped[list[Review]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="Review.id", lazy="selectin"
    )


class JobImage(Base):
    """The uploaded bytes, durable before the gateway answers 202."""

    __tablename__ = "job_images"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)

    job: Mapped[Job] = relationship(back_populates="image")


class Result(Base):
    """One result per job: the primary key is the job id, so a redelivery cannot add a second."""

    __tablename__ = "results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(32))
    probabilities: Mapped[dict[str, Any]] = mapped_column()
    defects: Mapped[list[str]] = mapped_column(JSON)
    thresholds: Mapped[dict[str, Any]] = mapped_column()
    inference_ms: Mapped[float] = mapped_column(Float)
    queue_wait_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    job: Mapped[Job] = relationship(back_populates="result")


class InputStats(Base):
    """Statistics of a served image (eldefect.stats.FEATURES), for drift."""

    __tablename__ = "input_stats"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    mean: Mapped[float] = mapped_column(Float)
    std: Mapped[float] = mapped_column(Float)
    p10: Mapped[float] = mapped_column(Float)
    p50: Mapped[float] = mapped_column(Float)
    p90: Mapped[float] = mapped_column(Float)
    # Added after the intensity statistics: rows stored before revision 0004 have none.
    texture: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DriftVerdict(enum.StrEnum):
    ok = "ok"
    drift = "drift"
    insufficient_data = "insufficient_data"


class DriftReport(Base):
    """One drift check of a window of served jobs of one model version (monitoring/)."""

    __tablename__ = "drift_reports"
    __table_args__ = (Index("ix_drift_reports_model", "model_name", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(32))
    # The results the window covers (their created_at), and how many there are.
    window_start: Mapped[datetime | None] = mapped_column(default=None)
    window_end: Mapped[datetime | None] = mapped_column(default=None)
    n: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[DriftVerdict] = mapped_column(
        Enum(DriftVerdict, native_enum=False, length=32, validate_strings=True)
    )
    # Thresholds in force and anything the check could not do (e.g. a profile without rates).
    thresholds: Mapped[dict[str, Any]] = mapped_column()
    notes: Mapped[list[str]] = mapped_column(JSON, default=list)

    measures: Mapped[list[DriftMeasure]] = relationship(
        back_populates="report", cascade="all, delete-orphan", order_by="DriftMeasure.id"
    )


class DriftMeasure(Base):
    """One feature (input statistic) or one class (positive rate) of a drift report."""

    __tablename__ = "drift_measures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(
        ForeignKey("drift_reports.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # "feature" or "class"
    name: Mapped[str] = mapped_column(String(200))
    window_value: Mapped[float] = mapped_column(Float)
    reference_value: Mapped[float] = mapped_column(Float)
    z: Mapped[float] = mapped_column(Float)
    effect: Mapped[float] = mapped_column(Float)
    drifted: Mapped[bool] = mapped_column()

    report: Mapped[DriftReport] = relationship(back_populates="measures")


class TaskRun(Base):
    """When a periodic task (sweep, drift, ...) last ran: read by the metrics exporter."""

    __tablename__ = "task_runs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run_at: Mapped[datetime] = mapped_column(default=utcnow)


class Review(Base):
    """What an operator says a served image really shows. A later review of the same job
    supersedes an earlier one; both rows stay (the history of who said what, when)."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    defects: Mapped[list[str]] = mapped_column(JSON)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    # The operator's station (token) and the model whose result was reviewed.
    reviewer_id: Mapped[str | None] = mapped_column(
        ForeignKey("stations.id", ondelete="SET NULL"), default=None
    )
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    job: Mapped[Job] = relationship(back_populates="reviews")
    reviewer: Mapped[Station | None] = relationship(lazy="joined")


class TriggerStatus(enum.StrEnum):
    queued = "queued"  # recorded, the training task is on its way
    running = "running"  # a training worker holds it (lease_expires_at)
    succeeded = "succeeded"  # trained, registered and gated (decision says what moved)
    failed = "failed"  # an error, or the worker died (the sweep found the lease expired)


class RetrainTrigger(Base):
    """One decision to retrain and everything that followed from it.

    At most one trigger is open (queued or running) at any time, and the database enforces
    it: an open trigger holds `open_slot = 1`, a closed one NULL, and the column is unique
    (NULLs never collide, on SQLite and PostgreSQL alike). Two beat processes racing to open
    one: the second INSERT fails.
    """

    __tablename__ = "retrain_triggers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reason: Mapped[str] = mapped_column(String(16), index=True)  # drift|reviews|schedule|manual
    status: Mapped[TriggerStatus] = mapped_column(
        Enum(TriggerStatus, native_enum=False, length=16, validate_strings=True),
        default=TriggerStatus.queued,
    )
    open_slot: Mapped[int | None] = mapped_column(Integer, unique=True, default=1)
    requested_by: Mapped[str] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text, default=None)
    # Why it fired: drift report ids, review counts, the schedule's last run, ...
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # The training worker renews this while it works; the sweep fails the trigger past it.
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    # Reviews up to this time went into the challenger's data (the "reviews" reason's baseline).
    data_until: Mapped[datetime | None] = mapped_column(default=None)
    n_train_reviews: Mapped[int | None] = mapped_column(Integer, default=None)
    run_id: Mapped[str | None] = mapped_column(String(64), default=None)
    model_name: Mapped[str | None] = mapped_column(String(200), default=None)
    model_version: Mapped[str | None] = mapped_column(String(32), default=None)
    champion_version: Mapped[str | None] = mapped_column(String(32), default=None)
    # promoted (production moved) | staged (staging only) | rejected (gate said no)
    decision: Mapped[str | None] = mapped_column(String(16), default=None)
    gate: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class Worker(Base):
    """A worker process as it last reported itself (workers/housekeeping.py).

    Read by the gateway (which queue has live consumers, whether any worker serves a model)
    and by the sweep (fail jobs nobody can serve). A row whose `last_seen_at` is older than
    the staleness limit is a dead worker; a cleanly stopped one deletes its row.
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queue: Mapped[str] = mapped_column(String(64), index=True)
    device: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str | None] = mapped_column(String(200), default=None)
    # The version in service, None while none is loaded.
    model_version: Mapped[str | None] = mapped_column(String(32), default=None)
    # Why the last load failed (None once one succeeds).
    model_error: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
