"""``vz-linux``: build, inspect, install, verify and run guest-kernel bundles."""

from __future__ import annotations

from typing import NoReturn

import click

from .common import run_cli, setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every external command.")
@click.version_option(package_name="vz-linux")
def cli(verbose: bool) -> None:
    """Build, verify, select and boot Linux guest-kernel bundles for micro-VMs."""
    setup_logging(verbose)


def _register() -> None:
    # Each stage owns its commands in its own module; importing registers them on `cli`.
    from . import build_cmds, bundle_cmds, run_cmds  # noqa: F401


def main(args: list[str] | None = None) -> NoReturn:
    _register()
    run_cli(cli, "vz-linux", args)
