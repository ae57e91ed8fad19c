"""A bundle once built: its model and validation, its version.json, atomic installs, and selection.

``model`` (a bundle directory, loaded and validated), ``metadata`` (version.json and its schema),
``install`` (atomic installs under a lock) and ``resolve`` (``ensure_kernel_*``: which bundle a
caller gets). Bundles travel as signed releases (``release``, ``signing``, ``provenance``; installed
by ``installer`` through ``fetch``) and as OCI artifacts (``artifact``, ``registry``, ``transfer``):
docs/distribution.md.
"""

from __future__ import annotations

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
