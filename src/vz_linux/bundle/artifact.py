"""A bundle as an OCI artifact (docs/distribution.md, "Registry format"), as files: an OCI image
layout written for a push, and a pulled manifest's blobs turned back into a bundle directory.

* Per (profile, arch) one image manifest: ``artifactType`` :data:`ARTIFACT_TYPE`, the bundle's
  ``version.json`` (exact bytes) as the config blob (:data:`CONFIG_MEDIA_TYPE`), one layer per
  artifact file, uncompressed (:data:`FILE_MEDIA_TYPE`), titled with its file name
  (``org.opencontainers.image.title``), in name order. A layer's digest is therefore the file's
  sha256, the one ``version.json`` records.
* Per profile one image index over the arches, platforms ``linux/amd64`` and ``linux/arm64``.

JSON is written canonically (sorted keys, no spaces), so the same bundles give the same digests.
Everything read back is checked: each blob against its digest (:class:`BlobDigestError`), the media
types, the titles (plain file names, each artifact of ``version.json`` exactly once).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import layout
from ..arch import Architecture
from ..errors import BlobDigestError, ReferenceNotFoundError, RegistryError
from ..hashing import sha256_bytes, sha256_file
from .metadata import BundleMetadata
from .model import KernelBundle

ARTIFACT_TYPE = "application/vnd.vz-linux.bundle.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.vz-linux.bundle.config.v1+json"
FILE_MEDIA_TYPE = "application/vnd.vz-linux.bundle.file.v1"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def digest_of(data: bytes) -> str:
    return "sha256:" + sha256_bytes(data)


def _descriptor(media_type: str, data_digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": data_digest, "size": size, **extra}


@dataclass(frozen=True)
class Layout:
    """An OCI image layout written for a push: its index digest and each arch's manifest digest."""

    root: Path
    tag: str
    index_digest: str
    manifests: dict[Architecture, str]


class _LayoutWriter:
    def __init__(self, root: Path) -> None:
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True)

    def add_bytes(self, data: bytes) -> str:
        d = digest_of(data)
        (self.blobs / d.split(":", 1)[1]).write_bytes(data)
        return d

    def add_file(self, path: Path, sha256: str) -> None:
        dest = self.blobs / sha256
        if dest.exists():
            return
        try:
            os.link(path, dest)  # the registry client reads it once; a copy of 20+ MB is not needed
        except OSError:
            shutil.copyfile(path, dest)


def _manifest(bundle: KernelBundle, meta_bytes: bytes, w: _LayoutWriter) -> bytes:
    m = bundle.metadata
    config = _descriptor(CONFIG_MEDIA_TYPE, w.add_bytes(meta_bytes), len(meta_bytes))
    layers = []
    for name, sha in m.artifact_checksums().items():
        path = bundle.root / name
        w.add_file(path, sha)
        layers.append(_descriptor(FILE_MEDIA_TYPE, f"sha256:{sha}", path.stat().st_size, annotations={TITLE: name}))
    return canonical({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": ARTIFACT_TYPE,
        "config": config, "layers": layers,
        "annotations": {"org.opencontainers.image.created": m.built,
                        "org.opencontainers.image.version": m.kernel_release or m.kernel,
                        "io.vz-linux.profile": m.profile.value, "io.vz-linux.arch": m.arch.value},
    })


def write_layout(bundles: Sequence[KernelBundle], root: Path, tag: str) -> Layout:
    """An OCI layout at ``root`` (new) holding one index, tagged ``tag``, over ``bundles`` (one per arch)."""
    w = _LayoutWriter(root)
    entries, manifests = [], {}
    for b in sorted(bundles, key=lambda b: b.metadata.arch.value):
        raw = _manifest(b, (b.root / layout.METADATA).read_bytes(), w)
        d = w.add_bytes(raw)
        manifests[b.metadata.arch] = d
        entries.append(_descriptor(MANIFEST_MEDIA_TYPE, d, len(raw), artifactType=ARTIFACT_TYPE,
                                   platform={"os": "linux", "architecture": b.metadata.arch.oci_architecture}))
    index = canonical({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "artifactType": ARTIFACT_TYPE,
                       "manifests": entries,
                       "annotations": {"io.vz-linux.profile": bundles[0].profile.value}})
    index_digest = w.add_bytes(index)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_bytes(canonical({"schemaVersion": 2, "manifests": [
        _descriptor(INDEX_MEDIA_TYPE, index_digest, len(index), annotations={REF_NAME: tag})]}))
    return Layout(root, tag, index_digest, manifests)


# --- reading ----------------------------------------------------------------------------------------
def parse_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{what} is not JSON", hint="is this a vz-linux bundle reference?") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what} is not a JSON object", hint="is this a vz-linux bundle reference?")
    return doc


def is_index(doc: dict[str, Any]) -> bool:
    return doc.get("mediaType") == INDEX_MEDIA_TYPE or (
        "manifests" in doc and "layers" not in doc and doc.get("mediaType") is None)


