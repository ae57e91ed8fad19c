"""``vz``: OCI containers in micro-VMs and VM descriptors (placeholder until implemented)."""

from __future__ import annotations

from typing import NoReturn

import click

from .common import run_cli


@click.group()
def vz() -> None:
    """Run OCI containers inside micro-VMs booted from a vz-linux bundle."""


def main() -> NoReturn:
    run_cli(vz, "vz")
