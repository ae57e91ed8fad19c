"""IMAGE strings → a root filesystem, pulling registry images into the store (docs/oci.md, "Images
from registries").

IMAGE is, in this order: ``docker://REF`` (always a registry reference); an existing path, or one
spelt as a path (``/…``, ``./…``, ``../…``, ``~…``): a rootfs directory or an OCI layout ``DIR[:TAG]``
(:func:`.image.prepare_image`); else a registry reference ``HOST[:PORT]/REPO[:TAG][@sha256:…]``
(:class:`vz_linux.bundle.registry.Reference`: the registry host is required, there is no implicit
docker.io). Anything else is an :class:`ImageReferenceError`.

Pulls go through the one skopeo owner (:class:`vz_linux.bundle.registry.RegistryClient`), for one
platform — the guest's architecture unless overridden — into a private stage that
:class:`.store.ImageStore` then publishes under its lock.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..arch import Architecture
from ..bundle.registry import Platform, Reference, RegistryClient
from ..errors import ImageNotPresentError, ImageReferenceError, InvalidConfigError
from .image import Rootfs, prepare_image, unpack_layout
from .store import ImageStore, StoredImage

TRANSPORT = "docker://"
_STAGE_TAG = "pulled"
_PATH_PREFIXES = ("/", "./", "../", "~", ".")
log = logging.getLogger(__name__)


class PullPolicy(enum.StrEnum):
    """``--pull``: Docker's and Podman's names."""

    missing = "missing"  # pull when the store has no image for the reference and platform
    always = "always"  # pull every time (blobs already stored are not fetched again)
    never = "never"  # use the store only


@dataclass(frozen=True)
class PullOptions:
    policy: PullPolicy = PullPolicy.missing
    tls_verify: bool | None = None  # None: off for a loopback registry, on otherwise
    override_arch: str | None = None  # OCI architecture name (amd64, arm64); None: the guest's
    override_os: str | None = None  # None: linux
    auth_file: Path | None = None  # None: $REGISTRY_AUTH_FILE, else ~/.docker/config.json (skopeo's rules)

    def client(self) -> RegistryClient:
        return RegistryClient(tls_verify=self.tls_verify, auth_file=self.auth_file)

    def platform(self, guest: Architecture) -> Platform:
        return Platform(self.override_os or "linux", self.override_arch or guest.oci_architecture)


def parse_reference(image: str, *, local: bool = True) -> Reference | None:
    """The registry reference IMAGE names, or None when IMAGE is a local path (``local=False``:
    IMAGE must be a reference, as for ``vz oci pull``)."""
    explicit = image.startswith(TRANSPORT) or not local
    text = image.removeprefix(TRANSPORT)
    if not explicit and (image.startswith(_PATH_PREFIXES) or Path(image).exists()
                         or Path(image.rpartition(":")[0] or image).exists()):
        return None
    try:
        return Reference.parse(text).with_default_tag()
    except InvalidConfigError:
        what = "a registry reference" if explicit else "a directory, an OCI layout or a registry reference"
        raise ImageReferenceError(
            f"{image!r} is not {what}",
            hint="use HOST[:PORT]/REPO[:TAG][@sha256:DIGEST] (registry host first, lower-case repository), "
                 "docker://REF, a rootfs directory or an OCI layout DIR[:TAG]") from None


def _key(ref: Reference) -> str:
    """The catalogue's name for ``ref``: what was asked for, a digest pin winning over a tag."""
    return str(ref.at(ref.digest)) if ref.digest else str(ref)


def pull(store: ImageStore, ref: Reference, opts: PullOptions, guest: Architecture) -> StoredImage:
    """Pull ``ref`` for the platform into the store (always; :func:`resolve` applies the policy)."""
    platform = opts.platform(guest)
    with store.stage() as stage:
        log.info("pulling %s for %s", ref, platform)
        digest = opts.client().pull_image(ref, stage, _STAGE_TAG, platform)
        return store.publish(stage, digest, _key(ref), str(platform))


def _not_present(ref: Reference, platform: str) -> ImageNotPresentError:
    return ImageNotPresentError(f"image {ref} ({platform}) is not in the local store and --pull=never",
                                hint=f"pull it with `vz oci pull {ref}`, or use --pull=missing")


def resolve(store: ImageStore, ref: Reference, opts: PullOptions, guest: Callable[[], Architecture]) -> StoredImage:
    """The stored image for ``ref``, pulled first as ``opts.policy`` says. ``guest`` (the guest's
    architecture, which may mean resolving a kernel bundle) is asked for only when needed."""
    if opts.policy is PullPolicy.never and opts.override_arch is None and not any(
            store.find(_key(ref), i.platform, digest=ref.digest) for i in store.images()):
        raise _not_present(ref, "any platform")
    arch = guest()
    platform = str(opts.platform(arch))
    found = None if opts.policy is PullPolicy.always else store.find(_key(ref), platform, digest=ref.digest)
    if found is not None:
        return found
    if opts.policy is PullPolicy.never:
        raise _not_present(ref, platform)
    return pull(store, ref, opts, arch)


def rootfs_of(store: ImageStore, image: StoredImage, name: str, images_dir: Path) -> Rootfs:
    """Unpack (or reuse) a stored image's root filesystem; the store cannot lose it meanwhile."""
    with store.locked(shared=True):
        rootfs = unpack_layout(store.root, image.tag, images_dir)
    return replace(rootfs, image=name)


def prepare(image: str, *, store: ImageStore, images_dir: Path, opts: PullOptions,
            guest: Callable[[], Architecture]) -> Rootfs:
    """IMAGE (any form, module doc) → a root filesystem directory on the host.

    ``guest`` gives the guest's architecture; it is only asked for registry references.
    """
    ref = parse_reference(image)
    if ref is None:
        return prepare_image(image, images_dir)
    stored = resolve(store, ref, opts, guest)
    return rootfs_of(store, stored, str(ref), images_dir)
