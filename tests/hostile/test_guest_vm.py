"""A real guest that misbehaves, checked on the host (docs/security.md, "Hostile guests").

Real QEMU (TCG), the container bundle's kernel, agent and static crun, the installed `vz` CLI as a
separate process where the user would run it: a container flooding stdout with `yes` for 60 s, a
container root running `kill -9 -1`, an exec client that goes away, a guest root remounting the
read-only shares read-write, a serial-console flood, and data/tmp/rootfs paths with commas.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from benchmarks.figures import Figures

from tests.procs import live_processes_mentioning
from vz_linux import layout
from vz_linux.oci.config import RuntimeConfig
from vz_linux.oci.container import (
    CONTAINER_LOG_LIMIT,
    ContainerRequest,
    ContainerVm,
    prepare_container,
    store_for,
)
from vz_linux.oci.spec import Volume
from vz_linux.profiles import KernelProfile
from vz_linux.vm.guest_log import rotated_path
from vz_linux.vm.linux_vm import SERIAL_LOG_LIMIT, LinuxVm, VmConfig

from ..oci.conftest import make_busybox_rootfs

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow]

VZ = Path(sys.executable).parent / "vz"
TIMEOUT = 300  # generous: TCG on a loaded 2-core host
RSS_BOUND = 100 << 20
FLOOD_BYTES = 2 * CONTAINER_LOG_LIMIT + RSS_BOUND + (16 << 20)


@pytest.fixture(scope="module")
def bundle(built_bundle: Callable[..., Path]) -> Path:
    return Path(built_bundle(KernelProfile.container))


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("image") / "rootfs")


def _env(base: Path, bundle: Path) -> dict[str, str]:
    """The real CLI's environment: $HOME, data dir and TMPDIR under ``base``, the machine's cache."""
    for d in ("home", "data", "tmp"):
        (base / d).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VZ_LINUX_", "VZ_OCI_"))}
    env.update(HOME=str(base / "home"), VZ_OCI_DATA_DIR=str(base / "data"), TMPDIR=str(base / "tmp"),
               VZ_LINUX_CONTAINER_BUNDLE_DIR=str(bundle), VZ_LINUX_CACHE_DIR=str(layout.cache_root()))
    return env


class Vz:
    """The real `vz` CLI in this test's environment; a failure is one line, never a traceback."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([str(VZ), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert "Traceback" not in p.stderr, p.stderr
        return p


@pytest.fixture
def vz(tmp_path: Path, bundle: Path) -> Iterator[Vz]:
    yield Vz(_env(tmp_path, bundle))
    deadline = time.monotonic() + 20
    while live_processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not live_processes_mentioning(str(tmp_path)), "processes outlived the test"


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


