#!/usr/bin/env python3
"""Time reusing a cached OCI image unpack (what the poisoned-cache check costs per container).

Usage: .venv/bin/python benchmarks/image_cache.py [--iterations N] [--extra-files N]

Builds two throw-away OCI layouts with umoci (the test suite's BusyBox rootfs, and the same with
``--extra-files`` 4 KiB files added), unpacks each once, then times ``prepare_image()`` on the
cached entry, which checks the entry's tree stamp (docs/security.md). Figures (docs/benchmarks.md):
``image_cache_hit_<k>_p50/_p95`` and ``image_entries_<k>`` for k = ``busybox`` and ``extra``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures, tests.oci.conftest

from tests.oci.conftest import make_busybox_rootfs, make_oci_layout

from benchmarks.figures import Figures, time_ms
from vz_linux.oci.image import prepare_image


def measure(figures: Figures, iterations: int, extra_files: int, workdir: Path) -> dict[str, int]:
    """Put the figures into ``figures``; return each image's rootfs inode after the timed calls
    (equal to the first unpack's when every timed call reused the entry)."""
    images = workdir / "images"
    reused: dict[str, int] = {}
    for kind, extra in (("busybox", 0), ("extra", extra_files)):
        rootfs = make_busybox_rootfs(workdir / kind / "rootfs")
        for i in range(extra):
            d = rootfs / "data" / f"d{i // 400}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}").write_bytes(b"x" * 4096)
        layout = make_oci_layout(workdir / kind / "image", rootfs)
        first = prepare_image(str(layout), images)
        inode = first.path.stat().st_ino
        figures.put(f"image_entries_{kind}", sum(len(d) + len(f) for _, d, f in os.walk(first.path)), "count")
        image = str(layout)
        figures.put_samples(f"image_cache_hit_{kind}", time_ms(lambda: prepare_image(image, images), iterations))  # noqa: B023 - called right here
        reused[kind] = inode if first.path.stat().st_ino == inode else -1
    return reused


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--extra-files", type=int, default=4000)
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    args = ap.parse_args()
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="vz-bench-") as tmp:
        measure(figures, args.iterations, args.extra_files, Path(tmp))
    if args.figures:
        figures.write_jsonl(args.figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
