"""The one place that knows the bundle layout (docs/selection.md) and where bundles live by default."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .arch import Architecture
from .errors import NoHomeDirectoryError
from .profiles import KernelProfile

KERNEL = "vmlinux"
INITRAMFS = "initramfs.img"
METADATA = "version.json"
OCI_RUNTIME = "crun"  # the file is named after the runtime (version.json's oci_runtime.name)
# Files that are checksummed and installed, in install order (metadata last: its presence marks
# a complete bundle for readers that do not go through the atomic directory swap).
ARTIFACTS: tuple[str, ...] = (KERNEL, INITRAMFS, OCI_RUNTIME)
BUNDLE_FILES: tuple[str, ...] = (*ARTIFACTS, METADATA)
# Written by bundle.install inside an installed bundle: the size/inode/ctime/sha256 of every file as
# installed, so "already installed and intact" is a stat() comparison instead of a re-hash.
INSTALL_RECORD = ".vz-install.json"


@dataclass(frozen=True)
class BundlePaths:
    root: Path

    @property
    def kernel(self) -> Path:
        return self.root / KERNEL

    @property
    def initramfs(self) -> Path:
        return self.root / INITRAMFS

    @property
    def oci_runtime(self) -> Path:
        return self.root / OCI_RUNTIME

    @property
    def metadata(self) -> Path:
        return self.root / METADATA


def source_checkout() -> Path | None:
    """The vz-linux source checkout this package is imported from, if any: this file is
    ``<top>/src/vz_linux/layout.py`` and ``<top>/pyproject.toml`` names the project ``vz-linux``,
    with ``<top>/linux/`` beside it. A wheel-installed package (site-packages/vz_linux/) has none,
    wherever it sits and whatever the current directory holds (docs/security.md)."""
    here = Path(__file__).resolve()
    top = here.parents[2]
    if here.parent.name != "vz_linux" or here.parents[1].name != "src" or not (top / "linux").is_dir():
        return None
    try:
        project = tomllib.loads((top / "pyproject.toml").read_text()).get("project", {})
    except (OSError, ValueError):
        return None
    return top if isinstance(project, dict) and project.get("name") == "vz-linux" else None


def default_out_root() -> Path:
    """Where builds write by default: the checkout's linux/out (./linux/out outside a checkout)."""
    top = source_checkout()
    return (top if top is not None else Path.cwd()) / "linux" / "out"


def trusted_out_root() -> Path | None:
    """Build output that may be used without being named: a real source checkout's linux/out only,
    never the current directory's (the selection API's step 4, docs/selection.md)."""
    return default_out_root() if source_checkout() is not None else None


def default_bundle_dir(profile: KernelProfile, arch: Architecture | None = None,
                       out_root: Path | None = None) -> Path:
    """linux/out/ (developer), linux/out/container/; another arch: linux/out/<arch>/[container/]."""
    root = out_root if out_root is not None else default_out_root()
    arch = arch or Architecture.host()
    if arch is not Architecture.host():
        root = root / arch.value
    return root / profile.bundle_subdir if profile.bundle_subdir else root


def home_dir() -> Path:
    home = os.environ.get("HOME")
    if not home:
        raise NoHomeDirectoryError(
            "$HOME is not set, so the default install dir ~/.vz/linux cannot be found",
            hint="set HOME or pass an explicit install dir",
        )
    return Path(home)


def default_install_root() -> Path:
    return home_dir() / ".vz" / "linux"


def default_install_dir(profile: KernelProfile) -> Path:
    return default_install_root() / profile.value


def trusted_keys_dir() -> Path:
    """~/.vz/linux/trusted-keys/: the public keys ``vz-linux install --from`` trusts by default."""
    return default_install_root() / "trusted-keys"


def pulled_root(install_dir: Path | None = None) -> Path:
    """Where pulled bundles are kept by digest: ``pulled/`` beside the install dirs
    (``~/.vz/linux/pulled/`` by default), so a pinned version switches without the network."""
    return install_dir.parent / "pulled" if install_dir is not None else default_install_root() / "pulled"


def cache_root() -> Path:
    """Build cache outside the checkout: $VZ_LINUX_CACHE_DIR, else $XDG_CACHE_HOME/vz-linux."""
    env = os.environ.get("VZ_LINUX_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else home_dir() / ".cache"
    return base / "vz-linux"


def downloads_dir() -> Path:
    """Partial release downloads, kept for resuming (named by the sha256 they must end up with)."""
    return cache_root() / "downloads"
