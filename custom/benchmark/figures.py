"""Benchmark figures (PNG, matplotlib's Agg backend): learning curves, paired differences, Dice against noise level.

Every function returns the path it wrote, or None when there is nothing to draw or matplotlib is missing (the
``plot`` extra: ``pip install -e ".[plot]"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom.io import atomic_output

__all__ = ["method_colours", "plot_learning_curves", "plot_paired_differences", "plot_dice_vs_noise"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def method_colours(methods: Sequence[str]) -> dict[str, Any]:
    """One distinct colour per method (tab20, in the order given; no two methods share one for <= 20 methods)."""
    plt = _pyplot()
    if plt is None:
        return {}
    cmap = plt.get_cmap("tab20")
    # even indices first (the saturated halves of tab20's pairs), then the light ones
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {m: cmap(order[i % 20]) for i, m in enumerate(methods)}


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _label_axes(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save_and_close(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def _mean_curve(curves: Sequence[Sequence[Mapping[str, float]]], x: str, y: str) -> tuple[list[float], list[float]]:
    """Mean of ``y`` over the curves at each ``x`` that every curve has."""
    points: dict[float, list[float]] = {}
    for curve in curves:
        for row in curve:
            if row.get(x) is not None and row.get(y) is not None:
                points.setdefault(row[x], []).append(row[y])
    xs = sorted(k for k, v in points.items() if len(v) == len(curves))
    return xs, [sum(points[k]) / len(points[k]) for k in xs]


_BASELINE_COLOURS = ("black", "tab:gray", "darkgoldenrod")


def _panels(
    methods: Sequence[str], families: Mapping[str, str] | None, baselines: Sequence[str]
) -> list[tuple[str, list[str]]]:
    """``[(family, its methods)]`` in the order the families first appear in ``methods``, baselines left out (they
    are drawn in every panel); one panel ``""`` of every method without ``families``."""
    if not families:
        return [("", [m for m in methods if m not in baselines])]
    panels: dict[str, list[str]] = {}
    for method in methods:
        if method not in baselines:
            panels.setdefault(families.get(method, ""), []).append(method)
    return list(panels.items())


def _draw_curves(ax, group_runs: Sequence[Mapping[str, Any]], colour, label: str, style: str, width: float) -> bool:
    """Each seed's validation curve thin and the mean over seeds bold; whether anything was drawn."""
    group = [r for r in group_runs if r.get("validation_curve")]
    if not group:
        return False
    for run in group:
        xs = [p["iteration"] for p in run["validation_curve"]]
        ys = [p.get("val_mean_dice") for p in run["validation_curve"]]
        ax.plot(xs, ys, style, color=colour, alpha=0.2, linewidth=0.7)
    xs, ys = _mean_curve([r["validation_curve"] for r in group], "iteration", "val_mean_dice")
    ax.plot(xs, ys, style, color=colour, linewidth=width, label=f"{label} (n={len(group)})")
    return True


