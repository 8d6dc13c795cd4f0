"""Apply the Alembic migrations in code: `upgrade(url)`, `current(url)`.

The Alembic files ship inside the package (db/alembic.ini, db/migrations/), so this works
from an installed wheel as well as from the source tree.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from db.session import get_engine

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
log = logging.getLogger(__name__)


def alembic_config(url: str) -> Config:
    """An Alembic config for the packaged migrations, pointed at `url`."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` up to `revision` (default: the newest)."""
    config = alembic_config(url)
    with get_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def upgrade_if_behind(url: str) -> None:
    """Bring the database at `url` to the newest revision, saying so, if it is not there."""
    newest = head()
    if current(url) != newest:
        log.info("bringing the database %s to schema %s", make_url(url).database, newest)
        upgrade(url)


def current(url: str) -> str | None:
    """The revision the database at `url` is at; None for an empty database."""
    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head() -> str | None:
    """The newest revision the package ships."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
