"""``vz-linux build`` and ``vz-linux config``: thin shims over :mod:`vz_linux.build.pipeline`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import layout
from ..arch import Architecture
from ..build.buildroot import current_identity, roots_dir, run_hermetic
from ..build.cpio import Compression
from ..build.kernel import CompileProgress, ProgressFn
from ..build.pipeline import BuildOptions, BuildResult, ConfigReport, StageFn, build_bundle, config_report
from ..build.sources import SourceSpec, select_pin
from ..profiles import KernelProfile
from .common import err_console, out_console

_PROFILES = click.Choice([p.value for p in KernelProfile])
_ARCHES = click.Choice([a.value for a in Architecture] + ["amd64", "aarch64"])


def _source_options(f: Any) -> Any:
    f = click.option("--kernel-pin", metavar="SERIES", default=None,
                     help="Kernel series to build: the default pin (linux/kernel-version.mk) or one with a "
                          "linux/kernel-version-<series>.mk, e.g. 6.1.")(f)
    f = click.option("--allow-http", is_flag=True,
                     help="Allow a plain http:// tarball URL (always allowed for 127.0.0.1).")(f)
    f = click.option("--kernel-source-sha256", metavar="HEX",
                     help="sha256 of the tarball given by --kernel-source (mandatory for tarballs).")(f)
    f = click.option("--kernel-source", metavar="debian|PATH|URL|DIR",
                     help="Kernel source: Debian's linux-source package (default), a tarball path or "
                          "https URL, or an existing kernel tree.")(f)
    return f


def _spec(kernel_source: str | None, sha256: str | None, allow_http: bool) -> SourceSpec:
    return SourceSpec.from_option(kernel_source, sha256, allow_http)


@contextmanager
def _progress_display() -> Iterator[ProgressFn]:
    progress = Progress(
        TextColumn("[bold]compiling[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("objects"),
        TimeElapsedColumn(), TextColumn("{task.fields[line]}", markup=False),
        console=err_console, transient=True,
    )
    task = progress.add_task("kernel", total=None, line="")

    last_plain = [-60.0]

    def update(p: CompileProgress) -> None:
        if not err_console.is_terminal:
            # No live display in logs (CI): a plain line a minute instead.
            if p.elapsed - last_plain[0] >= 60:
                last_plain[0] = p.elapsed
                err_console.print(f"compiling: {p.done}/{p.total} objects, {p.elapsed / 60:.0f} min",
                                  markup=False)
            return
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=p.done, total=p.total, line=p.line[-60:])

    try:
        yield update
    finally:
        progress.stop()


def _print_build(result: BuildResult) -> None:
    k = result.kernel
    how = "from cache" if result.cache_hit else f"compiled in {result.kernel_seconds:.0f}s (log {result.log_path})"
    out_console.print(f"kernel {k.release} ({k.source.origin}) {how}", markup=False, soft_wrap=True)
    out_console.print(f"capabilities: {' '.join(sorted(c.value for c in k.capabilities))}", markup=False, soft_wrap=True)
    if result.metadata is None:
        out_console.print(f"{result.bundle_dir}/{layout.KERNEL} written; userland NOT assembled (--kernel-only)",
                          markup=False, soft_wrap=True)
    else:
        out_console.print(f"bundle: {result.bundle_dir}", markup=False, soft_wrap=True)


def _stage_printer(label: str) -> StageFn:
    def say(text: str) -> None:
        err_console.print(f"[{label}] {text}", markup=False, soft_wrap=True)

    return say


@click.command()
@click.option("--profile", type=_PROFILES, default=KernelProfile.developer.value, show_default=True)
@click.option("--all-profiles", is_flag=True, help="Build every profile (then --out is the out root).")
@click.option("--arch", type=_ARCHES, default=None, help="Guest arch (default: the host's).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Bundle dir (default linux/out[/<arch>][/container]).")
@click.option("--rebuild-kernel", is_flag=True, help="Compile the kernel even if the cache holds it.")
@click.option("--kernel-only", is_flag=True, help="Stop after writing the kernel into the bundle dir.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help="make -j (default: all cores).")
@click.option("--hermetic", is_flag=True,
              help="Build inside the isolated Debian build root (mmdebstrap + bubblewrap, no network; "
                   "docs/reproducible.md).")
@click.option("--initramfs-compression", default=Compression.none.value, show_default=True,
              help="none, gzip or lz4 (the kernel needs the matching CONFIG_RD_*; docs/guest.md).")
@_source_options
@click.pass_context
def build(ctx: click.Context, profile: str, all_profiles: bool, arch: str | None, out: Path | None,
          rebuild_kernel: bool, kernel_only: bool, jobs: int | None, hermetic: bool, initramfs_compression: str,
          kernel_source: str | None, kernel_source_sha256: str | None, allow_http: bool,
          kernel_pin: str | None) -> None:
    """Build guest-kernel bundles: checked config, cached kernel, userland, version.json."""
    select_pin(kernel_pin)  # an unknown pin fails before anything is built
    compression = Compression.parse(initramfs_compression)  # ... and so does an unknown compression
    if hermetic and current_identity() is None:
        # The same command, minus --hermetic, run by this interpreter inside the build root.
        inner = [sys.executable, "-c", "from vz_linux.cli.main import main; main()",
                 *(a for a in sys.argv[1:] if a != "--hermetic")]
        err_console.print(f"[hermetic] build root: {roots_dir()} (made once with mmdebstrap)", markup=False)
        # --out may lie outside the checkout: its parent is bound too (the build swaps the dir in).
        ctx.exit(run_hermetic(inner, outputs=[out.absolute().parent] if out is not None else []))
    target = Architecture.parse(arch) if arch else Architecture.host()
    profiles = list(KernelProfile) if all_profiles else [KernelProfile.parse(profile)]
    for p in profiles:
        bundle_dir = (layout.default_bundle_dir(p, target, out_root=out) if all_profiles
                      else out if out is not None else layout.default_bundle_dir(p, target))
        with _progress_display() as on_progress:
            options = BuildOptions(
                profile=p, arch=target, out_dir=bundle_dir, rebuild_kernel=rebuild_kernel,
                source=_spec(kernel_source, kernel_source_sha256, allow_http), jobs=jobs,
                kernel_only=kernel_only, kernel_pin=kernel_pin, initramfs_compression=compression,
                on_stage=_stage_printer(f"{p}/{target}"),
                on_progress=on_progress,
            )
            result = build_bundle(options)
        _print_build(result)


def _print_report(report: ConfigReport, verbose: bool) -> None:
    r = report.resolved
    c = r.counts()
    failures = r.failures
    out_console.print(
        f"{r.profile}/{r.arch}: Linux {r.source.info.version} {r.profile.baseline} + "
        f"{', '.join(p.name for p in r.fragments)}", markup=False, soft_wrap=True)
    out_console.print(f"  .config: {c['y']} y, {c['m']} m, {c['n']} n, {c['other']} values", markup=False, soft_wrap=True)
    held = sum(1 for x in r.checks if x.ok)
    allowed = sum(1 for x in r.checks if x.allowed_because)
    out_console.print(f"  fragment lines: {len(r.checks)} checked, {held} hold, {allowed} allow-listed, "
                      f"{len(failures)} failed", markup=False, soft_wrap=True)
    for check in r.checks:
        if verbose or not check.ok:
            out_console.print("    " + check.describe(), markup=False, soft_wrap=True)
    out_console.print(f"  capabilities: {' '.join(sorted(x.value for x in report.capabilities))}", markup=False, soft_wrap=True)
    for line in report.missing:
        out_console.print(f"  contract MISSING {line}", markup=False, soft_wrap=True)
    if (kspp := report.kspp) is not None:
        out_console.print(f"  KSPP recommended settings: {len(kspp.met)} met, {len(kspp.missed)} missed "
                          "(docs/profiles.md, \"Hardening\")", markup=False, soft_wrap=True)
        if verbose:
            out_console.print("    met: " + " ".join(f"{k.symbol}={k.value}" for k in kspp.met),
                              markup=False, soft_wrap=True)
        out_console.print("    missed: " + " ".join(f"{k.symbol}={k.value} (is {got})" for k, got in kspp.missed),
                          markup=False, soft_wrap=True)
        if kspp.not_in_tree:
            out_console.print("    not in this kernel: " + " ".join(str(k) for k in kspp.not_in_tree),
                              markup=False, soft_wrap=True)


@click.command("config")
@click.option("--profile", type=_PROFILES, default=None, help="Profile (default: every profile).")
@click.option("--arch", type=_ARCHES, default=None, help="Guest arch (default: the host's).")
@click.option("--all-arches", is_flag=True, help="Resolve for every arch.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--failures-only", "-q", is_flag=True, help="Show only the fragment lines that did not hold.")
@_source_options
def config_cmd(profile: str | None, arch: str | None, all_arches: bool, as_json: bool, failures_only: bool,
               kernel_source: str | None, kernel_source_sha256: str | None, allow_http: bool,
               kernel_pin: str | None) -> None:
    """Resolve and check a profile's kernel config without compiling."""
    select_pin(kernel_pin)
    profiles = [KernelProfile.parse(profile)] if profile else list(KernelProfile)
    arches = list(Architecture) if all_arches else [Architecture.parse(arch) if arch else Architecture.host()]
    spec = _spec(kernel_source, kernel_source_sha256, allow_http)
    reports = [config_report(p, a, spec, kernel_pin=kernel_pin) for p in profiles for a in arches]
    if as_json:
        data = [r.to_json() for r in reports]
        click.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        for r in reports:
            _print_report(r, not failures_only)
    for r in reports:
        r.raise_for_problems()
