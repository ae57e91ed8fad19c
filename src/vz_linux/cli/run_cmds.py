"""``vz-linux run``: boot a bundle, run one command in the guest, stream its output, exit with its code."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..arch import Architecture
from ..errors import AgentError
from ..oci.ports import parse_ports
from ..profiles import KernelProfile
from ..vm.accel import AccelChoice
from ..vm.agent_protocol import Stream
from ..vm.guest_source import GuestSource
from ..vm.linux_vm import LinuxVm
from ..vm.port_forward import PortForwarder
from ..vm.template import start_vm
from .common import err_console
from .terminal import TerminalSession

_PATH = click.Path(path_type=Path)


def run_in_guest(vm: LinuxVm, argv: list[str], timeout: float | None,
                 term: TerminalSession | None = None) -> int:
    """Stream the command's stdout/stderr to ours; return its exit code (128+N for signal N).
    ``term`` (``-t``/``-i``): run it on a guest terminal and/or forward our stdin."""
    term = term or TerminalSession(tty=False, interactive=False)
    with term, vm.agent.exec_stream(argv, timeout=timeout, tty=term.tty, winsize=term.winsize,
                                    close_stdin=not term.interactive) as stream:
        term.attach(stream)
        for chunk in stream:
            out = sys.stderr.buffer if chunk.stream is Stream.STDERR else sys.stdout.buffer
            out.write(chunk.data)
            out.flush()
        result = stream.wait()
    if result.error:
        err_console.print(f"vz-linux run: {result.error}", markup=False)
    if result.timed_out:
        err_console.print(f"vz-linux run: {argv[0]} timed out after {timeout:.0f}s", markup=False)
    return result.shell_exit_code


@click.command("run", context_settings={"ignore_unknown_options": False})
@click.option("--profile", type=click.Choice([p.value for p in KernelProfile]), default=None,
              help="Boot the installed bundle of this profile (selection API).")
@click.option("--bundle-dir", type=_PATH, help="Boot this bundle directory instead.")
@click.option("--kernel", type=_PATH, help="Kernel image (with --initramfs) instead of a bundle.")
@click.option("--initramfs", type=_PATH, help="Initramfs (with --kernel).")
@click.option("--arch", type=click.Choice([a.value for a in Architecture]), default=None,
              help="Guest architecture (default: the bundle's / the host's).")
@click.option("--rootfs-dir", type=_PATH, help="Share this directory as the guest's root (virtiofs + overlay).")
@click.option("--net", is_flag=True, help="User-mode network with DHCP (host reachable as 10.0.2.2).")
@click.option("--cpus", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--memory", "memory_mib", type=click.IntRange(32), default=256, show_default=True, help="MiB.")
@click.option("--accel", type=click.Choice([a.value for a in AccelChoice]), default="auto", show_default=True)
@click.option("--cmdline", "cmdline_extra", multiple=True, help="Extra kernel command-line word (repeatable).")
@click.option("--cold", is_flag=True,
              help="Boot from scratch instead of restoring this VM shape's template (made on first use).")
@click.option("--boot-timeout", type=float, default=120.0, show_default=True, help="Seconds to agent-ready.")
@click.option("--timeout", type=float, default=None, help="Kill the command after this many seconds.")
@click.option("--serial-log", type=_PATH, help="Keep the guest's serial console here.")
@click.option("--no-version-check", is_flag=True, help="Accept a bundle built by another vz-linux release.")
@click.option("-t", "--tty", is_flag=True, help="Run the command on a terminal in the guest.")
@click.option("-i", "--interactive", is_flag=True, help="Forward stdin (raw keys with -t).")
@click.option("-p", "--publish", "ports", multiple=True, metavar="[HOSTIP:]HOSTPORT:GUESTPORT",
              help="Forward a host TCP port (default on 127.0.0.1) to the guest's 127.0.0.1:GUESTPORT.")
@click.argument("command", nargs=-1, required=True)
def run_cmd(profile: str | None, bundle_dir: Path | None, kernel: Path | None, initramfs: Path | None,
            arch: str | None, rootfs_dir: Path | None, net: bool, cpus: int, memory_mib: int, accel: str,
            cmdline_extra: tuple[str, ...], cold: bool, boot_timeout: float, timeout: float | None,
            serial_log: Path | None, no_version_check: bool, tty: bool, interactive: bool,
            ports: tuple[str, ...], command: tuple[str, ...]) -> int:
    """Start a guest, run COMMAND in it (after `--`), print its output, exit with its exit code.

    The guest is restored from its template (a saved, agent-ready VM of the same bundle and shape,
    made on first use); --cold boots it instead, and so does --rootfs-dir (virtiofs blocks snapshots).
    """
    if profile is not None and bundle_dir is not None:
        raise click.UsageError("give --profile or --bundle-dir, not both")
    source = GuestSource(bundle_dir=bundle_dir, profile=KernelProfile.parse(profile) if profile else None,
                         arch=Architecture.parse(arch) if arch else None, kernel=kernel, initramfs=initramfs,
                         version_check=not no_version_check)
    guest = source.resolve(cpus=cpus, memory_mib=memory_mib, accel=AccelChoice.parse(accel), network=net,
                           rootfs=rootfs_dir, cmdline_extra=cmdline_extra, serial_log=serial_log)
    term = TerminalSession(tty=tty, interactive=interactive)
    with (PortForwarder(parse_ports(ports)) as forwarder,
          start_vm(guest.config, cold=cold, timeout=boot_timeout, known_sha256=guest.sha256) as vm):
        forwarder.start(vm.agent)
        try:
            return run_in_guest(vm, list(command), timeout, term)
        except AgentError as e:
            raise AgentError(f"running {command[0]} in the guest failed: {e}") from e
