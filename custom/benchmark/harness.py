"""Methods x noise settings on a prepared dataset: train, evaluate, collect, tabulate, plot. Resumable.

Each (setting, method, seed) run lives in ``<work_dir>/<setting>/<method>_s<seed>/`` (a trained bundle plus
``eval/metrics_summary.json``, ``run_stats.json`` and, where the method refines labels, ``label_quality.csv``).
A run whose ``eval/metrics_summary.json`` exists is not repeated, so an interrupted benchmark resumes where it
stopped. Results go to ``<work_dir>/results.json`` / ``results.csv`` and the markdown report.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custom.io import atomic_output, write_csv, write_json

__all__ = ["METHODS", "SETTINGS", "Setting", "run_benchmark", "collect_results", "write_report"]

# method name -> (config files before the profile overlay, CLI overrides)
METHODS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "h_sup": (["configs/supervised_la.json"], {"label_mode": "hq"}),
    "hl_sup": (["configs/supervised_la.json"], {"label_mode": "hq+lq"}),
    "clean": (["configs/supervised_la.json"], {"label_mode": "clean"}),
    "mean_teacher": (["configs/alc_la.json", "configs/ablations/mean_teacher.json"], {}),
    "alc_no_ls": (["configs/alc_la.json", "configs/ablations/alc_no_selection.json"], {}),
    "alc_no_lr": (["configs/alc_la.json", "configs/ablations/alc_no_refinement.json"], {}),
    "alc": (["configs/alc_la.json"], {}),
    "mtcl": (["configs/mtcl_la.json"], {}),
    "coteaching": (["configs/coteaching_la.json"], {}),
    "jocor": (["configs/jocor_la.json"], {}),
    "trinet": (["configs/trinet_la.json"], {}),
    "spguided_voxel": (["configs/spguided_voxel_la.json"], {}),
    "spguided": (["configs/spguided_la.json"], {}),
    "jcas": (["configs/jcas_la.json"], {}),
}
METHOD_LABELS = {
    "h_sup": "H-Sup",
    "hl_sup": "HL-Sup",
    "clean": "Clean (upper bound)",
    "mean_teacher": "Mean Teacher",
    "alc_no_ls": "ALC w/o LS",
    "alc_no_lr": "ALC w/o LR",
    "alc": "ALC",
    "mtcl": "MTCL",
    "coteaching": "Co-teaching",
    "jocor": "JoCoR",
    "trinet": "Tri-network",
    "spguided_voxel": "SP-guided (voxel pieces)",
    "spguided": "SP-guided",
    "jcas": "JCAS",
}


@dataclass
class Setting:
    """A noise setting: how ``scripts/prepare_la.py`` builds its dataset, and a level for plots."""

    name: str
    prepare_args: list[str]
    noise_level: float
    family: str
    methods: list[str] = field(default_factory=list)


_MTCL_METHODS = [
    "h_sup",
    "hl_sup",
    "clean",
    "mean_teacher",
    "alc_no_ls",
    "alc_no_lr",
    "alc",
    "mtcl",
    "coteaching",
    "jocor",
    "trinet",
    "spguided_voxel",
    "spguided",
    "jcas",
]
_SP_METHODS = ["hl_sup", "clean", "coteaching", "jocor", "trinet", "spguided_voxel", "spguided"]
SETTINGS: dict[str, Setting] = {
    "mtcl_hq25": Setting("mtcl_hq25", ["--noise", "mtcl", "--hq-fraction", "0.25"], 0.75, "mtcl", _MTCL_METHODS),
    "mtcl_hq10": Setting("mtcl_hq10", ["--noise", "mtcl", "--hq-fraction", "0.10"], 0.90, "mtcl", _MTCL_METHODS),
    **{
        f"sp_a{a}_b{b}": Setting(
            f"sp_a{a}_b{b}",
            ["--noise", "sp", "--alpha", str(a), "--param", f"beta={b}", "--hq-fraction", "0.25"],
            a * b,
            "sp",
            _SP_METHODS,
        )
        for a, b in [(0.3, 0.5), (0.5, 0.5), (0.7, 0.7)]
    },
}


def _log(msg: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare_setting(setting: Setting, h5_dir: str, data_root: Path, seed: int, downsample: int) -> Path:
    """Prepare (once) the dataset of a setting; returns its folder."""
    out = data_root / f"{setting.name}_seed{seed}_ds{downsample}"
    if (out / "datalist.json").is_file():
        return out
    cmd = [
        sys.executable,
        "scripts/prepare_la.py",
        "--h5-dir",
        h5_dir,
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--downsample",
        str(downsample),
        *setting.prepare_args,
    ]
    _log(" ".join(cmd))
    subprocess.run(cmd, check=True)
    return out


def _bundle_cmd(run_id: str, configs: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", json.dumps(list(configs))]
    for key, value in overrides.items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return cmd


def run_one(
    method: str,
    dataset_dir: Path,
    run_dir: Path,
    profile: Sequence[str],
    seed: int,
    extra: Mapping[str, Any] | None = None,
    log_file: Path | None = None,
) -> dict[str, Any]:
    """Train + evaluate one method (skipped when its evaluation summary already exists)."""
    configs, overrides = METHODS[method]
    summary = run_dir / "eval" / "metrics_summary.json"
    if not summary.is_file():
        params = {
            "dataset_dir": str(dataset_dir),
            "output_dir": str(run_dir),
            "seed": seed,
            "bundle_name": method,
            **overrides,
            **(extra or {}),
        }
        all_configs = [*configs, *profile]
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_file or run_dir / "benchmark.log"
        with open(log_path, "a") as log:
            for run_id in ("training", "evaluating"):
                cmd = _bundle_cmd(run_id, all_configs, params)
                log.write(" ".join(cmd) + "\n")
                log.flush()
                start = time.perf_counter()
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
                if proc.returncode != 0:
                    raise RuntimeError(f"{method}: `{run_id}` failed (exit {proc.returncode}); see {log_path}")
                write_json({"seconds": time.perf_counter() - start, "command": cmd}, run_dir / f"{run_id}_command.json")
    return read_run(method, run_dir)


def read_run(method: str, run_dir: Path) -> dict[str, Any]:
    """One results row from a finished run folder."""
    summary = json.loads((run_dir / "eval" / "metrics_summary.json").read_text())
    row: dict[str, Any] = {"method": method}
    for metric in ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox"):
        entry = summary.get(f"{metric}_mean", {})
        row[f"{metric}_mean"] = entry.get("mean")
        row[f"{metric}_std"] = entry.get("std")
    stats_path = run_dir / "run_stats.json"
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        row["sec_per_iter"] = stats.get("seconds_per_iteration_median")
        row["iterations"] = stats.get("iterations")
        row["peak_rss_mb"] = stats.get("peak_rss_mb")
    quality = run_dir / "label_quality.csv"
    if quality.is_file():
        with open(quality) as f:
            rows = list(csv.DictReader(f))
        if rows:
            row["noisy_label_dice"] = _float(rows[-1].get("noisy_dice"))
            row["refined_label_dice"] = _float(rows[-1].get("refined_dice"))
    for run_id in ("training", "evaluating"):
        cmd_path = run_dir / f"{run_id}_command.json"
        if cmd_path.is_file():
            row[f"{run_id}_seconds"] = round(json.loads(cmd_path.read_text())["seconds"], 1)
    return row


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def run_benchmark(
    h5_dir: str,
    work_dir: str | Path,
    settings: Sequence[str],
    methods: Sequence[str] | None,
    profile: Sequence[str],
    seeds: Sequence[int] = (0,),
    downsample: int = 2,
    extra_overrides: Mapping[str, Any] | None = None,
    keep_going: bool = True,
) -> list[dict[str, Any]]:
    """Run every (setting, method, seed) not yet done; returns all result rows."""
    work = Path(work_dir)
    rows: list[dict[str, Any]] = []
    for setting_name in settings:
        if setting_name not in SETTINGS:
            raise ValueError(f"unknown setting {setting_name!r}; choose from {sorted(SETTINGS)}")
        setting = SETTINGS[setting_name]
        for seed in seeds:
            data = prepare_setting(setting, h5_dir, work / "data", seed, downsample)
            # the order given on the command line wins (run the most important methods first)
            for method in [m for m in (methods or setting.methods) if m in setting.methods]:
                if not all(Path(c).is_file() for c in METHODS[method][0]):
                    _log(f"skip {method}: config missing")
                    continue
                run_dir = work / setting_name / f"{method}_s{seed}"
                _log(f"{setting_name} / {method} / seed {seed}")
                try:
                    row = run_one(method, data, run_dir, profile, seed, extra_overrides)
                except RuntimeError as exc:
                    if not keep_going:
                        raise
                    _log(f"FAILED: {exc}")
                    continue
                row.update(
                    {
                        "setting": setting_name,
                        "seed": seed,
                        "noise_level": setting.noise_level,
                        "family": setting.family,
                    }
                )
                rows.append(row)
                write_json(rows, work / "results.json")
                write_csv(rows, work / "results.csv")
                _log(f"  dice {row['dice_mean']:.4f}  ({row.get('training_seconds')} s training)")
    return rows


def collect_results(work_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of every finished run under ``work_dir`` (independent of which command produced them)."""
    work = Path(work_dir)
    rows = []
    for setting_name, setting in SETTINGS.items():
        folder = work / setting_name
        if not folder.is_dir():
            continue
        for run_dir in sorted(folder.iterdir()):
            if not (run_dir / "eval" / "metrics_summary.json").is_file():
                continue
            method, _, seed = run_dir.name.rpartition("_s")
            if method not in METHODS:
                continue
            row = read_run(method, run_dir)
            row.update(
                {
                    "setting": setting_name,
                    "seed": int(seed),
                    "noise_level": setting.noise_level,
                    "family": setting.family,
                }
            )
            rows.append(row)
    return rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Average over seeds per (setting, method)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["setting"], row["method"]), []).append(row)
    out = {}
    for key, group in groups.items():
        agg: dict[str, Any] = {"n_seeds": len(group)}
        for col in group[0]:
            values = [
                r[col] for r in group if isinstance(r.get(col), (int, float)) and not isinstance(r.get(col), bool)
            ]
            values = [v for v in values if not math.isnan(v)]
            if values and col not in ("seed",):
                agg[col] = _mean(values)
        out[key] = agg
    return out


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_report(
    rows: Sequence[Mapping[str, Any]], path: str | Path, header: str = "", plots_dir: str | Path | None = None
) -> Path:
    """Markdown tables (metrics, noise-gap recovery, label quality, cost) and PNG plots."""
    agg = aggregate(rows)
    lines = [header.rstrip(), ""] if header else []
    for setting_name in [s for s in SETTINGS if any(k[0] == s for k in agg)]:
        lines += [f"### Setting `{setting_name}`", ""]
        lines += [
            "| method | Dice | Jaccard | HD95 (mm) | ASD (mm) | HD95 (vox) | ASD (vox) | gap recovery | "
            "noisy-label Dice | refined-label Dice | s/iter | x HL-Sup | peak RSS (MB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        base = agg.get((setting_name, "hl_sup"), {})
        clean = agg.get((setting_name, "clean"), {})
        for method in METHODS:
            r = agg.get((setting_name, method))
            if r is None:
                continue
            recovery = None
            if base.get("dice_mean") is not None and clean.get("dice_mean") is not None:
                gap = clean["dice_mean"] - base["dice_mean"]
                if abs(gap) > 1e-9:
                    recovery = (r["dice_mean"] - base["dice_mean"]) / gap
            rel = (
                (r.get("sec_per_iter") / base["sec_per_iter"])
                if r.get("sec_per_iter") and base.get("sec_per_iter")
                else None
            )
            pm = "\u00b1"
            lines.append(
                f"| {METHOD_LABELS[method]} | {_fmt(r.get('dice_mean'))} {pm} {_fmt(r.get('dice_std'), 3)} "
                f"| {_fmt(r.get('jaccard_mean'))} {pm} {_fmt(r.get('jaccard_std'), 3)} "
                f"| {_fmt(r.get('hd95_mm_mean'), 2)} {pm} {_fmt(r.get('hd95_mm_std'), 2)} "
                f"| {_fmt(r.get('asd_mm_mean'), 2)} {pm} {_fmt(r.get('asd_mm_std'), 2)} "
                f"| {_fmt(r.get('hd95_vox_mean'), 2)} | {_fmt(r.get('asd_vox_mean'), 2)} | {_fmt(recovery, 2)} "
                f"| {_fmt(r.get('noisy_label_dice'), 3)} | {_fmt(r.get('refined_label_dice'), 3)} "
                f"| {_fmt(r.get('sec_per_iter'), 3)} | {_fmt(rel, 2)} | {_fmt(r.get('peak_rss_mb'), 0)} |"
            )
        lines.append("")
    if plots_dir is not None:
        made = plot_results(rows, Path(plots_dir))
        if made:
            lines += ["Plots: " + ", ".join(f"![{p.stem}]({os.path.relpath(p, Path(path).parent)})" for p in made), ""]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def plot_results(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Dice versus noise level per method (one plot per noise family); empty when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    agg = aggregate(rows)
    made = []
    for family in sorted({r["family"] for r in rows}):
        settings = [s for s in SETTINGS.values() if s.family == family]
        fig, ax = plt.subplots(figsize=(6, 4))
        plotted = False
        for method in METHODS:
            pts = sorted(
                (s.noise_level, agg[(s.name, method)]["dice_mean"]) for s in settings if (s.name, method) in agg
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=METHOD_LABELS[method])
                plotted = True
        if not plotted:
            plt.close(fig)
            continue
        ax.set_xlabel("noise level (MTCL: LQ fraction; SP: alpha*beta)")
        ax.set_ylabel("test Dice")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"dice_vs_noise_{family}.png"
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        made.append(path)
    return made
