"""What the HTTP API answers (CONTRACT.md): *Public for bodies, ErrorBody for every error."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

from db.models import Job, JobStatus, RetrainTrigger, Review, as_utc

if TYPE_CHECKING:
    from monitoring.reports import ReportView  # numpy: imported where reports are read


def iso_utc(value: datetime, timespec: str = "seconds") -> str:
    """ISO-8601 in UTC with a trailing Z (SQLite gives naive datetimes, stored as UTC)."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec=timespec).replace("+00:00", "Z")


def _iso_utc_us(value: datetime) -> str:
    return iso_utc(value, "microseconds")


NUL_REFUSAL = "must not contain NUL (\\u0000) characters"


def _storable(value: str) -> str:
    # The databases' text columns cannot hold NUL: PostgreSQL refuses it and SQLite would
    # keep it, so it is refused on both, before anything is stored. (A lone surrogate, which
    # JSON allows as "\\ud800", is refused by pydantic's string check for any length limit.)
    if "\x00" in value:
        raise ValueError(NUL_REFUSAL)
    return value


STORABLE = AfterValidator(_storable)
"""Marks free text a client sends that goes into a text column: `Annotated[str,
Field(max_length=...), STORABLE]`, the limits first, so that pydantic checks them as a
string's (its wording, and its refusal of lone surrogates, which no database driver can
encode) rather than as a length of whatever the validator returned."""


def _in_utc(value: datetime) -> datetime:
    try:
        return as_utc(value)
    except OverflowError:  # 0001-01-01T00:00+01:00 is a valid ISO time, but not in UTC
        raise ValueError("is outside the range of times in UTC (years 1 to 9999)") from None


TimeQuery = Annotated[datetime, AfterValidator(_in_utc)]
"""A time a client sends as a query parameter, as the same instant in UTC."""

UtcDatetime = Annotated[
    datetime,
    PlainSerializer(iso_utc, return_type=str, when_used="json"),
    Field(json_schema_extra={"example": "2026-11-27T10:00:00Z"}),
]

