"""IMAGE → a root filesystem on the host.

IMAGE is either a root filesystem directory or an OCI image layout directory (``oci-layout`` +
``index.json``), optionally ``DIR:TAG``. Layouts are unpacked with Debian's ``umoci`` — a
well-kept implementation of the image spec (layer order, whiteouts, ownership) — once per
manifest digest into the data dir's image cache, atomically (:func:`vz_linux.fsutil.publish_dir`:
unpacked beside the cache entry, renamed into place; when two processes unpack the same digest at
once, the first one's is kept).
The image's own defaults (entrypoint + cmd, env, working dir) come from umoci's generated
runtime config.

A layout is untrusted input (docs/security.md, "Hostile inputs"): ``index.json``, the manifest and
the image config are type-checked (every oddity is an :class:`ImageError`), every digest must be
``sha256:<64 hex>`` before a path is built from it, and the manifest and config must hash to their
digests, so the cache key is verified content. A cache entry records a stamp of its tree when it is
unpacked (:func:`vz_linux.hashing.tree_stamp`); an entry that changed since (a guest wrote to the
image share, say) is detected and unpacked again, never reused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CommandFailedError, CommandNotFoundError, ImageDigestError, ImageError
from ..fsutil import publish_dir
from ..hashing import sha256_bytes, tree_stamp
from ..run import run

# Directories at least one of which every usable root filesystem has.
_ROOTFS_MARKERS = ("bin", "sbin", "usr/bin", "usr/sbin")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# The image spec's grammar for ref.name (components of alphanumerics joined by separators).
_TAG = re.compile(r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*")
_MAX_JSON_BLOB = 4 << 20  # a manifest or image config; real ones are a few KiB
_RECORD = ".vz-image.json"  # in a cache entry, beside rootfs/: the digest and the entry's tree stamp
_UNPACK_PREFIX = ".unpack-"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageDefaults:
    """What the image says to run when the user gives no command (OCI image config)."""

    args: tuple[str, ...] = ()
    env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}",)
    cwd: str = "/"


@dataclass(frozen=True)
class Rootfs:
    path: Path  # the root filesystem directory shared with the guest
    image: str  # what the user named
    digest: str | None = None  # manifest digest for OCI layouts
    defaults: ImageDefaults = ImageDefaults()


def is_oci_layout(path: Path) -> bool:
    return (path / "oci-layout").is_file() and (path / "index.json").is_file()


def looks_like_rootfs(path: Path) -> bool:
    return path.is_dir() and any(os.path.lexists(path / m) for m in _ROOTFS_MARKERS)


def split_image_ref(image: str) -> tuple[Path, str | None]:
    """``DIR`` or ``DIR:TAG`` (an existing path containing ':' wins over the split)."""
    if Path(image).exists() or ":" not in image:
        return Path(image), None
    base, _, tag = image.rpartition(":")
    return Path(base), (tag or None)


def json_object(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as e:
        raise ImageError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object")
    return value


def _digest_of(descriptor: object, what: str) -> str:
    """A descriptor's digest, validated before any path is built from it."""
    digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ImageError(f"{what} has no valid digest (sha256:<64 hex digits>): {str(digest)[:100]!r}")
    return digest


def _tagged_manifests(layout_dir: Path) -> dict[str, str]:
    """Tag → manifest digest, from a type-checked ``index.json`` (ImageError on anything odd)."""
    try:
        text = (layout_dir / "index.json").read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {layout_dir}/index.json: {e.strerror}") from None
    index = json_object(text, f"{layout_dir}/index.json")
    manifests = index.get("manifests", [])
    if not isinstance(manifests, list):
        raise ImageError(f"{layout_dir}/index.json: manifests is not a list")
    tagged: dict[str, str] = {}
    for i, m in enumerate(manifests):
        what = f"{layout_dir}/index.json: manifests[{i}]"
        if not isinstance(m, dict):
            raise ImageError(f"{what} is not an object")
        annotations = m.get("annotations", {})
        if not isinstance(annotations, dict):
            raise ImageError(f"{what}: annotations is not a map")
        tag = annotations.get(REF_ANNOTATION)
        if tag is None:
            continue
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise ImageError(f"{what}: {REF_ANNOTATION} {str(tag)[:100]!r} is not a valid tag")
        if tag in tagged:
            raise ImageError(f"{layout_dir}/index.json names the tag {tag!r} twice")
        tagged[tag] = _digest_of(m, what)
    return tagged


