"""A kernel bundle on disk and its validation (docs/selection.md, "Validation").

:func:`load_bundle` parses ``version.json`` and checks that every artifact it names is present
and a regular file; :func:`validate_bundle` adds the selection checks (profile, guest-agent
version and protocol revision, capabilities) and re-hashes every artifact. Each failure raises
its own typed error from :mod:`vz_linux.errors`. File names come from :mod:`vz_linux.layout`,
except the OCI runtime's, which the metadata names (``crun``; seed bundles: ``youki``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import layout
from ..errors import (
    AgentVersionMismatchError,
    ChecksumMismatchError,
    MissingArtifactsError,
    MissingCapabilitiesError,
    ProfileMismatchError,
    ProtocolRevisionMismatchError,
    ProtocolRevisionMissingError,
    UnsafeBundleError,
)
from ..hashing import sha256_file
from ..profiles import KernelCapability, KernelProfile
from ..version import AGENT_PROTOCOL_REVISION, AGENT_VERSION
from .metadata import BundleMetadata

_REBUILD = "rebuild it with `vz-linux build` or reinstall it with `vz-linux install DIR`"


@dataclass(frozen=True)
class KernelBundle:
    """A loaded bundle: where its files are, what its metadata says, what it can do."""

    root: Path
    paths: layout.BundlePaths
    metadata: BundleMetadata
    capabilities: frozenset[KernelCapability]
    profile: KernelProfile

    @property
    def kernel(self) -> Path:
        return self.paths.kernel

    @property
    def initramfs(self) -> Path:
        return self.paths.initramfs

    @property
    def oci_runtime(self) -> Path:
        # Not paths.oci_runtime: seed bundles name their runtime file youki.
        return self.root / self.metadata.oci_runtime.name

    @property
    def version_json(self) -> Path:
        return self.paths.metadata

    def artifact_paths(self) -> dict[str, Path]:
        return {name: self.root / name for name in self.metadata.artifact_checksums()}

    def has(self, capabilities: Iterable[KernelCapability]) -> bool:
        return frozenset(capabilities) <= self.capabilities

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (what `vz-linux ensure/verify --json` print)."""
        m = self.metadata
        return {
            "root": str(self.root),
            "profile": self.profile.value,
            "arch": m.arch.value,
            "kernel": m.kernel,
            "kernel_release": m.kernel_release,
            "agent": m.agent,
            "agent_protocol_revision": m.agent_protocol_revision,
            "oci_runtime": m.oci_runtime.model_dump(mode="json"),
            "capabilities": sorted(c.value for c in self.capabilities),
            "files": {name: str(p) for name, p in self.artifact_paths().items()}
            | {layout.METADATA: str(self.version_json)},
            "schema_version": m.schema_version,
        }


def bundle_from_metadata(root: Path, metadata: BundleMetadata) -> KernelBundle:
    """A :class:`KernelBundle` for ``root`` whose metadata and files the caller has checked."""
    return KernelBundle(
        root=root,
        paths=layout.BundlePaths(root),
        metadata=metadata,
        capabilities=metadata.capability_set,
        profile=metadata.profile,
    )


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: Path) -> os.stat_result:
    """lstat ``path``; refuse anything but a regular file. Missing -> FileNotFoundError."""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeBundleError(
            f"bundle file {path} is {_kind(st.st_mode)}; bundles hold regular files only",
            hint="replace it with a real file (copy, don't link) or rebuild the bundle",
        )
    return st


def _check_root(root: Path) -> None:
    if not root.exists():
        raise MissingArtifactsError(f"bundle directory {root} does not exist", hint=_REBUILD)
    if not root.is_dir():
        raise MissingArtifactsError(f"bundle path {root} is not a directory", hint="pass a bundle directory")


def read_metadata(root: Path) -> BundleMetadata:
    """The bundle's parsed version.json; missing -> MissingArtifactsError, invalid -> InvalidMetadataError."""
    _check_root(root)
    path = root / layout.METADATA
    try:
        check_regular(path)
    except FileNotFoundError:
        raise MissingArtifactsError(f"{root} has no {layout.METADATA}", hint=_REBUILD) from None
    return BundleMetadata.read(path)


