"""``vz oci …`` (containers in micro-VMs) and ``vz vm linux …`` (persistent Linux VMs): the groups the
root command ``vz`` (:mod:`.vz_main`) imports when one is invoked.

A thin shim: options become typed objects (:class:`RuntimeConfig`, :class:`ContainerRequest`,
:class:`PullOptions`), the library does the work, errors are printed by :func:`run_cli`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import click

from ..errors import InvalidConfigError
from ..oci import lifecycle, observe
from ..oci.config import RuntimeConfig, default_data_dir
from ..oci.container import Attach, ContainerRequest, Sink, run_foreground
from ..oci.ports import parse_ports
from ..oci.spec import Volume, parse_env
from ..profiles import KernelProfile
from . import image_cmds, vm_cmds
from .common import print_listing
from .container_cmds import COMMANDS as CONTAINER_COMMANDS
from .terminal import TerminalSession
from .vz_main import main as main

_PROFILES = click.Choice([p.value for p in KernelProfile])
# Options stop at IMAGE so the container's command keeps its own flags (`-- sh -c …` or not).
_POSITIONAL_TAIL = {"allow_interspersed_args": False, "help_option_names": ["-h", "--help"]}


def _write(stream: TextIO) -> Sink:
    def sink(data: bytes) -> None:
        stream.buffer.write(data)
        stream.buffer.flush()

    return sink


# The root command `vz` is in .vz_main; it imports this module only when `oci` or `vm` is invoked.
@click.group()
def oci() -> None:
    """Containers from a registry image, an OCI image layout or a rootfs directory, each in its own micro-VM."""


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


def _publish_option(f: Any) -> Any:
    return click.option("-p", "--publish", "ports", multiple=True, metavar="[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp]",
                        help="Forward a host TCP port (default on 127.0.0.1) to the container's port.")(f)


def _terminal_options(f: Any) -> Any:
    f = click.option("-t", "--tty", is_flag=True, help="Run the process on a terminal.")(f)
    return click.option("-i", "--interactive", is_flag=True,
                        help="Keep stdin open and forward it (raw keys with -t).")(f)


def _attached(tty: bool, interactive: bool, body: Callable[[Attach], int]) -> int:
    """Run ``body`` attached as asked; the terminal is restored however it ends."""
    with TerminalSession(tty=tty, interactive=interactive) as term:
        return body(Attach(tty=tty, interactive=interactive, winsize=term.winsize, on_started=term.attach))


def _command(command: tuple[str, ...]) -> tuple[str, ...]:
    # With options ending at IMAGE, click hands the `--` separator through as an argument.
    return command[1:] if command[:1] == ("--",) else command


def _request(image: str, command: tuple[str, ...], env: tuple[str, ...], workdir: str | None,
             volumes: tuple[str, ...], name: str | None, pull: dict[str, Any] | None = None) -> ContainerRequest:
    return ContainerRequest(image=image, command=_command(command), env=parse_env(env), workdir=workdir,
                            volumes=tuple(Volume.parse(v) for v in volumes), name=name,
                            pull=image_cmds.pull_options_from(**(pull or {})))


@oci.command(context_settings=_POSITIONAL_TAIL)
@click.option("--rm", "remove", is_flag=True, help="Remove the container's state when it exits.")
@click.option("-d", "--detach", is_flag=True, help="Create and start it in the background; print its id.")
@click.option("--cold", is_flag=True,
              help="Boot the VM (image over virtiofs) instead of restoring its container template.")
@_publish_option
@_terminal_options
@image_cmds.pull_options
@_container_options
def run(remove: bool, detach: bool, cold: bool, ports: tuple[str, ...], tty: bool, interactive: bool,
        profile: str | None, name: str | None, env: tuple[str, ...], workdir: str | None,
        volumes: tuple[str, ...], net: bool, cpus: int, memory: int, exec_timeout: float | None,
        data_dir: Path | None, image: str, command: tuple[str, ...], **pull: Any) -> int:
    """Run CMD in a container from IMAGE; exit with its exit code.

    The VM is restored from a container template (made on first use) with the image on a read-only
    block device; --cold boots it instead, and so do volumes (-v: virtiofs blocks snapshots) and -d.
    """
    cfg = _config(data_dir, profile, net, cpus, memory, exec_timeout)
    req = _request(image, command, env, workdir, volumes, name, pull)
    req = replace(req, ports=parse_ports(ports))
    if detach:
        if remove or tty or interactive:
            raise InvalidConfigError("-d does not go with --rm, -t or -i",
                                     hint="remove a detached container with `vz oci rm`; "
                                          "attach with `vz oci exec -it`")
        click.echo(lifecycle.run_detached(cfg, req).id)
        return 0
    return _attached(tty, interactive, lambda attach: run_foreground(
        cfg, req, remove=remove, on_stdout=_write(sys.stdout), on_stderr=_write(sys.stderr),
        attach=attach, cold=cold))


@oci.command(context_settings=_POSITIONAL_TAIL)
@_publish_option
@image_cmds.pull_options
@_container_options
def create(ports: tuple[str, ...], profile: str | None, name: str | None, env: tuple[str, ...],
           workdir: str | None, volumes: tuple[str, ...], net: bool, cpus: int, memory: int,
           exec_timeout: float | None, data_dir: Path | None, image: str, command: tuple[str, ...],
           **pull: Any) -> int:
    """Boot a VM for a container from IMAGE and prepare it; print its id (start it with `start`).
    Published ports (-p) are listened on from now and served once the container is started."""
    cfg = _config(data_dir, profile, net, cpus, memory, exec_timeout)
    req = replace(_request(image, command, env, workdir, volumes, name, pull), ports=parse_ports(ports))
    state = lifecycle.create(cfg, req)
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
@_terminal_options
@_data_dir_option
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(env: tuple[str, ...], workdir: str | None, tty: bool, interactive: bool, data_dir: Path | None,
          container: str, command: tuple[str, ...]) -> int:
    """Run CMD inside a running container; exit with its exit code."""
    return _attached(tty, interactive, lambda attach: lifecycle.exec_in(
        _config(data_dir), container, _command(command), env=env, cwd=workdir,
        on_stdout=_write(sys.stdout), on_stderr=_write(sys.stderr), attach=attach))


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
    print_listing(("ID", "NAME", "STATUS", "IMAGE", "COMMAND", "CREATED"),
                  ((r.id, r.name, r.status.value + (f" ({r.exit_code})" if r.exit_code is not None else ""),
                    r.image, r.command, r.created) for r in rows))
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


for _cmd in (*image_cmds.COMMANDS, *CONTAINER_COMMANDS):
    oci.add_command(_cmd)


@click.group()
def vm() -> None:
    """Persistent VMs booted from an ext4 disk."""


@vm.group()
def linux() -> None:
    """Linux guests booted from a vz-linux bundle."""


for _cmd in vm_cmds.COMMANDS:
    linux.add_command(_cmd)