def _manifest_for(layout_dir: Path, tag: str | None) -> tuple[str, str]:
    """(tag, manifest digest) of the manifest to unpack."""
    tagged = _tagged_manifests(layout_dir)
    if tag is not None:
        if tag not in tagged:
            have = ", ".join(sorted(tagged)) or "none"
            raise ImageError(f"OCI layout {layout_dir} has no tag {tag!r} (tags: {have})")
        return tag, tagged[tag]
    if len(tagged) == 1:
        return next(iter(tagged.items()))
    if not tagged:
        raise ImageError(f"OCI layout {layout_dir} has no tagged manifest",
                         hint="tag one with `umoci tag` and pass DIR:TAG")
    raise ImageError(f"OCI layout {layout_dir} has several tags ({', '.join(sorted(tagged))})",
                     hint="pass DIR:TAG")


def _read_blob(layout_dir: Path, digest: str, what: str) -> bytes:
    """A small blob (manifest, config), checked against its digest. ``digest`` is validated."""
    path = layout_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"{what} {digest}: cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_JSON_BLOB:
            raise ImageError(f"{what} {digest}: {path} is not a regular file under {_MAX_JSON_BLOB} bytes")
        data = f.read()
    if sha256_bytes(data) != digest.removeprefix("sha256:"):
        raise ImageDigestError(f"{what} {path} does not match its digest {digest}",
                               hint="the layout is damaged or was altered; fetch it again")
    return data


def _blob_size(descriptor: object) -> int:
    size = descriptor.get("size") if isinstance(descriptor, dict) else None
    return size if isinstance(size, int) and size >= 0 else 0


def manifest_blobs(layout_dir: Path, digest: str) -> tuple[bytes, list[tuple[str, int]]]:
    """The manifest ``digest`` (checked as :func:`_verified_manifest` does) and every blob it needs —
    itself, its config, its layers — as (digest, size); ``digest`` must be validated already."""
    data = _read_blob(layout_dir, digest, "manifest")
    manifest = json_object(data, f"manifest {digest}")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"manifest {digest}: layers is not a list")
    blobs = [(digest, len(data))]
    config = manifest.get("config")
    blobs.append((_digest_of(config, f"manifest {digest}: config"), _blob_size(config)))
    blobs += [(_digest_of(layer, f"manifest {digest}: layers[{i}]"), _blob_size(layer))
              for i, layer in enumerate(layers)]
    return data, blobs


def _verified_manifest(layout_dir: Path, digest: str) -> None:
    """The manifest and its config exist, match their digests and have the expected shape, so the
    manifest digest is a key over verified content (umoci verifies the layers as it unpacks)."""
    _data, blobs = manifest_blobs(layout_dir, digest)
    config_digest = blobs[1][0]
    config = json_object(_read_blob(layout_dir, config_digest, "image config"), f"image config {config_digest}")
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise ImageError(f"image config {config_digest}: config is not an object")
    for key in ("Env", "Entrypoint", "Cmd"):
        value = inner.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ImageError(f"image config {config_digest}: config.{key} is not a list of strings")
    if not isinstance(inner.get("WorkingDir", ""), str):
        raise ImageError(f"image config {config_digest}: config.WorkingDir is not a string")


def _defaults_from_runtime_config(config: dict[str, Any]) -> ImageDefaults:
    process = config.get("process") or {}
    if not isinstance(process, dict):
        raise ImageError("the unpacked image's runtime config has no process object")
    args, env, cwd = process.get("args") or [], process.get("env") or [], process.get("cwd") or "/"
    if not (isinstance(args, list) and isinstance(env, list) and isinstance(cwd, str)):
        raise ImageError("the unpacked image's runtime config has malformed process fields")
    return ImageDefaults(args=tuple(str(a) for a in args),
                         env=tuple(str(e) for e in env) or ImageDefaults().env, cwd=cwd)


def _intact(entry: Path, digest: str) -> bool:
    """The cache entry is exactly as it was when it was unpacked (its stamp is unchanged)."""
    try:
        record = json.loads((entry / _RECORD).read_text())
        return (isinstance(record, dict) and record.get("digest") == digest
                and record.get("stamp") == tree_stamp(entry, exclude=frozenset({_RECORD})))
    except (OSError, ValueError):
        return False


