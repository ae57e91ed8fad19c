"""vz_linux: build, verify, select and boot Linux guest-kernel bundles for micro-VMs.

The public API. ``import X as X`` marks an explicit re-export (mypy --strict), one line per
name so other modules can append theirs below.
"""

from __future__ import annotations

from .agent_client import AgentClient as AgentClient
from .arch import Architecture as Architecture
from .build import BuildOptions as BuildOptions
from .build import build_bundle as build_bundle
from .bundle import KernelBundle as KernelBundle
from .bundle import load_bundle as load_bundle
from .bundle import validate_bundle as validate_bundle
from .errors import VzLinuxError as VzLinuxError
from .install import install_bundle as install_bundle
from .metadata import BundleMetadata as BundleMetadata
from .metadata import FileInfo as FileInfo
from .metadata import KernelSourceInfo as KernelSourceInfo
from .metadata import OciRuntimeInfo as OciRuntimeInfo
from .metadata import ToolchainInfo as ToolchainInfo
from .oci.config import RuntimeConfig as RuntimeConfig
from .profiles import KernelCapability as KernelCapability
from .profiles import KernelProfile as KernelProfile
from .resolve import KernelBundleOptions as KernelBundleOptions
from .resolve import ensure_kernel as ensure_kernel
from .resolve import ensure_kernel_bundle as ensure_kernel_bundle
from .resolve import ensure_kernel_profile as ensure_kernel_profile
from .version import AGENT_PROTOCOL_REVISION as AGENT_PROTOCOL_REVISION
from .version import AGENT_VERSION as AGENT_VERSION
from .version import METADATA_SCHEMA_VERSION as METADATA_SCHEMA_VERSION
from .version import __version__ as __version__
from .vm import LinuxVm as LinuxVm
from .vm import VmConfig as VmConfig
from .vm import VmShare as VmShare
