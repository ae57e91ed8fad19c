"""Crash leftovers (docs/security.md, "Hostile inputs"): a process really SIGKILLed in the middle of
source extraction, a kernel-cache store, an image unpack, a bundle assembly, `vz oci create`, or
while it owns a VM leaves a temp dir behind; the next run removes it: only its own (same prefix,
same owner) and only once nobody holds it. A live writer's temp dir and another user's are kept.

Each operation runs in a child process with enough work that its temp dir exists for a good part
of a second; the test kills the child the moment the temp dir appears (and checks that it was
indeed left behind, so a late kill fails loudly instead of passing).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from vz_linux.arch import Architecture
from vz_linux.profiles import KernelProfile
from vz_linux.vm.linux_vm import LinuxVm, VmConfig

from ..oci.conftest import make_busybox_rootfs, make_oci_layout
from .conftest import VZ, clean_env, processes_mentioning

NOBODY = 65534


def _wait_gone(text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_mentioning(text), processes_mentioning(text)


def _kill_at_temp(proc: subprocess.Popen[str], parent: Path, timeout: float = 300) -> Path:
    """SIGKILL ``proc`` (and its group) as soon as a hidden temp dir appears in ``parent``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = os.listdir(parent) if parent.is_dir() else []
        with_prefix = [e for e in names if e.startswith(".") and (parent / e).is_dir()]
        if with_prefix:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stale = parent / with_prefix[0]
            _wait_gone(str(stale))  # its tools (tar, umoci) die with it (parent-death signal)
            assert stale.is_dir(), f"killed too late: {stale} was already published"
            return stale
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.0005)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no temp dir appeared in {parent}")


