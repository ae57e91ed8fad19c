#!/usr/bin/env python3
"""Build the same inputs twice and compare every bundle file byte for byte (docs/reproducible.md).

Usage: .venv/bin/python benchmarks/check_reproducible.py [--userland-only] [--reuse-crun]
                                                          [--profile P] [--arch A] [--keep DIR]

The second build runs from a copy of the checkout in another (deeper) directory, as uid 65534
(setpriv), ten days later (faketime). Each build has its own build cache:

* default (full, hand-run only): the kernel is compiled twice (tens of minutes each), plus the
  agent and crun;
* ``--userland-only``: the kernel comes from the machine's cache (shared by both builds); the
  guest agent and crun are compiled twice, initramfs and version.json written twice;
* ``--reuse-crun`` (with --userland-only): crun also comes from the machine's cache — the CI-sized
  check of the assembly.

Prints each file as identical or DIFFERS, with diffoscope's text for every difference, and the
named figures build_a_seconds / build_b_seconds / files_compared / files_differing. Exits 23
(NotReproducibleError) when anything differs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures

from benchmarks.figures import Figures
from vz_linux.arch import Architecture
from vz_linux.build.doublebuild import describe, double_build, raise_if_different
from vz_linux.errors import VzLinuxError
from vz_linux.profiles import KernelProfile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--userland-only", action="store_true", help="share the cached kernel; rebuild the userland")
    ap.add_argument("--reuse-crun", action="store_true", help="also share the cached crun (CI-sized)")
    ap.add_argument("--profile", default=KernelProfile.container.value, choices=[p.value for p in KernelProfile])
    ap.add_argument("--arch", default=None, help="guest arch (default: the host's)")
    ap.add_argument("--keep", type=Path, default=None, help="build under this new directory and keep it")
    ap.add_argument("--figures", type=Path, default=None, help="also append the figures as JSON lines")
    args = ap.parse_args()
    if args.reuse_crun and not args.userland_only:
        ap.error("--reuse-crun needs --userland-only")
    work = args.keep or Path(tempfile.mkdtemp(prefix="vz-linux-repro-"))
    if args.keep is None:
        work.chmod(0o755)  # build B runs as another user
    arch = Architecture.parse(args.arch) if args.arch else Architecture.host()
    figures = Figures(dimensions={"arch": arch.value, "profile": args.profile,
                                  "mode": "userland" if args.userland_only else "full"})
    try:
        result = double_build(work / "builds" if args.keep is None else work, profile=KernelProfile.parse(args.profile),
                              arch=arch, kernel=not args.userland_only, reuse_crun=args.reuse_crun)
        for line in describe(result):
            print(line)
        figures.put("build_a_seconds", round(result.seconds["a"], 1), "s")
        figures.put("build_b_seconds", round(result.seconds["b"], 1), "s")
        figures.put("files_compared", len(result.compared), "count")
        figures.put("files_differing", len(result.diffs), "count")
        if args.figures:
            figures.write_jsonl(args.figures)
        raise_if_different(result)
    except VzLinuxError as e:
        print(f"vz-linux: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print("reproducible: every compared file is byte-identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
