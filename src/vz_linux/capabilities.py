"""The capability registry (docs/profiles.md): capability -> Kconfig symbols that must hold -> live probe.

Capabilities are *derived* from the resolved ``.config`` through this one table; nothing declares
them by hand. Each capability also has a probe that proves it live in the guest: most by doing the
thing (``vz-agent --probe NAME``, docs/agent.md "Probes", run by :mod:`vz_linux.vm.probes`), one by a
boot of its own (``ext4_root``: :mod:`vz_linux.vm.root_probe`), the rest by a shell snippet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .arch import Architecture
from .dotconfig import ConfigLine, is_enabled, value
from .profiles import KernelCapability

# A requirement is a conjunction of alternatives: every group must have one enabled symbol.
Requirement = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class CapabilitySpec:
    capability: KernelCapability
    symbols: Requirement
    # Per-arch extra groups (e.g. nested_virt on x86_64 needs KVM_INTEL or KVM_AMD).
    arch_symbols: Mapping[Architecture, Requirement] = field(default_factory=dict)
    # Shell snippet run by the guest agent's probe (BusyBox sh). Exit 0 = present; output = evidence.
    probe: str = ""
    # Proved instead by `vz-agent --probe <capability>`, which does the thing (docs/agent.md, "Probes").
    agent_probe: bool = False
    # Proved instead by a boot of its own (vz_linux.vm.root_probe: ext4_root boots from an ext4 disk).
    boot_probe: bool = False

    def requirement(self, arch: Architecture) -> Requirement:
        return self.symbols + tuple(self.arch_symbols.get(arch, ()))


def _all(*symbols: str) -> Requirement:
    return tuple((s,) for s in symbols)


C = KernelCapability
REGISTRY: dict[KernelCapability, CapabilitySpec] = {
    spec.capability: spec
    for spec in (
        CapabilitySpec(C.vsock, _all("VSOCKETS", "VIRTIO_VSOCKETS"), agent_probe=True),
        CapabilitySpec(C.virtiofs, _all("FUSE_FS", "VIRTIO_FS"), agent_probe=True),
        CapabilitySpec(C.hvc0_serial, _all("VIRTIO_CONSOLE", "HVC_DRIVER"), agent_probe=True),
        CapabilitySpec(C.ext4_root, _all("EXT4_FS", "BLOCK", "VIRTIO_BLK"), boot_probe=True),
        CapabilitySpec(C.overlayfs, _all("OVERLAY_FS"), agent_probe=True),
        # The probe makes a veth pair across two new namespaces: VETH is part of the capability.
        CapabilitySpec(C.netns, _all("NET_NS", "VETH"), agent_probe=True),
        CapabilitySpec(C.seccomp, _all("SECCOMP", "SECCOMP_FILTER"), agent_probe=True),
        CapabilitySpec(C.io_uring, _all("IO_URING"), agent_probe=True),
        CapabilitySpec(C.nested_virt, _all("KVM"),
                       arch_symbols={Architecture.x86_64: (("KVM_INTEL", "KVM_AMD"),)}, agent_probe=True),
        CapabilitySpec(C.tun, _all("TUN"),
                       probe="test -c /dev/net/tun && echo /dev/net/tun present"),
        # The probe loop-mounts the host's image: BLK_DEV_LOOP is part of the capability.
        CapabilitySpec(C.btrfs_snapshots, _all("BTRFS_FS", "BLK_DEV_LOOP"), agent_probe=True),
        CapabilitySpec(C.nfsd, _all("NFSD", "NFSD_V4"), agent_probe=True),
        # The dm probes map loop devices: BLK_DEV_LOOP is part of both.
        CapabilitySpec(C.device_mapper, _all("BLK_DEV_DM", "BLK_DEV_LOOP"), agent_probe=True),
        # aes-xts-plain64, the probe's cipher: dm-crypt itself plus AES and the XTS mode.
        CapabilitySpec(C.dm_crypt, _all("BLK_DEV_DM", "DM_CRYPT", "CRYPTO_AES", "CRYPTO_XTS", "BLK_DEV_LOOP"),
                       agent_probe=True),
        # Symbols come from the container profile's exclusion lines (see container_sandbox_holds).
        CapabilitySpec(C.container_sandbox, (),
                       probe=("! test -e /proc/config.gz && ! test -e /dev/kvm && ! test -e /dev/net/tun"
                              " && ! grep -qwE 'nfs|nfs4|cifs|9p|squashfs|vfat' /proc/filesystems"
                              " && ! test -e /proc/sys/kernel/bpf_stats_enabled"
                              " && echo 'no config.gz, kvm, tun, nfs/cifs/9p/squashfs/vfat, bpf'")),
    )
}


def unmet_groups(spec: CapabilitySpec, config: Mapping[str, str], arch: Architecture) -> list[tuple[str, ...]]:
    return [group for group in spec.requirement(arch) if not any(is_enabled(dict(config), s) for s in group)]


def container_sandbox_violations(config: Mapping[str, str], exclusions: Iterable[ConfigLine]) -> list[ConfigLine]:
    """Exclusion lines (``=n`` / "is not set") of the container profile that do not hold."""
    cfg = dict(config)
    return [line for line in exclusions if line.value == "n" and is_enabled(cfg, line.symbol)]


def derive_capabilities(
    config: Mapping[str, str],
    arch: Architecture,
    container_exclusions: Iterable[ConfigLine] = (),
) -> frozenset[KernelCapability]:
    """Capabilities the resolved config provides.

    ``container_exclusions`` are the "off" lines of the container profile's fragments; without
    them ``container_sandbox`` cannot be claimed.
    """
    exclusions = [line for line in container_exclusions if line.value == "n"]
    out: set[KernelCapability] = set()
    for cap, spec in REGISTRY.items():
        if cap is C.container_sandbox:
            if exclusions and not container_sandbox_violations(config, exclusions):
                out.add(cap)
        elif not unmet_groups(spec, config, arch):
            out.add(cap)
    return frozenset(out)


def explain_missing(
    missing: Iterable[KernelCapability],
    config: Mapping[str, str],
    arch: Architecture,
    container_exclusions: Iterable[ConfigLine] = (),
) -> list[str]:
    """One human line per missing capability naming the symbols behind it."""
    lines: list[str] = []
    for cap in sorted(missing):
        spec = REGISTRY[cap]
        if cap is C.container_sandbox:
            bad = container_sandbox_violations(config, container_exclusions)
            names = ", ".join(f"CONFIG_{b.symbol}={value(dict(config), b.symbol)}" for b in bad) or "no exclusions given"
            lines.append(f"{cap}: exclusions do not hold: {names}")
        else:
            groups = unmet_groups(spec, config, arch)
            text = ", ".join(" or ".join(f"CONFIG_{s}" for s in g) + " is n" for g in groups)
            lines.append(f"{cap}: {text}")
    return lines
