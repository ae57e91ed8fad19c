"""vz_linux: build, verify, select and boot Linux guest-kernel bundles for micro-VMs.

The public API. ``import X as X`` marks an explicit re-export (mypy --strict), one line per
name so other modules can append theirs below.
"""

from __future__ import annotations

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
from .version import AGENT_PROTOCOL_REVISION as AGENT_PROTOCOL_REVISION
from .version import AGENT_VERSION as AGENT_VERSION
from .version import METADATA_SCHEMA_VERSION as METADATA_SCHEMA_VERSION
from .version import __version__ as __version__
from .vm.agent_client import AgentClient as AgentClient
from .vm.linux_vm import LinuxVm as LinuxVm
from .vm.linux_vm import VmConfig as VmConfig
from .vm.linux_vm import VmShare as VmShare
