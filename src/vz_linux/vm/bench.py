"""The boot-latency benchmark library behind ``vz-linux-bench`` (docs/vm.md, "Phases").

One *sample* is one cold boot: QEMU spawned → the agent answers hello. It is split into phases
from host and guest clocks:

* **vmm**    — host spawn → guest clock zero (QEMU start, firmware/loader, until the kernel's clock
  starts); guest zero in host time = hello's arrival minus the guest's CLOCK_BOOTTIME in the reply;
* **kernel** — guest zero → ``Run /init as init process`` (its dmesg timestamp, ``printk.time=1``);
* **init**   — that → the agent process started (hello carries its start in CLOCK_BOOTTIME);
* **agent**  — agent start → hello answered on the host (agent setup, port open, round trip).

A *restored* sample (``BenchGuest.restore``, ``vz-linux-bench --snapshot``) is QEMU spawned → the VM
restored from its template answers and has its clock and RNG refreshed, split into **vmm** (spawn →
the snapshot checked, QEMU told to load it), **load** (→ the guest runs again) and **agent** (→ hello
answered and the clock and RNG refreshed). The template is made before the first sample.

Statistics are nearest-rank percentiles over the samples. ``--compare`` interleaves the two
guests A B A B … so drift (other load on the machine) hits both alike.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import AgentError, InvalidConfigError
from ..fsutil import write_atomic
from .linux_vm import LinuxVm, VmConfig
from .template import TemplateBuild, ensure_template, restore_from_template, template_for

GUEST_LOG_COMMAND = "dmesg | tail -n 120"
RUN_INIT = re.compile(r"^\[\s*(\d+\.\d+)\]\s+Run (\S+) as init process", re.M)
PHASES = ("vmm", "kernel", "init", "agent")
RESTORE_PHASES = ("vmm", "load", "agent")
ALL_PHASES = ("vmm", "load", "kernel", "init", "agent")  # table columns: cold and restored rows together
COLD, RESTORED = "cold", "restored"


@dataclass(frozen=True)
class BenchGuest:
    """One thing to boot (or, with ``restore``, to restore from its template): a label and a VM config."""

    label: str
    config: VmConfig
    restore: bool = False
    group: str | None = None  # what the plot puts in one row (the bundle); default: the label
    sha256: Mapping[Path, str] = field(default_factory=dict)  # validated kernel/initramfs checksums

    @property
    def mode(self) -> str:
        return RESTORED if self.restore else COLD


@dataclass(frozen=True)
class BenchOptions:
    iterations: int = 10
    timeout_secs: float = 60.0
    guest_logs: bool = False
    guest_log_command: str | None = None
    guest_log_timeout_secs: float = 20.0
    http_smoke_url: str | None = None
    http_smoke_timeout_secs: float = 30.0
    retry_log_every: int = 0
    rootfs_dir: Path | None = None
    serial_log_dir: Path | None = None  # keep each boot's serial log here
    measure_rss: bool = True

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise InvalidConfigError("--iterations must be at least 1")
        if self.timeout_secs <= 0:
            raise InvalidConfigError("--timeout-secs must be positive")


@dataclass(frozen=True)
class BootSample:
    label: str
    iteration: int
    total_s: float  # host: QEMU spawned -> agent ready
    phases: dict[str, float | None]
    kernel_release: str = ""
    rss_bytes: int | None = None
    http_smoke: str | None = None  # body (truncated) when --http-smoke-url
    guest_log: str | None = None
    serial_log: str | None = None
    attempts: int = 0
    mode: str = COLD


@dataclass(frozen=True)
class Summary:
    n: int
    min: float
    mean: float
    median: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("no samples")
        s = sorted(values)
        return cls(len(s), s[0], statistics.fmean(s), statistics.median(s), percentile(s, 95),
                   percentile(s, 99), s[-1])


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of already sorted values."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class GuestResult:
    label: str
    samples: list[BootSample] = field(default_factory=list)
    group: str = ""
    mode: str = COLD
    template: TemplateBuild | None = None  # made for this run (restored guests)

    def total(self) -> Summary:
        return Summary.of([s.total_s for s in self.samples])

    def phase(self, name: str) -> Summary | None:
        vals = [v for s in self.samples if (v := s.phases.get(name)) is not None]
        return Summary.of(vals) if vals else None

    def rss(self) -> Summary | None:
        vals = [float(s.rss_bytes) for s in self.samples if s.rss_bytes is not None]
        return Summary.of(vals) if vals else None


def phases_from(vm: LinuxVm, dmesg: str | None) -> dict[str, float | None]:
    t = vm.times
    assert t is not None
    h = t.hello
    guest_zero_ns = t.agent_ready_ns - h.boottime_ns
    agent_start_s = h.agent_start_boottime_ns / 1e9
    run_init = None
    if dmesg:
        m = RUN_INIT.search(dmesg)
        if m:
            run_init = float(m.group(1))
    return {
        "vmm": (guest_zero_ns - t.spawned_ns) / 1e9,
        "kernel": run_init,
        "init": (agent_start_s - run_init) if run_init is not None else None,
        "agent": (h.boottime_ns - h.agent_start_boottime_ns) / 1e9,
        "kernel+init": agent_start_s,
    }


def _guest_shell(vm: LinuxVm, command: str, timeout: float) -> str:
    r = vm.exec_collect(["sh", "-lc", command], timeout=timeout)
    text = (r.stdout + r.stderr).decode(errors="replace")
    return text if r.ok else f"{text}\n[{r.describe()}]"


def http_smoke(vm: LinuxVm, url: str, timeout: float) -> str:
    """Fetch ``url`` with BusyBox wget in the guest, retrying while DHCP settles; return the body."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        left = deadline - time.monotonic()
        # No wget -T: Debian's static BusyBox 1.35 wget segfaults with it; the agent enforces the timeout.
        r = vm.exec_collect(["wget", "-q", "-O", "-", url], timeout=max(1.0, min(left, 10.0)))
        if r.exit_code == 0:
            return r.stdout.decode(errors="replace")
        last = r.stderr.decode(errors="replace").strip() or f"wget {r.describe()}"
        if time.monotonic() >= deadline:
            raise AgentError(f"HTTP smoke check of {url} failed within {timeout:.0f}s: {last}")
        time.sleep(0.2)  # retry pacing while the guest's DHCP lease arrives, not a readiness guess


