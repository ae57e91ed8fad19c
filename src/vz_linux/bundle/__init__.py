"""A bundle once built: its model and validation, its version.json, atomic installs, and selection.

``model`` (a bundle directory, loaded and validated), ``metadata`` (version.json and its schema),
``install`` (atomic installs under a lock) and ``resolve`` (``ensure_kernel_*``: which bundle a
caller gets). Bundles travel as signed releases (``release``, ``signing``, ``provenance``; installed
by ``installer`` through ``fetch``) and as OCI artifacts (``artifact``, ``registry``, ``transfer``):
docs/distribution.md.
"""

from __future__ import annotations

from ..lazy import lazy_exports

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy treats it as true

# name -> the module that defines it; imported on first use, so importing a module of this package
# does not import them all (docs/architecture.md, "Start-up")
_EXPORTS: dict[str, str] = {
    "install_bundle": ".install",
    "install_legacy": ".install",
    "InstallFromOptions": ".installer",
    "install_release": ".installer",
    "BundleMetadata": ".metadata",
    "KernelBundle": ".model",
    "load_bundle": ".model",
    "validate_bundle": ".model",
    "Reference": ".registry",
    "RegistryClient": ".registry",
    "make_release": ".release",
    "KernelBundleOptions": ".resolve",
    "ensure_kernel": ".resolve",
    "ensure_kernel_bundle": ".resolve",
    "ensure_kernel_profile": ".resolve",
    "pull": ".transfer",
    "push": ".transfer",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .install import install_bundle as install_bundle
    from .install import install_legacy as install_legacy
    from .installer import InstallFromOptions as InstallFromOptions
    from .installer import install_release as install_release
    from .metadata import BundleMetadata as BundleMetadata
    from .model import KernelBundle as KernelBundle
    from .model import load_bundle as load_bundle
    from .model import validate_bundle as validate_bundle
    from .registry import Reference as Reference
    from .registry import RegistryClient as RegistryClient
    from .release import make_release as make_release
    from .resolve import KernelBundleOptions as KernelBundleOptions
    from .resolve import ensure_kernel as ensure_kernel
    from .resolve import ensure_kernel_bundle as ensure_kernel_bundle
    from .resolve import ensure_kernel_profile as ensure_kernel_profile
    from .transfer import pull as pull
    from .transfer import push as push
