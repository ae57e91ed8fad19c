#!/usr/bin/env python3
"""Pull a small image from a local registry; boot a persistent VM from its ext4 disk.

Usage: .venv/bin/python benchmarks/images.py [--iterations N] [--bundle-dir DIR] [--figures FILE]

Pull (docs/oci.md, "Images from registries"): Debian's docker-registry on 127.0.0.1
(tests/local_registry.py) holding the test suite's BusyBox image (one ~1 MiB layer, pushed here
from a layout made with umoci); interleaved per iteration, A/B in one run:
``image_pull_cold`` (an empty store: every blob fetched) and ``image_pull_again`` (``--pull=always``
into a store that has the blobs: they are hard-linked into the stage and skopeo skips them).

Persistent VM (docs/vm.md, "Persistent VMs"; needs a container bundle, default the checkout's
``linux/out/container``): ``vm_persistent_run`` = ``vz vm linux run NAME -- true`` in-process (boot from
``/dev/vda``, agent, mount check, sync, power off) next to ``vm_initramfs_run`` = the same kernel and
initramfs booted without a disk to agent-ready, ``true`` run, stopped; plus ``vm_init_ext4`` (making
the 1 GiB ext4 disk from the rootfs with ``mke2fs -d``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures, tests.*

from tests.local_registry import local_registry
from tests.oci.conftest import make_busybox_rootfs, make_oci_layout

from benchmarks.figures import Figures
from vz_linux import layout
from vz_linux.arch import Architecture
from vz_linux.oci.pull import PullOptions, PullPolicy, parse_reference, pull
from vz_linux.oci.store import ImageStore
from vz_linux.profiles import KernelProfile
from vz_linux.vm.descriptor import InitRequest, init_vm
from vz_linux.vm.linux_vm import LinuxVm, VmConfig
from vz_linux.vm.persistent import RunRequest, run_vm


def measure_pull(figures: Figures, iterations: int, workdir: Path) -> str:
    """The pull figures; returns the pulled manifest digest (the same every time)."""
    rootfs = make_busybox_rootfs(workdir / "rootfs")
    lay = make_oci_layout(workdir / "layout", rootfs, tag="1.36")
    with local_registry(workdir / "registry") as reg:
        auth = reg.auth_file(workdir / "auth.json")
        ref_text = f"{reg.host}/library/busybox:1.36"
        subprocess.run(["skopeo", "copy", "--quiet", "--authfile", str(auth), "--dest-tls-verify=false",
                        f"oci:{lay}:1.36", f"docker://{ref_text}"], check=True)
        ref = parse_reference(ref_text)
        assert ref is not None
        opts = PullOptions(policy=PullPolicy.always, auth_file=auth)
        cold, again, digests = [], [], set()
        for i in range(iterations):
            store = ImageStore(workdir / f"store-{i}")
            t0 = time.perf_counter()
            digests.add(pull(store, ref, opts, Architecture.host()).digest)
            t1 = time.perf_counter()
            digests.add(pull(store, ref, opts, Architecture.host()).digest)
            t2 = time.perf_counter()
            cold.append((t1 - t0) * 1000)
            again.append((t2 - t1) * 1000)
            shutil.rmtree(store.root)
    (digest,) = digests
    figures.put_samples("image_pull_cold", cold)
    figures.put_samples("image_pull_again", again)
    return digest


def _drop(_data: bytes) -> None:
    pass


def measure_vm(figures: Figures, iterations: int, bundle: Path, workdir: Path) -> None:
    rootfs = workdir / "rootfs"
    if not rootfs.exists():
        make_busybox_rootfs(rootfs)
    t0 = time.perf_counter()
    init_vm(InitRequest(name="bench", output_dir=workdir / "vms", disk_size_gb=1, kernel=bundle / "vmlinux",
                        initramfs=bundle / "initramfs.img", version_json=bundle / "version.json",
                        rootfs=rootfs, source="bench rootfs"))
    figures.put("vm_init_ext4", (time.perf_counter() - t0) * 1000, "ms")
    disk_runs, plain_runs = [], []
    for _ in range(iterations):
        t0 = time.perf_counter()
        code = run_vm(RunRequest(name="bench", vm_dir=workdir / "vms", command=("true",)), _drop, _drop)
        disk_runs.append((time.perf_counter() - t0) * 1000)
        assert code == 0
        t0 = time.perf_counter()
        with LinuxVm(VmConfig.from_bundle(bundle)) as vm:
            vm.wait_for_agent(120)
            assert vm.exec_collect(["true"], timeout=60).exit_code == 0
        plain_runs.append((time.perf_counter() - t0) * 1000)
    figures.put_samples("vm_persistent_run", disk_runs)
    figures.put_samples("vm_initramfs_run", plain_runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--bundle-dir", type=Path, default=layout.default_bundle_dir(KernelProfile.container))
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    args = ap.parse_args()
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="vz-bench-images-") as tmp:
        measure_pull(figures, args.iterations, Path(tmp) / "pull")
        measure_vm(figures, args.iterations, args.bundle_dir, Path(tmp) / "vm")
    if args.figures:
        figures.write_jsonl(args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
