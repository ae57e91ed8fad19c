"""``vz-linux-bench``: boot-latency benchmark (placeholder until implemented)."""

from __future__ import annotations

from typing import NoReturn

import click

from .common import run_cli


@click.command()
def bench() -> None:
    """Boot a bundle repeatedly and report cold boot -> agent-ready latency."""
    raise click.ClickException("not implemented yet")


def main() -> NoReturn:
    run_cli(bench, "vz-linux-bench")
