"""Which kernel + initramfs a VM boots: a bundle dir, a profile (through the selection API), or
explicit ``--kernel/--initramfs`` paths. Shared by ``vz-linux run`` and ``vz-linux-bench``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch import Architecture
from ..bundle.model import KernelBundle, validate_bundle
from ..bundle.resolve import KernelBundleOptions, ensure_kernel_bundle
from ..errors import InvalidConfigError, MissingArtifactsError
from ..layout import INITRAMFS, KERNEL, default_bundle_dir, trusted_out_root
from ..profiles import KernelProfile
from .linux_vm import VmConfig


@dataclass(frozen=True)
class ResolvedGuest:
    config: VmConfig
    # Checksums of the kernel and initramfs that validation just vouched for (none for explicit files):
    # templates key on them without hashing again.
    sha256: Mapping[Path, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GuestSource:
    bundle_dir: Path | None = None
    profile: KernelProfile | None = None
    arch: Architecture | None = None
    kernel: Path | None = None
    initramfs: Path | None = None
    install_dir: Path | None = None
    version_check: bool = True

    def bundle(self) -> KernelBundle | None:
        """The validated bundle this source names (None for explicit kernel/initramfs paths)."""
        if self.kernel is not None:
            return None
        if self.bundle_dir is not None:
            return validate_bundle(self.bundle_dir, profile=self.profile,
                                   require_exact_agent_version=self.version_check)
        if self.arch is not None and self.arch is not Architecture.host():
            # The selection API installs host-arch bundles; another arch boots from its build tree.
            profile = self.profile or KernelProfile.developer
            out_root = trusted_out_root()
            if out_root is None:
                raise MissingArtifactsError(f"no {profile.value} bundle for {self.arch} named",
                                            hint="pass --bundle-dir (outside a source checkout)")
            return validate_bundle(default_bundle_dir(profile, self.arch, out_root), profile=profile,
                                   require_exact_agent_version=self.version_check)
        return ensure_kernel_bundle(KernelBundleOptions(
            profile=self.profile, install_dir=self.install_dir, require_exact_agent_version=self.version_check))

    def vm_config(self, **overrides: Any) -> VmConfig:
        return self.resolve(**overrides).config

    def resolve(self, **overrides: Any) -> ResolvedGuest:
        if self.kernel is not None or self.initramfs is not None:
            if self.kernel is None or self.initramfs is None:
                raise InvalidConfigError("--kernel and --initramfs go together")
            if self.bundle_dir is not None:
                raise InvalidConfigError("give either --bundle-dir or --kernel/--initramfs, not both")
            return ResolvedGuest(VmConfig(kernel=self.kernel, initramfs=self.initramfs,
                                          arch=self.arch or Architecture.host(), **overrides))
        bundle = self.bundle()
        assert bundle is not None
        if self.arch is not None and bundle.metadata.arch is not self.arch:
            raise InvalidConfigError(f"bundle {bundle.root} is for {bundle.metadata.arch}, not {self.arch}")
        config = VmConfig(kernel=bundle.kernel, initramfs=bundle.initramfs, arch=bundle.metadata.arch, **overrides)
        checksums = bundle.metadata.artifact_checksums()
        return ResolvedGuest(config, {bundle.kernel: checksums[KERNEL], bundle.initramfs: checksums[INITRAMFS]})
