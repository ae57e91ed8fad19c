"""Small real bundles for the foundation tests: random-byte artifacts plus a generated version.json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vz_linux import layout
from vz_linux.arch import Architecture
from vz_linux.bundle.metadata import BundleMetadata, FileInfo, KernelSourceInfo, OciRuntimeInfo, ToolchainInfo
from vz_linux.hashing import sha256_file
from vz_linux.profiles import KernelCapability, KernelProfile
from vz_linux.version import AGENT_PROTOCOL_REVISION, AGENT_VERSION, METADATA_SCHEMA_VERSION

SMALL_SIZES = {layout.KERNEL: 64 * 1024, layout.INITRAMFS: 16 * 1024, layout.OCI_RUNTIME: 8 * 1024}


def make_bundle(
    root: Path,
    profile: KernelProfile = KernelProfile.developer,
    *,
    sizes: dict[str, int] | None = None,
    capabilities: Iterable[KernelCapability | str] | None = None,
    agent: str = AGENT_VERSION,
    protocol: int | None = AGENT_PROTOCOL_REVISION,
    kernel: str = "6.1.158",
    **overrides: Any,
) -> BundleMetadata:
    """Write a complete, valid bundle into ``root`` (random bytes: every call has new checksums)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, size in (sizes or SMALL_SIZES).items():
        (root / name).write_bytes(os.urandom(size))
    (root / layout.OCI_RUNTIME).chmod(0o755)
    files = {name: FileInfo.of(root / name) for name in layout.ARTIFACTS}
    caps = profile.contract if capabilities is None else capabilities
    fields: dict[str, Any] = dict(
        schema_version=METADATA_SCHEMA_VERSION,
        kernel=kernel,
        kernel_release=f"{kernel}{profile.local_version}",
        profile=profile,
        security_profile=profile.security_profile,
        arch=Architecture.host(),
        busybox="1.35.0",
        agent=agent,
        agent_protocol_revision=protocol,
        built="2026-12-02T00:00:00+00:00",
        sha256_vmlinux=files[layout.KERNEL].sha256,
        sha256_initramfs=files[layout.INITRAMFS].sha256,
        oci_runtime=OciRuntimeInfo(name=layout.OCI_RUNTIME, version="1.8.1", sha256=files[layout.OCI_RUNTIME].sha256),
        capabilities=list(caps),
        files=files,
        kernel_config_sha256="0" * 64,
        kernel_cache_key="test-key",
        kernel_source=KernelSourceInfo(kind="debian-package", version="6.1.158-1", sha256="1" * 64,
                                       origin="linux-source-6.1"),
        toolchain=ToolchainInfo(compiler="gcc (Debian 12.2.0-14) 12.2.0", binutils="GNU ld 2.40", cross_compile=""),
    )
    fields.update(overrides)
    metadata = BundleMetadata(**fields)
    metadata.write(root / layout.METADATA)
    return metadata


def make_seed_bundle(root: Path, profile: KernelProfile = KernelProfile.container, agent: str = "0.9.0") -> dict[str, Any]:
    """A bundle in the seed's format: youki + sha256_youki, no schema_version/arch/files/protocol."""
    root.mkdir(parents=True, exist_ok=True)
    for name in (layout.KERNEL, layout.INITRAMFS, "youki"):
        (root / name).write_bytes(os.urandom(4096))
    data = {
        "kernel": "6.12.9",
        "profile": profile.value,
        "security_profile": profile.security_profile,
        "busybox": "1.36.1",
        "agent": agent,
        "built": "2025-06-01T12:00:00Z",
        "sha256_vmlinux": sha256_file(root / layout.KERNEL),
        "sha256_initramfs": sha256_file(root / layout.INITRAMFS),
        "youki": "0.5.1",
        "sha256_youki": sha256_file(root / "youki"),
        # The seed declares device_mapper and dm_crypt, which are in both contracts now.
        "capabilities": sorted(c.value for c in profile.contract),
    }
    (root / layout.METADATA).write_text(json.dumps(data, indent=2) + "\n")
    return data


def flip_byte(path: Path, offset: int = 100) -> None:
    """Corrupt one byte in place (same size)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
