"""IMAGE → a root filesystem on the host.

IMAGE is either a root filesystem directory or an OCI image layout directory (``oci-layout`` +
``index.json``), optionally ``DIR:TAG``. Layouts are unpacked with Debian's ``umoci`` — a
well-kept implementation of the image spec (layer order, whiteouts, ownership) — once per
manifest digest into the data dir's image cache, atomically (:func:`vz_linux.fsutil.publish_dir`:
unpacked beside the cache entry, renamed into place; when two processes unpack the same digest at
once, the first one's is kept).
The image's own defaults (entrypoint + cmd, env, working dir) come from umoci's generated
runtime config.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CommandNotFoundError, ImageError
from ..fsutil import publish_dir
from ..run import run

# Directories at least one of which every usable root filesystem has.
_ROOTFS_MARKERS = ("bin", "sbin", "usr/bin", "usr/sbin")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_REF_ANNOTATION = "org.opencontainers.image.ref.name"


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


def _manifest_for(layout_dir: Path, tag: str | None) -> tuple[str, str]:
    """(tag, manifest digest) of the manifest to unpack."""
    try:
        index = json.loads((layout_dir / "index.json").read_text())
        manifests = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    except (OSError, ValueError, AttributeError) as e:
        raise ImageError(f"{layout_dir}/index.json is not a valid OCI index: {e}") from None
    tagged = {m.get("annotations", {}).get(_REF_ANNOTATION): m for m in manifests}
    tagged.pop(None, None)
    if tag is not None:
        if tag not in tagged:
            have = ", ".join(sorted(str(t) for t in tagged)) or "none"
            raise ImageError(f"OCI layout {layout_dir} has no tag {tag!r} (tags: {have})")
        chosen = tag
    elif len(tagged) == 1:
        chosen = next(iter(tagged))
    elif not tagged:
        raise ImageError(f"OCI layout {layout_dir} has no tagged manifest",
                         hint="tag one with `umoci tag` and pass DIR:TAG")
    else:
        raise ImageError(f"OCI layout {layout_dir} has several tags ({', '.join(sorted(tagged))})",
                         hint="pass DIR:TAG")
    digest = tagged[chosen].get("digest")
    if not isinstance(digest, str) or ":" not in digest:
        raise ImageError(f"OCI layout {layout_dir}: manifest {chosen!r} has no valid digest")
    return chosen, digest


def _defaults_from_runtime_config(config: dict[str, Any]) -> ImageDefaults:
    process = config.get("process") or {}
    args = tuple(str(a) for a in process.get("args") or ())
    env = tuple(str(e) for e in process.get("env") or ()) or ImageDefaults().env
    cwd = str(process.get("cwd") or "/")
    return ImageDefaults(args=args, env=env, cwd=cwd)


def unpack_layout(layout_dir: Path, tag: str | None, images_dir: Path) -> Rootfs:
    """Unpack (or reuse the cached unpack of) one manifest of an OCI image layout."""
    chosen, digest = _manifest_for(layout_dir, tag)
    target = images_dir / digest.replace(":", "-")
    if not (target / "rootfs").is_dir():
        argv = ["umoci", "unpack"]
        if os.geteuid() != 0:
            argv.append("--rootless")
        # Content-addressed: a concurrent unpack of the same digest is as good as ours.
        with publish_dir(target, prefix=".unpack-") as stage:
            run([*argv, "--image", f"{layout_dir}:{chosen}", str(stage)])
        if not (target / "rootfs").is_dir():
            raise ImageError(f"the image cache entry {target} has no rootfs/", hint=f"remove {target}")
    try:
        runtime_config = json.loads((target / "config.json").read_text())
    except (OSError, ValueError):
        runtime_config = {}
    rootfs = target / "rootfs"
    return Rootfs(path=rootfs, image=f"{layout_dir}:{chosen}", digest=digest,
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
