"""``vz-linux push`` / ``pull`` and references in the selection API (docs/distribution.md, "Registry").

Pulled bundles are kept by digest in a store beside the install dirs (``~/.vz/linux/pulled/``):
``sha256/<hex>/`` is the bundle of that manifest digest (published atomically, first writer wins),
``index/<hex>.json`` the exact bytes of an image index that was pulled. A digest pin whose
bundle is in the store is resolved without the network — also an index digest, through its stored
index — so switching between pinned versions is a local install. A tag is always resolved with the
registry (one manifest request), since tags move.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import layout
from ..arch import Architecture
from ..errors import BlobDigestError, InvalidConfigError, ReferenceNotFoundError, ReleaseError
from ..fsutil import publish_dir, write_atomic
from ..hashing import sha256_bytes
from ..profiles import KernelProfile
from . import artifact
from .metadata import BundleMetadata
from .model import validate_bundle
from .registry import Reference, RegistryClient


@dataclass(frozen=True)
class BundleStore:
    root: Path

    @classmethod
    def beside(cls, install_dir: Path | None = None) -> BundleStore:
        return cls(layout.pulled_root(install_dir))

    def bundle_dir(self, manifest_digest: str) -> Path:
        return self.root / "sha256" / manifest_digest.split(":", 1)[1]

    def index_path(self, digest: str) -> Path:
        return self.root / "index" / f"{digest.split(':', 1)[1]}.json"

    def has(self, manifest_digest: str) -> bool:
        return (self.bundle_dir(manifest_digest) / layout.METADATA).is_file()

    def save_index(self, digest: str, raw: bytes) -> None:
        path = self.index_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, raw)

    def offline(self, digest: str, arch: Architecture) -> tuple[str, str | None] | None:
        """(manifest digest, index digest) of a stored bundle for a pinned ``digest``, or None."""
        if self.has(digest):
            return digest, None
        try:
            raw = self.index_path(digest).read_bytes()
        except OSError:
            return None
        if "sha256:" + sha256_bytes(raw) != digest:
            return None  # a damaged copy: ask the registry again
        manifest = artifact.select_platform(artifact.parse_json(raw, digest), arch, digest)
        return (manifest, digest) if self.has(manifest) else None


@dataclass(frozen=True)
class PulledBundle:
    root: Path
    reference: Reference  # pinned to the manifest digest
    manifest_digest: str
    index_digest: str | None
    metadata: BundleMetadata
    from_store: bool  # True: no blob was fetched


@dataclass(frozen=True)
class _Resolved:
    manifest_digest: str
    index_digest: str | None = None
    index_raw: bytes | None = None  # stored once the bundle is


def _resolve(ref: Reference, arch: Architecture, client: RegistryClient) -> _Resolved:
    """The manifest (and index) digest for ``ref`` and ``arch``, asking the registry."""
    raw = client.manifest(ref)
    digest = artifact.digest_of(raw)
    if ref.digest and digest != ref.digest:
        raise BlobDigestError(f"{ref}: the registry returned content with digest {digest}",
                              hint="the registry's copy is corrupted or the reference is wrong")
    doc = artifact.parse_json(raw, str(ref))
    if artifact.is_index(doc):
        return _Resolved(artifact.select_platform(doc, arch, str(ref)), digest, raw)
    return _Resolved(digest)


def _fetch(ref: Reference, arch: Architecture, store: BundleStore, client: RegistryClient) -> None:
    """Pull manifest ``ref`` (a digest pin) into the store, checked and validated, or nothing."""
    assert ref.digest is not None
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=store.root) as tmp, \
            publish_dir(store.bundle_dir(ref.digest)) as stage:
        client.pull(ref, Path(tmp) / "layout")
        metadata = artifact.extract_bundle(Path(tmp) / "layout", ref.digest, stage, str(ref))
        # Integrity only (every checksum); whether this vz-linux may use it is decided at install.
        validate_bundle(stage, require_exact_agent_version=False)
        _check_arch(ref, metadata, arch)


def _check_arch(ref: Reference, metadata: BundleMetadata, arch: Architecture) -> None:
    if metadata.arch is not arch:
        raise ReferenceNotFoundError(f"{ref} holds the {metadata.arch.value} bundle, not {arch.value}",
                                     hint="pin the index (or this arch's manifest), or pass --arch")


def pull(reference: Reference | str, arch: Architecture | None = None, *, store: BundleStore | None = None,
         client: RegistryClient | None = None) -> PulledBundle:
    """The bundle ``reference`` names for ``arch`` (default: the host's), in the store; fetched only
    when the store does not have that digest. Raises the registry's typed errors."""
    ref = Reference.parse(reference) if isinstance(reference, str) else reference
    arch = arch or Architecture.host()
    store = store or BundleStore.beside()
    client = client or RegistryClient()
    found = store.offline(ref.digest, arch) if ref.digest else None
    got = _Resolved(*found) if found else _resolve(ref.with_default_tag(), arch, client)
    from_store = store.has(got.manifest_digest)
    if not from_store:
        _fetch(ref.at(got.manifest_digest), arch, store, client)
    if got.index_digest is not None and got.index_raw is not None:
        store.save_index(got.index_digest, got.index_raw)
    root = store.bundle_dir(got.manifest_digest)
    metadata = BundleMetadata.read(root / layout.METADATA)
    _check_arch(ref.at(got.manifest_digest), metadata, arch)
    return PulledBundle(root, ref.at(got.manifest_digest), got.manifest_digest, got.index_digest, metadata, from_store)


def bundle_dir_for(reference: str, install_dir: Path, arch: Architecture | None = None) -> Path:
    """The selection API's step for a reference: the stored bundle dir (pulled if needed)."""
    return pull(reference, arch, store=BundleStore.beside(install_dir)).root


@dataclass(frozen=True)
class Pushed:
    reference: Reference  # pinned to the pushed index digest
    index_digest: str
    manifests: dict[Architecture, str]
    profile: KernelProfile


def push(bundle_dirs: Sequence[Path], reference: Reference | str, *, client: RegistryClient | None = None,
         require_exact_agent_version: bool = True) -> Pushed:
    """Push the bundles (one profile, one per arch) as artifacts plus an index at ``reference``."""
    ref = Reference.parse(reference) if isinstance(reference, str) else reference
    if ref.digest:
        raise InvalidConfigError(f"cannot push to a digest ({ref})", hint="push to a tag, e.g. HOST/REPO:1.2.0")
    ref = ref.with_default_tag()
    bundles = [validate_bundle(Path(d), require_exact_agent_version=require_exact_agent_version) for d in bundle_dirs]
    if not bundles:
        raise ReleaseError("no bundle given", hint="vz-linux push BUNDLE_DIR... REF")
    profiles = {b.profile for b in bundles}
    arches = [b.metadata.arch for b in bundles]
    if len(profiles) > 1 or len(set(arches)) != len(arches):
        raise ReleaseError(f"an index holds one profile, one bundle per arch; got "
                           f"{', '.join(f'{b.profile.value}/{b.metadata.arch.value}' for b in bundles)}",
                           hint="push each profile to its own reference")
    with tempfile.TemporaryDirectory(prefix="vz-push-") as tmp:
        written = artifact.write_layout(bundles, Path(tmp) / "layout", ref.tag or "latest")
        digest = (client or RegistryClient()).push(written.root, written.tag, ref)
    return Pushed(ref.at(digest), digest, written.manifests, bundles[0].profile)

