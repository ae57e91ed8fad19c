"""``vz oci images`` / ``vz oci rmi``: the store's images next to the containers that use them."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Any

from ..errors import ImageInUseError
from .config import RuntimeConfig
from .state import LIVE, ContainerStore
from .store import StoredImage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRow:
    """One reference to one stored image (an image with two tags is two rows, as in Docker)."""

    repository: str
    tag: str
    digest: str
    image_id: str
    platform: str
    size: int
    pulled: str

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "tag": self.tag, "digest": self.digest, "id": self.image_id,
                "platform": self.platform, "size": self.size, "pulled": self.pulled}


def _split(ref: str) -> tuple[str, str]:
    """(repository, tag or the pinned digest) of a stored reference."""
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        return repo, digest
    repo, _, tag = ref.rpartition(":")
    return repo, tag


def list_images(cfg: RuntimeConfig) -> list[ImageRow]:
    rows = []
    for img in cfg.image_store().images():
        for ref in img.refs:
            repo, tag = _split(ref)
            rows.append(ImageRow(repo, tag, img.digest, img.short_id, img.platform, img.size, img.pulled))
    return sorted(rows, key=lambda r: (r.repository, r.tag, r.platform))


def _users(cfg: RuntimeConfig, img: StoredImage) -> tuple[list[str], list[str]]:
    """(live, finished) names of the containers whose rootfs is this image's unpacked tree."""
    entry = str(cfg.images_dir / img.tag)
    store = ContainerStore(cfg.containers_dir)
    live: list[str] = []
    done: list[str] = []
    for st in store.list():
        if st.rootfs == entry or st.rootfs.startswith(entry + "/"):
            (live if store.effective_status(st) in LIVE else done).append(st.name)
    return live, done


def remove_image(cfg: RuntimeConfig, name: str, *, force: bool = False) -> list[StoredImage]:
    """Untag a reference or delete an image by id; refuses while a live container runs from it
    (unless ``force``). An image gone from the store also loses its unpacked tree, unless a
    container record still points at it."""
    store = cfg.image_store()
    if not force:
        for img in store.lookup(name):
            live, _done = _users(cfg, img)
            if live and (len(img.refs) <= 1 or name not in img.refs):
                raise ImageInUseError(f"image {name} is used by running container(s) {', '.join(live)}",
                                      hint="stop them first, or pass -f")
    gone = store.remove(name)
    for img in gone:
        live, done = _users(cfg, img)
        if not live and not done:
            shutil.rmtree(cfg.images_dir / img.tag, ignore_errors=True)
        else:
            log.info("keeping the unpacked %s: containers %s use it", img.tag, ", ".join(live + done))
    return gone
