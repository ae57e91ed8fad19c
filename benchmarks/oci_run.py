#!/usr/bin/env python3
"""`vz oci run` from a container template vs booted cold, next to a bare boot → agent; one interleaved run.

Usage: .venv/bin/python benchmarks/oci_run.py [--bundle-dir linux/out/container] [--iterations 5] [--json F]

Per round (same machine and load, in this order):

* boot_to_agent          — the bundle booted bare (vz_linux.vm.bench.boot_once): QEMU spawned → agent hello;
* oci_run_cli_template   — wall time of `vz oci run --rm --kernel-profile container IMAGE -- true`, a fresh
                           process: restored from the container template, the image on a block device;
* oci_run_cli_cold       — the same with `--cold`: booted, the image over virtiofs;
* template.* / cold.*    — the same two runs in-process (vz_linux.oci.container.run_foreground) split into
                           phases: host_prepare, block_image, boot_to_agent (restore → agent on the template
                           path), guest_prepare (mounts + overlay), crun_run, vm_stop;
* block_image_build      — building IMAGE's block image from scratch (a throw-away cache), and its size:
                           block_image_disk_bytes (allocated) and block_image_fs_bytes.

Once before the rounds: template_first_run, the first template run (it makes the template: boot, save).
IMAGE is a BusyBox rootfs directory built here. Prints one named figure per line (p50/p95, ms).
:func:`measure_oci_run` is the importable part (for a combined fast-start benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.oci.conftest (the BusyBox rootfs builder)

from tests.oci.conftest import make_busybox_rootfs  # noqa: E402

from vz_linux.bundle.resolve import ensure_kernel_profile  # noqa: E402
from vz_linux.layout import cache_root  # noqa: E402
from vz_linux.oci.blockimage import ensure_block_image  # noqa: E402
from vz_linux.oci.config import RuntimeConfig  # noqa: E402
from vz_linux.oci.container import ContainerRequest, run_foreground  # noqa: E402
from vz_linux.profiles import KernelProfile  # noqa: E402
from vz_linux.vm.bench import BenchGuest, BenchOptions, boot_once, host_info  # noqa: E402
from vz_linux.vm.linux_vm import VmConfig  # noqa: E402

Samples = dict[str, list[float]]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` is exactly ``env`` inside (restored after)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def oci_run_cli(vz: Path, image: Path, env: dict[str, str], *extra: str) -> float:
    """Seconds of one `vz oci run --rm [EXTRA] --kernel-profile container IMAGE -- true`, a fresh process."""
    t0 = time.monotonic()
    p = subprocess.run([str(vz), "oci", "run", "--rm", *extra, "--kernel-profile", "container", str(image),
                        "--", "true"], env=env, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"vz oci run {' '.join(extra)} failed ({p.returncode}): {p.stderr.strip()}")
    return wall


def _in_process(cfg: RuntimeConfig, image: Path, cold: bool) -> dict[str, float]:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    code = run_foreground(cfg, ContainerRequest(image=str(image), command=("true",)), remove=True,
                          on_stdout=lambda b: None, on_stderr=lambda b: None, timings=timings, cold=cold)
    timings["total"] = time.monotonic() - t0
    if code != 0 or bool(timings.get("restored")) == cold:
        raise RuntimeError(f"in-process run (cold={cold}) exited {code}, restored={timings.get('restored')}")
    return timings


def block_image_build(image: Path, work: Path) -> tuple[float, int, int]:
    """Seconds to build IMAGE's block image into an empty cache, its allocated and filesystem bytes."""
    cache = Path(tempfile.mkdtemp(prefix="blocks-", dir=work))
    try:
        saved = os.environ.get("VZ_LINUX_CACHE_DIR")
        os.environ["VZ_LINUX_CACHE_DIR"] = str(cache)
        try:
            t0 = time.monotonic()
            img = ensure_block_image(image)
            seconds = time.monotonic() - t0
        finally:
            os.environ["VZ_LINUX_CACHE_DIR"] = saved or ""
        return seconds, img.path.stat().st_blocks * 512, img.fs_bytes
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def measure_oci_run(bundle_dir: Path, iterations: int = 5, *, work: Path | None = None,
                    progress: bool = True) -> Samples:
    """Interleaved samples (ms, and bytes for the ``*_bytes`` names) of `vz oci run --rm IMG -- true`:
    template vs --cold, wall and phases, a bare boot, and the block image build. Uses a throw-away
    $HOME (the bundle installed there) and the machine's build cache (templates live there)."""
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="vz-oci-bench-")) if work is None else work
    samples: Samples = {}

    def add(name: str, value: float, scale: float = 1000.0) -> None:
        samples.setdefault(name, []).append(value * scale)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VZ_LINUX_", "VZ_OCI_"))}
    env.update(HOME=str(work / "home"), VZ_LINUX_CONTAINER_BUNDLE_DIR=str(bundle_dir.resolve()),
               VZ_LINUX_CACHE_DIR=str(cache_root()))
    (work / "home").mkdir(exist_ok=True)
    try:
        with environment(env):
            bundle = ensure_kernel_profile(KernelProfile.container)  # installs into the temp $HOME
            image = make_busybox_rootfs(work / "rootfs")
            vz = Path(sys.executable).parent / "vz"
            guest = BenchGuest("container", VmConfig.from_bundle(bundle.root))
            opts = BenchOptions(iterations=1, measure_rss=False)
            cfg = RuntimeConfig(linux_profile=KernelProfile.container)
            add("template_first_run", oci_run_cli(vz, image, env))  # makes the template if the cache has none
            for i in range(1, iterations + 1):
                add("boot_to_agent", boot_once(guest, i, opts).total_s)
                add("oci_run_cli_template", oci_run_cli(vz, image, env))
                add("oci_run_cli_cold", oci_run_cli(vz, image, env, "--cold"))
                for name, cold in (("template", False), ("cold", True)):
                    for phase, seconds in _in_process(cfg, image, cold).items():
                        if phase != "restored":
                            add(f"{name}.{phase}", seconds)
                seconds, disk, fs = block_image_build(image, work)
                add("block_image_build", seconds)
                add("block_image_disk_bytes", disk, 1.0)
                add("block_image_fs_bytes", fs, 1.0)
                if progress:
                    print(f"round {i}/{iterations} done", file=sys.stderr)
        return samples
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def report(samples: Samples) -> list[str]:
    lines = []
    for name, values in samples.items():
        unit = "B " if name.endswith("_bytes") else "ms"
        lines.append(f"{name:32s} p50 {statistics.median(values):12.1f} {unit}  p95 {percentile(values, 95):12.1f} {unit}"
                     f"  n={len(values)}")
    t, c = statistics.median(samples["oci_run_cli_template"]), statistics.median(samples["oci_run_cli_cold"])
    lines.append(f"{'oci_run_cli_template_over_cold':32s} {t / c:.2f} (p50 ratio)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle-dir", type=Path, default=REPO / "linux" / "out" / "container")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="Write every sample here.")
    args = ap.parse_args()
    samples = measure_oci_run(args.bundle_dir, args.iterations)
    info = host_info()
    print(f"# {args.iterations} rounds, interleaved; host: {json.dumps(info)}")
    print("\n".join(report(samples)))
    if args.json:
        args.json.write_text(json.dumps({"host": info, "samples": samples}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
