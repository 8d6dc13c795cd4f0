"""What the HTTP API answers (CONTRACT.md): *Public for bodies, ErrorBody for every error."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from db.models import Job, JobStatus


def iso_utc(value: datetime) -> str:
    """ISO-8601 in UTC with a trailing Z (SQLite gives naive datetimes, stored as UTC)."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


UtcDatetime = Annotated[
    datetime,
    PlainSerializer(iso_utc, return_type=str, when_used="json"),
    Field(json_schema_extra={"example": "2026-11-27T10:00:00Z"}),
]


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


class JobPublic(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    created_at: UtcDatetime
    finished_at: UtcDatetime | None
    module_id: str | None
    cell_id: str | None
    result: ResultPublic | None = Field(description="Null until the job has succeeded.")
    error: ErrorDetail | None = Field(description="Why the job failed; null otherwise.")

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
        )


class BatchPublic(BaseModel):
    id: str
    jobs: list[JobPublic] = Field(description="One job per uploaded file, in upload order.")


class HealthPublic(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyPublic(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, str] = Field(description="What each dependency answered.")


def multipart_body(properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """`openapi_extra=` for an upload route, which reads its form itself (gateway.forms)."""
    schema = {"type": "object", "properties": properties, "required": required}
    content = {"multipart/form-data": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


FILE_SCHEMA = {"type": "string", "format": "binary"}
ID_SCHEMA = {"type": "string", "maxLength": 200}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for these error statuses, all with the ErrorBody schema."""
    descriptions = {
        401: "Missing or invalid bearer token.",
        404: "No such resource for this station.",
        413: "Upload larger than the byte limit, or an image with too many pixels.",
        415: "The bytes are not an image in a supported format (PNG, JPEG, TIFF, BMP).",
        400: "Bad request (an empty upload, a body that is not valid multipart).",
        422: "Invalid parameters, or an image that cannot be decoded (truncated, corrupt).",
        500: "Unexpected server error.",
        503: "A dependency is unavailable (`database_unavailable`: the database, retry later).",
    }
    return {code: {"model": ErrorBody, "description": descriptions[code]} for code in codes}
