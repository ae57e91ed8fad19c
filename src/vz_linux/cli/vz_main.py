"""``vz``: the root command. Its groups (``oci``, ``vm``) live in :mod:`.vz` and are imported only
when invoked (:class:`~.entry.LazyGroup`), so ``vz --version`` and ``vz --help`` start fast."""

from __future__ import annotations

from typing import NoReturn

import click

from ..version import __version__
from .entry import LazyCommand, LazyGroup, run_cli, setup_logging

# name -> where it lives and its short help (tests/test_startup.py checks both against the group)
COMMANDS: dict[str, LazyCommand] = {
    "oci": LazyCommand("vz_linux.cli.vz:oci",
                       "Containers from a registry image, an OCI image layout or a rootfs directory, each in its "
                       "own micro-VM."),
    "vm": LazyCommand("vz_linux.cli.vz:vm", "Persistent VMs booted from an ext4 disk."),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True, help="Log every external command.")
@click.version_option(__version__)
def vz(verbose: bool) -> None:
    """Run OCI containers inside micro-VMs booted from a vz-linux bundle."""
    setup_logging(verbose)


def main(args: list[str] | None = None) -> NoReturn:
    run_cli(vz, "vz", args)
