"""Write noisy copies of a folder of NIfTI label maps, with a per-case report (methods.md section 0).

Example::

    python scripts/make_noisy_labels.py --labels data/labelsTr --out data/labelsTr_sp --noise sp \\
        --seed 0 --alpha 0.5 --param beta=0.7

A fraction ``--alpha`` of the cases (chosen by ``custom.noise.select_corrupted_cases``) gets the noise; the
others are copied unchanged with noise ``none``. Each noisy map keeps its source's header and affine; simulator
sizes are in mm, converted with the header's voxel size (docs/noise.md). A noisy map that lost a class of its
clean map is redrawn (``--on-empty redraw``, default), kept and counted (``keep``) or an error (``error``). The
report ``noise_report.csv`` has one row per case: ``case_id, noise, params`` (JSON), ``noisy_dice`` (mean
foreground Dice against the clean map), ``label_clean`` and ``label_noisy`` (paths), ``dice_<c>`` per foreground
class (blank where the class is in neither map), ``lost_classes``, ``attempts``, ``rejected_draws`` (JSON) and
``size_mm`` / ``size_voxels`` (JSON, per axis: what the simulator applied, e.g. the MTCL box side).

All inputs are read and checked before anything is written; outputs are staged in a temporary folder inside
``--out`` and moved into place only when every case succeeded, so a failed run leaves no partial output.
Bad input exits with status 2 and one message naming the file and the problem.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from custom.io import DataError, load_nifti, save_nifti, write_csv
from custom.noise import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_ON_EMPTY,
    NOISE_NAMES,
    ON_EMPTY_MODES,
    applied_sizes,
    check_on_empty,
    class_dice,
    foreground_dice,
    noise_parameters,
    select_corrupted_cases,
    simulate_checked,
    simulate_noise,
)
from custom.noise.labelmap import as_label_array

REPORT_NAME = "noise_report.csv"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def parse_param(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, json.loads(VALUE))``; a VALUE that is not JSON is kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--param expects KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value  # e.g. step=cross
    return key.strip(), parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", required=True, type=Path, help="folder of clean NIfTI label maps (*.nii.gz, *.nii)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for the noisy label maps and report")
    parser.add_argument("--noise", required=True, help=f"noise name, one of: {', '.join(NOISE_NAMES)}")
    parser.add_argument("--seed", type=int, default=0, help="experiment seed (default 0)")
    parser.add_argument("--num-classes", type=int, default=None, help="C incl. background (default: max label + 1)")
    parser.add_argument("--alpha", type=float, default=1.0, help="fraction of cases to corrupt (default 1.0)")
    parser.add_argument(
        "--param", action="append", default=[], type=parse_param, metavar="KEY=VALUE",
        help="simulator parameter, JSON value, repeatable (e.g. --param beta=0.7 --param matrix=[[0.9,0.1],[0.2,0.8]])",
    )
    parser.add_argument(
        "--ignore-spacing", action="store_true",
        help="use unit voxels instead of the header's voxel size (mtcl then needs its sizes in voxels: r_min/r_max)",
    )
    parser.add_argument(
        "--on-empty", choices=ON_EMPTY_MODES, default=DEFAULT_ON_EMPTY,
        help="a noisy map that lost a class of the clean map: redraw (default; seeded by seed, case and attempt), "
        "keep (counted in the report) or error",
    )
    parser.add_argument(
        "--redraw-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS, metavar="N",
        help=f"draws allowed per case with --on-empty redraw before an error (default {DEFAULT_MAX_ATTEMPTS})",
    )
    return parser


def case_id_of(path: Path) -> str:
    """File name without its NIfTI suffix."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_label_files(folder: Path) -> list[Path]:
    """The NIfTI files of ``folder``, sorted by name.

    Raises:
        DataError: the folder is missing or holds no NIfTI file, or two files share a case id.
    """
    if not folder.is_dir():
        raise DataError(folder, "labels folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise DataError(folder, "no NIfTI label maps (*.nii.gz, *.nii) in this folder")
    seen: dict[str, Path] = {}
    for path in files:
        case_id = case_id_of(path)
        if case_id in seen:
            raise DataError(path, f"same case id {case_id!r} as {seen[case_id].name}")
        seen[case_id] = path
    return files


def read_label(path: Path, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray, Any]:
    """Load and check one label map; every problem becomes a :class:`DataError` naming ``path``."""
    array, affine, header = load_nifti(path)
    try:
        as_label_array(array, num_classes)
    except ValueError as exc:
        raise DataError(path, str(exc)) from exc
    return array, affine, header


def check_inputs(files: Sequence[Path], num_classes: int | None) -> int:
    """Read every file once; return C (given, or max label + 1 and at least 2)."""
    largest = 0
    for path in files:
        array, _, _ = read_label(path)
        largest = max(largest, int(array.max()) if array.size else 0)
        if num_classes is not None and largest >= num_classes:
            raise DataError(
                path, f"label values outside 0..{num_classes - 1} (found {largest}; --num-classes {num_classes})"
            )
    return num_classes if num_classes is not None else max(largest + 1, 2)


def output_dtype(array: np.ndarray, header: Any) -> np.dtype:
    """Keep the source's on-disk integer type (the loaded array is float when the header has scaling)."""
    on_disk = np.dtype(header.get_data_dtype())
    return on_disk if np.issubdtype(on_disk, np.integer) else array.dtype


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Do the work; returns the report rows. Raises DataError/ValueError on bad input, before any write."""
    if args.noise not in NOISE_NAMES:
        raise ValueError(f"unknown noise {args.noise!r}; choose one of {', '.join(NOISE_NAMES)}")
    params = dict(args.param)
    accepted = noise_parameters(args.noise)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"noise {args.noise!r} does not take parameter(s) {unknown}; it accepts {sorted(accepted)}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    check_on_empty(args.on_empty, args.redraw_attempts)
    labels_dir, out_dir = args.labels.resolve(), args.out.resolve()
    if labels_dir == out_dir:
        raise DataError(out_dir, "--out must differ from --labels (the clean labels would be overwritten)")

    files = list_label_files(labels_dir)
    num_classes = check_inputs(files, args.num_classes)
    # a dry run on an empty map validates the parameter values before anything is written (mm sizes without a
    # spacing fail here already with --ignore-spacing)
    dry_run = np.zeros((2, 2, 2), np.int32)
    dry_spacing = None if args.ignore_spacing else (1.0, 1.0, 1.0)
    simulate_noise(args.noise, dry_run, seed=args.seed, case_id="", num_classes=num_classes, spacing=dry_spacing,
                   **params)
    case_ids = [case_id_of(p) for p in files]
    corrupted = set(select_corrupted_cases(case_ids, args.alpha, args.seed))
    print(f"{len(files)} label maps, C={num_classes}, noise {args.noise!r} on {len(corrupted)} (alpha={args.alpha})")

    created_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".make_noisy_labels.", dir=out_dir))
    rows: list[dict[str, Any]] = []
    try:
        for index, (path, case_id) in enumerate(zip(files, case_ids), start=1):
            array, affine, header = read_label(path, num_classes)
            noise = args.noise if case_id in corrupted else "none"
            spacing = None if args.ignore_spacing else [float(z) for z in header.get_zooms()[:3]]
            try:
                checked = simulate_checked(
                    noise, array, seed=args.seed, case_id=case_id, on_empty=args.on_empty,
                    max_attempts=args.redraw_attempts, num_classes=num_classes, spacing=spacing,
                    **(params if noise != "none" else {}),
                )
            except ValueError as exc:
                raise DataError(path, str(exc)) from exc
            result = checked.result
            dice = foreground_dice(result.noisy, array, num_classes)
            per_class = class_dice(result.noisy, array, num_classes)
            size_mm, size_voxels = applied_sizes(result.params, spacing)
            save_nifti(result.noisy, affine, staging / path.name, header=header, dtype=output_dtype(array, header))
            rows.append({
                "case_id": case_id,
                "noise": noise,
                "params": json.dumps(result.params),
                "noisy_dice": round(dice, 6),
                "label_clean": str(path),
                "label_noisy": str(out_dir / path.name),
                **{f"dice_{c}": "" if d is None else round(d, 6) for c, d in enumerate(per_class, start=1)},
                "lost_classes": json.dumps(checked.lost),
                "attempts": checked.attempts if noise != "none" else 0,
                "rejected_draws": json.dumps(checked.rejected),
                "size_mm": "" if size_mm is None else json.dumps(size_mm),
                "size_voxels": "" if size_voxels is None else json.dumps(size_voxels),
            })
            op = result.params.get("op")
            label_op = f" ({op})" if op else ""
            sizes = f", size {size_mm} mm = {size_voxels} voxels" if noise == "mtcl" else ""
            redrawn = f", redrawn (draw {checked.attempts} kept)" if checked.rejected else ""
            lost = f", LOST classes {checked.lost} (kept)" if checked.lost else ""
            print(f"[{index}/{len(files)}] {case_id}: {noise}{label_op}{sizes}{redrawn}{lost}, noisy Dice {dice:.4f}",
                  flush=True)
        for path in files:
            os.replace(staging / path.name, out_dir / path.name)
        write_csv(rows, out_dir / REPORT_NAME)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_out_dir and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows = run(args)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dice = np.array([row["noisy_dice"] for row in rows])
    corrupted = np.array([row["noise"] != "none" for row in rows])
    summary = f"mean noisy Dice {dice.mean():.4f} over {len(rows)} cases"
    if corrupted.any() and not corrupted.all():
        summary += f" ({dice[corrupted].mean():.4f} over the {int(corrupted.sum())} corrupted)"
    per_class = []
    for column in (k for k in rows[0] if k.startswith("dice_")):
        values = [float(row[column]) for row in rows if row[column] != ""]
        lost = sum(int(column[5:]) in json.loads(row["lost_classes"]) for row in rows)
        mean = f"{np.mean(values):.4f}" if values else "n/a"
        per_class.append(f"class {column[5:]} {mean}, lost {lost}")
    summary += "; per class (Dice, cases that lost the class): " + "; ".join(per_class)
    redrawn = sum(row["rejected_draws"] != "[]" for row in rows)
    summary += f"; --on-empty {args.on_empty}: {redrawn} case(s) redrawn"
    print(summary)
    print(f"wrote {len(rows)} label maps and {REPORT_NAME} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