def select_platform(index: dict[str, Any], arch: Architecture, where: str) -> str:
    """The manifest digest for ``linux/<arch>`` in an image index (else :class:`ReferenceNotFoundError`)."""
    have = []
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {} if isinstance(entry, dict) else {}
        have.append(f"{platform.get('os')}/{platform.get('architecture')}")
        if platform.get("os") == "linux" and platform.get("architecture") == arch.oci_architecture:
            d = entry.get("digest")
            if isinstance(d, str) and _DIGEST.match(d):
                return d
    raise ReferenceNotFoundError(f"{where} has no bundle for linux/{arch.oci_architecture} "
                                 f"(it has: {', '.join(have) or 'nothing'})", hint="pass --arch, or push that arch")


@dataclass(frozen=True)
class _Layer:
    name: str
    digest: str


def _check_manifest(doc: dict[str, Any], where: str) -> tuple[str, list[_Layer]]:
    """(config digest, layers) of a vz-linux bundle manifest; anything else is a :class:`RegistryError`."""
    if doc.get("artifactType") != ARTIFACT_TYPE or (doc.get("config") or {}).get("mediaType") != CONFIG_MEDIA_TYPE:
        raise RegistryError(f"{where} is not a vz-linux bundle (artifactType {doc.get('artifactType')!r})",
                            hint="push bundles with `vz-linux push`")
    layers: list[_Layer] = []
    for layer in doc.get("layers") or []:
        title = (layer.get("annotations") or {}).get(TITLE) if isinstance(layer, dict) else None
        d = layer.get("digest") if isinstance(layer, dict) else None
        if (not isinstance(title, str) or not _PLAIN_NAME.match(title) or title in (".", "..", layout.METADATA,
                layout.INSTALL_RECORD) or any(x.name == title for x in layers)
                or not isinstance(d, str) or not _DIGEST.match(d)):
            raise RegistryError(f"{where} has a layer that is not a plain bundle file: {title!r}",
                                hint="push bundles with `vz-linux push`")
        layers.append(_Layer(title, d))
    config = doc["config"].get("digest")
    if not isinstance(config, str) or not _DIGEST.match(config):
        raise RegistryError(f"{where} has no valid config digest")
    return config, layers


def _blob(layout_root: Path, digest: str) -> Path:
    return layout_root / "blobs" / "sha256" / digest.split(":", 1)[1]


def _read_checked(layout_root: Path, digest: str, where: str) -> bytes:
    try:
        data = _blob(layout_root, digest).read_bytes()
    except FileNotFoundError:
        raise RegistryError(f"{where}: blob {digest} is missing from the pulled layout") from None
    if digest_of(data) != digest:
        raise BlobDigestError(f"{where}: blob {digest} has digest {digest_of(data)}",
                              hint="the registry's copy is corrupted; nothing was installed")
    return data


def _place_checked(src: Path, dest: Path, digest: str, where: str) -> None:
    actual = f"sha256:{sha256_file(src)}"
    if actual != digest:
        raise BlobDigestError(f"{where}: blob {digest} has digest {actual}",
                              hint="the registry's copy is corrupted; nothing was installed")
    try:
        os.link(src, dest)  # the layout is a temp dir beside dest: no second copy of 20+ MB
    except OSError:
        shutil.copyfile(src, dest)


def extract_bundle(layout_root: Path, manifest_digest: str, dest: Path, where: str) -> BundleMetadata:
    """The bundle of manifest ``manifest_digest`` in a pulled OCI layout, written into the empty dir
    ``dest`` (blobs are linked out of the layout). Every digest and every title is checked; the caller
    validates the result like any bundle."""
    doc = parse_json(_read_checked(layout_root, manifest_digest, where), f"{where} manifest")
    config, layers = _check_manifest(doc, where)
    meta_bytes = _read_checked(layout_root, config, where)
    try:
        metadata = BundleMetadata.parse_text(meta_bytes.decode(), f"{where} version.json")
    except UnicodeDecodeError:
        raise RegistryError(f"{where}: version.json is not UTF-8 text") from None
    expected = metadata.artifact_checksums()
    if sorted(x.name for x in layers) != sorted(expected):
        raise RegistryError(f"{where}: layers {sorted(x.name for x in layers)} are not the files version.json "
                            f"lists {sorted(expected)}", hint="push bundles with `vz-linux push`")
    for x in layers:
        if x.digest != f"sha256:{expected[x.name]}":
            raise BlobDigestError(f"{where}: layer {x.name} is {x.digest}, version.json says sha256:{expected[x.name]}")
        _place_checked(_blob(layout_root, x.digest), dest / x.name, x.digest, where)
        os.chmod(dest / x.name, 0o755 if x.name == metadata.oci_runtime.name else 0o644)
    (dest / layout.METADATA).write_bytes(meta_bytes)
    return metadata