def check_artifacts_present(root: Path, metadata: BundleMetadata) -> dict[str, os.stat_result]:
    """Every artifact the metadata names exists and is a regular file; returns their lstat."""
    found: dict[str, os.stat_result] = {}
    missing: list[str] = []
    for name in metadata.artifact_checksums():
        try:
            found[name] = check_regular(root / name)
        except FileNotFoundError:
            missing.append(name)
    if missing:
        raise MissingArtifactsError(f"bundle {root} lacks {', '.join(missing)}", hint=_REBUILD)
    return found


def load_bundle(root: Path) -> KernelBundle:
    """Parse a bundle directory without hashing: metadata valid, every artifact present and regular."""
    root = Path(root)
    metadata = read_metadata(root)
    check_artifacts_present(root, metadata)
    return bundle_from_metadata(root, metadata)


def check_selection(
    metadata: BundleMetadata,
    where: Path,
    *,
    profile: KernelProfile | None,
    required_capabilities: Iterable[KernelCapability],
    require_exact_agent_version: bool,
) -> None:
    """The metadata-only validation steps 3 to 5 of docs/selection.md (no file access): profile, agent,
    capabilities."""
    if profile is not None and metadata.profile is not profile:
        raise ProfileMismatchError(
            f"bundle {where} is a {metadata.profile.value} bundle, not {profile.value}",
            hint=f"point at a {profile.value} bundle (vz-linux build --profile {profile.value})",
        )
    if metadata.security_profile != metadata.profile.security_profile:
        raise ProfileMismatchError(
            f"bundle {where}: security_profile {metadata.security_profile!r} does not belong to profile "
            f"{metadata.profile.value} (expected {metadata.profile.security_profile!r})",
            hint=_REBUILD,
        )
    if require_exact_agent_version:
        if metadata.agent != AGENT_VERSION:
            raise AgentVersionMismatchError(
                f"bundle {where} has guest agent {metadata.agent}, this vz-linux needs {AGENT_VERSION}",
                hint="rebuild the bundle with this release, or pass require_exact_agent_version=False "
                "(CLI: --no-version-check)",
            )
        if metadata.agent_protocol_revision is None:
            raise ProtocolRevisionMissingError(
                f"bundle {where} does not record agent_protocol_revision (this vz-linux speaks "
                f"revision {AGENT_PROTOCOL_REVISION})",
                hint="rebuild the bundle with this release, or pass require_exact_agent_version=False",
            )
        if metadata.agent_protocol_revision != AGENT_PROTOCOL_REVISION:
            raise ProtocolRevisionMismatchError(
                f"bundle {where} speaks agent protocol revision {metadata.agent_protocol_revision}, "
                f"this vz-linux speaks {AGENT_PROTOCOL_REVISION}",
                hint="rebuild the bundle with this release, or pass require_exact_agent_version=False",
            )
    required = frozenset(required_capabilities) | metadata.profile.contract
    missing = sorted(required - metadata.capability_set)
    if missing:
        raise MissingCapabilitiesError(
            f"bundle {where} lacks capabilities: {', '.join(missing)} (it has: "
            f"{', '.join(sorted(metadata.capability_set)) or 'none'})",
            hint="pick a profile that provides them or rebuild with a config that enables them",
        )


def verify_checksums(root: Path, metadata: BundleMetadata) -> None:
    """Re-hash every artifact; one error naming every mismatching file with both hashes."""
    sizes = metadata.artifact_sizes()
    bad: list[str] = []
    for name, expected in metadata.artifact_checksums().items():
        path = root / name
        actual = sha256_file(path)
        if actual != expected:
            size_note = ""
            if name in sizes and path.stat().st_size != sizes[name]:
                size_note = f", size {path.stat().st_size} != {sizes[name]}"
            bad.append(f"{name}: expected sha256 {expected}, found {actual}{size_note}")
    if bad:
        raise ChecksumMismatchError(f"bundle {root} has corrupted files: {'; '.join(bad)}", hint=_REBUILD)


def validate_bundle(
    root: Path,
    *,
    profile: KernelProfile | None = None,
    required_capabilities: Iterable[KernelCapability] = frozenset(),
    require_exact_agent_version: bool = True,
) -> KernelBundle:
    """Load and fully validate a bundle (always re-hashes). Returns it, or raises one typed error."""
    root = Path(root)
    metadata = read_metadata(root)
    check_artifacts_present(root, metadata)
    check_selection(
        metadata,
        root,
        profile=profile,
        required_capabilities=required_capabilities,
        require_exact_agent_version=require_exact_agent_version,
    )
    verify_checksums(root, metadata)
    return bundle_from_metadata(root, metadata)
