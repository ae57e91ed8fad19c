"""``vz oci stats``: per container CPU and memory from the guest's cgroup, and QEMU's RSS on the host.

Each container runs in its own cgroup v2, ``/sys/fs/cgroup/vz/<id>`` in its VM (crun's cgroupfs
manager, :func:`.guest.cgroup_path`): CPU time is its ``cpu.stat`` (the cgroup core keeps it without
any controller). Neither kernel profile has the memory controller (``CONFIG_MEMCG`` is off), so
without ``memory.current`` the memory figure is the sum of ``VmRSS`` over the cgroup's processes and
says so: ``memory_source`` is ``cgroup`` or ``vmrss``. The VM's own cost on the host is QEMU's
``VmRSS`` (``vm_rss_bytes``). The guest's lines are hostile input: a fixed set of keys, bounded
integers, anything else refused (:class:`~vz_linux.errors.StatsError`).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ContainerStateError, StatsError
from . import supervisor
from .config import RuntimeConfig
from .container import store_for
from .state import LIVE, ContainerState

_KEYS = {"cgroup", "cpu.usage_usec", "cpu.user_usec", "cpu.system_usec", "cpu.nr_periods", "cpu.nr_throttled",
         "cpu.throttled_usec", "cpu.nr_bursts", "cpu.burst_usec", "memory.current", "pids.current",
         "rss.kib", "rss.procs"}
_OTHER_CPU_KEY = re.compile(r"cpu\.[a-z][a-z_.]{0,39}")
_MAX_LINES = 64
_MAX_VALUE = 1 << 62


def parse_guest(text: str) -> dict[str, int]:
    """``key value`` lines from :func:`.guest.stats_script`; ``cgroup`` is 1 (present) or 0 (none)."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    if len(lines) > _MAX_LINES:
        raise StatsError(f"the guest sent {len(lines)} lines of stats (at most {_MAX_LINES})")
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0] not in _KEYS and _OTHER_CPU_KEY.fullmatch(parts[0]):
            continue  # a cpu.stat field of another kernel version (6.12 adds nice_usec): not shown
        if len(parts) != 2 or parts[0] not in _KEYS:
            raise StatsError(f"the guest sent a malformed stats line {line[:80]!r}")
        key, value = parts
        if key == "cgroup":
            out[key] = 1 if value == "present" else 0
            continue
        if not value.isdigit() or int(value) > _MAX_VALUE:
            raise StatsError(f"the guest sent a bad value for {key}: {value[:40]!r}")
        out[key] = int(value)
    if "cgroup" not in out:
        raise StatsError("the guest's stats do not say whether the container's cgroup exists")
    return out


@dataclass(frozen=True)
class Sample:
    guest: dict[str, int]
    vm_rss_bytes: int
    at: float  # host monotonic seconds


@dataclass(frozen=True)
class ContainerStats:
    id: str
    name: str
    status: str
    cpus: int
    cpu_usage_usec: int | None
    cpu_percent: float | None  # of one CPU, over the sampling interval (up to cpus * 100)
    memory_bytes: int | None
    memory_source: str  # "cgroup" (memory.current) | "vmrss" (sum over the cgroup's processes) | "none"
    pids: int | None
    vm_memory_bytes: int  # the VM's configured RAM
    vm_rss_bytes: int | None  # QEMU's resident memory on the host

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sample(cfg: RuntimeConfig, state: ContainerState, timeout: float = 60.0) -> Sample:
    cdir = store_for(cfg).dir(state.id)
    with contextlib.closing(supervisor.request(cdir, {"op": "stats"}, timeout=timeout)) as replies:
        reply = next(replies, None)
    if reply is None or not reply.get("ok"):
        raise ContainerStateError(f"no stats from the supervisor of {state.name}: "
                                  f"{(reply or {}).get('error', 'it closed the connection')}")
    guest_text = reply.get("guest")
    rss = reply.get("vm_rss_bytes")
    if not isinstance(guest_text, str) or not isinstance(rss, int) or rss < 0:
        raise StatsError(f"malformed stats reply from the supervisor of {state.name}")
    return Sample(parse_guest(guest_text[:16384]), rss, float(reply.get("sampled_monotonic") or time.monotonic()))


def _figures(state: ContainerState, status: str, first: Sample | None, last: Sample | None) -> ContainerStats:
    g = last.guest if last is not None else {}
    usage = g.get("cpu.usage_usec") if g.get("cgroup") else None
    percent = None
    if first is not None and last is not None and usage is not None and last.at > first.at:
        before = first.guest.get("cpu.usage_usec", 0)
        percent = round(max(0, usage - before) / 1e6 / (last.at - first.at) * 100, 1)
    if "memory.current" in g:
        memory, source = g["memory.current"], "cgroup"
    elif g.get("cgroup"):
        memory, source = g.get("rss.kib", 0) * 1024, "vmrss"
    else:
        memory, source = None, "none"
    return ContainerStats(
        id=state.id, name=state.name, status=status, cpus=state.cpus, cpu_usage_usec=usage,
        cpu_percent=percent, memory_bytes=memory, memory_source=source, pids=g.get("pids.current"),
        vm_memory_bytes=state.memory_mib << 20, vm_rss_bytes=last.vm_rss_bytes if last else None)


def _try_sample(cfg: RuntimeConfig, state: ContainerState) -> Sample | None:
    """A sample, or None for a container whose VM is not (or no longer) up: booting, ended meanwhile."""
    if store_for(cfg).effective_status(store_for(cfg).read(state.id)) not in LIVE:
        return None
    try:
        return sample(cfg, state)
    except ContainerStateError:
        return None


def collect(cfg: RuntimeConfig, refs: Sequence[str] = (), interval: float = 1.0) -> list[ContainerStats]:
    """Two samples ``interval`` apart (CPU % is their difference); without ``refs``, every live container."""
    store = store_for(cfg)
    states = [store.find(r) for r in refs] if refs else [s for s in store.list()
                                                           if store.effective_status(s) in LIVE]
    first = {s.id: _try_sample(cfg, s) for s in states}
    if any(first.values()) and interval > 0:
        time.sleep(interval)
    out = []
    for s in states:
        last = _try_sample(cfg, s) if first[s.id] is not None else None
        status = store.effective_status(store.read(s.id)).value
        out.append(_figures(s, status, first[s.id], last))
    return out
