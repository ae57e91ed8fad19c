"""The build orchestrator (docs/profiles.md): source → config → check → capabilities → kernel
(cached) → userland → version.json.

``build_bundle(BuildOptions(...))`` is what ``vz-linux build`` and ``make -C linux all`` run.
The kernel image is reused from the cache whenever its inputs are unchanged; the userland and
``version.json`` are rebuilt on every build.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import layout
from ..arch import Architecture
from ..bundle.metadata import BundleMetadata
from ..capabilities import derive_capabilities, explain_missing
from ..errors import BuildError, CapabilityContractError
from ..fsutil import publish_file
from ..hashing import sha256_text
from ..profiles import KernelCapability, KernelProfile
from . import kernel_cache
from .assemble import assemble_bundle
from .buildroot import current_identity
from .cpio import Compression
from .kbuild import arch_cflags, toolchain_info
from .kconfig import ResolvedConfig, resolve_config
from .kernel import KernelInfo, ProgressFn, compile_kernel
from .kspp import KsppReport, kspp_report, tree_symbols
from .reproducible import build_epoch, kbuild_identity
from .sources import KernelPin, KernelSource, SourceSpec, acquire_source, select_pin

StageFn = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
    profile: KernelProfile = KernelProfile.developer
    arch: Architecture = field(default_factory=Architecture.host)
    out_dir: Path | None = None  # default: layout.default_bundle_dir(profile, arch)
    rebuild_kernel: bool = False
    source: SourceSpec = field(default_factory=SourceSpec)
    fragments: tuple[Path, ...] | None = None  # default: kconfig.fragment_paths(profile, arch)
    allowlist: Path | None = None  # default: linux/config-allowlist.txt
    jobs: int | None = None  # default: all cores
    nice: int = 10  # the cores are shared; a nice compile is as fast when the machine is idle
    kernel_only: bool = False  # stop after writing the kernel into the bundle dir
    kernel_pin: str | None = None  # a kernel series with a linux/kernel-version-<series>.mk; None = default
    initramfs_compression: Compression = Compression.none  # docs/guest.md, "Initramfs"
    # Reporting hooks (not part of the build's identity).
    on_stage: StageFn | None = field(default=None, compare=False)
    on_progress: ProgressFn | None = field(default=None, compare=False)

    def bundle_dir(self) -> Path:
        return self.out_dir if self.out_dir is not None else layout.default_bundle_dir(self.profile, self.arch)


@dataclass(frozen=True)
class ConfigReport:
    """What ``vz-linux config`` shows: the resolved config, its checks and derived capabilities."""

    resolved: ResolvedConfig
    capabilities: frozenset[KernelCapability]
    missing: tuple[str, ...]  # explain_missing() lines for contract capabilities not derived

    @property
    def ok(self) -> bool:
        return not self.resolved.failures and not self.missing

    @property
    def kspp(self) -> KsppReport | None:
        """The KSPP recommended settings met and missed (reported for the container profile only)."""
        r = self.resolved
        if r.profile is not KernelProfile.container:
            return None
        return kspp_report(r.config, r.arch, tree_symbols(r.source.tree, r.arch.kernel_arch))

    def to_json(self) -> dict[str, Any]:
        """What ``vz-linux config --json`` prints for this (profile, arch)."""
        r = self.resolved
        return {
            "profile": r.profile.value,
            "arch": r.arch.value,
            "kernel": r.source.info.version,
            "source": {"kind": r.source.info.kind, "origin": r.source.info.origin, "sha256": r.source.info.sha256},
            "baseline": r.profile.baseline,
            "fragments": [str(p) for p in r.fragments],
            "counts": r.counts(),
            "capabilities": sorted(c.value for c in self.capabilities),
            "contract_missing": list(self.missing),
            "checks": [
                {"line": c.line.as_text(), "fragment": c.line.path.name if c.line.path else None,
                 "lineno": c.line.lineno, "requested": c.line.value, "resulting": c.resulting, "ok": c.ok,
                 "explanation": c.explanation or None, "allowed_because": c.allowed_because or None}
                for c in r.checks
            ],
            "ok": self.ok,
            **({"kspp": {"met": [str(k) for k in kspp.met],
                         "missed": [{"setting": str(k), "resulting": got} for k, got in kspp.missed],
                         "not_in_tree": [str(k) for k in kspp.not_in_tree]}}
               if (kspp := self.kspp) is not None else {}),
        }

    def raise_for_problems(self) -> None:
        self.resolved.raise_for_failures()
        if self.missing:
            r = self.resolved
            raise CapabilityContractError(
                f"{r.profile}/{r.arch}: the resolved config misses contract capabilities: "
                + "; ".join(self.missing),
                hint=f"enable the named symbols in linux/{r.profile.fragment_name}",
            )


@dataclass(frozen=True)
class BuildResult:
    bundle_dir: Path
    kernel: KernelInfo
    cache_hit: bool
    kernel_seconds: float  # compile time (0 on a cache hit)
    log_path: Path | None  # the compile log (None on a cache hit)
    report: ConfigReport
    metadata: BundleMetadata | None  # None when the userland was not assembled


def _stage(options: BuildOptions, text: str) -> None:
    if options.on_stage is not None:
        options.on_stage(text)


def configure(
    profile: KernelProfile,
    arch: Architecture,
    source: KernelSource,
    *,
    fragments: tuple[Path, ...] | None = None,
    allowlist: Path | None = None,
    memoize: bool = True,
) -> ConfigReport:
    """Resolve and check the config and derive its capabilities (no compile)."""
    resolved = resolve_config(source, profile, arch, fragments=fragments, allowlist=allowlist, memoize=memoize)
    exclusions = resolved.exclusions if profile is KernelProfile.container else []
    caps = derive_capabilities(resolved.config, arch, exclusions)
    missing = tuple(explain_missing(profile.contract - caps, resolved.config, arch, exclusions))
    return ConfigReport(resolved, caps, missing)


def config_report(profile: KernelProfile, arch: Architecture, source: SourceSpec | None = None,
                  *, fragments: tuple[Path, ...] | None = None, allowlist: Path | None = None,
                  kernel_pin: str | None = None) -> ConfigReport:
    return configure(profile, arch, acquire_source(source or SourceSpec(), pin=select_pin(kernel_pin)),
                     fragments=fragments, allowlist=allowlist)


def kernel_cache_key(report: ConfigReport, pin: KernelPin) -> str:
    """The kernel cache key of a resolved config built from ``pin`` (the one place it is computed)."""
    r = report.resolved
    return kernel_cache.cache_key(config_text=r.config_text, source_identity=r.source.identity,
                                  toolchain=toolchain_info(r.arch), schema=pin.cache_schema, arch=r.arch,
                                  build_env=kbuild_identity(build_epoch(pin)), buildroot=current_identity(),
                                  cflags=arch_cflags(r.arch))


def build_kernel(options: BuildOptions, *, pin: KernelPin | None = None
                 ) -> tuple[KernelInfo, ConfigReport, bool, float, Path | None]:
    """Source → config → check → capabilities → kernel image from the cache or a compile.

    Returns (kernel, report, cache_hit, compile_seconds, log_path).
    """
    pin = pin or select_pin(options.kernel_pin)
    epoch = build_epoch(pin)
    _stage(options, "kernel source")
    source = acquire_source(options.source, pin=pin)
    _stage(options, f"config: {options.profile.baseline} + fragments + olddefconfig (Linux {source.info.version})")
    report = configure(options.profile, options.arch, source, fragments=options.fragments,
                       allowlist=options.allowlist)
    report.raise_for_problems()
    config_text = report.resolved.config_text
    toolchain = toolchain_info(options.arch)
    key = kernel_cache_key(report, pin)
    cached = None if options.rebuild_kernel else kernel_cache.lookup(key, options.arch)
    hit = cached is not None
    seconds = 0.0
    log_path: Path | None = None
    if cached is None:
        _stage(options, f"kernel compile ({options.profile}/{options.arch}, key {key[:12]})")
        result = compile_kernel(source, config_text, options.profile, options.arch, epoch=epoch, jobs=options.jobs,
                                nice=options.nice, progress=options.on_progress)
        seconds, log_path = result.seconds, result.log_path
        try:
            cached = kernel_cache.store(key=key, arch=options.arch, image=result.image, config_text=config_text,
                                        release=result.release, version=source.info.version,
                                        source=source.info, toolchain=toolchain,
                                        extra={"profile": options.profile.value,
                                               "compile_seconds": round(seconds, 1),
                                               "build_epoch": epoch,
                                               "objects": result.objects})
        except OSError as e:
            raise BuildError(f"cannot store the kernel in the cache {kernel_cache.kernels_root()}: {e}") from e
    else:
        _stage(options, f"kernel from cache ({cached.dir})")
    kernel = KernelInfo(
        version=source.info.version,
        release=cached.release,
        config_text=config_text,
        config_sha256=sha256_text(config_text),
        cache_key=key,
        source=source.info,
        toolchain=toolchain,
        capabilities=report.capabilities,
        image_path=cached.image,
    )
    return kernel, report, hit, seconds, log_path


def _write_kernel_only(bundle_dir: Path, kernel: KernelInfo) -> None:
    bundle_dir.mkdir(parents=True, exist_ok=True)
    with publish_file(bundle_dir / layout.KERNEL) as tmp:
        shutil.copyfile(kernel.image_path, tmp)


def build_bundle(options: BuildOptions) -> BuildResult:
    """Build one (profile, arch) bundle into ``options.bundle_dir()``."""
    start = time.monotonic()
    kernel, report, hit, seconds, log_path = build_kernel(options)
    bundle_dir = options.bundle_dir()
    metadata: BundleMetadata | None = None
    if options.kernel_only:
        _write_kernel_only(bundle_dir, kernel)
    else:
        _stage(options, "userland: agent, busybox, crun, initramfs, version.json")
        metadata = assemble_bundle(out_dir=bundle_dir, profile=options.profile, arch=options.arch,
                                   kernel_image=kernel.image_path, kernel=kernel,
                                   compression=options.initramfs_compression)
    _stage(options, f"done in {time.monotonic() - start:.1f}s: {bundle_dir}")
    return BuildResult(bundle_dir=bundle_dir, kernel=kernel, cache_hit=hit, kernel_seconds=seconds,
                       log_path=log_path, report=report, metadata=metadata)
