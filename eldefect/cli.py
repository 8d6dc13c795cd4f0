"""`eldefect <command>`: the ML commands live here; serving commands plug in by entry point.

Heavy imports (torch, MLflow) happen inside each command so `eldefect --help` stays instant.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

import click

from eldefect.settings import get_settings

PLUGIN_GROUP = "eldefect.commands"


class EldefectCLI(click.Group):
    """A click group that also lists the commands other packages register by entry point."""

    def _plugins(self) -> dict[str, object]:
        return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        ep = self._plugins().get(cmd_name)
        return ep.load() if ep is not None else None  # type: ignore[attr-defined]


@click.group(cls=EldefectCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (default: settings).")
def cli(log_level: str | None) -> None:
    """Find defects in electroluminescence images of solar cells."""
    logging.basicConfig(
        level=(log_level or get_settings().log_level).upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def main() -> None:
    cli()
