"""What a snapshot is tied to, template keys, the documented exit codes and the --plot picture,
all without booting (the VM side: test_snapshot.py, test_template.py, test_bench_snapshot.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vz_linux import errors
from vz_linux.arch import Architecture
from vz_linux.cli.plot import plot_results
from vz_linux.vm.bench import COLD, RESTORED, BootSample, GuestResult
from vz_linux.vm.linux_vm import VmConfig, describe
from vz_linux.vm.qemu import Accel, Disk
from vz_linux.vm.snapshot import VmShape, vm_shape
from vz_linux.vm.template import template_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path: Path) -> VmConfig:
    (tmp_path / "vmlinux").write_bytes(b"kernel " * 1000)
    (tmp_path / "initramfs.img").write_bytes(b"initramfs " * 100)
    return VmConfig(kernel=tmp_path / "vmlinux", initramfs=tmp_path / "initramfs.img", arch=Architecture.x86_64,
                    accel="tcg")


def _shape(config: VmConfig, workdir: Path, *, incoming: bool = False) -> VmShape:
    return vm_shape(describe(config, Accel.tcg, workdir, incoming=incoming))


def test_shape_ignores_per_boot_paths_and_incoming(config: VmConfig) -> None:
    a = _shape(config, Path("/tmp/vz-vm-aaaa"))
    b = _shape(config, Path("/tmp/vz-vm-bbbbbbbb"), incoming=True)
    assert a == b
    assert not any("vz-vm-" in d for d in a.devices), a.devices
    assert "-chardev socket,id=agent0,path=AGENT" in a.devices
    assert (a.machine, a.cpu, a.accel, a.cpus, a.memory_mib) == ("microvm,acpi=off,x-option-roms=off", "max,-erms", "tcg", 1, 256)


def test_shape_ignores_host_memory_options(config: VmConfig) -> None:
    """The TCG cache size and huge pages change QEMU's RSS, not the saved guest: same shape."""
    a = _shape(config, Path("/w"))
    assert a == _shape(replace(config, tcg_tb_size_mib=16, tcg_huge_pages=True), Path("/w"))
    assert a == _shape(replace(config, tcg_tb_size_mib=None), Path("/w"))


@pytest.mark.parametrize(("change", "fields"), [
    ({"memory_mib": 512}, {"memory_mib"}), ({"network": True}, {"devices"}),
    ({"cpus": 2}, {"cpus", "cmdline"}),  # the TCG tuning's noapictimer is for one vCPU only
    ({"tcg_tuning": False}, {"cpu", "cmdline"}),  # -cpu max,-erms changes the saved CPU state
    ({"cmdline_extra": ("quiet2",)}, {"cmdline"}), ({"hvc_console": False}, {"devices"}),
    # pc also means virtio over PCI, and no TCG tuning (stock kernels)
    ({"machine": "pc"}, {"machine", "devices", "cpu", "cmdline"}),
])
def test_shape_sees_every_difference_that_matters(config: VmConfig, change: dict[str, object],
                                                  fields: set[str]) -> None:
    a = _shape(config, Path("/w")).model_dump()
    b = _shape(replace(config, **change), Path("/w")).model_dump()  # type: ignore[arg-type]
    assert {k for k in a if a[k] != b[k]} == fields


