"""``vz``: OCI containers in micro-VMs (``vz oci …``) and VM descriptors (``vz vm linux init``).

A thin shim: options become typed objects (:class:`RuntimeConfig`, :class:`ContainerRequest`,
:class:`InitRequest`), the library does the work, errors are printed by :func:`run_cli`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click
from rich.table import Table

from ..errors import InvalidConfigError
from ..oci import lifecycle, observe
from ..oci.config import RuntimeConfig, default_data_dir
from ..oci.container import ContainerRequest, Sink, run_foreground
from ..oci.spec import Volume, parse_env
from ..profiles import KernelProfile
from ..vm.descriptor import InitRequest, init_vm
from .common import out_console, run_cli, setup_logging
from .container_cmds import COMMANDS as CONTAINER_COMMANDS

_PROFILES = click.Choice([p.value for p in KernelProfile])
# Options stop at IMAGE so the container's command keeps its own flags (`-- sh -c …` or not).
_POSITIONAL_TAIL = {"allow_interspersed_args": False, "help_option_names": ["-h", "--help"]}


def _write(stream: TextIO) -> Sink:
    def sink(data: bytes) -> None:
        stream.buffer.write(data)
        stream.buffer.flush()

    return sink


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True, help="Log every external command.")
@click.version_option(package_name="vz-linux")
def vz(verbose: bool) -> None:
    """Run OCI containers inside micro-VMs booted from a vz-linux bundle."""
    setup_logging(verbose)


@vz.group()
def oci() -> None:
    """Containers from a rootfs directory or an OCI image layout, each in its own micro-VM."""


def _data_dir_option(f: Any) -> Any:
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="Container state (default ~/.vz/oci, or $VZ_OCI_DATA_DIR).")(f)


def _config(data_dir: Path | None, profile: str | None = None, net: bool = False, cpus: int = 1,
            memory: int = 256, exec_timeout: float | None = None) -> RuntimeConfig:
    return RuntimeConfig(
        linux_profile=KernelProfile.parse(profile) if profile else None,
        data_dir=data_dir or default_data_dir(), cpus=cpus, memory_mib=memory, network=net,
        exec_timeout=exec_timeout,
    )


def _container_options(f: Any) -> Any:
    opts: list[Any] = [
        click.option("--kernel-profile", "profile", type=_PROFILES, default=None,
                     help="Kernel profile the VM boots (default: developer)."),
        click.option("--name", default=None, help="Container name (default: its id)."),
        click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Set an environment variable."),
        click.option("-w", "--workdir", default=None, metavar="DIR", help="Working directory inside."),
        click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:GUEST[:ro]",
                     help="Bind a host directory into the container (a virtiofs share)."),
        click.option("--net", is_flag=True, help="Give the VM user-mode networking (shared by the container)."),
        click.option("--cpus", type=click.IntRange(1), default=1, show_default=True),
        click.option("--memory", type=click.IntRange(64), default=256, show_default=True, help="MiB."),
        click.option("--timeout", "exec_timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Kill the container after this many seconds."),
        _data_dir_option,
        click.argument("image"),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _command(command: tuple[str, ...]) -> tuple[str, ...]:
    # With options ending at IMAGE, click hands the `--` separator through as an argument.
    return command[1:] if command[:1] == ("--",) else command


def _request(image: str, command: tuple[str, ...], env: tuple[str, ...], workdir: str | None,
             volumes: tuple[str, ...], name: str | None) -> ContainerRequest:
    return ContainerRequest(image=image, command=_command(command), env=parse_env(env), workdir=workdir,
                            volumes=tuple(Volume.parse(v) for v in volumes), name=name)


@oci.command(context_settings=_POSITIONAL_TAIL)
@click.option("--rm", "remove", is_flag=True, help="Remove the container's state when it exits.")
@click.option("-d", "--detach", is_flag=True, help="Create and start it in the background; print its id.")
@_container_options
def run(remove: bool, detach: bool, profile: str | None, name: str | None, env: tuple[str, ...],
        workdir: str | None, volumes: tuple[str, ...], net: bool, cpus: int, memory: int,
        exec_timeout: float | None, data_dir: Path | None, image: str, command: tuple[str, ...]) -> int:
    """Run CMD in a container from IMAGE; exit with its exit code."""
    cfg = _config(data_dir, profile, net, cpus, memory, exec_timeout)
    req = _request(image, command, env, workdir, volumes, name)
    if detach:
        if remove:
            raise InvalidConfigError("--rm and -d together are not supported",
                                     hint="remove a detached container with `vz oci rm`")
        click.echo(lifecycle.run_detached(cfg, req).id)
        return 0
    return run_foreground(cfg, req, remove=remove, on_stdout=_write(sys.stdout), on_stderr=_write(sys.stderr))


@oci.command(context_settings=_POSITIONAL_TAIL)
@_container_options
def create(profile: str | None, name: str | None, env: tuple[str, ...], workdir: str | None,
           volumes: tuple[str, ...], net: bool, cpus: int, memory: int, exec_timeout: float | None,
           data_dir: Path | None, image: str, command: tuple[str, ...]) -> int:
    """Boot a VM for a container from IMAGE and prepare it; print its id (start it with `start`)."""
    cfg = _config(data_dir, profile, net, cpus, memory, exec_timeout)
    state = lifecycle.create(cfg, _request(image, command, env, workdir, volumes, name))
    click.echo(state.id)
    return 0


@oci.command()
@_data_dir_option
@click.argument("container")
def start(data_dir: Path | None, container: str) -> int:
    """Start a created container's process (in the background; see `logs`)."""
    click.echo(lifecycle.start(_config(data_dir), container).id)
    return 0


