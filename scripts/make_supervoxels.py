"""Precompute SLIC supervoxels for SP-guided training (methods.md §2) and report how well they fit the clean labels.

Datalist mode (caches NIfTI maps and adds ``"superpixel"`` to every item)::

    python scripts/make_supervoxels.py --datalist data/la/datalist.json [--splits training] \
        [--voxels-per-segment 216 | --n-segments N] [--compactness 0.5] [--workers 2] [--force]

For each item the map is written to ``<image folder>/../supervoxels/<case_id>_supervoxels.nii.gz`` (image affine,
int32, ids 0..K-1) and the parameters to ``supervoxels/params.json``; a case whose cached map was made with the
same parameters is skipped unless ``--force``. The datalist is rewritten atomically with the relative path.

Benchmark mode (computes and reports only, writes nothing) on the LA HDF5 release (0.625 mm isotropic)::

    python scripts/make_supervoxels.py --h5-dir ../shared/data/la2018_h5 --workers 2

Both modes print per-case ASA and undersegmentation error against ``label_clean`` (or the h5 ``label``), the
means and the total wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from custom.data.supervoxels import (  # noqa: E402
    DEFAULT_COMPACTNESS,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_VOXELS_PER_SEGMENT,
    SUPERVOXEL_BACKENDS,
    achievable_segmentation_accuracy,
    compute_supervoxels,
    undersegmentation_error,
)
from custom.io import DataError, load_nifti, save_nifti, write_json  # noqa: E402

LA_SPACING_MM = 0.625
PARAMS_FILE = "params.json"
SUPERVOXEL_DIR = "supervoxels"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--datalist", type=Path, help="decathlon-style datalist JSON (paths relative to it)")
    source.add_argument("--h5-dir", type=Path, help="folder of LA *.h5 volumes: compute and report only")
    parser.add_argument("--splits", nargs="+", default=["training"], help="datalist sections to process")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--n-segments", type=int, default=None, help="supervoxels per volume (fixed)")
    size.add_argument(
        "--voxels-per-segment",
        type=float,
        default=DEFAULT_VOXELS_PER_SEGMENT,
        help=f"supervoxel size in voxels; the count scales with the volume (default {DEFAULT_VOXELS_PER_SEGMENT})",
    )
    parser.add_argument("--compactness", type=float, default=DEFAULT_COMPACTNESS, help="SLIC spatial weight")
    parser.add_argument("--backend", choices=SUPERVOXEL_BACKENDS, default="sitk")
    parser.add_argument("--max-iterations", type=int, default=DEFAULT_MAX_ITERATIONS)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    parser.add_argument("--force", action="store_true", help="recompute cached maps even if parameters match")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.n_segments is not None and args.n_segments < 1:
        parser.error("--n-segments must be >= 1")
    if args.voxels_per_segment <= 0 or args.compactness <= 0 or args.max_iterations < 1:
        parser.error("--voxels-per-segment, --compactness and --max-iterations must be positive")
    return args


def supervoxel_params(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters that determine a supervoxel map (what the cache is keyed on)."""
    return {
        "method": "slic",
        "backend": args.backend,
        "n_segments": args.n_segments,
        "voxels_per_segment": None if args.n_segments is not None else args.voxels_per_segment,
        "compactness": args.compactness,
        "max_iterations": args.max_iterations,
        "normalize": "zscore",
        "enforce_connectivity": True,
    }


def _slic_kwargs(params: dict[str, Any], num_threads: int) -> dict[str, Any]:
    return {
        "n_segments": params["n_segments"],
        "voxels_per_segment": params["voxels_per_segment"] or DEFAULT_VOXELS_PER_SEGMENT,
        "compactness": params["compactness"],
        "backend": params["backend"],
        "max_iterations": params["max_iterations"],
        "normalize": True,
        "enforce_connectivity": params["enforce_connectivity"],
        "num_threads": num_threads,
    }


def _quality(supervoxels: np.ndarray, label: np.ndarray | None) -> dict[str, Any]:
    if label is None:
        return {"asa": None, "ue": None, "ue_levinshtein": None}
    return {
        "asa": achievable_segmentation_accuracy(supervoxels, label),
        "ue": undersegmentation_error(supervoxels, label, "corrected"),
        "ue_levinshtein": undersegmentation_error(supervoxels, label, "levinshtein"),
    }


