"""``vz-linux-bench --plot FILE``: a benchmark run as a picture (PNG or SVG, by the file's suffix).

One row per bundle (``--compare`` adds a second). Left: every boot as one bar stacked by its phases,
cold boots first, then restored ones, in the order they ran. Right: the distribution of the totals
per mode side by side (a box over every sample, each sample a dot). A phase keeps its colour across
pictures, so two runs compare by looking. In SVG every bar segment has an id
``bar-<mode>-<group index>-<iteration>-<phase>`` and text stays text (searchable, testable).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fsutil import publish_file
from ..vm.bench import ALL_PHASES, GuestResult

FORMATS = (".png", ".svg")
OTHER = "other"  # what a sample's known phases do not cover (e.g. no dmesg timestamp was found)
PHASE_COLOURS = {"vmm": "#8da0cb", "load": "#e78ac3", "kernel": "#66c2a5", "init": "#fc8d62",
                 "agent": "#a6d854", OTHER: "#b3b3b3"}
MODE_COLOURS = {"cold": "#4c72b0", "restored": "#dd8452"}


def check_plot_path(path: Path) -> None:
    """Raise ValueError unless ``path`` names a format we draw (checked before a run starts)."""
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: the picture's name must end in {' or '.join(FORMATS)}")


def _segments(result: GuestResult) -> list[dict[str, float]]:
    """Per sample, ms per phase in ALL_PHASES order plus OTHER, summing to the sample's total."""
    out = []
    for s in result.samples:
        seg = {p: v * 1000 for p in ALL_PHASES if (v := s.phases.get(p)) is not None}
        rest = s.total_s * 1000 - sum(seg.values())
        if rest >= 1.0:  # below a millisecond it is rounding between clocks, not a missing phase
            seg[OTHER] = rest
        out.append(seg)
    return out


def _bars(ax: Any, series: Sequence[GuestResult], row: int) -> None:
    x = 0
    ticks: list[tuple[int, str]] = []
    drawn: set[str] = set()
    for result in series:
        for sample, seg in zip(result.samples, _segments(result), strict=True):
            bottom = 0.0
            for phase, ms in seg.items():
                if ms <= 0:
                    continue
                ax.bar(x, ms, bottom=bottom, color=PHASE_COLOURS[phase], edgecolor="white", linewidth=0.4,
                       label=phase if phase not in drawn else None,
                       gid=f"bar-{result.mode}-{row}-{sample.iteration}-{phase}")
                drawn.add(phase)
                bottom += ms
            ticks.append((x, f"{result.mode[0]}{sample.iteration}"))
            x += 1
        x += 1  # a gap between cold and restored boots
    ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=7)
    ax.set_ylabel("spawn → agent ready (ms)")
    ax.set_xlabel("boot (c = cold, r = restored from a template), in the order run")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: [*ALL_PHASES, OTHER].index(labels[i]))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, ncols=3, loc="upper right")


def _distribution(ax: Any, series: Sequence[GuestResult]) -> None:
    totals = [[s.total_s * 1000 for s in r.samples] for r in series]
    box = ax.boxplot(totals, widths=0.5, patch_artist=True, showfliers=False)
    for patch, r in zip(box["boxes"], series, strict=True):
        patch.set_facecolor(MODE_COLOURS.get(r.mode, "#cccccc"))
        patch.set_alpha(0.45)
    for i, (values, r) in enumerate(zip(totals, series, strict=True), start=1):
        spread = [i + 0.12 * ((k % 5) - 2) / 2 for k in range(len(values))]  # a little sideways, no overlap
        ax.scatter(spread, values, s=12, color=MODE_COLOURS.get(r.mode, "#333333"), zorder=3)
        median = r.total().median * 1000
        ax.annotate(f"p50 {median:.0f} ms", (i, median), xytext=(6, 0), textcoords="offset points", fontsize=7)
    ax.set_xticks(range(1, len(series) + 1), [f"{r.mode}\nn={len(r.samples)}" for r in series])
    ax.set_ylabel("total (ms)")
    ax.set_ylim(bottom=0)


def plot_results(results: Sequence[GuestResult], path: Path, *, title: str = "") -> None:
    """Draw ``results`` into ``path`` (PNG or SVG), written atomically."""
    check_plot_path(path)
    # Deferred: matplotlib is slow to import; only a run that asks for a plot pays for it.
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    from matplotlib import pyplot as plt

    groups = list(dict.fromkeys(r.group or r.label for r in results))
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 3.8 * len(groups)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]})
    for row, group in enumerate(groups):
        series = [r for r in results if (r.group or r.label) == group]
        _bars(axes[row][0], series, row)
        _distribution(axes[row][1], series)
        axes[row][0].set_title(group, fontsize=9, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        with publish_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lower()[1:], dpi=110)
    finally:
        plt.close(fig)
