"""``vz-linux-bench``: cold boot (or, with ``--snapshot``, restore) → agent-ready latency of a bundle
(docs/vm.md; the seed's flags kept)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..arch import Architecture
from ..layout import cache_root
from ..profiles import KernelProfile
from ..vm.accel import AccelChoice, resolve_accel
from ..vm.bench import (
    ALL_PHASES,
    PHASES,
    RESTORE_PHASES,
    RESTORED,
    BenchGuest,
    BenchOptions,
    BootSample,
    GuestResult,
    run_bench,
    to_json,
    write_json,
)
from ..vm.guest_source import GuestSource
from .common import err_console, out_console
from .entry import run_cli, setup_logging
from .plot import check_plot_path, plot_results

_PATH = click.Path(path_type=Path)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def summary_table(results: list[GuestResult]) -> Table:
    t = Table(title="spawn -> agent ready (ms): cold boots, or restores from a template")
    columns = [p for p in ALL_PHASES if any(r.phase(p) for r in results)]
    for col in ("guest", "n", "min", "mean", "median", "p95", "p99", "max", *(f"{p} p50" for p in columns), "RSS p50"):
        t.add_column(col, justify="right" if col != "guest" else "left")
    for r in results:
        s = r.total()
        phases = [r.phase(p) for p in columns]
        rss = r.rss()
        t.add_row(r.label, str(s.n), _ms(s.min), _ms(s.mean), _ms(s.median), _ms(s.p95), _ms(s.p99), _ms(s.max),
                  *(_ms(p.median if p else None) for p in phases),
                  f"{rss.median / 2**20:.0f} MiB" if rss else "-")
    return t


def _check_options(rootfs_dir: Path | None, snapshot: bool, plot_file: Path | None) -> None:
    """Refuse bad options before anything boots."""
    if rootfs_dir is not None and not rootfs_dir.is_dir():
        raise click.BadParameter(f"{rootfs_dir} is not a directory", param_hint="--rootfs-dir")
    if snapshot and rootfs_dir is not None:
        raise click.BadParameter("virtiofs (--rootfs-dir) blocks snapshots: drop --snapshot", param_hint="--rootfs-dir")
    if plot_file is not None:
        try:
            check_plot_path(plot_file)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--plot") from e


def _guests(sources: list[tuple[str, GuestSource]], modes: list[bool], common: dict[str, Any]) -> list[BenchGuest]:
    """One guest per bundle and mode (restore or not), labelled by mode when both run."""
    guests = []
    for label, source in sources:
        guest = source.resolve(**common)
        for restore in modes:
            name = f"{label} ({'restored' if restore else 'cold'})" if len(modes) > 1 else label
            guests.append(BenchGuest(name, guest.config, restore=restore, group=label, sha256=guest.sha256))
    return guests


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bundle-dir", type=_PATH, help="Bundle to boot (default: the installed --profile bundle).")
@click.option("--profile", type=click.Choice([p.value for p in KernelProfile]), default=None)
@click.option("--kernel", type=_PATH, help="Kernel image instead of a bundle (with --initramfs).")
@click.option("--initramfs", type=_PATH, help="Initramfs instead of a bundle (with --kernel).")
@click.option("--install-dir", type=_PATH, help="Install dir for the selection API (default ~/.vz/linux/<profile>).")
@click.option("--no-version-check", is_flag=True, help="Accept a bundle built by another vz-linux release.")
@click.option("--arch", type=click.Choice([a.value for a in Architecture]), default=None)
@click.option("--iterations", type=click.IntRange(1), default=10, show_default=True)
@click.option("--timeout-secs", type=float, default=60.0, show_default=True, help="Per boot, to agent-ready.")
@click.option("--guest-logs", is_flag=True, help="After each run, capture `dmesg | tail -n 120` from the guest.")
@click.option("--guest-log-command", help="After each run, capture this guest command (sh -lc).")
@click.option("--guest-log-timeout-secs", type=float, default=20.0, show_default=True)
@click.option("--http-smoke-url", help="After each boot, fetch URL with BusyBox wget in the guest (enables net).")
@click.option("--http-smoke-timeout-secs", type=float, default=30.0, show_default=True)
@click.option("--retry-log-every", type=click.IntRange(0), default=0, help="Heartbeat every N agent retries.")
@click.option("--rootfs-dir", type=_PATH, help="Boot through the virtiofs rootfs overlay + chroot path.")
@click.option("--serial-logs", is_flag=True, help="Keep every boot's serial console log.")
@click.option("--serial-log-dir", type=_PATH, help="Where to keep them (implies --serial-logs).")
@click.option("--compare", "compare_dir", type=_PATH, help="Second bundle, booted interleaved (A B A B ...).")
@click.option("--json", "json_file", type=_PATH, help="Write every sample and the summary to FILE.")
@click.option("--snapshot", is_flag=True,
              help="Restore each VM from its template (made first) instead of booting it; with --cold, both.")
@click.option("--cold", is_flag=True, help="Cold boots (the default; with --snapshot: interleaved with restores).")
@click.option("--plot", "plot_file", type=_PATH, help="Draw the phases and totals of every boot to FILE (.png/.svg).")
@click.option("--accel", type=click.Choice([a.value for a in AccelChoice]), default="auto", show_default=True)
@click.option("--cpus", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--memory", "memory_mib", type=click.IntRange(32), default=256, show_default=True, help="MiB.")
@click.option("-v", "--verbose", is_flag=True)
def bench(bundle_dir: Path | None, profile: str | None, kernel: Path | None, initramfs: Path | None,
          install_dir: Path | None, no_version_check: bool, arch: str | None, iterations: int,
          timeout_secs: float, guest_logs: bool, guest_log_command: str | None, guest_log_timeout_secs: float,
          http_smoke_url: str | None, http_smoke_timeout_secs: float, retry_log_every: int,
          rootfs_dir: Path | None, serial_logs: bool, serial_log_dir: Path | None, compare_dir: Path | None,
          json_file: Path | None, snapshot: bool, cold: bool, plot_file: Path | None, accel: str, cpus: int,
          memory_mib: int, verbose: bool) -> int:
    """Boot a bundle repeatedly and report boot -> agent-ready latency, split into phases."""
    setup_logging(verbose)
    _check_options(rootfs_dir, snapshot, plot_file)
    verdict = resolve_accel(AccelChoice.parse(accel))
    common = {"cpus": cpus, "memory_mib": memory_mib, "accel": AccelChoice(verdict.accel.value)}
    prof = KernelProfile.parse(profile) if profile else None
    a = Architecture.parse(arch) if arch else None
    src = GuestSource(bundle_dir=bundle_dir, profile=prof, arch=a, kernel=kernel, initramfs=initramfs,
                      install_dir=install_dir, version_check=not no_version_check)
    label_a = str(bundle_dir or kernel or f"{(prof or KernelProfile.developer).value} (installed)")
    sources = [(label_a, src)]
    if compare_dir is not None:
        sources.append((str(compare_dir), GuestSource(bundle_dir=compare_dir, arch=a, version_check=not no_version_check)))
    guests = _guests(sources, [False, True] if snapshot and cold else [snapshot], common)
    # Only once every guest validated: a bad bundle is one error line, nothing before it.
    err_console.print(f"accelerator: {verdict.reason}", markup=False)
    if serial_logs and serial_log_dir is None:
        serial_log_dir = cache_root() / "bench-serial" / time.strftime("%Y%m%dT%H%M%S")
    opts = BenchOptions(
        iterations=iterations, timeout_secs=timeout_secs, guest_logs=guest_logs,
        guest_log_command=guest_log_command, guest_log_timeout_secs=guest_log_timeout_secs,
        http_smoke_url=http_smoke_url, http_smoke_timeout_secs=http_smoke_timeout_secs,
        retry_log_every=retry_log_every, rootfs_dir=rootfs_dir, serial_log_dir=serial_log_dir,
    )
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=err_console,
                  transient=False) as progress:
        tasks = {g.label: progress.add_task(g.label, total=iterations, last="") for g in guests}

        def on_sample(s: BootSample) -> None:
            progress.update(tasks[s.label], advance=1, last=f"last {s.total_s * 1000:.0f} ms")
            ph = " ".join(f"{p}={_ms(s.phases.get(p))}" for p in (RESTORE_PHASES if s.mode == RESTORED else PHASES))
            progress.console.print(f"{s.label} #{s.iteration}: {s.total_s * 1000:.0f} ms ({ph})", markup=False)
            if s.http_smoke is not None:
                progress.console.print(f"  http smoke: {len(s.http_smoke)} bytes: {s.http_smoke[:80]!r}",
                                       markup=False)
            if s.guest_log is not None:
                out_console.print(f"--- guest log {s.label} #{s.iteration} ---\n{s.guest_log.rstrip()}",
                                  markup=False)

        results = run_bench(guests, opts, on_sample=on_sample,
                            log=lambda m: progress.console.print(m, markup=False))
    out_console.print(summary_table(results), width=max(out_console.width, 150))
    if len(results) == 2:
        ratio = results[0].total().median / results[1].total().median
        out_console.print(f"ratio of medians {results[0].label} / {results[1].label}: {ratio:.3f}", markup=False)
    if serial_log_dir is not None:
        out_console.print(f"serial logs: {serial_log_dir}", markup=False)
    if json_file is not None:
        write_json(json_file, to_json(results, opts, verdict.accel.value))
        out_console.print(f"wrote {json_file}", markup=False)
    if plot_file is not None:
        plot_results(results, plot_file, title=f"vz-linux-bench, {verdict.accel.value}, {cpus} CPU, {memory_mib} MiB")
        out_console.print(f"wrote {plot_file}", markup=False)
    return 0


def main() -> NoReturn:
    run_cli(bench, "vz-linux-bench")