def _sample_config(guest: BenchGuest, iteration: int, opts: BenchOptions) -> tuple[VmConfig, Path | None]:
    cfg = guest.config
    if "printk.time=1" not in cfg.cmdline_extra:
        cfg = replace(cfg, cmdline_extra=(*cfg.cmdline_extra, "printk.time=1"))
    if opts.rootfs_dir is not None:
        cfg = replace(cfg, rootfs=opts.rootfs_dir)
    if opts.http_smoke_url is not None:
        cfg = replace(cfg, network=True)
    serial = None
    if opts.serial_log_dir is not None:
        opts.serial_log_dir.mkdir(parents=True, exist_ok=True)
        serial = opts.serial_log_dir / f"{_slug(guest.label)}-{iteration:03d}.log"
        cfg = replace(cfg, serial_log=serial)
    return cfg, serial


def _after_ready(vm: LinuxVm, opts: BenchOptions) -> tuple[str | None, str | None]:
    """The smoke fetch and guest log of one sample (after the measured interval)."""
    body = http_smoke(vm, opts.http_smoke_url, opts.http_smoke_timeout_secs) if opts.http_smoke_url else None
    guest_log = None
    if opts.guest_log_command or opts.guest_logs:
        guest_log = _guest_shell(vm, opts.guest_log_command or GUEST_LOG_COMMAND, opts.guest_log_timeout_secs)
    return (body[:4096] if body is not None else None), guest_log


def boot_once(guest: BenchGuest, iteration: int, opts: BenchOptions,
              log: Callable[[str], None] = lambda s: None) -> BootSample:
    if guest.restore:
        return restore_once(guest, iteration, opts)
    cfg, serial = _sample_config(guest, iteration, opts)
    attempts = 0

    def on_retry(n: int, elapsed: float) -> None:
        nonlocal attempts
        attempts = n
        if opts.retry_log_every and n > 1 and n % opts.retry_log_every == 0:
            log(f"{guest.label} #{iteration}: waiting for the agent, attempt {n}, {elapsed:.1f}s")

    with LinuxVm(cfg) as vm:
        hello = vm.wait_for_agent(opts.timeout_secs, on_retry)
        t = vm.times
        assert t is not None
        total = (t.agent_ready_ns - t.spawned_ns) / 1e9
        rss = vm.rss_bytes() if opts.measure_rss else None
        # Everything below happens after the measured interval.
        dmesg = _guest_shell(vm, "dmesg", opts.guest_log_timeout_secs)
        phases = phases_from(vm, dmesg)
        body, guest_log = _after_ready(vm, opts)
    return BootSample(guest.label, iteration, total, phases, hello.release, rss, body, guest_log,
                      str(serial) if serial else None, attempts)


