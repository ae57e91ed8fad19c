"""``vz vm linux init|run|ls|rm``: persistent Linux VMs (docs/vm.md, "Persistent VMs"; the descriptor:
docs/oci.md, "vz vm linux init"). The root CLI (``cli/vz.py``) adds these to its ``vm linux`` group."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..oci.config import RuntimeConfig, default_data_dir
from ..oci.pull import prepare
from ..profiles import KernelProfile
from ..vm.descriptor import InitRequest, init_vm, resolve_artifacts
from ..vm.persistent import RunRequest, list_vms, remove_vm, run_vm
from . import image_cmds
from .common import print_listing

_PROFILES = click.Choice([p.value for p in KernelProfile])
_vm_dir = click.option("--output-dir", "vm_dir", type=click.Path(path_type=Path), default=None,
                       help="Where VMs live (default ~/.vz/vms).")


def _rootfs(req: InitRequest, rootfs: Path | None, image: str | None, data_dir: Path | None,
            pull: dict[str, Any]) -> tuple[Path | None, str | None]:
    """(directory to populate the disk from, what to record as its source)."""
    if rootfs is not None and image is not None:
        raise click.UsageError("--rootfs and --image go alone: pass one of them")
    if rootfs is None and image is None:
        return None, None
    cfg = RuntimeConfig(data_dir=data_dir or default_data_dir())
    name = str(rootfs) if rootfs is not None else str(image)
    tree = prepare(name, store=cfg.image_store(), images_dir=cfg.images_dir,
                   opts=image_cmds.pull_options_from(**pull), guest=lambda: resolve_artifacts(req).metadata.arch)
    source = tree.image + (f"@{tree.digest}" if tree.digest and "@" not in tree.image else "")
    return tree.path, source if image is not None else str(tree.path)


@click.command(name="init")
@click.option("--name", required=True, help="VM name: writes NAME.linux.json and NAME.img.")
@_vm_dir
@click.option("--disk-size-gb", type=int, default=None, help="Disk size (default 8, or the existing size).")
@click.option("--rootfs", type=click.Path(path_type=Path), default=None,
              help="Make the disk an ext4 filesystem holding this root filesystem directory.")
@click.option("--image", default=None, metavar="IMAGE",
              help="Make the disk an ext4 filesystem holding this image (registry REF, docker://REF, layout DIR[:TAG]).")
@image_cmds.pull_options
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Image store (default ~/.vz/oci).")
@click.option("--kernel-profile", "profile", type=_PROFILES, default=None)
@click.option("--kernel", type=click.Path(path_type=Path), default=None)
@click.option("--initramfs", type=click.Path(path_type=Path), default=None)
@click.option("--version-json", type=click.Path(path_type=Path), default=None)
@click.option("--force", is_flag=True, help="Rewrite the descriptor and resize (or, with --rootfs/--image, replace) the disk.")
def init(name: str, vm_dir: Path | None, disk_size_gb: int | None, rootfs: Path | None, image: str | None,
         data_dir: Path | None, profile: str | None, kernel: Path | None, initramfs: Path | None,
         version_json: Path | None, force: bool, **pull: Any) -> int:
    """Validate the kernel artifacts, create the disk image and write NAME.linux.json."""
    req = InitRequest(name=name, output_dir=vm_dir, disk_size_gb=disk_size_gb,
                      profile=KernelProfile.parse(profile) if profile else None,
                      kernel=kernel, initramfs=initramfs, version_json=version_json, force=force)
    tree, source = _rootfs(req, rootfs, image, data_dir, pull)
    if tree is not None:
        req = InitRequest(**{**req.__dict__, "rootfs": tree, "source": source})
    result = init_vm(req)
    d = result.descriptor
    fs = f", ext4 from {d['root']['source']}" if "root" in d else ""
    click.echo(f"{result.status.value}: {result.descriptor_path} (disk {d['disk']['path']}, "
               f"{d['disk']['size_bytes'] // (1 << 30)} GiB{fs}, {d['profile']} {d['artifact_version']})")
    return 0


def _write(stream: Any) -> Any:
    def sink(data: bytes) -> None:
        stream.buffer.write(data)
        stream.buffer.flush()

    return sink


@click.command(name="run", context_settings={"allow_interspersed_args": False})
@_vm_dir
@click.option("--force", is_flag=True, help="Boot even when the artifacts' checksums no longer match the descriptor.")
@click.option("--cpus", type=click.IntRange(1), default=1, show_default=True)
@click.option("--memory", type=click.IntRange(64), default=256, show_default=True, help="MiB.")
@click.option("--net", is_flag=True, help="User-mode networking (virtio-net + DHCP).")
@click.option("--timeout", "exec_timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Kill the command after this many seconds.")
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(vm_dir: Path | None, force: bool, cpus: int, memory: int, net: bool, exec_timeout: float | None,
        name: str, command: tuple[str, ...]) -> int:
    """Boot VM NAME from its disk (root=/dev/vda), run CMD in it, sync and power off; exit with CMD's code."""
    command = command[1:] if command[:1] == ("--",) else command
    req = RunRequest(name=name, vm_dir=vm_dir, command=command, force=force, cpus=cpus, memory_mib=memory,
                     network=net, exec_timeout=exec_timeout)
    code = run_vm(req, _write(sys.stdout), _write(sys.stderr))
    if not command:
        click.echo(f"{name}: booted from its disk and powered off")
    return code


@click.command(name="ls")
@_vm_dir
@click.option("--json", "as_json", is_flag=True)
def ls(vm_dir: Path | None, as_json: bool) -> int:
    """List VMs: name, profile, disk size and use, what the disk was made from, status."""
    rows = list_vms(vm_dir)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    print_listing(("NAME", "PROFILE", "DISK", "USED", "SOURCE", "STATUS", "CREATED"),
                  ((r.name, r.profile, f"{r.size_bytes / 2**30:.0f} GiB", f"{r.used_bytes / 2**20:.0f} MiB",
                    r.source, r.status, r.created) for r in rows))
    return 0


@click.command(name="rm")
@_vm_dir
@click.argument("names", nargs=-1, required=True)
def rm(vm_dir: Path | None, names: tuple[str, ...]) -> int:
    """Remove VMs: their descriptor, the disk init made and the serial log (refused while running)."""
    for name in names:
        remove_vm(name, vm_dir)
        click.echo(name)
    return 0


COMMANDS = (init, run, ls, rm)
