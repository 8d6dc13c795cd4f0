"""`eldefect db prune`: a dry run shows what would go; a real run deletes only image bytes."""

from __future__ import annotations

from datetime import timedelta

from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from db.models import Job, JobImage, utcnow
from db.session import session_scope
from gateway.cli import db
from tests.gateway import factories
from tests.gateway.test_jobs_api import submit


def _images(url: str) -> set[str]:
    with session_scope(url) as session:
        return set(session.scalars(select(JobImage.job_id)))


def test_prune_dry_run_then_prune_and_the_job_still_answers(
    client: TestClient, auth: dict[str, str]
) -> None:
    url = str(client.app.state.settings.database_url)  # type: ignore[attr-defined]
    old, recent, open_ = (submit(client, auth).json()["id"] for _ in range(3))
    for job_id in (old, recent):
        factories.finish_job(url, job_id)
    with session_scope(url) as session:
        session.execute(
            update(Job).where(Job.id == old).values(finished_at=utcnow() - timedelta(days=45))
        )
    runner = CliRunner()

    dry = runner.invoke(db, ["prune", "--dry-run", "--days", "30"])

    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("would delete 1 image(s)")
    assert _images(url) == {old, recent, open_}

    real = runner.invoke(db, ["prune", "--days", "30"])

    assert real.exit_code == 0, real.output
    assert real.output.startswith("deleted 1 image(s)")
    assert _images(url) == {recent, open_}
    answer = client.get(f"/v1/jobs/{old}", headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded"
    assert answer.json()["result"]["defects"] == ["crack"]


def test_prune_with_zero_days_keeps_everything(client: TestClient, auth: dict[str, str]) -> None:
    url = str(client.app.state.settings.database_url)  # type: ignore[attr-defined]
    job_id = submit(client, auth).json()["id"]
    factories.finish_job(url, job_id)

    result = CliRunner().invoke(db, ["prune", "--days", "0"])

    assert result.exit_code == 0, result.output
    assert "every image is kept" in result.output
    assert _images(url) == {job_id}
