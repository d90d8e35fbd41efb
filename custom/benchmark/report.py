"""The benchmark's markdown report, generated from the results document of :mod:`custom.benchmark.results`.

The tables hold exactly the numbers of ``benchmark_results.json`` (the same dictionary is written to both), so the
two never disagree. Ties are judged by the paired interval: a difference whose 95% interval contains 0 is written
"not resolved", never as a win.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom.benchmark.timing import format_number
from custom.io import atomic_output

__all__ = ["format_difference", "audit_ranking_table", "setting_tables", "write_markdown"]

PM = "\u00b1"


def format_difference(diff: Mapping[str, Any] | None) -> str:
    """``+0.052 [+0.013, +0.091] better (15/20)`` or ``-`` when there is no comparison."""
    if not diff:
        return "-"
    return (
        f"{diff['mean']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}] {diff['verdict']} "
        f"({diff['cases_better']}/{diff['n_cases']})"
    )


def _mean_std(figure: Mapping[str, Any] | None) -> str:
    if not figure or figure.get("mean") is None:
        return "-"
    std = f" {PM} {figure['std']:.3f}" if figure.get("std") is not None else ""
    return f"{figure['mean']:.3f}{std}"


def audit_ranking_table(rankings: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """Markdown lines of the label-audit ranking table (our score vs cleanlab's, mean +- std over seeds); no lines
    when ``rankings`` is empty."""
    if not rankings:
        return []
    lines = [
        "Label audit ranking of the LQ training cases (ours vs cleanlab's label-quality score on the same "
        "probabilities; mean " + PM + " std over seeds; AUC: corrupted vs untouched, top-k: precision of the k most "
        "suspicious with k = number corrupted, Spearman: score vs 1 - noisy-label Dice, higher is better for all):",
        "",
        "| method | audit score | seeds | AUC ours | AUC cleanlab | top-k ours | top-k cleanlab | Spearman ours "
        "| Spearman cleanlab |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in rankings.items():
        ours, cleanlab = r.get("audit") or {}, r.get("cleanlab") or {}
        cells = [
            f"{_mean_std(ours.get(metric))} | {_mean_std(cleanlab.get(metric))}"
            for metric in ("auc", "top_k_precision", "spearman")
        ]
        lines.append(
            f"| {labels.get(method, method)} | {r.get('score_name', '-')} | {r.get('n_seeds', '-')} | "
            + " | ".join(cells) + " |"
        )
    return [*lines, ""]


def setting_tables(name: str, setting: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """Markdown lines for one setting: the protocol checks, the results table, the other-baseline table and, where
    the runs have audit rankings, the label-audit ranking table."""
    lines = [f"### Setting `{name}` ({setting['n_test_cases']} test cases)", ""]
    gap = setting.get("noise_gap")
    if gap:
        lines.append(
            f"- Noise gap clean - HL-Sup: **{gap['clean_minus_hl_sup']:+.3f}** (paired: "
            f"{format_difference(gap.get('paired'))})."
        )
    if setting.get("clean_plateau_delta") is not None:
        per_seed = ", ".join(
            f"seed {c['seed']}: trend {c['trend']:+.4f}, first to last {c['change']:+.4f}, "
            f"spread {format_number(c['spread'], 4)}"
            for c in setting["clean_plateau_per_seed"]
        )
        lines.append(
            "- Plateau of the clean run (validation Dice over the last 25% of iterations; trend = rise of the "
            f"least-squares line through those rounds): largest |trend| over seeds "
            f"**{setting['clean_plateau_delta']:.4f}** ({per_seed})."
        )
    lines += [
        "",
        "| method | Dice (mean " + PM + " std over seeds) | seeds | vs HL-Sup: paired diff [95% CI] (cases better) "
        "| gap recovery | noisy-label Dice | refined-label Dice | LQ volumes before -> after refinement "
        "| worst loss, uncorrupted LQ case | HD95 (mm) | ASD (mm) | s/iter (step) | iteration / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    others = []
    for method, e in setting["methods"].items():
        refinement = (
            f"{e['volume_dice_before']:.3f} -> {e['volume_dice_after']:.3f}"
            if e.get("volume_dice_before") is not None and e.get("volume_dice_after") is not None
            else "-"
        )
        std = f" {PM} {e['dice_std']:.3f}" if e.get("dice_std") is not None else ""
        cells = [
            f"{labels.get(method, method)}",
            f"{format_number(e['dice_mean'], 4)}{std}",
            f"{e['n_seeds']}",
            format_difference(e.get("diff_to_hl_sup")),
            format_number(e.get("gap_recovery"), 2),
            format_number(e.get("noisy_label_dice"), 3),
            format_number(e.get("refined_label_dice"), 3),
            refinement,
            format_number(e.get("uncorrupted_worst_loss"), 3),
            format_number(e.get("hd95_mm_mean"), 2),
            format_number(e.get("asd_mm_mean"), 2),
            format_number(e.get("sec_per_iter"), 3),
            format_number(e.get("iteration_to_step_ratio"), 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        for other, diff in (e.get("diff_to") or {}).items():
            if diff:
                others.append(
                    f"| {labels.get(method, method)} | {labels.get(other, other)} | {format_difference(diff)} |"
                )
    lines.append("")
    if others:
        lines += ["Paired differences to the other baselines:", "", "| method | baseline | paired diff [95% CI] "
                  "(cases better) |", "|---|---|---|", *others, ""]
    lines += audit_ranking_table(setting.get("audit_ranking") or {}, labels)
    return lines


def write_markdown(
    results: Mapping[str, Any],
    path: str | Path,
    labels: Mapping[str, str],
    header: str = "",
    timing: str = "",
    figures: Mapping[str, Sequence[Path]] | None = None,
) -> Path:
    """Write the report: ``header``, the ``timing`` paragraph, then per setting its checks, tables and figures.

    Args:
        results: the results document.
        path: markdown file to write (atomically).
        labels: display names of the methods.
        header: markdown above the tables (protocol, how to read them).
        timing: the measured-time paragraph.
        figures: per setting, the PNGs to link below its tables (paths relative to the report are written).
    """
    path = Path(path)
    lines = [header.rstrip(), ""] if header else []
    if timing:
        lines += [timing, ""]
    primary = results.get("primary_settings", {})
    if primary:
        lines += ["Primary settings: " + ", ".join(f"{k} noise `{v}`" for k, v in primary.items()) + ".", ""]
    for name, setting in results["settings"].items():
        lines += setting_tables(name, setting, labels)
        for fig in (figures or {}).get(name, []):
            rel = os.path.relpath(fig, path.parent)
            lines += [f"![{fig.stem}]({rel})", ""]
    for fig in (figures or {}).get("", []):
        lines += [f"![{fig.stem}]({os.path.relpath(fig, path.parent)})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path
