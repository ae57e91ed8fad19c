"""Shared by the benchmark scripts: time a call repeatedly and print a named figure."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_ms(fn: Callable[[], object], n: int) -> list[float]:
    """Wall time of ``n`` calls of ``fn``, in milliseconds."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def report(name: str, samples: list[float], digits: int = 3) -> None:
    p95 = statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else samples[0]
    print(f"{name}: median {statistics.median(samples):.{digits}f} ms, p95 {p95:.{digits}f} ms, n={len(samples)}")
