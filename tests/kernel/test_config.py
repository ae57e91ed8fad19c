"""Config resolution against the real Linux source: baseline + fragments + olddefconfig, then every
fragment line checked (seconds, no compile)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vz_linux.arch import Architecture
from vz_linux.build.kconfig import fragment_paths, read_allowlist
from vz_linux.build.kspp import kspp_report, tree_symbols
from vz_linux.build.pipeline import configure
from vz_linux.build.sources import KernelSource, SourceSpec, acquire_source, select_pin
from vz_linux.errors import CapabilityContractError, InvalidConfigError, KconfigCheckError
from vz_linux.profiles import KernelCapability, KernelProfile

pytestmark = [pytest.mark.kernel]

VZ_LINUX = Path(sys.executable).parent / "vz-linux"


@pytest.mark.parametrize("pin", ["6.12", "6.1"])
@pytest.mark.parametrize("arch", list(Architecture))
@pytest.mark.parametrize("profile", list(KernelProfile))
def test_profiles_resolve_with_zero_drops(profile: KernelProfile, arch: Architecture, pin: str) -> None:
    source = acquire_source(SourceSpec(), pin=select_pin(pin))
    assert source.series == pin
    report = configure(profile, arch, source, memoize=False)  # really run the kernel's kconfig
    r = report.resolved
    assert [c.describe() for c in r.failures] == []
    assert not [c for c in r.checks if c.allowed_because], "the shipped allow-list is empty on purpose"
    # Every line of every fragment was checked, none skipped.
    expected = sum(
        1 for p in fragment_paths(profile, arch, series=pin) for raw in p.read_text().splitlines()
        if raw.startswith("CONFIG_") or (raw.startswith("# CONFIG_") and raw.endswith(" is not set"))
    )
    assert len(r.checks) == expected > 30
    assert report.capabilities >= profile.contract, report.missing
    assert report.missing == ()
    assert {KernelCapability.device_mapper, KernelCapability.dm_crypt} <= profile.contract
    assert all(r.config.get(s) == "y" for s in ("BLK_DEV_DM", "DM_CRYPT", "CRYPTO_AES", "CRYPTO_XTS"))
    assert r.config.get("LOCALVERSION") == f'"{profile.local_version}"'
    assert r.config.get("MODULES", "n") == "n"
    if arch is Architecture.x86_64:
        assert r.config.get("PVH") == "y"  # QEMU/Firecracker boot the ELF vmlinux through it
        assert r.config.get("VIRTIO_MMIO_CMDLINE_DEVICES") == "y"
    else:
        assert r.config.get("SERIAL_AMBA_PL011_CONSOLE") == "y"
        assert r.config.get("PCI_HOST_GENERIC") == "y"
    if profile is KernelProfile.container:
        assert KernelCapability.container_sandbox in report.capabilities
        assert KernelCapability.nested_virt not in report.capabilities
        assert KernelCapability.tun not in report.capabilities
        assert r.config.get("RD_GZIP") == "y"
        assert {"IKCONFIG", "KVM", "TUN", "NFS_FS"} <= {line.symbol for line in r.exclusions}
    else:
        assert KernelCapability.container_sandbox not in report.capabilities


def _planted(tmp_path: Path, profile: KernelProfile, arch: Architecture, text: str) -> tuple[Path, ...]:
    planted = tmp_path / "planted.config"
    planted.write_text(text)
    return (*fragment_paths(profile, arch, series="6.12"), planted)


def test_planted_drop_names_the_unmet_dependency(kernel_source: KernelSource, tmp_path: Path) -> None:
    # SCSI is off in the container profile, so virtio-scsi cannot be enabled.
    frags = _planted(tmp_path, KernelProfile.container, Architecture.x86_64, "CONFIG_SCSI_VIRTIO=y\n")
    report = configure(KernelProfile.container, Architecture.x86_64, kernel_source, fragments=frags,
                       allowlist=tmp_path / "none.txt")
    [bad] = report.resolved.failures
    assert bad.line.symbol == "SCSI_VIRTIO" and bad.line.path == frags[-1] and bad.line.lineno == 1
    assert bad.resulting == "n"
    assert bad.explanation.startswith("depends on ")
    assert "SCSI [=n]" in bad.explanation
    with pytest.raises(KconfigCheckError, match=r"CONFIG_SCSI_VIRTIO=y dropped: depends on .*SCSI \[=n\]"):
        report.raise_for_problems()


def test_planted_off_line_names_what_selects_it(kernel_source: KernelSource, tmp_path: Path) -> None:
    # On x86 PERF_EVENTS is selected by the arch itself: "not set" cannot hold.
    frags = _planted(tmp_path, KernelProfile.container, Architecture.x86_64,
                     "# CONFIG_PERF_EVENTS is not set\nCONFIG_NO_SUCH_OPTION_VZ=y\n")
    report = configure(KernelProfile.container, Architecture.x86_64, kernel_source, fragments=frags,
                       allowlist=tmp_path / "none.txt")
    bad = {c.line.symbol: c for c in report.resolved.failures}
    assert set(bad) == {"PERF_EVENTS", "NO_SUCH_OPTION_VZ"}
    assert bad["PERF_EVENTS"].resulting == "y"
    assert "selected by X86 [=y]" in bad["PERF_EVENTS"].explanation
    assert "no such symbol" in bad["NO_SUCH_OPTION_VZ"].explanation


def test_planted_drop_new_in_6_12_is_explained(kernel_source: KernelSource, tmp_path: Path) -> None:
    # 6.12's KPROBES no longer needs MODULES, and selects KALLSYMS: the container's "KALLSYMS is
    # not set" line then cannot hold, and the check names what selected it.
    assert kernel_source.series == "6.12"
    frags = _planted(tmp_path, KernelProfile.container, Architecture.x86_64, "CONFIG_KPROBES=y\n")
    report = configure(KernelProfile.container, Architecture.x86_64, kernel_source, fragments=frags,
                       allowlist=tmp_path / "none.txt")
    bad_by = {c.line.symbol: c for c in report.resolved.failures}
    assert set(bad_by) == {"KALLSYMS", "KPROBES"}  # the fragment's own "KPROBES is not set" is overridden
    assert "overridden by CONFIG_KPROBES=y (planted.config:1)" in bad_by["KPROBES"].explanation
    bad = bad_by["KALLSYMS"]
    assert bad.line.value == "n" and bad.resulting == "y"
    assert bad.line.path is not None and bad.line.path.name == "vz-linux-container.config"
    assert "selected by KPROBES [=y]" in bad.explanation
    with pytest.raises(KconfigCheckError, match=r"CONFIG_KALLSYMS is not set resolved to y: selected by KPROBES"):
        report.raise_for_problems()


def test_registry_derives_device_mapper_and_dm_crypt(kernel_source: KernelSource, tmp_path: Path) -> None:
    # dm-crypt without the XTS mode its probe uses is not dm_crypt; device_mapper still holds.
    base, *arch_frags = fragment_paths(KernelProfile.container, Architecture.arm64, series=kernel_source.series)
    edited = tmp_path / base.name
    edited.write_text(base.read_text().replace("CONFIG_CRYPTO_XTS=y\n", ""))
    report = configure(KernelProfile.container, Architecture.arm64, kernel_source, fragments=(edited, *arch_frags))
    assert report.resolved.failures == []
    assert KernelCapability.device_mapper in report.capabilities
    assert KernelCapability.dm_crypt not in report.capabilities
    with pytest.raises(CapabilityContractError, match=r"dm_crypt: CONFIG_CRYPTO_XTS is n"):
        report.raise_for_problems()


def test_allow_listed_drop_passes(kernel_source: KernelSource, tmp_path: Path) -> None:
    frags = _planted(tmp_path, KernelProfile.container, Architecture.x86_64, "CONFIG_SCSI_VIRTIO=y\n")
    allow = tmp_path / "allow.txt"
    allow.write_text("# reviewed\ncontainer:x86_64 CONFIG_SCSI_VIRTIO planted by the test, reviewed\n"
                     "developer:* CONFIG_SCSI_VIRTIO another profile: must not matter\n")
    report = configure(KernelProfile.container, Architecture.x86_64, kernel_source, fragments=frags,
                       allowlist=allow)
    assert report.resolved.failures == []
    [accepted] = [c for c in report.resolved.checks if not c.ok]
    assert accepted.allowed_because == "planted by the test, reviewed"
    assert "SCSI [=n]" in accepted.explanation
    report.raise_for_problems()  # does not raise


def test_allow_list_needs_a_reason(tmp_path: Path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("container:x86_64 CONFIG_SCSI_VIRTIO\n")
    with pytest.raises(InvalidConfigError, match=r"allow\.txt:1"):
        read_allowlist(allow)


def test_contract_violation_names_capability_and_symbols(kernel_source: KernelSource, tmp_path: Path) -> None:
    # The container fragment without its OVERLAY_FS line: allnoconfig leaves overlayfs off.
    base, *arch_frags = fragment_paths(KernelProfile.container, Architecture.x86_64, series=kernel_source.series)
    edited = tmp_path / base.name
    edited.write_text("".join(line for line in base.read_text().splitlines(keepends=True)
                              if not line.startswith("CONFIG_OVERLAY_FS=")))
    report = configure(KernelProfile.container, Architecture.x86_64, kernel_source,
                       fragments=(edited, *arch_frags))
    assert report.resolved.failures == []  # every remaining line holds...
    with pytest.raises(CapabilityContractError, match=r"overlayfs: CONFIG_OVERLAY_FS is n"):
        report.raise_for_problems()  # ...but the contract does not


def test_overridden_line_is_reported(kernel_source: KernelSource, tmp_path: Path) -> None:
    frags = _planted(tmp_path, KernelProfile.container, Architecture.x86_64, "# CONFIG_VETH is not set\n")
    report = configure(KernelProfile.container, Architecture.x86_64, kernel_source, fragments=frags)
    [bad] = report.resolved.failures
    assert bad.line.symbol == "VETH" and bad.line.value == "y"
    assert "overridden by # CONFIG_VETH is not set (planted.config:1)" in bad.explanation


def test_config_cli_json_and_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run([str(VZ_LINUX), "config", "--profile", "container", "--arch", "x86_64", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    import json

    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["kernel"].startswith("6.12.")
    assert data["counts"]["y"] > 100 and data["counts"]["m"] == 0
    assert {"container_sandbox", "device_mapper", "dm_crypt"} <= set(data["capabilities"])
    assert all(c["ok"] for c in data["checks"]) and len(data["checks"]) > 100


def test_makefile_summary_target_runs_the_cli() -> None:
    top = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    proc = subprocess.run(["make", "-s", "-C", str(top / "linux"), "kernel-config-summary",
                           "KERNEL_PROFILE=container", "ARCH=arm64"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "container/arm64: Linux 6.12." in proc.stdout
    assert " 0 failed" in proc.stdout and "container_sandbox" in proc.stdout


def test_kspp_report_for_the_container_profile(kernel_source: KernelSource) -> None:
    x86 = Architecture.x86_64
    report = configure(KernelProfile.container, x86, kernel_source)
    kspp = report.kspp
    assert kspp is not None
    met = {f"{k.symbol}={k.value}" for k in kspp.met}
    missed = {f"{k.symbol}={k.value}": got for k, got in kspp.missed}
    # What the fragment applies is met; what docs/profiles.md refuses shows up as missed.
    assert {"STACKPROTECTOR_STRONG=y", "VMAP_STACK=y", "SLAB_FREELIST_HARDENED=y", "HARDENED_USERCOPY=y",
            "FORTIFY_SOURCE=y", "DEVMEM=n", "KEXEC=n", "STRICT_KERNEL_RWX=y"} <= met
    assert missed["RANDOMIZE_BASE=y"] == "absent" and missed["CPU_MITIGATIONS=y"] == "n"
    # Groups A and B of docs/profiles.md "Hardening" (A's RANDOM_KMALLOC_CACHES from the 6.12 fragment).
    assert {"DEBUG_WX=y", "DEBUG_NOTIFIERS=y", "DEBUG_SG=y", "KFENCE=y", "PAGE_TABLE_CHECK_ENFORCED=y",
            "INIT_ON_ALLOC_DEFAULT_ON=y", "RANDOMIZE_KSTACK_OFFSET_DEFAULT=y", "STATIC_USERMODEHELPER=y",
            "INET_DIAG=n", "RANDOM_KMALLOC_CACHES=y", "X86_VSYSCALL_EMULATION=n", "LEGACY_VSYSCALL_NONE=y",
            "MODIFY_LDT_SYSCALL=n", "ZERO_CALL_USED_REGS=y", "UBSAN_BOUNDS=y", "UBSAN_TRAP=y"} <= met
    # 6.9+ names: the x86 mitigations are judged as MITIGATION_*, retired symbols are neither.
    assert "MITIGATION_RETPOLINE=y" in missed and "RETPOLINE=y" not in missed
    assert {str(k) for k in kspp.not_in_tree} >= {"DEBUG_CREDENTIALS=y", "DEVKMEM=n"}
    assert not any(k.startswith("ARM64_") for k in met | set(missed))  # arm64-only settings not listed
    assert report.to_json()["kspp"]["met"] == sorted(met, key=[f"{k.symbol}={k.value}" for k in kspp.met].index)
    assert configure(KernelProfile.developer, x86, kernel_source).kspp is None  # reported for container only
    proc = subprocess.run([str(VZ_LINUX), "config", "--profile", "container", "--arch", "x86_64", "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "KSPP recommended settings" in x)
    assert f"{len(kspp.met)} met, {len(kspp.missed)} missed" in line
    assert "RANDOMIZE_BASE=y (is absent)" in proc.stdout


def test_resolved_config_ignores_the_hosts_rustc(kernel_source: KernelSource, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Kconfig asks `rustc --version`; kbuild pins RUSTC=false, so a rustc on PATH (here a fake one
    # claiming 1.99.0) leaves the resolved .config, and with it the kernel cache key, unchanged.
    from vz_linux.build.kconfig import resolve_config

    x86, container = Architecture.x86_64, KernelProfile.container
    without = resolve_config(kernel_source, container, x86, workdir=tmp_path / "a", memoize=False)
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("rustc", "bindgen"):
        (fake / tool).write_text('#!/bin/sh\necho "' + tool + ' 1.99.0 (fake 2030-01-01) (LLVM 19.1.0)"\n')
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with_fake = resolve_config(kernel_source, container, x86, workdir=tmp_path / "b", memoize=False)
    assert with_fake.config_text == without.config_text
    assert with_fake.config.get("RUSTC_VERSION", "0") == "0"
    assert with_fake.config.get("RUST_IS_AVAILABLE", "n") == "n"


def test_kspp_report_on_arm64_and_under_6_1_names(kernel_source: KernelSource) -> None:
    arm = configure(KernelProfile.container, Architecture.arm64, kernel_source).kspp
    assert arm is not None
    met = {str(k) for k in arm.met}
    assert {"RANDOMIZE_BASE=y", "ARM64_PAN=y", "ARM64_SW_TTBR0_PAN=y", "ARM64_E0PD=y", "SHADOW_CALL_STACK=y",
            "UNMAP_KERNEL_AT_EL0=y", "KFENCE=y", "UBSAN_TRAP=y"} <= met
    assert {str(k) for k, _ in arm.missed} == {"ARM64_PTR_AUTH=y", "ARM64_BTI=y", "ARM64_MTE=y"}  # refused
    assert "HARDEN_BRANCH_PREDICTOR=y" in {str(k) for k in arm.not_in_tree}  # arch/arm only since 5.10
    assert not any(str(k).startswith(("X86_", "MODIFY_LDT")) for k in (*arm.met, *arm.not_in_tree))
    # Under Linux 6.1 the same settings are judged by their pre-6.9 names.
    old = acquire_source(SourceSpec(), pin=select_pin("6.1"))
    report = kspp_report({"PAGE_TABLE_ISOLATION": "y"}, Architecture.x86_64,
                         tree_symbols(old.tree, Architecture.x86_64.kernel_arch))
    assert "PAGE_TABLE_ISOLATION=y" in {str(k) for k in report.met}
    assert {"RETPOLINE=y", "DEBUG_CREDENTIALS=y"} <= {str(k) for k, _ in report.missed}
    assert "RANDOM_KMALLOC_CACHES=y" in {str(k) for k in report.not_in_tree}
