"""The benchmark's machine-readable results: one JSON document built from the finished run folders.

``build_results`` turns the run folders of a work folder (``<setting>/<method>_s<seed>/``) into the document that
``docs/benchmark_results.json`` holds and from which the markdown tables are generated
(:mod:`custom.benchmark.report`)::

    {"primary_settings": {"mtcl": "mtcl_hq25", "sp": "sp_a0.7_b0.7"},
     "settings": {"mtcl_hq25": {"n_test_cases": 20, "clean_plateau_delta": 0.004, "noise_gap": {...},
        "methods": {"alc": {"dice_mean": ..., "dice_std": ..., "n_seeds": 3, "seeds": [0, 1, 2],
                            "diff_to_hl_sup": {"mean": ..., "ci_low": ..., "ci_high": ..., "verdict": ...},
                            "diff_to": {"mean_teacher": {...}},
                            "noisy_label_dice": ..., "refined_label_dice": ..., ...}}}}}

``dice_mean`` is the mean over seeds of each run's mean test Dice, ``dice_std`` their sample std over seeds;
``diff_to_hl_sup`` / ``diff_to`` are paired per case and seed (:mod:`custom.benchmark.paired`);
``clean_plateau_delta`` is the largest, over the clean runs' seeds, absolute change of the validation Dice over the
last 25% of the iterations, read as the rise of the least-squares line through that window's validation rounds
(:func:`plateau_change`, which also gives the first-to-last change and the max - min spread).

Where runs hold an ``audit_ranking.json`` (written by the harness for the methods with a label audit,
:mod:`custom.benchmark.audit_ranking`), a setting also gets ``"audit_ranking"``: per method the audit's score name
and, for our score (``audit``) and cleanlab's (``cleanlab``), the mean and std over seeds of ``auc``,
``top_k_precision`` and ``spearman``::

    "audit_ranking": {"alc": {"score_name": "teacher_uncertainty", "n_seeds": 3, "seeds": [0, 1, 2],
                              "audit": {"auc": {"mean": ..., "std": ...}, "top_k_precision": {...}, ...},
                              "cleanlab": {...}}}

A setting without any such file has no ``"audit_ranking"`` key (and the report no ranking table).

Every method is also paired with the methods that ignore the noisy labels
(:data:`~custom.benchmark.registry.IGNORING_BASELINES`: ``h_sup``, ``ssl_mt``) where their runs exist: their entries
join the method's ``"diff_to"``. A setting with such runs gets ``"best_ignoring"``, the better of them by mean Dice::

    "best_ignoring": {"method": "ssl_mt", "dice_mean": ...}

and each other method ``"diff_to_best_ignoring"`` (its ``diff_to`` entry for that baseline) and, with clean runs,
``"gap_recovery_vs_best_ignoring"`` = (method - best_ignoring) / (clean - best_ignoring) on the mean Dice.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom.benchmark.audit_ranking import AUDIT_RANKING_FILE
from custom.benchmark.paired import compare_to_baseline, seed_mean_std
from custom.benchmark.registry import IGNORING_BASELINES, PRIMARY_SETTINGS
from custom.benchmark.run_record import method_specs, read_run_record, report_order
from custom.handlers.validation_curve import plateau_delta, read_validation_curve

__all__ = [
    "PLATEAU_TAIL",
    "read_case_dice",
    "refinement_volume_dice",
    "label_quality",
    "AUDIT_SCORES",
    "AUDIT_METRICS",
    "audit_ranking_figures",
    "plateau_change",
    "collect_runs",
    "build_results",
]

PLATEAU_TAIL = 0.25
_METRICS = ("dice", "jaccard", "hd95_mm", "asd_mm")


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def read_case_dice(run_dir: str | Path) -> dict[str, float]:
    """``{case_id: mean foreground Dice}`` from a run's ``eval/metrics_per_case.csv`` (NaN kept as NaN)."""
    path = Path(run_dir) / "eval" / "metrics_per_case.csv"
    with open(path) as f:
        return {
            row["case_id"]: (float(row["dice_mean"]) if row.get("dice_mean") not in (None, "") else math.nan)
            for row in csv.DictReader(f)
        }


def plateau_change(
    curve: Sequence[Mapping[str, float]], total_iterations: float, tail: float = PLATEAU_TAIL
) -> dict[str, float] | None:
    """How much ``val_mean_dice`` changes over the last ``tail`` of the run, three ways.

    * ``trend`` (the protocol's plateau figure): the least-squares line through the validation rounds in the
      window, its rise over the window's length (slope x ``tail * total_iterations``). It measures whether the
      curve still climbs or falls, not the round-to-round jitter of a 4-case validation set;
    * ``change``: last round minus first round of the window;
    * ``spread``: max - min over the window's rounds.

    Returns None with fewer than two rounds in the window.
    """
    start = (1 - tail) * total_iterations
    window = sorted(
        ((r["iteration"], r["val_mean_dice"]) for r in curve
         if r.get("iteration", -1) >= start - 1e-9 and r.get("val_mean_dice") is not None),
    )
    if len(window) < 2:
        return None
    xs = [w[0] for w in window]
    ys = [w[1] for w in window]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    return {
        "trend": slope * tail * total_iterations,
        "change": ys[-1] - ys[0],
        "spread": plateau_delta(curve, total_iterations, tail=tail),
        "rounds": len(window),
    }


