"""Templates (docs/vm.md, "Snapshots and templates"): `vz-linux run` restores from one by default,
makes it on first use, makes it again when it is damaged, and boots cold with --cold or virtiofs.

CLI runs are real subprocesses with their own cache dir (VZ_LINUX_CACHE_DIR) and TMPDIR, so each
test sees only its templates and can check that no QEMU of its runs is left behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.oci.conftest import make_busybox_rootfs
from vz_linux.vm.bench import http_smoke
from vz_linux.vm.linux_vm import VmConfig
from vz_linux.vm.snapshot import MANIFEST, STATE
from vz_linux.vm.template import restore_from_template, template_for, usable_id

from .procs import processes_mentioning

pytestmark = [pytest.mark.vm, pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(600)]

RESTORED = re.compile(r"restored from template (\w+) \(snapshot (\w+)\)")
MADE = "made template"



def _templates(cache: Path) -> list[Path]:
    root = cache / "templates"
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


@dataclass(frozen=True)
class Cli:
    """`vz-linux -v run --bundle-dir B --accel tcg ARGS` with its own cache dir and TMPDIR."""

    bundle: Path
    cache: Path
    tmp: Path

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-c", "from vz_linux.cli.main import main; main()", "-v", "run",
                "--bundle-dir", str(self.bundle), "--accel", "tcg", *args]

    @property
    def env(self) -> dict[str, str]:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "VZ_LINUX_CACHE_DIR": str(self.cache), "TMPDIR": str(self.tmp)}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True, timeout=300)
        assert "Traceback" not in p.stderr, p.stderr
        assert processes_mentioning(str(self.tmp)) == [], "a QEMU of this run outlived it"
        return p

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)


@dataclass(frozen=True)
class Made:
    cli: Cli
    first: subprocess.CompletedProcess[str]  # the run that made the template


@pytest.fixture(scope="module")
def made(container_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Made:
    """One cache for the module whose template the first `vz-linux run` makes."""
    root = tmp_path_factory.mktemp("template-cache")
    cli = Cli(container_bundle, root / "cache", root / "tmp")
    return Made(cli, cli("--", "sh", "-c", "echo hello; echo oops >&2; exit 5"))


@pytest.fixture
def shared_cache(made: Made) -> Path:
    return made.cli.cache


def test_run_makes_the_template_then_restores_it(made: Made) -> None:
    run, shared_cache, first = made.cli, made.cli.cache, made.first
    assert (first.returncode, first.stdout) == (5, "hello\n"), first.stderr
    assert MADE in first.stderr and "oops" in first.stderr
    # Before the save the guest's free memory was zeroed (most of a 256 MiB guest; 0 = it failed).
    zeroed = re.search(r"made template \w+ in .* (\d+) MiB of free guest memory zeroed", first.stderr)
    assert zeroed and 100 < int(zeroed[1]) <= 512, first.stderr
    second = run("--", "sh", "-c", "echo again")
    assert (second.returncode, second.stdout) == (0, "again\n"), second.stderr
    assert MADE not in second.stderr
    made, again = RESTORED.search(first.stderr), RESTORED.search(second.stderr)
    assert made and again and made.groups() == again.groups()
    (template,) = _templates(shared_cache)
    assert template.name.startswith(made[1])


def test_cold_boots_without_a_template(container_bundle: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    p = Cli(container_bundle, cache, tmp_path / "tmp")("--cold", "--", "sh", "-c", "echo cold; exit 3")
    assert (p.returncode, p.stdout) == (3, "cold\n"), p.stderr
    assert MADE not in p.stderr and not RESTORED.search(p.stderr)
    assert _templates(cache) == []


def test_rootfs_dir_boots_cold_and_says_so(container_bundle: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    p = Cli(container_bundle, cache, tmp_path / "tmp")("--rootfs-dir", str(rootfs), "--", "cat", "/etc/hello.txt")
    assert (p.returncode, p.stdout) == (0, "hello from the image\n"), p.stderr
    assert "booting cold: virtiofs shares (rootfs) block snapshots" in p.stderr
    assert _templates(cache) == []


def _copy_cache(shared_cache: Path, dest: Path) -> Path:
    shutil.copytree(shared_cache, dest)
    (template,) = _templates(dest)
    return template


def _damage(template: Path, how: str) -> None:
    state, record = template / STATE, template / MANIFEST
    if how == "truncated":
        os.truncate(state, state.stat().st_size - 4096)
    elif how == "flipped":
        with open(state, "r+b") as f:
            f.seek(state.stat().st_size // 2)
            f.write(secrets.token_bytes(64))
    elif how == "other-qemu":
        data = json.loads(record.read_text())
        data["qemu"] = "6.2.0 (some other build)"
        record.write_text(json.dumps(data))
    elif how == "garbage-record":
        record.write_text("]")


def test_truncated_template_is_made_again_by_run(container_bundle: Path, shared_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    template = _copy_cache(shared_cache, cache)
    before = usable_id(template)
    _damage(template, "truncated")
    p = Cli(container_bundle, cache, tmp_path / "tmp")("--", "echo", "ok")
    assert (p.returncode, p.stdout) == (0, "ok\n"), p.stderr
    assert MADE in p.stderr
    after = usable_id(template)
    assert after is not None and after != before
    assert json.loads((template / MANIFEST).read_text())["state"]["size"] == (template / STATE).stat().st_size


@pytest.mark.parametrize("how", ["flipped", "other-qemu", "garbage-record"])
def test_unusable_template_is_made_again(container_bundle: Path, shared_cache: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    cache = tmp_path / "cache"
    template = _copy_cache(shared_cache, cache)
    before = json.loads((shared_cache / "templates" / template.name / MANIFEST).read_text())["id"]
    _damage(template, how)
    monkeypatch.setenv("VZ_LINUX_CACHE_DIR", str(cache))
    config = VmConfig.from_bundle(container_bundle, accel="tcg")
    assert template_for(config).path == template  # the CLI's template is the library's
    with restore_from_template(config, timeout=120) as vm:
        assert vm.exec_collect(["echo", "ok"]).stdout == b"ok\n"
        assert vm.restore_times is not None and vm.restore_times.snapshot_id not in (before, None)
    assert usable_id(template) == vm.restore_times.snapshot_id


def test_concurrent_runs_make_one_template_and_get_their_own_vms(container_bundle: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cli = Cli(container_bundle, cache, tmp_path / "tmp")
    # Each VM marks its own /tmp and counts the marks: a VM shared by two runs would count two.
    script = "echo $$ > /tmp/mark-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' '); ls /tmp | grep -c mark-"
    procs = [cli.start("--", "sh", "-c", script) for _ in range(3)]
    results = [(p.wait(300), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert (rc, out) == (0, "1\n"), err
    assert sum(MADE in err for _, _, err in results) == 1
    ids = {m.groups() for _, _, err in results if (m := RESTORED.search(err))}
    assert len(ids) == 1 and len(_templates(cache)) == 1
    assert processes_mentioning(str(tmp_path / "tmp")) == []


def test_network_template_reaches_the_host(container_bundle: Path, http_server: tuple[str, bytes], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """User-mode network survives the save: a VM restored from a --net template fetches from the host."""
    monkeypatch.setenv("VZ_LINUX_CACHE_DIR", str(tmp_path / "cache"))
    url, body = http_server
    config = VmConfig.from_bundle(container_bundle, accel="tcg", network=True)
    for _ in range(2):  # the first makes the template, the second restores a template made earlier
        with restore_from_template(config, timeout=120) as vm:
            assert http_smoke(vm, url, 60) == body.decode()
    assert len(_templates(tmp_path / "cache")) == 1


def test_arm64_guest_restores_from_its_template(container_bundle_arm64: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VZ_LINUX_CACHE_DIR", str(tmp_path / "cache"))
    config = VmConfig.from_bundle(container_bundle_arm64, accel="tcg")
    with restore_from_template(config, timeout=120) as vm:
        r = vm.exec_collect(["sh", "-c", "uname -m; date -u +%s"])
        machine, guest_now = r.stdout.decode().split()
        assert machine == "aarch64" and abs(int(guest_now) - time.time()) <= 2
        assert vm.restore_times is not None


def test_unwritable_template_cache_is_one_line_and_exit_84(container_bundle: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file where the cache should be")
    p = Cli(container_bundle, not_a_dir, tmp_path / "tmp")("--", "true")
    assert p.returncode == 84, p.stderr
    (line,) = [x for x in p.stderr.splitlines() if x.startswith("vz-linux: error: ")]
    assert "cannot keep templates" in line and "--cold" in line

