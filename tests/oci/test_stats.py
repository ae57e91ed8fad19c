"""`vz oci stats` parsing of the guest's lines (hostile input) and the figures made from two samples."""

from __future__ import annotations

import pytest

from vz_linux.errors import StatsError
from vz_linux.oci.state import ContainerState
from vz_linux.oci.stats import Sample, _figures, parse_guest

GOOD = ("cgroup present\ncpu.usage_usec 2000000\ncpu.user_usec 1\ncpu.system_usec 2\npids.current 3\n"
        "rss.kib 1024\nrss.procs 3\n")


def test_parse_good_lines() -> None:
    g = parse_guest(GOOD)
    assert g == {"cgroup": 1, "cpu.usage_usec": 2000000, "cpu.user_usec": 1, "cpu.system_usec": 2,
                 "pids.current": 3, "rss.kib": 1024, "rss.procs": 3}
    assert parse_guest("cgroup none\n") == {"cgroup": 0}


@pytest.mark.parametrize("text", [
    "", "cpu.usage_usec 1\n",  # says nothing about the cgroup
    "cgroup present\nrm.rf 1\n",  # an invented key
    "cgroup present\ncpu.usage_usec -5\n", "cgroup present\ncpu.usage_usec 1e9\n",
    "cgroup present\ncpu.usage_usec " + "9" * 40 + "\n",  # beyond 2^62
    "cgroup present\ncpu.usage_usec 1 2\n",
    "cgroup present\n" + "rss.kib 1\n" * 100,  # endless lines
])
def test_malformed_guest_stats_are_refused(text: str) -> None:
    with pytest.raises(StatsError):
        parse_guest(text)


def test_figures_from_two_samples() -> None:
    state = ContainerState(id="0123456789ab", name="n", image="i", rootfs="/r", profile="container",
                           args=("x",), env=(), cwd="/", memory_mib=256)
    first = Sample(parse_guest(GOOD), 100 << 20, at=10.0)
    last = Sample(parse_guest(GOOD.replace("2000000", "2500000").replace("1024", "41984")), 150 << 20, at=11.0)
    f = _figures(state, "running", first, last)
    assert f.cpu_percent == 50.0 and f.cpu_usage_usec == 2500000
    assert f.memory_bytes == 41984 * 1024 and f.memory_source == "vmrss"
    assert f.vm_rss_bytes == 150 << 20 and f.vm_memory_bytes == 256 << 20
    with_memcg = Sample(parse_guest(GOOD + "memory.current 7\n"), 1, at=12.0)
    assert _figures(state, "running", None, with_memcg).memory_source == "cgroup"
    gone = _figures(state, "exited", None, None)
    assert gone.memory_bytes is None and gone.memory_source == "none" and gone.cpu_percent is None


def test_cpu_stat_fields_of_newer_kernels_are_passed_over_but_others_still_refused() -> None:
    # 6.12's cpu.stat has nice_usec, which 6.1's does not: not an attack, not shown.
    g = parse_guest("cgroup present\ncpu.usage_usec 10\ncpu.nice_usec 0\n")
    assert g["cpu.usage_usec"] == 10 and "cpu.nice_usec" not in g
    for bad in ("cpu.NICE 0", "cpu.nice_usec 1 2", "memory.peak 5", "cpu./../x 1"):
        with pytest.raises(StatsError):
            parse_guest(f"cgroup present\n{bad}\n")