def refinement_volume_dice(run_dir: str | Path) -> dict[str, float]:
    """SP-guided's whole-volume LQ label Dice against clean, from ``refined_labels/refinement_log.csv``.

    ``volume_dice_before`` / ``_after``: means over the cases of the latest round. ``uncorrupted_cases`` and
    ``uncorrupted_worst_loss``: the LQ cases whose labels were uncorrupted before the first round (Dice >= 0.999
    against clean) and the largest Dice any of them lost by the latest round (0 when none lost; absent without
    such a case). Empty when the run has no refinement log.
    """
    path = Path(run_dir) / "refined_labels" / "refinement_log.csv"
    if not path.is_file():
        return {}
    with open(path) as f:
        rounds = list(csv.DictReader(f))
    last = [r for r in rounds if r.get("round") == rounds[-1].get("round")] if rounds else []
    out: dict[str, float] = {}
    for key, column in (("volume_dice_before", "dice_before"), ("volume_dice_after", "dice_after")):
        values = [v for v in (_float(r.get(column)) for r in last) if v is not None]
        if values:
            out[key] = sum(values) / len(values)
    original: dict[str, float] = {}
    final: dict[str, float] = {}
    for r in rounds:  # oldest first: the first round's "before" is the given label, the latest "after" the result
        before, after = _float(r.get("dice_before")), _float(r.get("dice_after"))
        if before is not None:
            original.setdefault(str(r.get("case_id")), before)
        if after is not None:
            final[str(r.get("case_id"))] = after
    losses = [original[c] - final[c] for c in original if original[c] >= 0.999 and c in final]
    if losses:
        out["uncorrupted_cases"] = len(losses)
        out["uncorrupted_worst_loss"] = max(0.0, max(losses))
    return out


