"""Concurrency and crash safety of installs, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vz_linux import KernelProfile, layout
from vz_linux.bundle.install import InstallStage
from vz_linux.bundle.model import validate_bundle

from .bundles import make_bundle
from .conftest import PYTHON, clean_env

# Each worker ensures the container profile from $VZ_LINUX_CONTAINER_BUNDLE_DIR and prints what it got.
# The source checkout's linux/out is pointed nowhere so a real bundle built in this checkout
# cannot be picked up by the resolution order (step 4) in these isolated runs.
ENSURE = (
    "from pathlib import Path; import vz_linux.layout as layout\n"
    "layout.default_out_root = lambda: Path('/nonexistent/linux/out')\n"
    "from vz_linux import ensure_kernel_profile\n"
    "b = ensure_kernel_profile('container')\n"
    "print(b.root, b.metadata.kernel, b.metadata.sha256_vmlinux)\n"
)
# Prepended to ENSURE to hold the installer at one stage (bundle.install.on_stage): it writes the
# marker file (its pid) and sleeps until the test SIGKILLs it.
PAUSE = (
    "import os, time; from pathlib import Path; import vz_linux.bundle.install as install\n"
    "def _pause(stage):\n"
    "    if stage == {stage!r}:\n"
    "        Path({marker!r}).write_text(f'{{os.getpid()}}\\n')\n"
    "        while True:\n"
    "            time.sleep(3600)\n"
    "install.on_stage = _pause\n"
)


def _spawn(home: Path, bundle: Path, pause: tuple[InstallStage, Path] | None = None) -> subprocess.Popen[str]:
    env = clean_env(home, VZ_LINUX_CONTAINER_BUNDLE_DIR=str(bundle))
    code = ENSURE if pause is None else PAUSE.format(stage=pause[0], marker=str(pause[1])) + ENSURE
    return subprocess.Popen([PYTHON, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _leftovers(install_dir: Path) -> list[str]:
    return sorted(p.name for p in install_dir.parent.iterdir() if ".install-" in p.name or ".old-" in p.name)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"installer exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("installer never reached the pause point")
        time.sleep(0.02)


# Prepended to ENSURE for the concurrency test: each worker reports whether *it* installed (it
# reached the "copying" stage). The first one holds the lock at "copying" until the test writes the
# release file; the others write their "waiting" marker just before they ask for the lock.
HOLD_OR_WAIT = (
    "import os, time; from pathlib import Path; import vz_linux.bundle.install as install\n"
    "installed = []\n"
    "def _hook(stage):\n"
    "    installed.append(stage)\n"
    "    if {hold!r} and stage == 'copying':\n"
    "        Path({marker!r}).write_text('held')\n"
    "        while not Path({release!r}).exists():\n"
    "            time.sleep(0.02)\n"
    "install.on_stage = _hook\n"
    "_lock = install.install_lock\n"
    "def _marked_lock(*a, **k):\n"
    "    Path({marker!r} + '.waiting').write_text('')\n"
    "    return _lock(*a, **k)\n"
    "install.install_lock = _marked_lock\n"
)
REPORT = "print('installed' if 'copying' in installed else 'reused')\n"


@pytest.mark.slow
def test_eight_processes_at_once(home: Path, tmp_path: Path) -> None:
    """One installer holds the lock mid-install while seven others start: all eight succeed with the
    same bundle, and exactly one of them installed it (the others waited, then found it there)."""
    meta = make_bundle(tmp_path / "src", KernelProfile.container)
    env = clean_env(home, VZ_LINUX_CONTAINER_BUNDLE_DIR=str(tmp_path / "src"))
    release = tmp_path / "release"

    def worker(i: int, hold: bool) -> subprocess.Popen[str]:
        code = HOLD_OR_WAIT.format(hold=hold, marker=str(tmp_path / f"m{i}"), release=str(release))
        return subprocess.Popen([PYTHON, "-c", code + ENSURE + REPORT], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    first = worker(0, hold=True)
    try:
        _wait_for(tmp_path / "m0", first)
        others = [worker(i, hold=False) for i in range(1, 8)]
        # Release only once every other worker is at the lock (or, with a broken lock, done):
        # they must all overlap the held install. The grace lets a lock that does not hold show it.
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"m{i}.waiting").exists() or p.poll() is not None for i, p in enumerate(others, 1)):
            assert time.monotonic() < deadline, "workers never reached the install lock"
            time.sleep(0.02)
        time.sleep(1.0)
    finally:
        release.write_text("go")
    procs = [first, *others]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [r[1] for r in results]
    install_dir = home / ".vz" / "linux" / "container"
    lines = [r[0].strip().splitlines() for r in results]
    assert {line[0] for line in lines} == {f"{install_dir} {meta.kernel} {meta.sha256_vmlinux}"}
    assert [line[1] for line in lines] == ["installed"] + ["reused"] * 7
    assert validate_bundle(install_dir, profile=KernelProfile.container).metadata == meta
    assert _leftovers(install_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["copying", "swapped"])
def test_sigkill_mid_install(home: Path, tmp_path: Path, stage: InstallStage) -> None:
    old = make_bundle(tmp_path / "v1", KernelProfile.container, kernel="6.1.1")
    first = _spawn(home, tmp_path / "v1")
    assert first.communicate(timeout=120)[0].split()[1] == "6.1.1"
    install_dir = home / ".vz" / "linux" / "container"

    new = make_bundle(tmp_path / "v2", KernelProfile.container, kernel="6.1.2")
    marker = tmp_path / "paused"
    victim = _spawn(home, tmp_path / "v2", pause=(stage, marker))
    _wait_for(marker, victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL

    # Whatever the stage, what is at the install path is one complete, valid bundle.
    survivor = validate_bundle(install_dir, profile=KernelProfile.container).metadata
    assert survivor == (old if stage == "copying" else new)
    if stage == "copying":
        assert _leftovers(install_dir)  # the half-copied temp dir is there ...

    after = _spawn(home, tmp_path / "v2")  # ... and the next ensure succeeds (the lock died with the victim)
    out, err = after.communicate(timeout=120)
    assert after.returncode == 0, err
    assert out.split()[1] == "6.1.2"
    assert validate_bundle(install_dir).metadata == new
    if stage == "copying":
        assert _leftovers(install_dir) == []  # cleaned up by the next install


def test_reader_during_install_sees_a_whole_bundle(home: Path, tmp_path: Path) -> None:
    """While an install is paused after copying, readers still get the previous, valid install."""
    old = make_bundle(tmp_path / "v1", KernelProfile.container, kernel="6.1.1")
    first = _spawn(home, tmp_path / "v1")
    first.communicate(timeout=120)
    make_bundle(tmp_path / "v2", KernelProfile.container, kernel="6.1.2")
    marker = tmp_path / "paused"
    victim = _spawn(home, tmp_path / "v2", pause=("copying", marker))
    try:
        _wait_for(marker, victim)
        reader = subprocess.run(
            [PYTHON, "-c", ENSURE], env=clean_env(home), capture_output=True, text=True, timeout=120
        )
        assert reader.returncode == 0, reader.stderr
        assert reader.stdout.split()[1:] == [old.kernel, old.sha256_vmlinux]
        assert (home / ".vz" / "linux" / "container" / layout.METADATA).exists()
    finally:
        victim.kill()
        victim.wait(timeout=60)


# Prepended to ENSURE: a filesystem without RENAME_EXCHANGE, produced in the installer process (a
# fake, because no filesystem this test can mount lacks it): fsutil._exchange fails with EINVAL, so
# fsutil.swap_in takes its two-renames fallback. With {pause}, the process stops right after the
# first rename (install dir -> .old-*), i.e. between the two renames, for the test to SIGKILL it.
NO_EXCHANGE = (
    "import errno, os, time; from pathlib import Path; import vz_linux.fsutil as fsutil\n"
    "def _no_exchange(a, b):\n"
    "    raise OSError(errno.EINVAL, 'no RENAME_EXCHANGE on this filesystem')\n"
    "fsutil._exchange = _no_exchange\n"
    "_rename = os.rename\n"
    "def _rename_then_pause(src, dst, *a, **k):\n"
    "    _rename(src, dst, *a, **k)\n"
    "    if {pause!r} and '.old-' in os.fspath(dst):\n"
    "        Path({marker!r}).write_text('between the renames')\n"
    "        while True:\n"
    "            time.sleep(3600)\n"
    "os.rename = _rename_then_pause\n"
)


def _ensure(home: Path, bundle: Path, prefix: str = "") -> subprocess.Popen[str]:
    env = clean_env(home, VZ_LINUX_CONTAINER_BUNDLE_DIR=str(bundle))
    return subprocess.Popen([PYTHON, "-c", prefix + ENSURE], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _installed(home: Path, bundle: Path, prefix: str = "") -> str:
    p = _ensure(home, bundle, prefix)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return out.split()[1]


def test_install_without_rename_exchange_uses_two_renames(home: Path, tmp_path: Path) -> None:
    make_bundle(tmp_path / "v1", KernelProfile.container, kernel="6.1.1")
    new = make_bundle(tmp_path / "v2", KernelProfile.container, kernel="6.1.2")
    assert _installed(home, tmp_path / "v1") == "6.1.1"
    no_exchange = NO_EXCHANGE.format(pause=False, marker="")
    assert _installed(home, tmp_path / "v2", no_exchange) == "6.1.2"
    install_dir = home / ".vz" / "linux" / "container"
    assert validate_bundle(install_dir, profile=KernelProfile.container).metadata == new
    assert _leftovers(install_dir) == []


@pytest.mark.slow
def test_sigkill_between_the_fallback_renames_is_recovered(home: Path, tmp_path: Path) -> None:
    old = make_bundle(tmp_path / "v1", KernelProfile.container, kernel="6.1.1")
    new = make_bundle(tmp_path / "v2", KernelProfile.container, kernel="6.1.2")
    assert _installed(home, tmp_path / "v1") == "6.1.1"
    install_dir = home / ".vz" / "linux" / "container"

    marker = tmp_path / "between"
    victim = _ensure(home, tmp_path / "v2", NO_EXCHANGE.format(pause=True, marker=str(marker)))
    _wait_for(marker, victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    # The crash left no install dir; the previous install is whole, at the .old- name.
    assert not install_dir.exists()
    [old_dir] = [p for p in install_dir.parent.iterdir() if p.name.startswith(".container.old-")]
    assert validate_bundle(old_dir, profile=KernelProfile.container).metadata == old

    # The next install first renames it back: while that install copies, readers get the old one.
    paused = tmp_path / "copying"
    nxt = _ensure(home, tmp_path / "v2", PAUSE.format(stage="copying", marker=str(paused)))
    try:
        _wait_for(paused, nxt)
        assert validate_bundle(install_dir, profile=KernelProfile.container).metadata == old
    finally:
        nxt.kill()
        nxt.wait(timeout=60)
    assert _installed(home, tmp_path / "v2") == "6.1.2"
    assert validate_bundle(install_dir, profile=KernelProfile.container).metadata == new
    assert _leftovers(install_dir) == []
