"""Kernel profiles and capability names (docs/profiles.md). Names are public: keep their spelling."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TypeVar

from .errors import InvalidConfigError

E = TypeVar("E", bound=enum.StrEnum)


def _parse_enum(cls: type[E], what: str, name: str) -> E:
    try:
        return cls(name.strip())
    except ValueError:
        valid = ", ".join(m.value for m in cls)
        raise InvalidConfigError(f"unknown {what} {name!r}; valid: {valid}") from None


class KernelCapability(enum.StrEnum):
    vsock = "vsock"
    virtiofs = "virtiofs"
    hvc0_serial = "hvc0_serial"
    ext4_root = "ext4_root"
    overlayfs = "overlayfs"
    netns = "netns"
    seccomp = "seccomp"
    io_uring = "io_uring"
    nested_virt = "nested_virt"
    tun = "tun"
    btrfs_snapshots = "btrfs_snapshots"
    nfsd = "nfsd"
    device_mapper = "device_mapper"
    dm_crypt = "dm_crypt"
    container_sandbox = "container_sandbox"

    @classmethod
    def parse(cls, name: str) -> KernelCapability:
        return _parse_enum(cls, "capability", name)

    @classmethod
    def parse_list(cls, names: Iterable[str]) -> frozenset[KernelCapability]:
        return frozenset(cls.parse(n) for n in names if n.strip())


class KernelProfile(enum.StrEnum):
    developer = "developer"
    container = "container"

    @classmethod
    def parse(cls, name: str) -> KernelProfile:
        return _parse_enum(cls, "profile", name)

    @property
    def security_profile(self) -> str:
        return {
            KernelProfile.developer: "developer-nested-virt",
            KernelProfile.container: "container-hardened",
        }[self]

    @property
    def baseline(self) -> str:
        """The kernel make target the config starts from."""
        return {KernelProfile.developer: "defconfig", KernelProfile.container: "allnoconfig"}[self]

    @property
    def fragment_name(self) -> str:
        return {
            KernelProfile.developer: "vz-linux.config",
            KernelProfile.container: "vz-linux-container.config",
        }[self]

    @property
    def local_version(self) -> str:
        return {KernelProfile.developer: "-vz-dev", KernelProfile.container: "-vz-container"}[self]

    @property
    def contract(self) -> frozenset[KernelCapability]:
        """Capabilities every bundle of this profile must have: the build fails without one
        (docs/profiles.md) and validation refuses a bundle that lacks one (docs/selection.md)."""
        c = KernelCapability
        common = {c.vsock, c.virtiofs, c.hvc0_serial, c.ext4_root, c.overlayfs, c.netns, c.seccomp,
                  c.io_uring, c.btrfs_snapshots, c.device_mapper, c.dm_crypt}
        if self is KernelProfile.developer:
            return frozenset(common | {c.nested_virt, c.tun})
        return frozenset(common | {c.nfsd, c.container_sandbox})

    @property
    def bundle_subdir(self) -> str:
        """Sub-directory under linux/out[/<arch>] and under ~/.vz/linux/ ('' for developer in out/)."""
        return "" if self is KernelProfile.developer else "container"
