"""Templates: a saved, agent-ready VM per bundle and VM shape, kept in the cache and restored instead
of booting (docs/vm.md, "Snapshots and templates").

A template's key covers the kernel's and initramfs's sha256 and the VM's whole shape as QEMU sees it
(:func:`vz_linux.vm.snapshot.vm_shape`: arch, machine, CPU, accelerator, cpus, memory, network and
every other device, kernel command line), so a VM restores only from a template of its own kind. It
lives at ``cache_root()/templates/<key>/`` and is made on first use: boot cold, wait for the agent,
save. Making one holds ``<key>.lock`` (filelock), so concurrent first users make it once; it is
published with :func:`vz_linux.fsutil.publish_dir`, so a reader sees a whole template or none. A
template that fails to restore (short, corrupt, or saved by another QEMU) is made again, once.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import filelock

from ..errors import SnapshotCorruptError, SnapshotMismatchError, TemplateError
from ..hashing import cache_key
from ..layout import cache_root
from .linux_vm import LinuxVm, VmConfig, describe, effective_accel
from .snapshot import file_info, open_snapshot, vm_shape

log = logging.getLogger(__name__)

TEMPLATE_SCHEMA = 2  # 2: free guest memory zeroed before the save
# A template is made by one cold boot; others wait for it rather than boot alongside.
LOCK_TIMEOUT_S = 600.0
_PLACEHOLDER = Path("/vz-template")  # socket paths are named away by vm_shape; any path keys alike


def templates_root() -> Path:
    return cache_root() / "templates"


@dataclass(frozen=True)
class Template:
    key: str
    path: Path

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.lock")


@dataclass(frozen=True)
class TemplateBuild:
    """A template just made: where, how long the cold boot + save took, and its size on disk."""

    path: Path
    seconds: float
    disk_bytes: int  # allocated blocks of the template's files (the state file is sparse-free)


# What a template's maker does in the ready guest before saving it (an OCI template: copy crun in).
Setup = Callable[[LinuxVm], None]

# Last before the save: clean caches dropped (an OCI template's placeholder disk blocks among them:
# oci/guest.py) and the guest's free pages zeroed (BusyBox sh). Pages the boot touched and freed
# (the initramfs archive once unpacked, init memory) still hold data, so the save writes them and
# every restore loads them; migration skips zero pages, so zeroed they cost neither. Clean caches
# are dropped first, then a tmpfs filled with zeros (the allocator hands out the recently freed pages
# first) and removed; at most 512 MiB, 8 MiB left free. Prints the MiB zeroed. Measured: state
# 31.5 → 27.4 MB, RSS of a restored VM 4 MiB less, 0.4 s more per template (docs/vm.md).
_ZERO_FREE_MEMORY = (
    "sync; echo 3 > /proc/sys/vm/drop_caches; "
    "n=$(awk '/^MemFree:/ { n = int($2 / 1024) - 8; print (n > 512 ? 512 : n) }' /proc/meminfo); "
    "[ \"$n\" -gt 0 ] || exit 0; "
    # its own tmpfs: /dev/shm holds at most half the RAM
    "d=/run/.vz-zero; mkdir -p $d && mount -t tmpfs -o size=\"$n\"m vz-zero $d || exit 1; "
    "dd if=/dev/zero of=$d/z bs=1M count=\"$n\" 2>&1; rc=$?; umount $d; rmdir $d; "
    "[ $rc -eq 0 ] && echo \"$n\""
)


def zero_free_memory(vm: LinuxVm, timeout: float) -> int:
    """Zero the ready guest's free memory before a save (:data:`_ZERO_FREE_MEMORY`); the MiB zeroed,
    0 when the guest could not (the template is still good, only larger: logged)."""
    r = vm.agent.exec_collect(["/bin/sh", "-c", _ZERO_FREE_MEMORY], timeout=timeout, max_output=4096)
    text = r.stdout.decode(errors="replace").strip()
    last = text.splitlines()[-1] if text else ""  # dd's own lines (its errors too) come first
    if not r.ok or not last.isdigit():
        log.warning("could not zero the template guest's free memory (exit %s): %s", r.exit_code,
                    (text + r.stderr.decode(errors="replace")).strip()[-200:])
        return 0
    return int(last)


def template_for(config: VmConfig, known_sha256: Mapping[Path, str] | None = None,
                 inputs: Mapping[str, str] | None = None) -> Template:
    """The template a VM of ``config`` restores from. ``known_sha256``: validated checksums of the
    kernel/initramfs (a bundle's metadata), spared a re-hash; the restore still verifies the files.
    ``inputs``: what else the saved guest holds (a setup's files, by sha256), part of the key."""
    known = known_sha256 or {}

    def digest(path: Path | None) -> str | None:
        if path is None:
            return None
        return known.get(path) or file_info(path).sha256

    shape = vm_shape(describe(config, effective_accel(config).accel, _PLACEHOLDER))
    key = cache_key({"schema": TEMPLATE_SCHEMA, "shape": shape.model_dump(), "kernel": digest(config.kernel),
                     "initramfs": digest(config.initramfs), **({"inputs": dict(inputs)} if inputs else {})})
    return Template(key, templates_root() / key)


def usable_id(path: Path) -> str | None:
    """The snapshot id of an intact-looking template (record readable, state whole), else None."""
    try:
        snap = open_snapshot(path)
    except SnapshotCorruptError:
        return None
    snap.close()
    return snap.manifest.id


def ensure_template(template: Template, config: VmConfig, *, timeout: float = 120.0,
                    unusable: str | None = None, setup: Setup | None = None) -> tuple[str, TemplateBuild | None]:
    """Make ``template`` unless an intact one is there (and is not the snapshot id ``unusable``, which
    just failed to restore). Returns the snapshot id to restore and, when made here, the build.
    ``setup`` runs in the ready guest before it is saved."""
    if unusable is None and (found := usable_id(template.path)) is not None:
        return found, None
    try:
        template.path.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(template.lock_path, timeout=LOCK_TIMEOUT_S):
            found = usable_id(template.path)
            if found is not None and found != unusable:
                return found, None  # another process made it while we waited
            return _make(template, config, timeout, setup)
    except filelock.Timeout as e:
        raise TemplateError(f"template {template.key[:16]} is being made by another process for over "
                            f"{LOCK_TIMEOUT_S:.0f}s", hint=f"remove {template.lock_path} if that process is gone") from e
    except OSError as e:
        raise TemplateError(f"cannot keep templates in {template.path.parent}: {e.strerror or e}",
                            hint="make the cache directory writable, set VZ_LINUX_CACHE_DIR, or pass --cold") from e


def _make(template: Template, config: VmConfig, timeout: float, setup: Setup | None) -> tuple[str, TemplateBuild]:
    started = time.monotonic()
    # We hold the lock, so a stage left beside the template is from a maker that died mid-save.
    for stale in template.path.parent.glob(f".{template.path.name}.stage-*"):
        shutil.rmtree(stale, ignore_errors=True)
    # The template's own boot keeps its console in its work dir, never in the caller's log.
    with LinuxVm(replace(config, serial_log=None)) as vm:
        vm.wait_for_agent(timeout)
        if setup is not None:
            setup(vm)
        zeroed = zero_free_memory(vm, timeout)
        manifest = vm.save(template.path, resume=False, timeout=timeout)
    build = TemplateBuild(template.path, time.monotonic() - started,
                          sum(p.stat().st_blocks * 512 for p in template.path.iterdir()))
    log.info("made template %s in %.1f s (%.0f MiB on disk, %d MiB of free guest memory zeroed)",
             template.key[:16], build.seconds, build.disk_bytes / 2**20, zeroed)
    return manifest.id, build


def restore_from_template(config: VmConfig, *, timeout: float = 120.0,
                          known_sha256: Mapping[Path, str] | None = None, make_config: VmConfig | None = None,
                          setup: Setup | None = None, inputs: Mapping[str, str] | None = None) -> LinuxVm:
    """A running VM of ``config`` restored from its template (made first if needed, remade once if
    it cannot be restored). Raises :class:`TemplateError` when a freshly made one fails too.
    ``make_config``: the VM a template is made from when it is not ``config`` itself (of the same
    shape: an OCI template's placeholder disk stands for the container's image); ``setup`` and
    ``inputs``: see :func:`ensure_template` and :func:`template_for`."""
    template = template_for(config, known_sha256, inputs)
    maker = make_config or config
    snapshot_id, _ = ensure_template(template, maker, timeout=timeout, setup=setup)
    try:
        vm = LinuxVm.restore(template.path, config, timeout=timeout)
    except (SnapshotCorruptError, SnapshotMismatchError) as e:
        log.warning("template %s cannot be restored (%s): making it again", template.key[:16], e)
        snapshot_id, _ = ensure_template(template, maker, timeout=timeout, unusable=snapshot_id, setup=setup)
        try:
            vm = LinuxVm.restore(template.path, config, timeout=timeout)
        except (SnapshotCorruptError, SnapshotMismatchError) as again:
            raise TemplateError(f"template {template.key[:16]} was made again and still cannot be restored: "
                                f"{again}", hint="boot with --cold and report this") from again
    log.info("restored from template %s (snapshot %s)", template.key[:16], snapshot_id)
    return vm


def start_vm(config: VmConfig, *, cold: bool = False, timeout: float = 120.0,
             known_sha256: Mapping[Path, str] | None = None) -> LinuxVm:
    """A running VM of ``config`` with its agent ready: restored from its template, or booted when
    ``cold`` is asked for or the VM has virtiofs shares (which block snapshots; said at INFO level)."""
    if not cold and config.all_shares():
        log.info("booting cold: virtiofs shares (%s) block snapshots",
                 ", ".join(s.tag for s in config.all_shares()))
        cold = True
    if not cold:
        return restore_from_template(config, timeout=timeout, known_sha256=known_sha256)
    vm = LinuxVm(config)
    try:
        vm.start()
        vm.wait_for_agent(timeout)
    except BaseException:
        vm.stop()
        raise
    return vm

