#!/usr/bin/env python3
"""Distribution figures: getting a container bundle onto a machine without compiling it.

Usage: .venv/bin/python benchmarks/distribution.py [--iterations 5] [--ensure-iterations 100]
                                                    [--build-iterations 3] [--figures FILE]

With the host's real container bundle (built through the kernel cache), in one run on the same
machine and load:

* build_cache_hit        — ``vz-linux build --profile container`` when the kernel cache holds the
                           kernel (a CLI subprocess, what a developer waits for);
* kernel_cold_compile    — the compile time the kernel cache recorded for that kernel (not re-run);
* release_make           — ``make_release`` of the bundle (tarball, SHA256SUMS, provenance, signatures);
* install_from_http      — ``install --from`` a real HTTP server on 127.0.0.1: signature, download,
                           sha256, unpack, validate, atomic install; a fresh install root each time;
* registry_push          — push to Debian's docker-registry on 127.0.0.1 (htpasswd basic auth);
* registry_pull_install  — pull by tag (skopeo, every blob digest checked) + install; a fresh store
                           and install dir each time;
* ensure_digest_pin_installed — ``ensure_kernel_bundle(reference=HOST/REPO@sha256:…)`` with that
                           digest stored and installed, timed **after the registry is stopped**
                           (so no timed call can have used the network).

Prints one named figure per line (docs/benchmarks.md); ``--figures FILE`` also records them as JSON lines.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures, tests.distribution.servers

from tests.distribution.servers import ReleaseServer, local_registry

from benchmarks.figures import Figures, time_ms
from vz_linux.arch import Architecture
from vz_linux.build import kernel_cache
from vz_linux.build.pipeline import BuildOptions, build_bundle
from vz_linux.bundle.install import install_bundle
from vz_linux.bundle.installer import InstallFromOptions, install_release
from vz_linux.bundle.metadata import BundleMetadata
from vz_linux.bundle.registry import RegistryClient
from vz_linux.bundle.release import make_release
from vz_linux.bundle.resolve import KernelBundleOptions, ensure_kernel_bundle
from vz_linux.bundle.signing import generate_key
from vz_linux.bundle.transfer import BundleStore, pull, push
from vz_linux.profiles import KernelProfile

VZ_LINUX = Path(sys.executable).parent / "vz-linux"
PROFILE = KernelProfile.container


def _timed_s(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _build_figures(figures: Figures, bundle: Path, iterations: int, workdir: Path) -> None:
    samples = []
    for i in range(iterations):
        out = workdir / f"build-{i}"
        t0 = time.perf_counter()
        subprocess.run([str(VZ_LINUX), "build", "--profile", PROFILE.value, "--out", str(out)], check=True,
                       capture_output=True, timeout=1800)
        samples.append((time.perf_counter() - t0) * 1000)
    if samples:
        figures.put_samples("build_cache_hit", samples)
    meta = BundleMetadata.read(bundle / "version.json")
    cached = kernel_cache.lookup(meta.kernel_cache_key or "", meta.arch)
    if cached is not None:
        recorded = json.loads((cached.dir / "kernel.json").read_text()).get("compile_seconds")
        if recorded:
            figures.put("kernel_cold_compile", float(recorded), "s")


def _http_install(figures: Figures, release: Path, public_key: Path, iterations: int, workdir: Path) -> None:
    samples = []
    with ReleaseServer(release).running() as srv:
        for i in range(iterations):
            root = workdir / f"http-{i}" / ".vz" / "linux"
            options = InstallFromOptions(source=srv.url, version="1.0.0", profile=PROFILE.value,
                                         trusted_keys=(public_key,), install_root=root)
            samples.append(_timed_s(functools.partial(install_release, options)) * 1000)
            assert (root / PROFILE.value / "version.json").is_file()
    figures.put_samples("install_from_http", samples)


def _registry(figures: Figures, bundle: Path, iterations: int, ensure_iterations: int, workdir: Path) -> dict[str, object]:
    facts: dict[str, object] = {}
    with local_registry(workdir / "registry") as reg:
        os.environ["REGISTRY_AUTH_FILE"] = str(reg.auth_file(workdir / "auth.json"))
        ref = f"{reg.host}/vz/container:1.0.0"
        t0 = time.perf_counter()
        pushed = push([bundle], ref)
        figures.put("registry_push", (time.perf_counter() - t0) * 1000, "ms")
        samples = []
        for i in range(iterations):
            install_dir = workdir / f"pull-{i}" / PROFILE.value
            t0 = time.perf_counter()
            got = pull(ref, store=BundleStore.beside(install_dir), client=RegistryClient())
            install_bundle(got.root, install_dir, profile=PROFILE)
            samples.append((time.perf_counter() - t0) * 1000)
            facts["pulled_from_store"] = got.from_store
        figures.put_samples("registry_pull_install", samples)
        pinned = KernelBundleOptions(profile=PROFILE, reference=str(pushed.reference),
                                     install_dir=workdir / "ensure" / PROFILE.value)
        ensure_kernel_bundle(pinned)  # the one pull
        reg.stop()
    facts["registry_stopped"] = reg.proc.poll() is not None
    figures.put_samples("ensure_digest_pin_installed",
                        time_ms(lambda: ensure_kernel_bundle(pinned), ensure_iterations))
    return facts


def measure(figures: Figures, workdir: Path, *, iterations: int = 5, ensure_iterations: int = 100,
            build_iterations: int = 3, bundle: Path | None = None) -> dict[str, object]:
    """Put the figures; return facts about what was measured (the smoke test checks them).

    ``bundle`` None: the host's real container bundle, built through the kernel cache. Sets
    ``$REGISTRY_AUTH_FILE`` in this process (run it in a process of its own, or restore it).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if bundle is None:
        bundle = workdir / "bundle"
        build_bundle(BuildOptions(profile=PROFILE, arch=Architecture.host(), out_dir=bundle))
    figures.put("bundle_size", sum(p.stat().st_size for p in bundle.iterdir() if p.is_file()), "bytes")
    _build_figures(figures, bundle, build_iterations, workdir)
    key = workdir / "key"
    public = generate_key(key)
    figures.put("release_make", _timed_s(lambda: make_release([bundle], "1.0.0", workdir / "release",
                                                               signing_key=key)) * 1000, "ms")
    _http_install(figures, workdir / "release", public, iterations, workdir)
    return _registry(figures, bundle, iterations, ensure_iterations, workdir)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=5, help="installs and pulls (median of these)")
    ap.add_argument("--ensure-iterations", type=int, default=100)
    ap.add_argument("--build-iterations", type=int, default=3)
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    args = ap.parse_args()
    figures = Figures(dimensions={"profile": PROFILE.value, "arch": Architecture.host().value})
    with tempfile.TemporaryDirectory(prefix="vz-bench-dist-") as tmp:
        facts = measure(figures, Path(tmp), iterations=args.iterations, ensure_iterations=args.ensure_iterations,
                        build_iterations=args.build_iterations)
    print(f"facts: {facts}")
    if args.figures:
        figures.write_jsonl(args.figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