class _Decoys:
    """Temp dirs with the same prefix that must survive a sweep: one held by a live writer (we hold
    its lock) and, when we can make one, one owned by another user."""

    def __init__(self, parent: Path, prefix: str) -> None:
        parent.mkdir(parents=True, exist_ok=True)
        self.live = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self.fd = os.open(self.live, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.kept = [self.live]
        if os.geteuid() == 0:
            other = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            os.chown(other, NOBODY, NOBODY)
            self.kept.append(other)

    def check(self) -> None:
        for d in self.kept:
            assert d.is_dir(), f"{d} (not stale, or not ours) was removed"
        os.close(self.fd)


def _kernel_tarball(path: Path, files: int = 8000) -> str:
    """A 'kernel tree' with thousands of small files: tar needs a while to extract it."""
    blob = os.urandom(4096)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        makefile = b"VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 7\nEXTRAVERSION =\n"
        for name, data in [("linux/Makefile", makefile)] + [(f"linux/d{i // 500}/f{i}", blob) for i in range(files)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


_ACQUIRE = """
import sys
from pathlib import Path
from vz_linux.build.sources import KernelPin, SourceKind, SourceSpec, acquire_source
pin = KernelPin(series="6.1", version="6.1.7", debian_package="-", debian_tarball=Path("/-"), cache_schema="1")
acquire_source(SourceSpec(SourceKind.tarball, sys.argv[1], sys.argv[2]), pin=pin, cache=Path(sys.argv[3]))
"""

_STORE = """
import sys
from pathlib import Path
from vz_linux.arch import Architecture
from vz_linux.build import kernel_cache
from vz_linux.bundle.metadata import KernelSourceInfo, ToolchainInfo
kernel_cache.store(key=sys.argv[1], arch=Architecture.host(), image=Path(sys.argv[2]), config_text="CONFIG_X=y\\n",
                   release="6.1.7", version="6.1.7", root=Path(sys.argv[3]),
                   source=KernelSourceInfo(kind="tree", version="6.1.7", origin="/-"),
                   toolchain=ToolchainInfo(compiler="cc", binutils="ld", cross_compile=""))
"""

_UNPACK = """
import sys
from pathlib import Path
from vz_linux.oci.image import prepare_image
prepare_image(sys.argv[1], Path(sys.argv[2]))
"""

_BUILD = """
import sys
from pathlib import Path
from vz_linux.build.pipeline import BuildOptions, build_bundle
from vz_linux.profiles import KernelProfile
from vz_linux.vm.linux_vm import LinuxVm, VmConfig
build_bundle(BuildOptions(profile=KernelProfile.container, out_dir=Path(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def big_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BusyBox image with thousands of extra files: umoci needs a while to unpack it."""
    root = tmp_path_factory.mktemp("crash-image")
    rootfs = make_busybox_rootfs(root / "rootfs")
    blob = os.urandom(4096)
    for i in range(4000):
        d = rootfs / "data" / f"d{i // 400}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(blob)
    return make_oci_layout(root / "image", rootfs)


Case = Callable[[Path], tuple[str, tuple[str, ...], Path, str]]


def _extraction(tmp: Path) -> tuple[str, tuple[str, ...], Path, str]:
    sha = _kernel_tarball(tmp / "linux.tar.gz")
    return _ACQUIRE, (str(tmp / "linux.tar.gz"), sha, str(tmp / "cache")), tmp / "cache" / "sources", ".extract-"


def _kernel_store(tmp: Path) -> tuple[str, tuple[str, ...], Path, str]:
    image = tmp / "vmlinux"
    with open(image, "wb") as f:
        f.truncate(128 << 20)  # copied and hashed twice: the stage lives for a while
    return _STORE, ("k" * 64, str(image), str(tmp / "kernels")), tmp / "kernels", ".store-"


CASES: dict[str, Case] = {"source-extraction": _extraction, "kernel-cache-store": _kernel_store}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_stale_stage_of_a_killed_writer_is_swept(tmp_path: Path, case: Case) -> None:
    code, args, parent, prefix = case(tmp_path)
    _sweep_scenario(code, args, parent, prefix)


def test_stale_image_unpack_is_swept(tmp_path: Path, big_layout: Path) -> None:
    _sweep_scenario(_UNPACK, (str(big_layout), str(tmp_path / "images")), tmp_path / "images", ".unpack-")


@pytest.mark.kernel
def test_stale_bundle_assembly_is_swept(tmp_path: Path, built_bundle: Any) -> None:
    built_bundle(KernelProfile.container)  # the kernel is in the cache: a build is assembly only
    out = tmp_path / "out" / "container"
    _sweep_scenario(_BUILD, (str(out),), out.parent, ".container.install-")
    assert (out / "version.json").is_file()


def _sweep_scenario(code: str, args: tuple[str, ...], parent: Path, prefix: str) -> None:
    stale = _kill_at_temp(_spawn(code, args), parent)
    decoys = _Decoys(parent, prefix)
    nxt = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert nxt.returncode == 0, nxt.stderr  # the next run, to completion
    assert not stale.exists(), f"the stale {stale} of the killed run was not removed"
    decoys.check()


def _spawn(code: str, args: tuple[str, ...]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --- a VM's work dir -----------------------------------------------------------------------------
_OWN_A_VM = """
import sys, time
from pathlib import Path
from vz_linux.vm.linux_vm import LinuxVm, VmConfig
vm = LinuxVm(VmConfig.from_bundle(Path(sys.argv[1])), workdir_parent=Path(sys.argv[2]))
vm.start()
print(vm.workdir, flush=True)
time.sleep(600)
"""


@pytest.mark.vm
def test_work_dir_of_a_killed_vm_owner_is_swept(tmp_path: Path, built_bundle: Any) -> None:
    bundle = built_bundle(KernelProfile.container)
    parent = tmp_path / "vms"
    parent.mkdir()
    owner = _spawn(_OWN_A_VM, (str(bundle), str(parent)))
    assert owner.stdout is not None
    workdir = Path(owner.stdout.readline().strip())
    assert workdir.parent == parent, owner.communicate()
    os.killpg(owner.pid, signal.SIGKILL)
    owner.wait()
    _wait_gone(str(workdir))  # QEMU and virtiofsd die with their owner
    assert workdir.is_dir()
    decoys = _Decoys(parent, "vz-vm-")
    with LinuxVm(VmConfig.from_bundle(bundle, arch=Architecture.host()), workdir_parent=parent) as vm:
        assert vm.workdir is not None and vm.workdir.is_dir()
        assert not workdir.exists(), f"the killed owner's work dir {workdir} was not removed"
    decoys.check()


# --- vz oci create killed between spawning the supervisor and recording it -----------------------
@pytest.fixture
def oci_env(tmp_path: Path, built_bundle: Any) -> Iterator[dict[str, str]]:
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home, VZ_OCI_DATA_DIR=str(tmp_path / "oci"),
                    VZ_LINUX_CONTAINER_BUNDLE_DIR=str(built_bundle(KernelProfile.container)))
    yield env
    for pid in processes_mentioning(str(tmp_path / "oci")):  # whatever a failed run left behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _create_killed_before_recording(env: dict[str, str], rootfs: Path, containers: Path) -> tuple[Path, int]:
    """Run `vz oci create`, hold the container's state lock so it stops right after spawning its
    supervisor, SIGKILL it there. Returns (container dir, supervisor pid)."""
    before = set(os.listdir(containers)) if containers.is_dir() else set()
    cli = subprocess.Popen([str(VZ), "oci", "create", "--kernel-profile", "container", str(rootfs), "--",
                            "sleep", "600"], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        new: set[str] = set()
        while not new and time.monotonic() < deadline:
            new = (set(os.listdir(containers)) if containers.is_dir() else set()) - before
            time.sleep(0.0005)
        cdir = containers / new.pop()
        with FileLock(str(cdir / ".lock"), timeout=10):
            supervisors: dict[int, str] = {}
            while not supervisors and time.monotonic() < deadline:
                supervisors = {p: c for p, c in processes_mentioning(str(cdir)).items()
                               if "vz_linux.oci.supervisor" in c}
                time.sleep(0.01)
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
    return cdir, next(iter(supervisors))


@pytest.mark.vm
def test_rm_f_stops_what_a_killed_create_started(tmp_path: Path, oci_env: dict[str, str]) -> None:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    containers = tmp_path / "oci" / "containers"
    for _attempt in range(3):
        cdir, sup = _create_killed_before_recording(oci_env, rootfs, containers)
        state = json.loads((cdir / "state.json").read_text())
        if state.get("supervisor_pid") is None:
            break
        subprocess.run([str(VZ), "oci", "rm", "-f", cdir.name], env=oci_env, timeout=300)  # the lock came late
    assert state.get("supervisor_pid") is None, "could not stop create before it recorded its supervisor"
    # Let it get as far as it will: booted (status created), or gone by itself.
    deadline = time.monotonic() + 300
    while sup in processes_mentioning(str(cdir)) and time.monotonic() < deadline:
        if json.loads((cdir / "state.json").read_text()).get("status") == "created":
            break
        time.sleep(0.2)
    rm = subprocess.run([str(VZ), "oci", "rm", "-f", cdir.name], env=oci_env, capture_output=True, text=True,
                        timeout=300)
    assert rm.returncode == 0, rm.stderr
    assert not cdir.exists()
    _wait_gone(str(cdir))  # no supervisor, QEMU or virtiofsd of that container is left