def _unpack(layout_dir: Path, tag: str, digest: str, entry: Path) -> None:
    """umoci unpack into a stage, stamped, published as ``entry`` (replacing a damaged one)."""
    argv = ["umoci", "unpack"]
    if os.geteuid() != 0:
        argv.append("--rootless")
    with publish_dir(entry, replace=entry.exists(), prefix=_UNPACK_PREFIX) as stage:
        try:
            run([*argv, "--image", f"{layout_dir}:{tag}", str(stage)])
        except CommandFailedError as e:
            raise ImageError(f"cannot unpack {layout_dir}:{tag}: {e}") from None
        # umoci resolves the tag itself: make sure it unpacked the manifest we verified.
        if not (stage / f"sha256_{digest.removeprefix('sha256:')}.mtree").is_file():
            raise ImageError(f"umoci did not unpack manifest {digest} for {layout_dir}:{tag}")
        try:
            record = {"digest": digest, "stamp": tree_stamp(stage)}
        except OSError as e:
            raise ImageError(f"cannot read back the unpacked {layout_dir}:{tag}: {e}") from None
        (stage / _RECORD).write_text(json.dumps(record) + "\n")


def unpack_layout(layout_dir: Path, tag: str | None, images_dir: Path) -> Rootfs:
    """Unpack (or reuse the intact cached unpack of) one verified manifest of an OCI image layout."""
    chosen, digest = _manifest_for(layout_dir, tag)
    _verified_manifest(layout_dir, digest)
    entry = images_dir / digest.replace(":", "-")  # digest validated: sha256-<64 hex>
    if not _intact(entry, digest):
        if entry.exists():
            log.warning("image cache entry %s changed since it was unpacked: unpacking it again", entry)
        _unpack(layout_dir, chosen, digest, entry)
        if not _intact(entry, digest):
            raise ImageError(f"the image cache entry {entry} changed while it was being used",
                             hint=f"remove {entry} and retry")
    try:
        runtime_config = json_object((entry / "config.json").read_bytes(), f"{entry}/config.json")
    except OSError:
        runtime_config = {}
    return Rootfs(path=entry / "rootfs", image=f"{layout_dir}:{chosen}", digest=digest,
                  defaults=_defaults_from_runtime_config(runtime_config))


def prepare_image(image: str, images_dir: Path) -> Rootfs:
    """Resolve IMAGE to a root filesystem directory; every bad input is an :class:`ImageError`."""
    path, tag = split_image_ref(image)
    if not path.exists():
        raise ImageError(f"image {image} does not exist",
                         hint="pass a root filesystem directory or an OCI image layout directory")
    if not path.is_dir():
        raise ImageError(f"image {image} is not a directory",
                         hint="pass a root filesystem directory or an OCI image layout directory")
    path = path.resolve()
    if is_oci_layout(path):
        return unpack_layout(path, tag, images_dir)
    if tag is not None:
        raise ImageError(f"{path} is not an OCI image layout, so it has no tag {tag!r}")
    if not looks_like_rootfs(path):
        raise ImageError(
            f"{path} is neither an OCI image layout (no oci-layout + index.json) nor a root "
            f"filesystem (none of {', '.join(m + '/' for m in _ROOTFS_MARKERS)})",
        )
    return Rootfs(path=path, image=str(path))


# --- command lookup inside the rootfs (so a missing command fails before a VM boots) ------------
def _resolve_in_root(root: Path, guest_path: str, max_links: int = 40) -> Path | None:
    """Host path of ``guest_path`` inside ``root``, following symlinks as the guest would."""
    parts = [p for p in guest_path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            st = candidate.lstat()
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_links:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def _is_executable(path: Path | None) -> bool:
    if path is None:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def find_command(rootfs: Path, argv0: str, env: tuple[str, ...], cwd: str) -> str:
    """The guest path ``argv0`` runs from, or :class:`CommandNotFoundError` (exit 127)."""
    if "/" in argv0:
        guest = posixpath.normpath(posixpath.join(cwd, argv0))
        if _is_executable(_resolve_in_root(rootfs, guest)):
            return guest
        raise CommandNotFoundError(f"{argv0}: no such executable in the image ({rootfs})")
    path_value = DEFAULT_PATH
    for item in env:
        if item.startswith("PATH="):
            path_value = item[len("PATH="):]
    for directory in path_value.split(":"):
        if not directory:
            continue
        guest = posixpath.join(posixpath.join(cwd, directory), argv0)
        with contextlib.suppress(OSError):
            if _is_executable(_resolve_in_root(rootfs, guest)):
                return guest
    raise CommandNotFoundError(f"{argv0}: command not found in the image's PATH ({path_value})")
