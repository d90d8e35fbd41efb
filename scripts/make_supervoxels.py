"""Precompute SLIC supervoxels for SP-guided training (methods.md §2) and report how well they fit the clean labels.

Datalist mode (caches NIfTI maps and adds ``"superpixel"`` to every item)::

    python scripts/make_supervoxels.py --datalist data/la/datalist.json [--splits training] \
        [--voxels-per-segment 216 | --n-segments N] [--compactness 0.5] [--workers 2] [--force]

This is :func:`custom.data.supervoxels.ensure_supervoxels` (the function SP-guided configs call at config time)
with a pool of ``--workers`` processes and the cache record deciding what is reused: for each item the map is
written to ``<image folder>/../supervoxels/<case_id>_supervoxels.nii.gz`` (image affine, int32, ids 0..K-1) and the
parameters and per-case ASA / UE to ``supervoxels/params.json``; a case whose cached map was made with the same
parameters is skipped unless ``--force``. The datalist is rewritten atomically with the relative paths (left
unchanged when a case fails; every failing case is named).

Benchmark mode (computes and reports only, writes nothing) on the LA HDF5 release (0.625 mm isotropic)::

    python scripts/make_supervoxels.py --h5-dir ../shared/data/la2018_h5 --workers 2

Both modes print per-case ASA and undersegmentation error against ``label_clean`` (or the h5 ``label``), the
means and the total wall time. Each process runs SimpleITK with ``--threads`` threads (default: CPUs / workers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from custom.data.supervoxels import (  # noqa: E402
    DEFAULT_COMPACTNESS,
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_VOXELS_PER_SEGMENT,
    SUPERVOXEL_BACKENDS,
    compute_supervoxels,
    ensure_supervoxels,
    supervoxel_cache_params,
    supervoxel_quality,
)
from custom.io import DataError  # noqa: E402

LA_SPACING_MM = 0.625


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
    parser.add_argument(
        "--threads", type=int, default=None, help="SimpleITK threads per process (default: CPUs / workers)"
    )
    parser.add_argument("--force", action="store_true", help="recompute cached maps even if parameters match")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.n_segments is not None and args.n_segments < 1:
        parser.error("--n-segments must be >= 1")
    if args.voxels_per_segment <= 0 or args.compactness <= 0 or args.max_iterations < 1:
        parser.error("--voxels-per-segment, --compactness and --max-iterations must be positive")
    return args


def supervoxel_params(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters that determine a supervoxel map (what the cache is keyed on)."""
    return supervoxel_cache_params(
        args.n_segments, args.voxels_per_segment, args.compactness, args.backend, args.max_iterations
    )


def _threads(args: argparse.Namespace, num_jobs: int) -> int:
    if args.threads is not None:
        return args.threads
    return max(1, (os.cpu_count() or 1) // max(1, min(args.workers, num_jobs)))


def process_h5_case(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: compute and score one LA h5 volume (keys ``image``, ``label``); writes nothing."""
    import h5py

    start = time.perf_counter()
    try:
        with h5py.File(job["path"], "r") as f:
            image = f["image"][:]
            label = f["label"][:]
    except (OSError, KeyError) as exc:
        raise DataError(job["path"], f"cannot read image/label ({type(exc).__name__}: {exc})") from exc
    supervoxels = compute_supervoxels(image, (LA_SPACING_MM,) * 3, **job["slic"])
    row = {"case_id": job["case_id"], "cached": False, "num_supervoxels": int(supervoxels.max()) + 1}
    row.update(supervoxel_quality(supervoxels, label))
    row["seconds"] = time.perf_counter() - start
    return row


def _h5_case_in_pool(job: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """:func:`process_h5_case` returning a failure as its message (``DataError`` cannot be unpickled)."""
    try:
        return process_h5_case(job), None
    except Exception as exc:
        return None, str(exc)


def _h5_voxels(path: Path) -> int:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(np.prod(f["image"].shape))
    except (OSError, KeyError):
        return 0  # reported by the worker


def _run_h5_jobs(jobs: list[dict[str, Any]], workers: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the h5 jobs (largest volume first, so that no worker is left with a big case at the end); print each
    row as it ends; return (rows in job order, error messages)."""
    results: dict[str, dict[str, Any]] = {}
    errors = []
    order = sorted(jobs, key=lambda job: -job["voxels"])
    workers = min(workers, len(jobs))

    def outcome(job: dict[str, Any], row: dict[str, Any] | None, exc: BaseException | None) -> None:
        if exc is not None:
            print(f"{job['case_id']:<28} FAILED: {exc}", flush=True)
            errors.append(f"{job['case_id']}: {exc}")
        else:
            results[job["case_id"]] = row
            _print_outcome(row)

    if workers == 1:
        for job in order:
            try:
                outcome(job, process_h5_case(job), None)
            except Exception as exc:  # report every failing case, not just the first
                outcome(job, None, exc)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_h5_case_in_pool, job): job for job in order}
            for future in as_completed(futures):
                try:
                    row, message = future.result()
                except Exception as exc:  # e.g. a worker killed
                    row, message = None, f"{type(exc).__name__}: {exc}"
                outcome(futures[future], row, None if message is None else RuntimeError(message))
    return [results[job["case_id"]] for job in jobs if job["case_id"] in results], errors


def _fmt(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:.4f}"


def _print_outcome(row: dict[str, Any]) -> None:
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
    start = time.perf_counter()
    slic = {
        "n_segments": args.n_segments,
        "voxels_per_segment": args.voxels_per_segment,
        "compactness": args.compactness,
        "backend": args.backend,
        "max_iterations": args.max_iterations,
        "num_threads": _threads(args, len(paths)),
    }
    jobs = [{"case_id": p.stem, "path": str(p), "voxels": _h5_voxels(p), "slic": slic} for p in paths]
    rows, errors = _run_h5_jobs(jobs, args.workers)
    _print_summary(rows, time.perf_counter() - start, params)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 1 if errors else 0


def run_datalist(args: argparse.Namespace) -> int:
    params = supervoxel_params(args)
    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        if row["cached"]:
            print(f"{row['case_id']:<28} cached (parameters match)", flush=True)
        else:
            _print_outcome(row)

    start = time.perf_counter()
    try:
        ensure_supervoxels(
            args.datalist,
            splits=args.splits,
            n_segments=args.n_segments,
            voxels_per_segment=args.voxels_per_segment,
            compactness=args.compactness,
            backend=args.backend,
            max_iterations=args.max_iterations,
            num_threads=args.threads,
            force=args.force,
            workers=args.workers,
            keep_existing=False,
            report=report,
        )
    except DataError as exc:
        _print_summary(rows, time.perf_counter() - start, params)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_summary(rows, time.perf_counter() - start, params)
    print(f"{args.datalist}: 'superpixel' key on every item of {', '.join(args.splits)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_h5(args) if args.h5_dir is not None else run_datalist(args)


if __name__ == "__main__":
    sys.exit(main())
