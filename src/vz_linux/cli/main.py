"""``vz-linux``: the root command; each stage's commands live in their own module and are added here."""

from __future__ import annotations

from typing import NoReturn

import click

from . import build_cmds, bundle_cmds, dist_cmds, run_cmds
from .common import run_cli, setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every external command.")
@click.version_option(package_name="vz-linux")
def cli(verbose: bool) -> None:
    """Build, verify, select and boot Linux guest-kernel bundles for micro-VMs."""
    setup_logging(verbose)


for _command in (build_cmds.build, build_cmds.config_cmd, bundle_cmds.install_cmd, bundle_cmds.ensure_cmd,
                 bundle_cmds.verify_cmd, run_cmds.run_cmd, dist_cmds.keygen_cmd, dist_cmds.release_cmd,
                 dist_cmds.push_cmd, dist_cmds.pull_cmd):
    cli.add_command(_command)


def main(args: list[str] | None = None) -> NoReturn:
    run_cli(cli, "vz-linux", args)
