"""vz_linux: build, verify, select and boot Linux guest-kernel bundles for micro-VMs.

The public API. Names load on first use (PEP 562): ``import vz_linux`` costs the version constants
only, so the CLI and library users start fast (docs/architecture.md, "Start-up"). To add a name,
add one row to ``_EXPORTS`` (``lazy.py``) and one line under ``TYPE_CHECKING`` (what mypy and editors see).
"""

from __future__ import annotations

from .lazy import lazy_exports
from .version import AGENT_PROTOCOL_REVISION as AGENT_PROTOCOL_REVISION
from .version import AGENT_VERSION as AGENT_VERSION
from .version import METADATA_SCHEMA_VERSION as METADATA_SCHEMA_VERSION
from .version import __version__ as __version__

TYPE_CHECKING = False  # typing costs milliseconds at start-up; mypy treats it as true

# name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "Architecture": ".arch",
    "BuildOptions": ".build.pipeline",
    "build_bundle": ".build.pipeline",
    "install_bundle": ".bundle.install",
    "BundleMetadata": ".bundle.metadata",
    "FileInfo": ".bundle.metadata",
    "KernelSourceInfo": ".bundle.metadata",
    "OciRuntimeInfo": ".bundle.metadata",
    "ToolchainInfo": ".bundle.metadata",
    "KernelBundle": ".bundle.model",
    "load_bundle": ".bundle.model",
    "validate_bundle": ".bundle.model",
    "KernelBundleOptions": ".bundle.resolve",
    "ensure_kernel": ".bundle.resolve",
    "ensure_kernel_bundle": ".bundle.resolve",
    "ensure_kernel_profile": ".bundle.resolve",
    "VzLinuxError": ".errors",
    "RuntimeConfig": ".oci.config",
    "KernelCapability": ".profiles",
    "KernelProfile": ".profiles",
    "AgentClient": ".vm.agent_client",
    "LinuxVm": ".vm.linux_vm",
    "VmConfig": ".vm.linux_vm",
    "VmShare": ".vm.linux_vm",
}

__getattr__, __dir__, __all__ = lazy_exports(
    __name__, _EXPORTS, ("AGENT_PROTOCOL_REVISION", "AGENT_VERSION", "METADATA_SCHEMA_VERSION", "__version__"))

if TYPE_CHECKING:
    from .arch import Architecture as Architecture
    from .build.pipeline import BuildOptions as BuildOptions
    from .build.pipeline import build_bundle as build_bundle
    from .bundle.install import install_bundle as install_bundle
    from .bundle.metadata import BundleMetadata as BundleMetadata
    from .bundle.metadata import FileInfo as FileInfo
    from .bundle.metadata import KernelSourceInfo as KernelSourceInfo
    from .bundle.metadata import OciRuntimeInfo as OciRuntimeInfo
    from .bundle.metadata import ToolchainInfo as ToolchainInfo
    from .bundle.model import KernelBundle as KernelBundle
    from .bundle.model import load_bundle as load_bundle
    from .bundle.model import validate_bundle as validate_bundle
    from .bundle.resolve import KernelBundleOptions as KernelBundleOptions
    from .bundle.resolve import ensure_kernel as ensure_kernel
    from .bundle.resolve import ensure_kernel_bundle as ensure_kernel_bundle
    from .bundle.resolve import ensure_kernel_profile as ensure_kernel_profile
    from .errors import VzLinuxError as VzLinuxError
    from .oci.config import RuntimeConfig as RuntimeConfig
    from .profiles import KernelCapability as KernelCapability
    from .profiles import KernelProfile as KernelProfile
    from .vm.agent_client import AgentClient as AgentClient
    from .vm.linux_vm import LinuxVm as LinuxVm
    from .vm.linux_vm import VmConfig as VmConfig
    from .vm.linux_vm import VmShare as VmShare