@oci.command(name="exec", context_settings=_POSITIONAL_TAIL)
@click.option("-e", "--env", "env", multiple=True, metavar="K=V")
@click.option("-w", "--workdir", default=None, metavar="DIR")
@_data_dir_option
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(env: tuple[str, ...], workdir: str | None, data_dir: Path | None, container: str,
          command: tuple[str, ...]) -> int:
    """Run CMD inside a running container; exit with its exit code."""
    return lifecycle.exec_in(_config(data_dir), container, _command(command), env=env, cwd=workdir,
                             on_stdout=_write(sys.stdout), on_stderr=_write(sys.stderr))


@oci.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Include finished containers.")
@click.option("--json", "as_json", is_flag=True)
@_data_dir_option
def ps(all_: bool, as_json: bool, data_dir: Path | None) -> int:
    """List containers."""
    rows = lifecycle.ps(_config(data_dir), all_=all_)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "NAME", "STATUS", "IMAGE", "COMMAND", "CREATED"):
        table.add_column(col)
    for r in rows:
        status = r.status.value + (f" ({r.exit_code})" if r.exit_code is not None else "")
        table.add_row(r.id, r.name, status, r.image, r.command, r.created)
    out_console.print(table)
    return 0


@oci.command()
@click.option("-t", "--time", "timeout", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
@_data_dir_option
@click.argument("containers", nargs=-1, required=True)
def stop(timeout: float, data_dir: Path | None, containers: tuple[str, ...]) -> int:
    """Stop containers (SIGTERM, then SIGKILL) and shut their VMs down."""
    cfg = _config(data_dir)
    for c in containers:
        click.echo(lifecycle.stop(cfg, c, timeout=timeout).id)
    return 0


@oci.command()
@click.option("-f", "--force", is_flag=True, help="Stop running containers first.")
@_data_dir_option
@click.argument("containers", nargs=-1, required=True)
def rm(force: bool, data_dir: Path | None, containers: tuple[str, ...]) -> int:
    """Remove containers and their state."""
    cfg = _config(data_dir)
    for c in containers:
        click.echo(lifecycle.remove(cfg, c, force=force))
    return 0


@oci.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the container ends.")
@_data_dir_option
@click.argument("container")
def logs(follow: bool, data_dir: Path | None, container: str) -> int:
    """Print a container's stdout and stderr."""
    if follow:
        observe.follow_logs(_config(data_dir), container, _write(sys.stdout), _write(sys.stderr))
        return 0
    out, err = lifecycle.logs(_config(data_dir), container)
    _write(sys.stdout)(out)
    _write(sys.stderr)(err)
    return 0


for _container_command in CONTAINER_COMMANDS:
    oci.add_command(_container_command)


@vz.group()
def vm() -> None:
    """VM descriptors."""


@vm.group()
def linux() -> None:
    """Linux guests booted from a vz-linux bundle."""


@linux.command()
@click.option("--name", required=True, help="VM name: writes NAME.linux.json and NAME.img.")
@click.option("--output-dir", type=click.Path(path_type=Path), default=None, help="Default: ~/.vz/vms.")
@click.option("--disk-size-gb", type=int, default=None, help="Sparse disk size (default 8, or the existing size).")
@click.option("--kernel-profile", "profile", type=_PROFILES, default=None)
@click.option("--kernel", type=click.Path(path_type=Path), default=None)
@click.option("--initramfs", type=click.Path(path_type=Path), default=None)
@click.option("--version-json", type=click.Path(path_type=Path), default=None)
@click.option("--force", is_flag=True, help="Rewrite the descriptor and resize the disk.")
def init(name: str, output_dir: Path | None, disk_size_gb: int | None, profile: str | None,
         kernel: Path | None, initramfs: Path | None, version_json: Path | None, force: bool) -> int:
    """Validate the kernel artifacts, create the disk image and write NAME.linux.json."""
    result = init_vm(InitRequest(
        name=name, output_dir=output_dir, disk_size_gb=disk_size_gb,
        profile=KernelProfile.parse(profile) if profile else None,
        kernel=kernel, initramfs=initramfs, version_json=version_json, force=force,
    ))
    d = result.descriptor
    click.echo(f"{result.status.value}: {result.descriptor_path} (disk {d['disk']['path']}, "
               f"{d['disk']['size_bytes'] // (1 << 30)} GiB, {d['profile']} {d['artifact_version']})")
    return 0


def main(args: list[str] | None = None) -> NoReturn:
    run_cli(vz, "vz", args)