def plot_learning_curves(
    runs: Sequence[Mapping[str, Any]],
    setting: str,
    methods: Sequence[str],
    labels: Mapping[str, str],
    path: Path,
    families: Mapping[str, str] | None = None,
    family_titles: Mapping[str, str] | None = None,
    baselines: Sequence[str] = (),
    min_seeds: int = 1,
) -> Path | None:
    """Small multiples of the learning curves of ``setting``: one row per method family, the baselines in every row.

    Left: validation Dice per iteration (mean over seeds bold, each seed thin; the baselines dashed). Right, where a
    family logs label quality: the noisy- (dotted) and refined-label (solid) Dice against clean labels per iteration.
    Within a row every method has its own colour; the row's legend sits right of its panels, outside the data.

    Args:
        runs: run records of :func:`custom.benchmark.results.collect_runs`.
        methods: the methods to draw, in order.
        labels: display names.
        path: PNG to write.
        families: method -> family (None: one row of every method).
        family_titles: family -> the row's title.
        baselines: methods drawn in every row.
        min_seeds: methods with fewer runs in the setting (one-seed tuning and diagnostic runs) are left out.
    """
    plt = _pyplot()
    if plt is None:
        return None
    chosen = [r for r in runs if r["setting"] == setting]
    methods = [m for m in methods if sum(r["method"] == m for r in chosen) >= max(1, int(min_seeds))]
    chosen = [r for r in chosen if r["method"] in methods]
    panels = [(f, ms) for f, ms in _panels(methods, families, baselines) if ms]
    present_baselines = [b for b in baselines if b in methods]
    if not chosen or not (panels or present_baselines):
        return None
    panels = panels or [("", [])]
    quality = [[m for m in ms if any(r["method"] == m and r.get("label_quality") for r in chosen)] for _, ms in panels]
    ncols = 2 if any(quality) else 1
    fig, axes = plt.subplots(len(panels), ncols, figsize=(6.5 * ncols + 3.2, 3.6 * len(panels)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    palette = [cmap(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # tab10 without its grey (a baseline's colour)
    for row, ((family, members), with_quality) in enumerate(zip(panels, quality)):
        colours = {m: palette[i % len(palette)] for i, m in enumerate(members)}
        ax = axes[row][0]
        for i, base in enumerate(present_baselines):
            colour = _BASELINE_COLOURS[i % len(_BASELINE_COLOURS)]
            _draw_curves(ax, [r for r in chosen if r["method"] == base], colour, labels.get(base, base), "--", 1.6)
        for method in members:
            _draw_curves(ax, [r for r in chosen if r["method"] == method], colours[method],
                         labels.get(method, method), "-", 2.0)
        title = (family_titles or {}).get(family, family) or "methods"
        ax.set_title(f"{setting}: {title}", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("validation Dice")
        ax.grid(alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        if ncols == 2:
            qax = axes[row][1]
            for method in with_quality:
                group = [r for r in chosen if r["method"] == method and r.get("label_quality")]
                for column, style in (("noisy_dice", ":"), ("refined_dice", "-")):
                    xs, ys = _mean_curve([r["label_quality"] for r in group], "iteration", column)
                    if xs:
                        qax.plot(xs, ys, style, color=colours[method])
            if with_quality:
                qax.set_title("training-label Dice vs clean (dotted: noisy, solid: refined)", fontsize=9)
                qax.set_xlabel("iteration")
                qax.set_ylabel("label Dice (LQ patches)")
                qax.grid(alpha=0.3)
            else:
                qax.axis("off")
        if handles:
            axes[row][-1].legend(handles, names, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                                 frameon=False)
    fig.suptitle(f"{setting}: learning curves (bold: mean over seeds; dashed: the baselines)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")  # the legends lie outside the axes
    plt.close(fig)
    return path


def plot_paired_differences(
    setting_results: Mapping[str, Any], setting: str, labels: Mapping[str, str], path: Path
) -> Path | None:
    """One row per method: its paired difference to HL-Sup (mean, 95% interval), with the zero line."""
    plt = _pyplot()
    if plt is None:
        return None
    rows = [
        (m, e["diff_to_hl_sup"]) for m, e in setting_results["methods"].items() if e.get("diff_to_hl_sup") is not None
    ]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    colour = {"better": "tab:green", "worse": "tab:red", "not resolved": "tab:gray"}
    for i, (method, d) in enumerate(reversed(rows)):
        ax.errorbar(
            d["mean"],
            i,
            xerr=[[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]],
            fmt="o",
            color=colour[d["verdict"]],
            capsize=3,
        )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([labels.get(m, m) for m, _ in reversed(rows)], fontsize=8)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_xlabel("test Dice - HL-Sup's (paired per case and seed; 95% bootstrap interval)")
    ax.set_title(f"{setting}: difference to HL-Sup (green/red: resolved, grey: not resolved)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _save_and_close(plt, fig, path)


def plot_dice_vs_noise(
    results: Mapping[str, Any],
    settings: Sequence[tuple[str, float]],
    methods: Sequence[str],
    labels: Mapping[str, str],
    path: Path,
    xlabel: str,
) -> Path | None:
    """Mean test Dice (+- std over seeds) against the noise level, for a family run at two or more levels."""
    plt = _pyplot()
    if plt is None:
        return None
    present = [(name, level) for name, level in settings if name in results["settings"]]
    if len(present) < 2:
        return None
    colours = method_colours(methods)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    drawn = False
    for method in methods:
        pts = []
        for name, level in present:
            entry = results["settings"][name]["methods"].get(method)
            if entry and entry.get("dice_mean") is not None:
                pts.append((level, entry["dice_mean"], entry.get("dice_std") or 0.0))
        if len(pts) >= 2:
            pts.sort()
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                capsize=2,
                color=colours[method],
                label=labels.get(method, method),
            )
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    _label_axes(ax, xlabel, "test Dice (mean +- std over seeds)")
    return _save_and_close(plt, fig, path)
