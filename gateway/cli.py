"""Serving commands plugged into `eldefect` by entry point: gateway, token, db."""

from __future__ import annotations

import click

from db import jobs as crud
from db.models import TokenRole
from db.retention import count_prunable, prune_images, retention_cutoff
from db.session import get_engine, is_embedded, ready_database, session_scope
from eldefect.settings import Settings, get_settings
from gateway.arenas import limit_malloc_arenas


def _should_migrate(settings: Settings, flag: bool | None) -> bool:
    if flag is not None:
        return flag
    if settings.gateway_migrate is not None:
        return settings.gateway_migrate
    # The embedded SQLite default is a developer's database: bring it up to date at start.
    # Shared databases (PostgreSQL) are migrated on purpose, by `eldefect db upgrade`.
    return is_embedded(settings.database_url)


@click.command()
@click.option("--host", default=None, help="Interface to bind (default: settings.gateway_host).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port (default: settings.gateway_port).",
)
@click.option(
    "--migrate/--no-migrate",
    default=None,
    help="Apply database migrations first (default: only for SQLite).",
)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
def gateway(host: str | None, port: int | None, migrate: bool | None, workers: int) -> None:
    """Run the HTTP gateway (uvicorn)."""
    import uvicorn

    limit_malloc_arenas()  # first: before uvicorn or a migration starts a thread
    settings = get_settings()
    settings.ensure_var_dir()
    # A URL that can never work (malformed, no such driver) stops the start here; a database
    # that is only unreachable does not: the gateway answers 503 until it is back.
    get_engine(settings.database_url)
    if _should_migrate(settings, migrate):
        # Alembic (with Mako and Pygments, ~8 MiB resident) is imported only to migrate: a
        # gateway on a database migrated by `eldefect db upgrade` never loads it.
        from db.migrate import upgrade

        upgrade(settings.database_url)
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=host or settings.gateway_host,
        port=settings.gateway_port if port is None else port,
        workers=workers,
        log_level=settings.log_level.lower(),
        ws="none",  # no WebSocket routes: do not import a WebSocket library
    )


@click.group()
def token() -> None:
    """Station and operator tokens (Bearer auth for the HTTP API)."""


def _station_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    name = value.strip()
    if not name:
        raise click.BadParameter("a station needs a name (not empty, not only spaces)")
    return name


@token.command("create")
@click.option(
    "--station",
    required=True,
    callback=_station_name,
    help="Station name; created when it does not exist.",
)
@click.option(
    "--role",
    type=click.Choice([r.value for r in TokenRole]),
    default=TokenRole.station.value,
    show_default=True,
    help="station: submit and read its own jobs; operator: read every station's jobs, "
    "review them, read drift, start retraining.",
)
def token_create(station: str, role: str) -> None:
    """Issue a new token for a station and print it (it is shown only this once)."""
    settings = get_settings()
    with session_scope(ready_database(settings.database_url)) as session:
        row = crud.get_or_create_station(session=session, name=station)
        plaintext = crud.create_token(session=session, station_id=row.id, role=TokenRole(role))
    click.echo(plaintext)


@token.command("list")
def token_list() -> None:
    """List tokens by station (hash prefix only; tokens are not stored)."""
    settings = get_settings()
    with session_scope(ready_database(settings.database_url)) as session:
        tokens = crud.list_tokens(session=session)
    if not tokens:
        click.echo("no tokens; create one with `eldefect token create --station NAME`")
        return
    click.echo(f"{'station':<24} {'role':<9} {'sha256 prefix':<14} {'created (UTC)':<20} state")
    for info in tokens:
        state = "revoked" if info.revoked_at else "active"
        created = info.created_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{info.station:<24} {info.role:<9} {info.hash_prefix:<14} {created:<20} {state}"
        )


@token.command("revoke")
@click.option("--station", required=True, help="Station whose tokens are revoked.")
def token_revoke(station: str) -> None:
    """Revoke every active token of a station."""
    settings = get_settings()
    with session_scope(ready_database(settings.database_url)) as session:
        row = crud.get_station_by_name(session=session, name=station)
        if row is None:
            raise click.ClickException(f"no station named {station!r}")
        count = crud.revoke_tokens(session=session, station_id=row.id)
    click.echo(f"revoked {count} token(s) of {station}")


@click.group()
def db() -> None:
    """Database schema (Alembic migrations) and retention."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from db.migrate import current, upgrade

    settings = get_settings()
    settings.ensure_var_dir()
    upgrade(settings.database_url, revision)
    click.echo(f"database at revision {current(settings.database_url)}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and the newest one shipped."""
    from db.migrate import current, head

    settings = get_settings()
    click.echo(f"current: {current(settings.database_url) or 'empty'}; head: {head()}")


@db.command("prune")
@click.option(
    "--days",
    type=click.IntRange(min=0),
    default=None,
    help="Keep images of jobs that ended in the last DAYS days "
    "[default: ELDEFECT_IMAGE_RETENTION_DAYS; 0 keeps all].",
)
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
def db_prune(days: int | None, dry_run: bool) -> None:
    """Delete the image bytes of jobs that ended long ago (jobs, results and stats stay)."""
    settings = get_settings()
    days = settings.image_retention_days if days is None else days
    before = retention_cutoff(days)
    if before is None:
        click.echo("retention is 0 days: every image is kept; nothing to prune")
        return
    when = before.strftime("%Y-%m-%d %H:%M:%S UTC")
    if dry_run:
        with session_scope(ready_database(settings.database_url)) as session:
            report = count_prunable(session=session, before=before)
        verb = "would delete"
    else:
        report = prune_images(ready_database(settings.database_url), before=before)
        verb = "deleted"
    click.echo(
        f"{verb} {report.images} image(s), {report.bytes / 2**20:.1f} MiB, "
        f"of jobs that ended before {when} ({days} days)"
    )
