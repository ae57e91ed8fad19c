#!/usr/bin/env python3
"""Start-up figures: ``import vz_linux`` and the CLI's ``--version``/``--help``, A/B against another tree.

Usage: .venv/bin/python benchmarks/startup.py [--iterations N] [--baseline-src DIR] [--figures FILE]

Each case is a fresh interpreter (this venv's python) with ``PYTHONPATH`` set to the tree's ``src``,
so both trees run with the same interpreter and installed dependencies; with ``--baseline-src``
(e.g. /work/main/src) the cases of both trees are interleaved, one of each per iteration, so they
see the same load. A case runs what the console script runs (``from MODULE import main; main()``):

* python_floor         — ``python -c pass``: the interpreter alone, for scale;
* import_vz_linux      — ``import vz_linux``;
* vz_linux_version     — ``vz-linux --version``;
* vz_version           — ``vz --version``;
* vz_linux_help        — ``vz-linux --help``;

each as ``<case>_p50``/``_p95`` in ms of wall time and ``<case>_cpu_p50`` in ms of CPU time (user +
system: less sensitive to what else the machine runs), ``<case>_baseline_…`` for the other tree, plus
``import_vz_linux_modules`` (modules loaded by ``import vz_linux``, a count) and, with a baseline,
``<case>_speedup`` (baseline p50 / this p50). Prints one named figure per line (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.figures

from benchmarks.figures import Figures

THIS_SRC = Path(__file__).resolve().parents[1] / "src"
CASES = ("python_floor", "import_vz_linux", "vz_linux_version", "vz_version", "vz_linux_help")


def _vz_root(src: Path) -> str:
    # Where `vz`'s console script points in that tree (its root moved to cli/vz_main.py).
    return "vz_linux.cli.vz_main" if (src / "vz_linux" / "cli" / "vz_main.py").is_file() else "vz_linux.cli.vz"


def case_argv(case: str, src: Path) -> list[str]:
    """The interpreter command line of ``case`` for the tree ``src``."""
    code = {
        "python_floor": "pass",
        "import_vz_linux": "import vz_linux",
        "vz_linux_version": "from vz_linux.cli.main import main; main(['--version'])",
        "vz_version": f"from {_vz_root(src)} import main; main(['--version'])",
        "vz_linux_help": "from vz_linux.cli.main import main; main(['--help'])",
    }[case]
    return [sys.executable, "-c", code]


def _env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)  # ahead of the editable install's path
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run_ms(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) time of one run, in ms."""
    c0, t0 = _cpu_s(), time.perf_counter()
    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ms, cpu_ms = (time.perf_counter() - t0) * 1000, (_cpu_s() - c0) * 1000
    if r.returncode != 0:
        raise RuntimeError(f"{argv} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return ms, cpu_ms


def module_count(src: Path) -> int:
    """How many modules ``import vz_linux`` leaves in ``sys.modules`` (beyond a bare interpreter)."""
    code = "import sys; before = len(sys.modules); import vz_linux; print(len(sys.modules) - before)"
    out = subprocess.run([sys.executable, "-c", code], env=_env(src), capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def measure(figures: Figures, iterations: int, baseline_src: Path | None = None,
            src: Path = THIS_SRC) -> dict[str, float]:
    """Put every figure into ``figures``; returns each case's p50 in ms (``<case>`` and, with a
    baseline, ``<case>_baseline``). The coordinator's entry point."""
    trees: dict[str, Path] = {"": src}
    if baseline_src is not None:
        trees["_baseline"] = baseline_src
    for tree in trees.values():  # compile .pyc once so no sample pays for it
        for case in CASES:
            _run_ms(case_argv(case, tree), _env(tree))
    wall: dict[str, list[float]] = {f"{c}{t}": [] for c in CASES for t in trees}
    cpu: dict[str, list[float]] = {name: [] for name in wall}
    for _ in range(iterations):
        for case in CASES:
            for suffix, tree in trees.items():
                ms, cpu_ms = _run_ms(case_argv(case, tree), _env(tree))
                wall[f"{case}{suffix}"].append(ms)
                cpu[f"{case}{suffix}"].append(cpu_ms)
    p50: dict[str, float] = {}
    for name, values in wall.items():
        figures.put_samples(name, values)
        p50[name] = figures.get(f"{name}_p50").value
        figures.put(f"{name}_cpu_p50", round(statistics.median(cpu[name]), 1), "ms", n=len(cpu[name]))
    figures.put("import_vz_linux_modules", module_count(src), "count")
    if baseline_src is not None:
        figures.put("import_vz_linux_modules_baseline", module_count(baseline_src), "count")
        for case in CASES[1:]:
            figures.put(f"{case}_speedup", round(p50[f"{case}_baseline"] / p50[case], 2), "ratio")
    return p50


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--baseline-src", type=Path, help="another tree's src/ (e.g. /work/main/src), interleaved")
    ap.add_argument("--figures", type=Path, help="also append the figures to this JSON-lines file")
    args = ap.parse_args()
    if args.baseline_src is not None and not (args.baseline_src / "vz_linux" / "__init__.py").is_file():
        ap.error(f"--baseline-src {args.baseline_src}: no vz_linux package there")
    figures = Figures()
    print(f"load {os.getloadavg()[0]:.2f}")
    measure(figures, args.iterations, args.baseline_src)
    if args.figures:
        figures.write_jsonl(args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
