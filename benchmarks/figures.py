"""Named figures as data: every benchmark figure has a name, a unit, a value and the machine it ran on.

Modelled on Firecracker's ``metrics`` fixture: a benchmark (or its smoke test, through the
``metrics`` fixture in tests/conftest.py) puts figures into a :class:`Figures`; each is printed as
one ``name: value unit`` line and can be written as JSON lines, so runs on different days or
machines are compared by name. Percentiles are :func:`vz_linux.vm.bench.percentile` (nearest rank),
the same definition ``vz-linux-bench`` uses. docs/benchmarks.md describes the record.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vz_linux.clock import utc_timestamp
from vz_linux.vm.bench import host_info, percentile


@dataclass(frozen=True)
class Figure:
    name: str  # snake_case, stable across runs: what comparisons join on
    value: float
    unit: str  # "ms", "s", "bytes", "MiB", "count", "ratio"
    machine: dict[str, Any]  # vz_linux.vm.bench.host_info() when it was measured
    n: int = 1  # samples behind the value
    dimensions: dict[str, str] = field(default_factory=dict)  # e.g. {"test": nodeid, "arch": "arm64"}
    when: str = field(default_factory=utc_timestamp)

    def line(self) -> str:
        value = f"{self.value:.3f}".rstrip("0").rstrip(".") if isinstance(self.value, float) else str(self.value)
        samples = f" (n={self.n})" if self.n > 1 else ""
        return f"{self.name}: {value} {self.unit}{samples}"


@dataclass
class Figures:
    """The figures of one run; ``echo`` prints each as it is put."""

    dimensions: dict[str, str] = field(default_factory=dict)
    echo: bool = True
    figures: list[Figure] = field(default_factory=list)
    _machine: dict[str, Any] = field(default_factory=host_info)

    def put(self, name: str, value: float, unit: str, *, n: int = 1) -> Figure:
        fig = Figure(name, value, unit, self._machine, n, dict(self.dimensions))
        self.figures.append(fig)
        if self.echo:
            print(fig.line(), flush=True)
        return fig

    def put_samples(self, name: str, samples_ms: Iterable[float]) -> None:
        """``<name>_p50`` and ``<name>_p95`` in ms over the samples (nearest rank)."""
        ordered = sorted(samples_ms)
        if not ordered:
            raise ValueError(f"{name}: no samples")
        self.put(f"{name}_p50", statistics.median(ordered), "ms", n=len(ordered))
        self.put(f"{name}_p95", percentile(ordered, 95), "ms", n=len(ordered))

    def get(self, name: str) -> Figure:
        matches = [f for f in self.figures if f.name == name]
        if not matches:
            raise KeyError(f"no figure named {name!r}; have {sorted(f.name for f in self.figures)}")
        return matches[-1]

    def write_jsonl(self, path: Path) -> None:
        """Append every figure as one JSON object per line."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for fig in self.figures:
                f.write(json.dumps(asdict(fig), sort_keys=True) + "\n")


def time_ms(fn: Callable[[], object], n: int) -> list[float]:
    """Wall time of ``n`` calls of ``fn``, in milliseconds."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out
