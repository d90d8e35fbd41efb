"""The benchmark's outputs: the results document, its markdown report and the figures, from the finished runs.

:func:`write_outputs` builds the results document (:mod:`custom.benchmark.results`) from a work folder's runs and
writes it (``benchmark_results.json``), the figures (:mod:`custom.benchmark.figures`) and the report generated from
the same dictionary, so the tables and the JSON never disagree. The methods' labels, families and baselines come from
the runs' own records (:mod:`custom.benchmark.run_record`): an archived variant is reported with no entry in code.
Ties are judged by the paired interval: a difference whose 95% interval contains 0 is written "not resolved", never
as a win.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom.benchmark.figures import plot_dice_vs_noise, plot_learning_curves, plot_paired_differences
from custom.benchmark.registry import (
    BASELINES,
    FAMILIES,
    PRIMARY_SETTINGS,
    PROTOCOLS,
    SETTING_INDEPENDENT_METHODS,
    SETTINGS,
)
from custom.benchmark.results import build_results, collect_runs
from custom.benchmark.run_archive import TIMING_FILE
from custom.benchmark.run_record import method_specs, report_order
from custom.benchmark.timing import (
    describe_run_time_budget,
    describe_timing,
    format_number,
    read_timing,
    run_time_budget,
)
from custom.io import atomic_output, write_json

__all__ = ["format_difference", "audit_ranking_table", "setting_tables", "write_markdown", "write_outputs"]

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
    best = setting.get("best_ignoring")
    if best:
        lines.append(
            f"- Best method that ignores the noisy labels: **{labels.get(best['method'], best['method'])}** "
            f"(Dice {best['dice_mean']:.4f}); the gain column pairs every method with it."
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
        "| gap recovery | gain over the best method that ignores the noisy labels [95% CI] (cases better) "
        "| gap recovery vs best ignoring | noisy-label Dice | refined-label Dice "
        "| LQ volumes before -> after refinement "
        "| worst loss, uncorrupted LQ case | HD95 (mm) | ASD (mm) | s/iter (step) | iteration / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
            format_difference(e.get("diff_to_best_ignoring")),
            format_number(e.get("gap_recovery_vs_best_ignoring"), 2),
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


_READING = (
    "Test Dice against clean labels, last checkpoint (never selected on test), mean +- std over seeds; paired diff = "
    "mean over test cases of (method - baseline), each case averaged over the common seeds, with a 95% percentile "
    "bootstrap interval over cases (10000 resamples): *better*/*worse* only when the interval excludes 0, else *not "
    "resolved*; (k/n) = cases where the method is better. Gap recovery = (method - HL-Sup) / (clean - HL-Sup). The "
    "best method that ignores the noisy labels is the better of H-Sup and the SSL mean teacher by mean Dice; gap "
    "recovery vs best ignoring = (method - best ignoring) / (clean - best ignoring). Label "
    "Dice = last epoch's training-patch labels vs clean. s/iter = median training step; iteration / step = median "
    "iteration with data loading over median step, in the same run."
)


def write_outputs(
    work_dir: str | Path,
    report_path: Path,
    results_path: Path,
    figures_dir: Path,
    notes: str | Path | None,
    protocol: Mapping[str, Any],
    profile: str,
    runs_from: str | Path | None = None,
    protocol_name: str = "v1",
) -> tuple[dict, Path]:
    """Build the results document from the finished runs of ``work_dir``, then write it (JSON), the figures and the
    markdown report generated from the same document.

    Args:
        work_dir: the benchmark's work folder (``<setting>/<method>_s<seed>/`` runs, ``benchmark_timing.json``).
        report_path: the markdown report to write.
        results_path: the results document to write.
        figures_dir: folder of the PNG figures.
        notes: a markdown file the report links to for the protocol and the reading of the results (None or empty:
            no link); it is linked, never copied in.
        protocol: free-form description stored under ``"protocol"``.
        profile: the profile's name, for the report's heading.
        runs_from: where the report says the runs and their timing records are kept (the run archive they were
            imported from; default ``work_dir``).
        protocol_name: the :data:`~custom.benchmark.registry.PROTOCOLS` entry of the runs: its runs and seeds for
            the time budget, its paired interval; stored under ``"protocol"`` with ``protocol``.

    Raises:
        ValueError: for an unknown protocol name.

    Returns:
        ``(results, report path)``.
    """
    if protocol_name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol_name!r}; choose from {sorted(PROTOCOLS)}")
    chosen = PROTOCOLS[protocol_name]
    runs_from = Path(work_dir if runs_from is None else runs_from)
    settings = [s for s in SETTINGS if (Path(work_dir) / s).is_dir()]
    runs = collect_runs(work_dir, settings)
    specs = method_specs(runs)
    order = report_order(specs)
    labels = {k: spec.label for k, spec in specs.items()}
    # the first protocol's results document keeps its shape; a later one records its definition
    described = dict(protocol) if protocol_name == "v1" else {**dict(protocol), "definition": chosen.to_dict()}
    results = build_results(runs, order, PRIMARY_SETTINGS, described, interval=chosen.interval)
    records = read_timing(work_dir)
    required = [(s, m, seed) for s, methods in chosen.runs.items() for m in methods for seed in chosen.seeds]
    results["run_time_budget"] = {
        "method_issues": {  # the key other tooling reads: the protocol's runs
            "runs": {s: list(m) for s, m in chosen.runs.items()}, "seeds": list(chosen.seeds),
            **run_time_budget(records, required, SETTING_INDEPENDENT_METHODS),
        }
    }
    write_json(results, results_path)
    families = {k: spec.family for k, spec in specs.items()}
    figures: dict[str, list[Path]] = {}
    for name in results["settings"]:
        made = [
            plot_learning_curves(  # the protocol's rows; one-seed tuning and diagnostic runs are in the tables
                runs, name, order, labels, figures_dir / f"learning_curves_{name}.png", families=families,
                family_titles=FAMILIES, baselines=BASELINES, min_seeds=len(chosen.seeds),
            ),
            plot_paired_differences(results["settings"][name], name, labels, figures_dir / f"paired_diff_{name}.png"),
        ]
        figures[name] = [p for p in made if p is not None]
    for family, xlabel in (("sp", "SP noise level (alpha * beta)"), ("mtcl", "fraction of LQ cases")):
        levels = [(s.name, s.noise_level) for s in SETTINGS.values() if s.family == family]
        made = plot_dice_vs_noise(results, levels, order, labels, figures_dir / f"dice_vs_noise_{family}.png", xlabel)
        if made is not None:
            figures.setdefault("", []).append(made)
    header = f"# Benchmark results (`scripts/benchmark.py --profile {profile}`, runs in `{runs_from}`)\n\n"
    header += "Generated from the run folders and their records; do not edit by hand. "
    if notes:
        link = os.path.relpath(Path(notes), Path(report_path).parent)
        header += f"The protocol, how it was chosen and how to read the results: [{Path(notes).name}]({link}). "
    header += _READING
    if chosen.interval == "seeds_and_cases":
        header += (
            f" Protocol {protocol_name}: the paired intervals resample the seeds, then the cases (the seed-to-seed "
            "variance included; docs/protocol.md), not the cases alone."
        )
    header += f" Machine-readable: `{results_path.name}` beside this file."
    timing = describe_timing(records, str(runs_from / TIMING_FILE))
    timing += "\n\n" + describe_run_time_budget(
        results["run_time_budget"]["method_issues"],
        f"the protocol's runs ({len(chosen.seeds)} seeds; `PROTOCOLS['{protocol_name}'].runs`)",
    )
    report = write_markdown(results, report_path, labels, header, timing, figures)
    return results, report
