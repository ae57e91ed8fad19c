#!/usr/bin/env python3
"""`vz oci cp` of a 100 MiB file in and out, next to the same copy through a virtiofs volume.

Usage: .venv/bin/python benchmarks/files.py [--bundle-dir linux/out/container] [--iterations 3] [--mib 100]

One container (BusyBox rootfs built here, `-v HOST_DIR:/data`, 512 MiB VM) serves every round;
per round, interleaved (same machine and load), wall time of the command a user would type:

* cp_in          — `vz oci cp BIG c:/tmp/big` (tar through the agent: CLI → supervisor → EXEC stdin);
* virtiofs_in    — `vz oci exec c -- cp /data/big /tmp/big.v` (the same bytes read from the volume);
* cp_out         — `vz oci cp c:/tmp/big OUT` (EXEC stdout → supervisor → CLI, checked and staged);
* virtiofs_out   — `vz oci exec c -- cp /tmp/big /data/out.big` (written to the volume).

Both sides pay a fresh `vz` process (~0.4 s) and one command in the guest (`crun exec` costs about a
second under TCG; the agent's `--in-root` mode does not go through crun). Figures: MiB/s per path
(median over rounds) and the median seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.oci.conftest (the BusyBox rootfs builder), benchmarks.figures

from tests.oci.conftest import make_busybox_rootfs  # noqa: E402

from benchmarks.figures import Figures  # noqa: E402
from vz_linux.layout import cache_root  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle-dir", type=Path, default=REPO / "linux" / "out" / "container")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--mib", type=int, default=100)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vz-files-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VZ_LINUX_", "VZ_OCI_"))}
    env.update(HOME=str(work / "home"), VZ_LINUX_CONTAINER_BUNDLE_DIR=str(args.bundle_dir.resolve()),
               VZ_LINUX_CACHE_DIR=str(cache_root()), VZ_OCI_DATA_DIR=str(work / "oci"))
    (work / "home").mkdir()
    vz = Path(sys.executable).parent / "vz"

    def run(*argv: str) -> float:
        t0 = time.monotonic()
        p = subprocess.run([str(vz), *argv], env=env, capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"vz {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
        return time.monotonic() - t0

    try:
        image = make_busybox_rootfs(work / "rootfs")
        data = work / "data"
        data.mkdir()
        big = data / "big"
        with open(big, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        run("oci", "run", "-d", "--kernel-profile", "container", "--name", "bench", "--memory", "512",
            "-v", f"{data}:/data", str(image), "--", "sleep", "100000")
        samples: dict[str, list[float]] = {}
        for i in range(1, args.iterations + 1):
            out = work / f"out-{i}"
            samples.setdefault("cp_in", []).append(run("oci", "cp", str(big), "bench:/tmp/big"))
            samples.setdefault("virtiofs_in", []).append(
                run("oci", "exec", "bench", "--", "cp", "/data/big", "/tmp/big.v"))
            samples.setdefault("cp_out", []).append(run("oci", "cp", "bench:/tmp/big", str(out)))
            samples.setdefault("virtiofs_out", []).append(
                run("oci", "exec", "bench", "--", "cp", "/tmp/big", "/data/out.big"))
            if out.read_bytes() != big.read_bytes() or (data / "out.big").read_bytes() != big.read_bytes():
                raise SystemExit("a copy differs from its source")
            out.unlink()
            (data / "out.big").unlink()
            run("oci", "exec", "bench", "--", "rm", "-f", "/tmp/big", "/tmp/big.v")
            print(f"round {i}/{args.iterations} done", file=sys.stderr)
        figures = Figures()
        for name, values in samples.items():
            median = statistics.median(values)
            figures.put(f"files_{name}_s", round(median, 3), "s", n=len(values))
            figures.put(f"files_{name}_mib_per_s", round(args.mib / median, 1), "MiB/s", n=len(values))
        return 0
    finally:
        subprocess.run([str(vz), "oci", "rm", "-f", "bench"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