CursorDatetime = Annotated[
    datetime,
    PlainSerializer(_iso_utc_us, return_type=str, when_used="json"),
    Field(json_schema_extra={"example": "2026-11-27T10:00:00.123456Z"}),
]
"""A time a client passes back as `since` to page on: to the microsecond, as stored, so
that rows made within one second are not handed out again or skipped."""


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable snake_case reason.", examples=["unsupported_media_type"])
    message: str = Field(description="What was wrong and what is allowed, for a person.")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer has this shape."""

    error: ErrorDetail


class ModelRef(BaseModel):
    name: str
    version: str


class ResultPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: ModelRef = Field(description="The registered model (name, version) that made it.")
    probabilities: dict[str, float] = Field(description="Per-label probability, 0..1.")
    defects: list[str] = Field(description="Labels whose probability reached their threshold.")
    thresholds: dict[str, float] = Field(description="Per-label decision threshold used.")


class ReviewCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defects: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        max_length=100,
        description="Every defect the image really shows (labels of the model's label set); "
        "an empty list says the cell is defect-free.",
    )
    comment: Annotated[str, Field(max_length=4000), STORABLE] | None = None


class ReviewPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    job_id: str
    defects: list[str]
    comment: str | None
    reviewed_at: CursorDatetime
    reviewer: str | None = Field(description="The operator token's station name.")
    model: ModelRef = Field(description="The model whose result was reviewed.")

    @classmethod
    def from_review(cls, review: Review) -> ReviewPublic:
        return cls(
            id=review.id,
            job_id=review.job_id,
            defects=list(review.defects),
            comment=review.comment,
            reviewed_at=review.created_at,
            reviewer=review.reviewer.name if review.reviewer is not None else None,
            model=ModelRef(name=review.model_name, version=review.model_version),
        )


class ReviewList(BaseModel):
    reviews: list[ReviewPublic] = Field(
        description="Newest first, or oldest first after `since`; superseded ones included."
    )


class JobPublic(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    created_at: UtcDatetime
    finished_at: UtcDatetime | None
    module_id: str | None
    cell_id: str | None
    result: ResultPublic | None = Field(description="Null until the job has succeeded.")
    error: ErrorDetail | None = Field(description="Why the job failed; null otherwise.")
    review: ReviewPublic | None = Field(
        None, description="The operator review in force (the latest); null when none."
    )

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        result = None
        if job.status == JobStatus.succeeded and job.result is not None:
            r = job.result
            result = ResultPublic(
                model=ModelRef(name=r.model_name, version=str(r.model_version)),
                probabilities={k: float(v) for k, v in r.probabilities.items()},
                defects=list(r.defects),
                thresholds={k: float(v) for k, v in r.thresholds.items()},
            )
        error = None
        if job.status == JobStatus.failed:
            error = ErrorDetail(
                code=job.error_code or "failed", message=job.error_message or "the job failed"
            )
        return cls(
            id=job.id,
            status=JobStatus(job.status).value,
            created_at=job.created_at,
            finished_at=job.finished_at,
            module_id=job.module_id,
            cell_id=job.cell_id,
            result=result,
            error=error,
            review=ReviewPublic.from_review(job.reviews[-1]) if job.reviews else None,
        )


class BatchPublic(BaseModel):
    id: str
    jobs: list[JobPublic] = Field(description="One job per uploaded file, in upload order.")


class DriftMeasurePublic(BaseModel):
    kind: str = Field(description="feature (an input statistic) or class (a positive rate)")
    name: str
    window_value: float
    reference_value: float
    z: float
    effect: float
    drifted: bool


class DriftReportPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    created_at: UtcDatetime
    model: ModelRef
    verdict: Literal["ok", "drift", "insufficient_data"]
    n: int = Field(description="Served images in the window.")
    window_start: UtcDatetime | None
    window_end: UtcDatetime | None
    thresholds: dict[str, Any]
    notes: list[str]
    measures: list[DriftMeasurePublic]

    @classmethod
    def from_report(cls, report: ReportView) -> DriftReportPublic:
        return cls(
            id=report.id,
            created_at=report.created_at,
            model=ModelRef(name=report.model_name, version=report.model_version),
            verdict=report.verdict.value,
            n=report.n,
            window_start=report.window_start,
            window_end=report.window_end,
            thresholds=report.thresholds,
            notes=report.notes,
            measures=[DriftMeasurePublic(**asdict(m)) for m in report.measures],
        )


class DriftReportList(BaseModel):
    reports: list[DriftReportPublic] = Field(description="Newest first.")


class RetrainCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[
        str,
        Field(min_length=1, max_length=2000, description="Why, for the record (free text)."),
        STORABLE,
    ]


class RetrainPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int
    reason: Literal["drift", "reviews", "schedule", "manual"]
    status: Literal["queued", "running", "succeeded", "failed"]
    decision: Literal["promoted", "staged", "rejected"] | None = Field(
        description="What the gate did with the challenger (succeeded triggers)."
    )
    requested_by: str
    note: str | None
    inputs: dict[str, Any] = Field(description="What fired it: drift report ids, review counts.")
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    run_id: str | None
    model: ModelRef | None = Field(description="The registered challenger.")
    champion_version: str | None
    gate: dict[str, Any] = Field(description="Every number the gate compared, and why.")
    error: str | None

    @classmethod
    def from_trigger(cls, t: RetrainTrigger) -> RetrainPublic:
        model = None
        if t.model_name and t.model_version:
            model = ModelRef(name=t.model_name, version=t.model_version)
        return cls(
            id=t.id,
            reason=t.reason,
            status=t.status.value,
            decision=t.decision,
            requested_by=t.requested_by,
            note=t.note,
            inputs=dict(t.inputs),
            created_at=t.created_at,
            started_at=t.started_at,
            finished_at=t.finished_at,
            run_id=t.run_id,
            model=model,
            champion_version=t.champion_version,
            gate=dict(t.gate),
            error=t.error,
        )


class RetrainList(BaseModel):
    retrains: list[RetrainPublic] = Field(description="Newest first.")


class HealthPublic(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyPublic(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, str] = Field(description="What each dependency answered.")
    warnings: list[str] = Field(
        default_factory=list,
        description="Not failing readiness, but worth a look (a configured queue without workers).",
    )


def multipart_body(properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """`openapi_extra=` for an upload route, which reads its form itself (gateway.forms)."""
    schema = {"type": "object", "properties": properties, "required": required}
    content = {"multipart/form-data": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra=` for a route that reads its JSON body itself (gateway.deps.operator_json)."""
    content = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"required": True, "content": content}}


FILE_SCHEMA = {"type": "string", "format": "binary"}
ID_SCHEMA = {"type": "string", "maxLength": 200}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for these error statuses, all with the ErrorBody schema."""
    descriptions = {
        401: "Missing or invalid bearer token.",
        403: "The token's role may not use this endpoint (operator endpoints).",
        404: "No such resource for this station.",
        409: "The resource is not in a state that allows this.",
        413: "Upload larger than the byte limit, or an image with too many pixels.",
        415: "The bytes are not an image in a supported format (PNG, JPEG, TIFF, BMP).",
        400: "Bad request (an empty upload, a body that is not valid multipart).",
        422: "Invalid parameters, or an image that cannot be decoded (truncated, corrupt).",
        500: "Unexpected server error.",
        503: "A dependency is unavailable (`database_unavailable`: the database, retry later).",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}
