"""``vz oci cp``, ``vz oci stats`` and ``vz oci inspect`` (added to the ``oci`` group by :mod:`.vz`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..errors import CopyHostPathError
from ..oci import copy, observe, stats
from ..oci.config import RuntimeConfig, default_data_dir
from .common import print_listing, warn

_DATA_DIR_HELP = "Container state (default ~/.vz/oci, or $VZ_OCI_DATA_DIR)."


def _cfg(data_dir: Path | None) -> RuntimeConfig:
    return RuntimeConfig(data_dir=data_dir or default_data_dir())


def _warn(message: str) -> None:
    warn("vz", message)


@click.command(name="cp")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=_DATA_DIR_HELP)
@click.argument("source")
@click.argument("destination")
def cp(data_dir: Path | None, source: str, destination: str) -> int:
    """Copy files/trees: `cp HOST_PATH CONTAINER:PATH` or `cp CONTAINER:PATH HOST_PATH`.

    Paths inside the container resolve in its root (symlinks never lead out of it); symlinks are
    copied as symlinks in both directions, never followed.
    """
    src, dst = copy.Spec.parse(source), copy.Spec.parse(destination)
    if (src.container is None) == (dst.container is None):
        raise CopyHostPathError("exactly one of SOURCE and DESTINATION must be CONTAINER:PATH",
                                hint="vz oci cp ./file web:/tmp/  or  vz oci cp web:/etc/hosts .")
    cfg = _cfg(data_dir)
    if dst.container is not None:
        copy.copy_in(cfg, Path(src.path), dst.container, dst.path, _warn)
    else:
        assert src.container is not None
        copy.copy_out(cfg, src.container, src.path, Path(dst.path), _warn)
    return 0


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1 << 20):.1f}MiB"


def _print_table(rows: list[stats.ContainerStats]) -> None:
    print_listing(("ID", "NAME", "STATUS", "CPU %", "MEM", "MEM SOURCE", "PIDS", "VM RSS", "VM MEM"),
                  ((r.id, r.name, r.status, "-" if r.cpu_percent is None else f"{r.cpu_percent:.1f}%",
                    _size(r.memory_bytes), r.memory_source, "-" if r.pids is None else str(r.pids),
                    _size(r.vm_rss_bytes), _size(r.vm_memory_bytes)) for r in rows))


@click.command(name="stats")
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.option("--json", "as_json", is_flag=True, help="JSON (one array per sample).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between the samples a CPU % is computed from.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=_DATA_DIR_HELP)
@click.argument("containers", nargs=-1)
def stats_(no_stream: bool, as_json: bool, interval: float, data_dir: Path | None,
           containers: tuple[str, ...]) -> int:
    """CPU and memory per container (from its cgroup in the guest) and its VM's RSS on the host."""
    cfg = _cfg(data_dir)
    while True:
        rows = stats.collect(cfg, containers, interval)
        if as_json:
            click.echo(json.dumps([r.to_json() for r in rows], indent=None if not no_stream else 2))
        else:
            _print_table(rows)
        if no_stream or not any(r.vm_rss_bytes is not None for r in rows):
            return 0
        time.sleep(0.1)


@click.command(name="inspect")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=_DATA_DIR_HELP)
@click.argument("container")
def inspect_(data_dir: Path | None, container: str) -> int:
    """A container's record, state and runtime config as JSON."""
    info: dict[str, Any] = observe.inspect(_cfg(data_dir), container)
    click.echo(json.dumps(info, indent=2))
    return 0


COMMANDS = (cp, stats_, inspect_)
