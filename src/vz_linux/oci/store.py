"""The local image store: ONE content-addressed OCI image layout for every pulled image (docs/oci.md,
"Images from registries").

``<data dir>/store/`` is a valid OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/``)
that ``umoci`` unpacks from, plus ``images.json``, the catalogue: which references (``HOST/REPO:TAG``,
``HOST/REPO@sha256:…``) name which manifest, for which platform. The catalogue is the one owner of
that fact; ``index.json`` is derived from it on every write (one entry per manifest, tagged
``sha256-<hex>`` so umoci can name it). Blobs are shared: two images with a common layer store it
once, and a pull hard-links the blobs already here into its stage so skopeo does not fetch them again.

Writers (a pull's publish, ``rmi``) hold the store's exclusive lock; unpacking holds it shared, so a
concurrent ``rmi`` cannot take blobs away under umoci. A pull copies into a private stage
(:func:`vz_linux.fsutil.owned_tempdir`) without the lock, then publishes under it: blobs renamed in
(content-addressed: an existing one is kept), then ``index.json`` and ``images.json`` written
atomically (:func:`vz_linux.fsutil.write_atomic`). A crash leaves at worst unreferenced blobs, which
the next write collects.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..clock import utc_timestamp
from ..errors import ImageError, ImageStoreError
from ..fsutil import owned_tempdir, write_atomic
from .image import REF_ANNOTATION, json_object, manifest_blobs

CATALOGUE = "images.json"
CATALOGUE_SCHEMA = 1
STAGE_PREFIX = ".pull-"
_LOCK = ".lock"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
_MAX_CATALOGUE = 16 << 20


@dataclass(frozen=True)
class StoredImage:
    """One manifest in the store and the references that name it."""

    digest: str  # the manifest's digest in the store (sha256:<64 hex>)
    platform: str  # os/architecture it was pulled for
    refs: tuple[str, ...] = ()
    size: int = 0  # bytes of manifest + config + layers
    manifest_size: int = 0
    media_type: str = _MANIFEST_MEDIA_TYPE
    pulled: str = field(default_factory=utc_timestamp)

    @property
    def tag(self) -> str:
        """The layout tag umoci unpacks it by."""
        return self.digest.replace(":", "-")

    @property
    def short_id(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "platform": self.platform, "refs": list(self.refs), "size": self.size,
                "manifest_size": self.manifest_size, "media_type": self.media_type, "pulled": self.pulled}

    @classmethod
    def from_json(cls, data: object, where: str) -> StoredImage:
        if not isinstance(data, dict):
            raise ImageStoreError(f"{where}: an entry is not an object")
        digest, refs = data.get("digest"), data.get("refs")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise ImageStoreError(f"{where}: an entry has no valid digest ({str(digest)[:80]!r})")
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise ImageStoreError(f"{where}: entry {digest} has malformed refs")
        ints = [data.get(k, 0) for k in ("size", "manifest_size")]
        strs = [data.get(k, "") for k in ("platform", "media_type", "pulled")]
        if not all(isinstance(i, int) for i in ints) or not all(isinstance(s, str) for s in strs):
            raise ImageStoreError(f"{where}: entry {digest} has malformed fields")
        return cls(digest=digest, refs=tuple(refs), size=ints[0], manifest_size=ints[1], platform=strs[0],
                   media_type=strs[1] or _MANIFEST_MEDIA_TYPE, pulled=strs[2])


@dataclass(frozen=True)
class ImageStore:
    root: Path

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    def blob(self, digest: str) -> Path:
        return self.blobs / digest.removeprefix("sha256:")  # digest validated by the caller

    # --- locking ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, *, shared: bool = False) -> Iterator[None]:
        """The store's lock: exclusive for writers, shared for readers (unpack)."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            if not shared and not (self.root / "oci-layout").is_file():
                write_atomic(self.root / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}\n')
                self._write_index([])
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def stage(self) -> Iterator[Path]:
        """A private layout beside the store (same filesystem: its blobs are renamed in), seeded with
        hard links to the blobs already stored so a pull fetches only what is new."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        with owned_tempdir(self.root, STAGE_PREFIX) as stage:
            (stage / "blobs" / "sha256").mkdir(parents=True)
            for blob in self.blobs.iterdir():
                with contextlib.suppress(OSError):
                    os.link(blob, stage / "blobs" / "sha256" / blob.name)
            yield stage

    # --- the catalogue ------------------------------------------------------------------------------
    def images(self) -> list[StoredImage]:
        path = self.root / CATALOGUE
        try:
            with open(path, "rb") as f:
                text = f.read(_MAX_CATALOGUE + 1)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ImageStoreError(f"cannot read the image catalogue {path}: {e.strerror}") from None
        if len(text) > _MAX_CATALOGUE:
            raise ImageStoreError(f"the image catalogue {path} is larger than {_MAX_CATALOGUE} bytes")
        try:
            data = json_object(text, str(path))
        except ImageError as e:
            raise ImageStoreError(str(e), hint=f"remove {self.root} to start an empty store") from None
        items = data.get("images")
        if data.get("schema_version") != CATALOGUE_SCHEMA or not isinstance(items, list):
            raise ImageStoreError(f"{path} is not a schema {CATALOGUE_SCHEMA} image catalogue",
                                  hint=f"remove {self.root} to start an empty store")
        return [StoredImage.from_json(i, str(path)) for i in items]

    def find(self, ref: str, platform: str, *, digest: str | None = None) -> StoredImage | None:
        """The image ``ref`` names for ``platform``; with ``digest`` (a pinned reference), also one
        pulled under another name of the same repository whose stored manifest has that digest."""
        for img in self.images():
            if img.platform != platform:
                continue
            if ref in img.refs:
                return img
            if digest is not None and img.digest == digest and any(_repo_of(r) == _repo_of(ref) for r in img.refs):
                return img
        return None

    def lookup(self, name: str) -> list[StoredImage]:
        """Images a user-typed name picks: a stored reference, or an image id / digest (prefix ≥ 4)."""
        images = self.images()
        by_ref = [i for i in images if name in i.refs]
        if by_ref:
            return by_ref
        hexpart = name.removeprefix("sha256:")
        if len(hexpart) >= 4 and re.fullmatch(r"[0-9a-f]+", hexpart):
            return [i for i in images if i.digest.removeprefix("sha256:").startswith(hexpart)]
        return []

    # --- writes (under the exclusive lock) ------------------------------------------------------------
    def publish(self, stage: Path, digest: str, ref: str, platform: str) -> StoredImage:
        """Move a staged pull's blobs in and make ``ref`` (for ``platform``) name ``digest``."""
        if not _DIGEST.fullmatch(digest):
            raise ImageError(f"not a sha256 digest: {digest[:100]!r}")
        manifest, blobs = manifest_blobs(stage, digest)
        with self.locked():
            for blob_digest, _size in blobs:
                src, dest = stage / "blobs" / "sha256" / blob_digest.removeprefix("sha256:"), self.blob(blob_digest)
                if not dest.exists():
                    try:
                        os.rename(src, dest)
                    except OSError as e:
                        raise ImageStoreError(f"cannot store blob {blob_digest}: {e.strerror}") from None
            images = [replace(i, refs=tuple(r for r in i.refs if r != ref)) if i.platform == platform else i
                      for i in self.images()]
            current = next((i for i in images if i.digest == digest and i.platform == platform), None)
            entry = StoredImage(digest=digest, platform=platform,
                                refs=(*(current.refs if current else ()), ref),
                                size=sum(size for _d, size in blobs), manifest_size=len(manifest),
                                pulled=utc_timestamp())
            images = [i for i in images if i is not current and i.refs] + [entry]
            self._commit(images)
        return entry

    def remove(self, name: str) -> list[StoredImage]:
        """Untag ``name`` (a reference) or delete the image(s) an id names; returns the images
        that are gone from the store entirely (their blobs collected)."""
        with self.locked():
            images = self.images()
            picked = self.lookup(name)
            if not picked:
                raise ImageError(f"no image {name!r} in the store", hint="see `vz oci images`")
            by_ref = any(name in i.refs for i in picked)
            kept = []
            for i in images:
                if i in picked:
                    i = replace(i, refs=tuple(r for r in i.refs if r != name)) if by_ref else replace(i, refs=())
                kept.append(i)
            gone = [i for i in kept if not i.refs]
            self._commit([i for i in kept if i.refs])
        return gone

    def _commit(self, images: list[StoredImage]) -> None:
        """Write index.json (derived) and the catalogue, then collect unreferenced blobs."""
        self._write_index(images)
        doc = {"schema_version": CATALOGUE_SCHEMA, "images": [i.to_json() for i in images]}
        write_atomic(self.root / CATALOGUE, (json.dumps(doc, indent=2) + "\n").encode())
        self._collect(images)

    def _write_index(self, images: list[StoredImage]) -> None:
        manifests = [{"mediaType": i.media_type, "digest": i.digest, "size": i.manifest_size,
                      "annotations": {REF_ANNOTATION: i.tag}} for i in images]
        index = {"schemaVersion": 2, "manifests": manifests}
        write_atomic(self.root / "index.json", (json.dumps(index) + "\n").encode())

    def _collect(self, images: list[StoredImage]) -> None:
        keep: set[str] = set()
        try:
            for i in {i.digest for i in images}:
                keep.update(d.removeprefix("sha256:") for d, _s in manifest_blobs(self.root, i)[1])
        except ImageError:
            return  # a damaged manifest: keep every blob rather than guess what it needed
        for blob in self.blobs.iterdir():
            if blob.name not in keep:
                with contextlib.suppress(OSError):
                    blob.unlink()


def _repo_of(ref: str) -> str:
    """``HOST/REPO`` of ``HOST/REPO[:TAG][@DIGEST]``."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name


__all__ = ["ImageStore", "StoredImage"]