def label_quality(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``label_quality.csv``: its rows as numbers (``label_quality``) and the last logged value of each
    column as ``noisy_label_dice`` / ``refined_label_dice`` (SP-guided logs the noisy column until refinement, the
    refined one after); only ``label_quality: []`` when the run logs none."""
    path = Path(run_dir) / "label_quality.csv"
    out: dict[str, Any] = {"label_quality": []}
    if not path.is_file():
        return out
    with open(path) as f:
        rows = [{k: _float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    out["label_quality"] = rows
    for key, column in (("noisy_label_dice", "noisy_dice"), ("refined_label_dice", "refined_dice")):
        values = [r[column] for r in rows if r.get(column) is not None]
        if values:
            out[key] = values[-1]
    return out


#: the scores of ``audit_ranking.json``: ours, then cleanlab's on the same probabilities
AUDIT_SCORES = ("audit", "cleanlab")
AUDIT_METRICS = ("auc", "top_k_precision", "spearman")


def audit_ranking_figures(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``audit_ranking.json`` as flat figures: ``audit_score_name`` and ``<score>_<metric>`` for the scores
    of :data:`AUDIT_SCORES` and the metrics of :data:`AUDIT_METRICS` (None where undefined); empty when the run has
    no such file or it is unreadable."""
    import json

    path = Path(run_dir) / AUDIT_RANKING_FILE
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or not isinstance(document.get("metrics"), dict):
        return {}
    out: dict[str, Any] = {"audit_score_name": document.get("score_name")}
    for score in AUDIT_SCORES:
        figures = document["metrics"].get(score) or {}
        for metric in AUDIT_METRICS:
            out[f"{score}_{metric}"] = _float(figures.get(metric))
    return out


def _audit_ranking_summary(group: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean and std over seeds of one method's audit figures (None when no seed has them)."""
    ranked = [r for r in group if r.get("audit_score_name") is not None]
    if not ranked:
        return None
    summary: dict[str, Any] = {
        "score_name": ranked[0]["audit_score_name"],
        "n_seeds": len(ranked),
        "seeds": [r["seed"] for r in ranked],
    }
    for score in AUDIT_SCORES:
        summary[score] = {}
        for metric in AUDIT_METRICS:
            mean, std = seed_mean_std([r.get(f"{score}_{metric}") for r in ranked])
            summary[score][metric] = {"mean": mean, "std": std}
    return summary


def collect_runs(
    work_dir: str | Path, settings: Sequence[str], methods: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Every finished run (``eval/metrics_per_case.csv`` present) of the given settings, of every method found
    (``methods`` None) or of the given ones: a method is whatever its run folders are named, with or without an
    entry in the code.

    Each record: ``setting``, ``method``, ``seed``, ``method_record`` (the ``"method"`` entry of the run's
    ``run_record.json``, None without one), ``case_dice`` (:func:`read_case_dice`), the summary means of
    Dice / Jaccard / HD95 / ASD, ``run_stats.json`` figures, the validation curve, label quality rows and their
    last values, the SP-guided refinement's whole-volume LQ Dice before/after and the audit ranking figures
    (:func:`audit_ranking_figures`; where present).
    """
    import json

    work = Path(work_dir)
    runs = []
    for setting in settings:
        folder = work / setting
        if not folder.is_dir():
            continue
        for run_dir in sorted(folder.iterdir()):
            method, _, seed = run_dir.name.rpartition("_s")
            if not method or not seed.isdigit() or (methods is not None and method not in methods):
                continue
            if not (run_dir / "eval" / "metrics_per_case.csv").is_file():
                continue
            run_record = read_run_record(run_dir)
            record: dict[str, Any] = {
                "setting": setting, "method": method, "seed": int(seed),
                "method_record": run_record["method"] if run_record else None,
            }
            record["case_dice"] = read_case_dice(run_dir)
            summary_path = run_dir / "eval" / "metrics_summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
            for metric in _METRICS:
                record[metric] = _float((summary.get(f"{metric}_mean") or {}).get("mean"))
            if record["dice"] is None:
                values = [v for v in record["case_dice"].values() if not math.isnan(v)]
                record["dice"] = sum(values) / len(values) if values else None
            stats_path = run_dir / "run_stats.json"
            stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
            record["iterations"] = stats.get("iterations")
            record["sec_per_iter"] = stats.get("seconds_per_iteration_median")
            record["sec_per_iter_with_data"] = stats.get("seconds_per_iteration_with_data_median")
            record["iteration_to_step_ratio"] = stats.get("iteration_to_step_ratio")
            record["training_wall_seconds"] = stats.get("wall_seconds")
            record["validation_curve"] = read_validation_curve(run_dir / "validation_curve.csv")
            record.update(label_quality(run_dir))
            record.update(refinement_volume_dice(run_dir))
            record.update(audit_ranking_figures(run_dir))
            runs.append(record)
    return runs


def _mean_of(runs: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
    return sum(values) / len(values) if values else None


def _diff_entry(comparison: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if comparison is None:
        return None
    return {k: comparison[k] for k in ("mean", "ci_low", "ci_high", "verdict", "cases_better", "n_cases", "seeds")}


def _add_best_ignoring(setting_out: dict[str, Any], methods_out: Mapping[str, dict[str, Any]]) -> None:
    """``best_ignoring`` of a setting and each method's difference and gap recovery against it (module docstring);
    nothing without a run of a label-ignoring baseline."""
    present = [m for m in IGNORING_BASELINES if methods_out.get(m, {}).get("dice_mean") is not None]
    if not present:
        return
    best = max(present, key=lambda m: methods_out[m]["dice_mean"])  # ties: the first of IGNORING_BASELINES
    best_dice = methods_out[best]["dice_mean"]
    setting_out["best_ignoring"] = {"method": best, "dice_mean": best_dice}
    clean = methods_out.get("clean", {}).get("dice_mean")
    for method, entry in methods_out.items():
        if method == best:
            continue
        entry["diff_to_best_ignoring"] = (entry.get("diff_to") or {}).get(best)
        if clean is not None and abs(clean - best_dice) > 1e-9 and entry["dice_mean"] is not None:
            entry["gap_recovery_vs_best_ignoring"] = (entry["dice_mean"] - best_dice) / (clean - best_dice)


def build_results(
    runs: Sequence[Mapping[str, Any]],
    method_order: Sequence[str] | None = None,
    primary_settings: Mapping[str, str] | None = None,
    protocol: Mapping[str, Any] | None = None,
    n_boot: int = 10000,
    interval: str = "cases",
) -> dict[str, Any]:
    """The results document (module docstring) from :func:`collect_runs` records.

    Each method's ``diff_to`` baselines come from its runs' records (:func:`~custom.benchmark.run_record.method_specs`).

    Args:
        runs: run records.
        method_order: the methods of the document, in order (None: every method of ``runs`` in
            :func:`~custom.benchmark.run_record.report_order`).
        primary_settings: ``{"mtcl": ..., "sp": ...}`` (default :data:`PRIMARY_SETTINGS`).
        protocol: free-form description stored under ``"protocol"`` (lists, resolution, profile, command).
        n_boot: bootstrap resamples of the paired intervals.
        interval: the paired intervals (:data:`custom.benchmark.paired.INTERVALS`): ``"cases"`` (the first
            protocol's) or ``"seeds_and_cases"``.
    """

    def compare(method: str, other: str) -> dict[str, Any] | None:
        return _diff_entry(
            compare_to_baseline(case_dice[method], case_dice[other], n_boot=n_boot, interval=interval)
        )

    specs = method_specs(runs)
    if method_order is None:
        method_order = report_order(specs)
    by_key: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        by_key.setdefault((run["setting"], run["method"]), []).append(run)
    settings_out: dict[str, Any] = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        case_dice = {
            m: {r["seed"]: r["case_dice"] for r in by_key[(setting, m)]} for m in method_order if (setting, m) in by_key
        }
        cases = set().union(*(set(cd) for per_seed in case_dice.values() for cd in per_seed.values()))
        methods_out: dict[str, Any] = {}
        for method in method_order:
            group = sorted(by_key.get((setting, method), []), key=lambda r: r["seed"])
            if not group:
                continue
            mean, std = seed_mean_std([r["dice"] for r in group])
            entry: dict[str, Any] = {
                "dice_mean": mean,
                "dice_std": std,
                "n_seeds": len(group),
                "seeds": [r["seed"] for r in group],
                "dice_per_seed": [r["dice"] for r in group],
            }
            for metric in _METRICS[1:]:
                entry[f"{metric}_mean"] = _mean_of(group, metric)
            entry["case_std_mean"] = _mean_of(
                [{"v": seed_mean_std(list(r["case_dice"].values()))[1]} for r in group], "v"
            )
            entry["diff_to_hl_sup"] = (
                compare(method, "hl_sup") if method != "hl_sup" and "hl_sup" in case_dice else None
            )
            entry["diff_to"] = {
                other: compare(method, other)
                for other in dict.fromkeys([*specs[method].diff_to, *IGNORING_BASELINES])
                if other in case_dice and other != method
            }
            entry["noisy_label_dice"] = _mean_of(group, "noisy_label_dice")
            entry["refined_label_dice"] = _mean_of(group, "refined_label_dice")
            entry["volume_dice_before"] = _mean_of(group, "volume_dice_before")
            entry["volume_dice_after"] = _mean_of(group, "volume_dice_after")
            worst = [r["uncorrupted_worst_loss"] for r in group if r.get("uncorrupted_worst_loss") is not None]
            entry["uncorrupted_worst_loss"] = max(worst) if worst else None  # the worst case over the seeds
            entry["sec_per_iter"] = _mean_of(group, "sec_per_iter")
            entry["sec_per_iter_with_data"] = _mean_of(group, "sec_per_iter_with_data")
            entry["iteration_to_step_ratio"] = _mean_of(group, "iteration_to_step_ratio")
            entry["iterations"] = _mean_of(group, "iterations")
            methods_out[method] = entry
        setting_out: dict[str, Any] = {"n_test_cases": len(cases), "methods": methods_out}
        clean_runs = by_key.get((setting, "clean"), [])
        changes = []
        for run in clean_runs:
            if run.get("iterations") and run.get("validation_curve"):
                figures = plateau_change(run["validation_curve"], run["iterations"])
                if figures is not None:
                    changes.append({"seed": run["seed"], **figures})
        # the largest |trend| over the clean runs' seeds: every seed must have reached its plateau
        setting_out["clean_plateau_delta"] = max(abs(c["trend"]) for c in changes) if changes else None
        setting_out["clean_plateau_per_seed"] = sorted(changes, key=lambda c: c["seed"])
        gap = None
        if "clean" in methods_out and "hl_sup" in methods_out:
            gap = {
                "clean_minus_hl_sup": methods_out["clean"]["dice_mean"] - methods_out["hl_sup"]["dice_mean"],
                "paired": compare("clean", "hl_sup"),
            }
            if abs(gap["clean_minus_hl_sup"]) > 1e-9:
                for entry in methods_out.values():
                    if entry["dice_mean"] is not None:
                        entry["gap_recovery"] = (
                            entry["dice_mean"] - methods_out["hl_sup"]["dice_mean"]
                        ) / gap["clean_minus_hl_sup"]
        setting_out["noise_gap"] = gap
        _add_best_ignoring(setting_out, methods_out)
        rankings = {
            method: summary
            for method in method_order
            if (summary := _audit_ranking_summary(by_key.get((setting, method), []))) is not None
        }
        if rankings:
            setting_out["audit_ranking"] = rankings
        settings_out[setting] = setting_out
    return {
        "primary_settings": dict(primary_settings or PRIMARY_SETTINGS),
        "protocol": dict(protocol or {}),
        "settings": settings_out,
    }