def process_nifti_case(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: compute, save and score one datalist case. Returns a result row (picklable)."""
    start = time.perf_counter()
    image, affine, header = load_nifti(job["image"])
    spacing = [float(z) for z in header.get_zooms()[:3]]
    supervoxels = compute_supervoxels(image, spacing, **_slic_kwargs(job["params"], job["num_threads"]))
    save_nifti(supervoxels, affine, job["output"], header=header, dtype=np.int32)
    label = None
    if job["label_clean"] is not None:
        label, _, _ = load_nifti(job["label_clean"])
        if label.shape != supervoxels.shape:
            raise DataError(job["label_clean"], f"shape {label.shape} differs from the image's {supervoxels.shape}")
        label = np.rint(label).astype(np.int64)
    row = {"case_id": job["case_id"], "num_supervoxels": int(supervoxels.max()) + 1}
    row.update(_quality(supervoxels, label))
    row["seconds"] = time.perf_counter() - start
    return row


def process_h5_case(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: compute and score one LA h5 volume (keys ``image``, ``label``); writes nothing."""
    import h5py

    start = time.perf_counter()
    try:
        with h5py.File(job["path"], "r") as f:
            image = np.asarray(f["image"][:])
            label = np.asarray(f["label"][:]).astype(np.int64)
    except (OSError, KeyError) as exc:
        raise DataError(job["path"], f"cannot read image/label ({type(exc).__name__}: {exc})") from exc
    supervoxels = compute_supervoxels(image, (LA_SPACING_MM,) * 3, **_slic_kwargs(job["params"], job["num_threads"]))
    row = {"case_id": Path(job["path"]).stem, "num_supervoxels": int(supervoxels.max()) + 1}
    row.update(_quality(supervoxels, label))
    row["seconds"] = time.perf_counter() - start
    return row


def _run(worker, jobs: list[dict[str, Any]], workers: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Run ``worker`` over ``jobs`` in processes; return (result rows, error messages) and print rows as they end."""
    rows, errors = [], []
    if not jobs:
        return rows, errors
    workers = min(workers, len(jobs))
    if workers == 1:
        outcomes = []
        for job in jobs:
            try:
                outcomes.append((job, worker(job), None))
            except Exception as exc:  # report every failing case, not just the first
                outcomes.append((job, None, exc))
            _print_outcome(*outcomes[-1])
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [(job, pool.submit(worker, job)) for job in jobs]
            outcomes = []
            for job, future in futures:
                try:
                    outcomes.append((job, future.result(), None))
                except Exception as exc:
                    outcomes.append((job, None, exc))
                _print_outcome(*outcomes[-1])
    for job, row, exc in outcomes:
        if exc is None:
            rows.append(row)
        else:
            errors.append(f"{job['case_id']}: {exc}")
    return rows, errors


def _fmt(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:.4f}"


def _print_outcome(job: dict[str, Any], row: dict[str, Any] | None, exc: BaseException | None) -> None:
    if exc is not None:
        print(f"{job['case_id']:<28} FAILED: {exc}", flush=True)
        return
    print(
        f"{row['case_id']:<28} K={row['num_supervoxels']:>6}  ASA={_fmt(row['asa'])}  UE={_fmt(row['ue'])}  "
        f"UE_lev={_fmt(row['ue_levinshtein'])}  {row['seconds']:.2f}s",
        flush=True,
    )


def _print_summary(rows: list[dict[str, Any]], wall_seconds: float, params: dict[str, Any]) -> None:
    scored = [r for r in rows if r["asa"] is not None]
    print(f"parameters: {json.dumps(params)}")
    if scored:
        asa = np.array([r["asa"] for r in scored])
        ue = np.array([r["ue"] for r in scored])
        ue_lev = np.array([r["ue_levinshtein"] for r in scored])
        k = np.array([r["num_supervoxels"] for r in scored])
        print(
            f"mean over {len(scored)} cases: ASA={asa.mean():.4f} (min {asa.min():.4f})  UE={ue.mean():.4f}  "
            f"UE_lev={ue_lev.mean():.4f}  K={k.mean():.0f}"
        )
    print(f"total wall time: {wall_seconds:.1f}s for {len(rows)} cases")


def run_h5(args: argparse.Namespace) -> int:
    folder = args.h5_dir
    paths = sorted(folder.glob("*.h5"))
    if not paths:
        print(DataError(folder, "no *.h5 files found"), file=sys.stderr)
        return 1
    params = supervoxel_params(args)
    threads = max(1, (os.cpu_count() or 1) // min(args.workers, len(paths)))
    jobs = [{"case_id": p.stem, "path": str(p), "params": params, "num_threads": threads} for p in paths]
    start = time.perf_counter()
    rows, errors = _run(process_h5_case, jobs, args.workers)
    _print_summary(rows, time.perf_counter() - start, params)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 1 if errors else 0


def _read_params_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache record only means recomputation
    return content if isinstance(content, dict) else {}


def run_datalist(args: argparse.Namespace) -> int:
    # absolute but symlinks kept: a linked image must not send the cache into the link target's folder
    datalist_path = Path(os.path.abspath(args.datalist))
    if not datalist_path.is_file():
        print(DataError(datalist_path, "datalist not found"), file=sys.stderr)
        return 1
    try:
        datalist = json.loads(datalist_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(DataError(datalist_path, f"cannot read JSON ({exc})"), file=sys.stderr)
        return 1
    root = datalist_path.parent
    params = supervoxel_params(args)

    items: list[dict[str, Any]] = []
    for split in args.splits:
        section = datalist.get(split)
        if not isinstance(section, list):
            print(DataError(datalist_path, f"no list under {split!r}"), file=sys.stderr)
            return 1
        items.extend(section)

    # plan: one supervoxel folder per image folder, each with its own params.json
    jobs, cached_rows, records = [], [], {}
    outputs: dict[str, dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict) or "image" not in item:
            print(DataError(datalist_path, f"item without 'image': {item!r}"), file=sys.stderr)
            return 1
        image = Path(os.path.normpath(root / item["image"]))
        case_id = str(item.get("case_id") or image.name.split(".")[0])
        out_dir = image.parent.parent / SUPERVOXEL_DIR
        output = out_dir / f"{case_id}_supervoxels.nii.gz"
        if str(output) in outputs and outputs[str(output)] is not item:
            print(DataError(datalist_path, f"two items map to {output} (case_id {case_id!r})"), file=sys.stderr)
            return 1
        outputs[str(output)] = item
        item["superpixel"] = os.path.relpath(output, root)
        clean = item.get("label_clean")
        record_file = out_dir / PARAMS_FILE
        if record_file not in records:
            records[record_file] = _read_params_file(record_file)
            if records[record_file].get("params") != params:
                records[record_file] = {"params": params, "cases": {}}
        cached = records[record_file]["cases"].get(case_id)
        if not args.force and cached is not None and output.is_file():
            keys = ("num_supervoxels", "asa", "ue", "ue_levinshtein")
            cached_rows.append({"case_id": case_id, **{key: cached.get(key) for key in keys}})
            continue
        records[record_file]["cases"].pop(case_id, None)
        jobs.append(
            {
                "case_id": case_id,
                "image": str(image),
                "label_clean": None if clean is None else os.path.normpath(root / clean),
                "output": str(output),
                "params": params,
                "record_file": record_file,
            }
        )

    threads = max(1, (os.cpu_count() or 1) // max(1, min(args.workers, len(jobs) or 1)))
    for job in jobs:
        job["num_threads"] = threads
    for row in cached_rows:
        print(f"{row['case_id']:<28} cached (parameters match)", flush=True)
    start = time.perf_counter()
    worker_jobs = [{k: v for k, v in job.items() if k != "record_file"} for job in jobs]
    rows, errors = _run(process_nifti_case, worker_jobs, args.workers)
    wall = time.perf_counter() - start

    by_case = {row["case_id"]: row for row in rows}
    for job in jobs:
        row = by_case.get(job["case_id"])
        if row is not None:
            records[job["record_file"]]["cases"][job["case_id"]] = {
                "file": Path(job["output"]).name,
                "num_supervoxels": row["num_supervoxels"],
                "asa": row["asa"],
                "ue": row["ue"],
                "ue_levinshtein": row["ue_levinshtein"],
            }
    for record_file, record in records.items():
        write_json(record, record_file)
    _print_summary(cached_rows + rows, wall, params)
    if errors:
        for message in errors:
            print(f"error: {message}", file=sys.stderr)
        print("datalist left unchanged because some cases failed", file=sys.stderr)
        return 1
    write_json(datalist, datalist_path)
    print(f"updated {datalist_path} ('superpixel' key on {len(items)} items)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_h5(args) if args.h5_dir is not None else run_datalist(args)


if __name__ == "__main__":
    sys.exit(main())
