"""Export the label audit of a finished training run: the refined label of every noisy (LQ) training case as NIfTI
and ``label_audit.csv`` ranking which annotations to re-check first (``custom.refinement.label_audit``).

    python scripts/export_label_audit.py --config_file configs/alc_la.json [configs/quick.json ...] \
        [--output_dir <run folder>] [--dataset_dir ...] [--datalist ...] [--audit_dir <folder>] \
        [--source auto|alc|spguided] [--device cpu] [--include_hq]

Sources (``--source auto`` picks by the config):

- ``alc``: configs with an EMA ``teacher`` (ALC, MTCL, mean teacher). The teacher's weights are read from
  ``<run>/models/extra/teacher.pt`` (``<run>/models/teacher.pt`` in runs written before that folder); each case
  gets the sliding-window fused prediction over ``num_samples`` perturbations; the ranking score is the teacher's
  uncertainty.
- ``spguided``: configs with a ``label_stage`` (SP-guided and its voxel ablation). The refined labels the run
  wrote under ``<run>/refined_labels/round_<r>/`` (latest round); the score is the fraction of voxels changed.

Writes ``<audit_dir>/labels/<case_id>.nii.gz`` and ``<audit_dir>/label_audit.csv`` (default audit_dir:
``<run>/label_audit``). Run from anywhere: the configs' ``%configs/base/...`` macros are resolved from the
repository root. The SP-guided configs also offer it as a run id: ``python -m monai.bundle run label_audit ...``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SOURCES = ("auto", "alc", "spguided")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", nargs="+", required=True, help="the training run's config file(s)")
    parser.add_argument("--output_dir", help="the training run's folder (default: the config's output_dir)")
    parser.add_argument("--dataset_dir", help="override the config's dataset_dir")
    parser.add_argument("--datalist", help="override the config's datalist")
    parser.add_argument("--audit_dir", help="where to write (default: <output_dir>/label_audit)")
    parser.add_argument("--source", choices=SOURCES, default="auto")
    parser.add_argument("--device", help="override the config's device (e.g. cpu)")
    parser.add_argument("--include_hq", action="store_true", help="audit HQ cases too")
    return parser.parse_args(argv)


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)


def _has(parser: Any, key: str) -> bool:
    try:
        return parser.get(key) is not None
    except (KeyError, ValueError):
        return False


def detect_source(parser: Any) -> str:
    """``"alc"`` for configs with a ``teacher``, ``"spguided"`` for configs with a ``label_stage``."""
    if _has(parser, "teacher"):
        return "alc"
    if _has(parser, "label_stage"):
        return "spguided"
    raise ValueError("cannot tell the source: the config has neither a 'teacher' nor a 'label_stage'; pass --source.")


def _parsed(parser: Any, key: str, default: Any) -> Any:
    return parser.get_parsed_content(key) if _has(parser, key) else default


def export(args: argparse.Namespace) -> Path:
    from monai.bundle import ConfigParser

    from custom.refinement.label_audit import export_alc_audit, export_spguided_audit

    config_files = [_absolute(f) for f in args.config_file]
    overrides = {
        "output_dir": _absolute(args.output_dir),
        "dataset_dir": _absolute(args.dataset_dir),
        "datalist": _absolute(args.datalist),
        "device": args.device,
    }
    os.chdir(REPO_ROOT)  # the configs reference configs/base/*.json relative to the repository root
    parser = ConfigParser()
    parser.read_config(config_files)
    for key, value in overrides.items():
        if value is not None:
            parser[key] = value
    source = detect_source(parser) if args.source == "auto" else args.source
    run_dir = Path(parser.get_parsed_content("output_dir"))
    audit_dir = Path(_absolute(args.audit_dir)) if args.audit_dir else run_dir / "label_audit"
    items = parser.get_parsed_content("data::training")
    num_classes = int(parser.get_parsed_content("data::num_classes"))
    if source == "spguided":
        return export_spguided_audit(items, run_dir, num_classes, audit_dir, include_hq=args.include_hq)

    import torch

    checkpoint = run_dir / "models" / "extra" / "teacher.pt"
    if not checkpoint.is_file() and (run_dir / "models" / "teacher.pt").is_file():
        checkpoint = run_dir / "models" / "teacher.pt"  # a run written before the models/extra/ layout
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no teacher weights (train the run first; BundleWriter writes them)")
    device = torch.device(parser.get_parsed_content("device"))
    teacher = parser.get_parsed_content("network_def").to(device)
    return export_alc_audit(
        teacher, items, parser.get_parsed_content("transforms::eval"), audit_dir, num_classes,
        inferer=parser.get_parsed_content("inferer"), checkpoint=checkpoint, device=device,
        num_samples=int(_parsed(parser, "num_samples", 8)), noise_std=float(_parsed(parser, "noise_std", 0.1)),
        noise_clip=float(_parsed(parser, "noise_clip", 0.2)), tau=float(_parsed(parser, "tau", 1.0)),
        fusion_mode=str(_parsed(parser, "fusion_mode", "softmax")),
        uncertainty_mode=str(_parsed(parser, "uncertainty_mode", "weighted_kl")),
        seed=int(_parsed(parser, "seed", 0)), include_hq=args.include_hq,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        csv_path = export(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    print(f"label audit of {len(rows)} case(s): {csv_path}")
    for row in rows[:10]:
        print(f"  {row['rank']:>3}  {row['case_id']:<24} {row['score_name']}={float(row['score']):.4f}  "
              f"changed={float(row['changed_fraction']):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
