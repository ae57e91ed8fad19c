"""Build a bundle: kernel source → config → kernel (cached) → guest userland → bundle directory.

Modules in pipeline order: ``sources`` (kernel source), ``kbuild`` (the kernel's make and
toolchain), ``kconfig`` (config resolution and the line-by-line check), ``kernel`` (compile),
``kernel_cache``, ``debian`` (apt/dpkg), ``busybox``, ``agent``, ``crun``, ``cpio``,
``initramfs``, ``assemble`` (the bundle directory and its version.json) and ``pipeline``
(the orchestrator behind ``vz-linux build``).
"""

from __future__ import annotations

from .assemble import assemble_bundle as assemble_bundle
from .kconfig import ResolvedConfig as ResolvedConfig
from .kconfig import resolve_config as resolve_config
from .kernel import CompileProgress as CompileProgress
from .kernel import KernelInfo as KernelInfo
from .kernel import compile_kernel as compile_kernel
from .pipeline import BuildOptions as BuildOptions
from .pipeline import BuildResult as BuildResult
from .pipeline import ConfigReport as ConfigReport
from .pipeline import build_bundle as build_bundle
from .pipeline import config_report as config_report
from .sources import KernelSource as KernelSource
from .sources import SourceSpec as SourceSpec
from .sources import acquire_source as acquire_source