def test_yes_flood_keeps_vz_memory_and_logs_bounded(tmp_path: Path, bundle: Path, rootfs: Path,
                                                      metrics: Figures) -> None:
    env = _env(tmp_path, bundle)
    proc = subprocess.Popen(
        [str(VZ), "oci", "run", "--kernel-profile", "container", "--name", "flood", str(rootfs), "--",
         "sh", "-c", f"yes | head -c {FLOOD_BYTES}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    printed = 0

    def drain() -> None:
        nonlocal printed
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(1 << 20):
            printed += len(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    peak = 0
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            peak = max(peak, _status(proc.pid, "VmHWM"))  # the high-water mark: no spike is missed
        except (OSError, AssertionError):
            break  # it exited between poll() and the read
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
        pytest.fail(f"vz oci run did not finish within {TIMEOUT}s")
    reader.join(30)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    assert proc.returncode == 0, err
    metrics.put("yes_flood_vz_peak_rss", round(peak / 2**20, 1), "MiB")
    metrics.put("yes_flood_relayed", round(printed / 2**20, 1), "MiB")
    # Worth the name: the container printed far more than the logs may keep and vz may hold, a fixed
    # volume (not a fixed time, so a loaded host does not weaken the test), and all of it came out.
    assert printed == FLOOD_BYTES, f"{printed} of {FLOOD_BYTES} bytes came out of `yes`"
    assert 0 < peak < RSS_BOUND, f"vz peaked at {peak >> 20} MiB of RSS while relaying {printed >> 20} MiB"
    (cdir,) = (tmp_path / "data" / "containers").iterdir()
    log = cdir / "stdout.log"
    assert 0 < log.stat().st_size <= CONTAINER_LOG_LIMIT
    assert 0 < rotated_path(log).stat().st_size <= CONTAINER_LOG_LIMIT
    assert (cdir / "serial.log").stat().st_size <= SERIAL_LOG_LIMIT
    logs = subprocess.run([str(VZ), "oci", "logs", "flood"], env=env, capture_output=True, timeout=TIMEOUT)
    assert logs.returncode == 0 and set(logs.stdout) == set(b"y\n")
    assert len(logs.stdout) == log.stat().st_size + rotated_path(log).stat().st_size
    subprocess.run([str(VZ), "oci", "rm", "flood"], env=env, check=True, capture_output=True, timeout=TIMEOUT)


def test_exec_client_gone_kills_its_command_in_the_guest(vz: Vz, rootfs: Path) -> None:
    vz("oci", "create", "--kernel-profile", "container", "--name", "victim", str(rootfs), "--", "sleep", "600")
    assert vz("oci", "start", "victim").returncode == 0
    # An exec client that goes away (here: SIGKILLed) takes its command in the guest with it.
    client = subprocess.Popen([str(VZ), "oci", "exec", "victim", "--", "sh", "-c", "echo $$; exec sleep 600"],
                              env=vz.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert client.stdout is not None
    pid = int(client.stdout.readline())
    client.send_signal(signal.SIGKILL)
    client.wait(30)
    deadline = time.monotonic() + 60
    probe = f"kill -0 {pid} 2>/dev/null && echo running || echo gone"
    while (state := vz("oci", "exec", "victim", "--", "sh", "-c", probe).stdout.strip()) != "gone":
        assert time.monotonic() < deadline, f"the gone client's command {pid} is still {state}"
        time.sleep(0.5)
    assert vz("oci", "rm", "-f", "victim").returncode == 0


def test_container_root_kill_minus_one_is_noticed(vz: Vz, rootfs: Path, metrics: Figures) -> None:
    # Without a PID namespace a container root can kill every process of the VM but init, the
    # agent included (docs/security.md). The host notices — init restarts the agent, whose
    # keepalive answer comes from a new process, or the channel falls silent — and fails the
    # pending command with one clear line and its own exit code, instead of waiting forever.
    start = time.monotonic()
    p = vz("oci", "run", "--rm", "--kernel-profile", "container", str(rootfs), "--",
           "sh", "-c", "kill -9 -1; sleep 600", timeout=120)
    metrics.put("kill_minus_one_to_error", round(time.monotonic() - start, 2), "s")
    assert p.returncode == 45, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "agent" in p.stderr, p.stderr


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by content hash, symlinks by target, directories by mode."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mode:o}"
        else:
            out[rel] = f"dir {p.stat().st_mode:o}"
    return out


REMOUNT_ATTACK = """
for m in "$@"; do
  tag=$(awk -v m="$m" '$2 == m && $3 == "virtiofs" {print $1}' /proc/mounts)
  mount -o remount,rw "$m" && echo "remounted $m"
  echo pwned > "$m/pwned"; echo pwned >> "$m/victim"; chmod 0777 "$m"
  umount "$m" && mount -t virtiofs "$tag" "$m" && echo "mounted $tag rw at $m"
  echo pwned > "$m/pwned"; echo pwned >> "$m/victim"
done
[ -e /run/vz-oci/ctl/crun ] && { echo pwned > /run/vz-oci/ctl/crun; cp /bin/busybox /run/vz-oci/ctl/crun; }
echo kept > /mnt/vz-mount-1/written
"""


def test_guest_root_cannot_write_the_read_only_shares(tmp_path: Path, bundle: Path, rootfs: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(tmp_path, bundle)
    for k in [k for k in os.environ if k.startswith(("VZ_LINUX_", "VZ_OCI_"))]:
        monkeypatch.delenv(k)
    for k in ("HOME", "VZ_LINUX_CONTAINER_BUNDLE_DIR", "VZ_LINUX_CACHE_DIR"):
        monkeypatch.setenv(k, env[k])
    image = tmp_path / "image"
    shutil.copytree(rootfs, image, symlinks=True)
    (image / "victim").write_text("image\n")
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "victim").write_text("read-only volume\n")
    cfg = RuntimeConfig(linux_profile=KernelProfile.container, data_dir=tmp_path / "data")
    req = ContainerRequest(image=str(image), command=("true",),
                           volumes=(Volume(ro, "/ro", read_only=True), Volume(rw, "/rw")))
    state, kernel_bundle = prepare_container(cfg, req)
    cdir = store_for(cfg).dir(state.id)
    crun = cdir / "crun"
    (cdir / "victim").write_text("container dir\n")
    before = {d: _tree(d) for d in (image, ro, cdir)}
    with ContainerVm(cfg, state, kernel_bundle, cdir) as cvm:
        r = cvm.vm.exec_collect(["sh", "-c", REMOUNT_ATTACK, "attack", "/run/vz-oci/image", "/run/vz-oci/ctl",
                                 "/mnt/vz-mount-0"], timeout=120)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert "Read-only file system" in out, out
    # The guest may flip its own mount flags; the host's files stay exactly as they were.
    for d, tree in before.items():
        after = {k: v for k, v in _tree(d).items() if not k.startswith(("serial.log", "state.json"))}
        assert after == {k: v for k, v in tree.items() if not k.startswith(("serial.log", "state.json"))}, d
    assert crun.read_bytes() == kernel_bundle.oci_runtime.read_bytes()
    assert (rw / "written").read_text() == "kept\n"  # a writable volume still is
    # The container's own copy of crun: a link would tie it to the installed bundle's file.
    assert crun.stat().st_nlink == 1 and crun.stat().st_ino != kernel_bundle.oci_runtime.stat().st_ino


def test_serial_console_flood_is_capped(tmp_path: Path, bundle: Path) -> None:
    log = tmp_path / "serial.log"
    limit = 16 << 10
    cfg = VmConfig.from_bundle(bundle, serial_log=log, serial_log_limit=limit)
    with LinuxVm(cfg) as vm:
        vm.wait_for_agent(120)
        r = vm.exec_collect(["sh", "-c", 'i=0; while [ $i -lt 3000 ]; do echo "serial-flood-$i"; '
                             'i=$((i+1)); done > /dev/console'], timeout=240)
        assert r.exit_code == 0, r.stderr
    assert 0 < log.stat().st_size <= limit
    assert 0 < rotated_path(log).stat().st_size <= limit
    assert "serial-flood-2999" in log.read_text(errors="replace")  # the newest output is what is kept


def test_paths_with_commas_still_boot(vz: Vz, tmp_path: Path, rootfs: Path) -> None:
    base = tmp_path / "a,b"
    for name, d in (("HOME", "ho,me"), ("VZ_OCI_DATA_DIR", "da,ta"), ("TMPDIR", "t,mp")):
        vz.env[name] = str(base / d)  # the installed bundle, the container dir, the VM's sockets
        (base / d).mkdir(parents=True)
    image = base / "root,fs"
    shutil.copytree(rootfs, image, symlinks=True)
    vol = base / "vol,ume"
    vol.mkdir()
    p = vz("oci", "run", "--rm", "--kernel-profile", "container", "-v", f"{vol}:/v", str(image), "--",
           "sh", "-c", "cat /etc/hello.txt; echo written > /v/out")
    assert (p.returncode, p.stdout) == (0, "hello from the image\n"), p.stderr
    assert (vol / "out").read_text() == "written\n"