def restore_once(guest: BenchGuest, iteration: int, opts: BenchOptions) -> BootSample:
    """QEMU spawned → restored from the guest's template, agent answering, clock and RNG refreshed."""
    cfg, serial = _sample_config(guest, iteration, opts)
    with restore_from_template(cfg, timeout=opts.timeout_secs, known_sha256=guest.sha256) as vm:
        t, r = vm.times, vm.restore_times
        assert t is not None and r is not None
        total = (r.synced_ns - t.spawned_ns) / 1e9
        rss = vm.rss_bytes() if opts.measure_rss else None
        phases: dict[str, float | None] = {"vmm": (r.load_started_ns - t.spawned_ns) / 1e9,
                                           "load": (r.loaded_ns - r.load_started_ns) / 1e9,
                                           "agent": (r.synced_ns - r.loaded_ns) / 1e9}
        body, guest_log = _after_ready(vm, opts)
    return BootSample(guest.label, iteration, total, phases, t.hello.release, rss, body, guest_log,
                      str(serial) if serial else None, mode=RESTORED)


def prepare_template(guest: BenchGuest, opts: BenchOptions) -> TemplateBuild | None:
    """Make a restored guest's template before the measured samples (None: it was already there)."""
    cfg, _ = _sample_config(guest, 0, replace(opts, serial_log_dir=None))
    template = template_for(cfg, guest.sha256)
    return ensure_template(template, cfg, timeout=opts.timeout_secs)[1]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "guest"


def interleave(guests: Sequence[BenchGuest], iterations: int) -> Iterable[tuple[BenchGuest, int]]:
    """A B A B …: every round boots each guest once."""
    for i in range(1, iterations + 1):
        for g in guests:
            yield g, i


def run_bench(guests: Sequence[BenchGuest], opts: BenchOptions,
              on_sample: Callable[[BootSample], None] = lambda s: None,
              log: Callable[[str], None] = lambda s: None,
              boot: Callable[[BenchGuest, int, BenchOptions, Callable[[str], None]], BootSample] | None = None,
              ) -> list[GuestResult]:
    labels = [g.label for g in guests]
    if len(set(labels)) != len(labels):
        raise InvalidConfigError(f"benchmark guests need distinct labels: {labels}")
    results = {g.label: GuestResult(g.label, group=g.group or g.label, mode=g.mode) for g in guests}
    for g in guests:
        if g.restore and boot is None:
            results[g.label].template = built = prepare_template(g, opts)
            log(f"{g.label}: template " + (f"made in {built.seconds:.1f} s ({built.disk_bytes / 2**20:.0f} MiB)"
                                           if built else "found in the cache"))
    do_boot = boot or boot_once
    for guest, i in interleave(guests, opts.iterations):
        sample = do_boot(guest, i, opts, log)
        results[guest.label].samples.append(sample)
        on_sample(sample)
    return [results[g.label] for g in guests]


def host_info() -> dict[str, Any]:
    """What the figures were measured on (Firecracker practice: every figure with its machine)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
            "cpu": cpu, "cpus": os.cpu_count(), "loadavg": os.getloadavg()}


def summary_json(results: Sequence[GuestResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in results:
        out[r.label] = {
            "total_s": asdict(r.total()),
            "mode": r.mode,
            "phases_s": {p: asdict(s) if (s := r.phase(p)) else None for p in (*ALL_PHASES, "kernel+init")},
            "rss_bytes": asdict(s) if (s := r.rss()) else None,
            "template": {**asdict(r.template), "path": str(r.template.path)} if r.template else None,
        }
    if len(results) == 2:
        a, b = results
        out["ratio_of_medians"] = {"numerator": a.label, "denominator": b.label,
                                   "value": a.total().median / b.total().median}
    return out


def to_json(results: Sequence[GuestResult], opts: BenchOptions, accel: str | None = None) -> dict[str, Any]:
    return {
        "schema": "vz-linux-bench/1",
        "host": host_info(),
        "accel": accel,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "samples": [asdict(s) for r in results for s in r.samples],
        "summary": summary_json(results),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())
