"""vz_linux: build, verify, select and boot Linux guest-kernel bundles for micro-VMs.

The public selection API (SPEC §4). Other modules may append their exports below.
"""

from __future__ import annotations

from .arch import Architecture
from .errors import VzLinuxError
from .metadata import BundleMetadata, FileInfo, KernelSourceInfo, OciRuntimeInfo, ToolchainInfo
from .profiles import KernelCapability, KernelProfile
from .version import AGENT_PROTOCOL_REVISION, AGENT_VERSION, METADATA_SCHEMA_VERSION, __version__

__all__ = [
    "AGENT_PROTOCOL_REVISION",
    "AGENT_VERSION",
    "METADATA_SCHEMA_VERSION",
    "Architecture",
    "BundleMetadata",
    "FileInfo",
    "KernelCapability",
    "KernelProfile",
    "KernelSourceInfo",
    "OciRuntimeInfo",
    "ToolchainInfo",
    "VzLinuxError",
    "__version__",
]