def test_template_key_follows_shape_and_file_contents(config: VmConfig, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VZ_LINUX_CACHE_DIR", str(tmp_path / "cache"))
    first = template_for(config)
    assert first == template_for(replace(config, serial_log=tmp_path / "elsewhere.log"))
    assert first.path == tmp_path / "cache" / "templates" / first.key
    assert template_for(replace(config, memory_mib=512)).key != first.key
    assert template_for(replace(config, network=True)).key != first.key
    # A validated checksum stands in for hashing; another one is another template.
    assert template_for(config, {config.kernel: "0" * 64}).key != first.key
    config.kernel.write_bytes(b"another kernel")  # new size and mtime: hashed again
    assert template_for(config).key != first.key


def test_swappable_disk_is_named_by_size_not_path(config: VmConfig, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An OCI template's placeholder disk and a container's image of the same size: one shape, one
    template; another size, or a disk that is not swappable, is another shape."""
    monkeypatch.setenv("VZ_LINUX_CACHE_DIR", str(tmp_path / "cache"))
    disks = {}
    for name, size in (("placeholder", 1 << 30), ("image", 1 << 30), ("bigger", 4 << 30)):
        disks[name] = tmp_path / f"{name}.img"
        disks[name].write_bytes(b"")
        os.truncate(disks[name], size)  # sparse

    def with_disk(name: str, swappable: bool = True) -> VmConfig:
        return replace(config, disks=(Disk(disks[name], read_only=True, swappable=swappable),))

    placeholder = _shape(with_disk("placeholder"), Path("/w"))
    assert placeholder == _shape(with_disk("image"), Path("/w"))
    assert f"-drive file=DISK0-{1 << 30}B,if=none,id=disk0,format=raw,discard=unmap,read-only=on" in placeholder.devices
    assert template_for(with_disk("placeholder")).key == template_for(with_disk("image")).key
    assert _shape(with_disk("bigger"), Path("/w")) != placeholder
    fixed = _shape(with_disk("placeholder", swappable=False), Path("/w"))
    assert fixed != _shape(with_disk("image", swappable=False), Path("/w"))
    assert any(str(disks["placeholder"]) in d for d in fixed.devices)


def test_exit_codes_are_distinct_and_documented() -> None:
    documented = {"SnapshotError": 80, "SnapshotMismatchError": 81, "SnapshotCorruptError": 82,
                  "SnapshotUnsupportedError": 83, "TemplateError": 84}
    vm_doc = (ROOT / "docs" / "vm.md").read_text()
    for name, code in documented.items():
        cls = getattr(errors, name)
        assert issubclass(cls, errors.VmError) and cls.exit_code == code
        assert re.search(rf"^\| {code} \| `{name}` \|", vm_doc, re.M), f"docs/vm.md has no row for {code} {name}"


def _result(label: str, mode: str, totals: list[float]) -> GuestResult:
    phases = ("vmm", "load", "agent") if mode == RESTORED else ("vmm", "kernel", "init", "agent")
    samples = [BootSample(label, i, t, {p: t / len(phases) for p in phases}, mode=mode)
               for i, t in enumerate(totals, start=1)]
    return GuestResult(label, samples, group="bundle-a", mode=mode)


def test_plot_draws_every_phase_of_every_boot(tmp_path: Path) -> None:
    results = [_result("a cold", COLD, [1.2, 1.4, 1.3]), _result("a restored", RESTORED, [0.12, 0.15, 0.13])]
    svg = tmp_path / "boots.svg"
    plot_results(results, svg, title="test run")
    text = svg.read_text()
    ids = set(re.findall(r'id="(bar-[^"]+)"', text))
    want = {f"bar-cold-0-{i}-{p}" for i in (1, 2, 3) for p in ("vmm", "kernel", "init", "agent")}
    want |= {f"bar-restored-0-{i}-{p}" for i in (1, 2, 3) for p in ("vmm", "load", "agent")}
    assert ids == want
    for label in ("cold", "restored", "bundle-a", "test run", "p50 1300 ms", "p50 130 ms"):
        assert label in text, label
    png = tmp_path / "boots.png"
    plot_results(results, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_phase_bars_add_up_to_the_total(tmp_path: Path) -> None:
    # A cold sample without a kernel timestamp: what the known phases miss is drawn as "other".
    sample = BootSample("x", 1, 2.0, {"vmm": 0.5, "kernel": None, "init": None, "agent": 0.25})
    svg = tmp_path / "partial.svg"
    plot_results([GuestResult("x", [sample], group="g", mode=COLD)], svg)
    assert set(re.findall(r'id="(bar-[^"]+)"', svg.read_text())) == {"bar-cold-0-1-vmm", "bar-cold-0-1-agent",
                                                                       "bar-cold-0-1-other"}


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from vz_linux.cli.bench import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("args", "needle"), [
    (["--plot", "boots.gif"], "must end in .png or .svg"),
    (["--snapshot", "--rootfs-dir", "."], "blocks snapshots"),
])
def test_bench_refuses_bad_options_before_booting(tmp_path: Path, args: list[str], needle: str) -> None:
    p = _bench("--bundle-dir", str(tmp_path / "no-such-bundle"), *args)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and "Traceback" not in p.stderr

