"""Command lines of ``scripts/prepare_la.py`` and ``scripts/prepare_nifti.py``: options in, exit code out.

The options are checked before any work (exit code 2 with argparse's usage line); bad data found while preparing
exits with code 2 and ``error: <file>: <problem>`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from custom.data.la_tasks import DEFAULT_BAND_MM, LA_TASKS, task_params
from custom.data.prepare import check_noise, prepare_la, prepare_nifti
from custom.data.splits import check_split_options
from custom.io import DataError
from custom.noise import DEFAULT_MAX_ATTEMPTS, DEFAULT_ON_EMPTY, NOISE_NAMES, ON_EMPTY_MODES, check_on_empty

__all__ = ["parse_noise_params", "main_la", "main_nifti"]


def parse_noise_params(pairs: Sequence[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; values are read as JSON when they parse (numbers, lists, true/false, null),
    as plain strings otherwise. ``["beta=0.3", "ops=[\"dilate\"]", "mode=fast"]`` ->
    ``{"beta": 0.3, "ops": ["dilate"], "mode": "fast"}``.

    Raises:
        ValueError: a pair without ``=``, an empty or non-identifier key, or a key given twice.
    """
    params: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"noise parameter must look like KEY=VALUE with KEY an identifier, got {pair!r}")
        if key in params:
            raise ValueError(f"noise parameter {key!r} given twice")
        try:
            params[key] = json.loads(text)
        except json.JSONDecodeError:
            params[key] = text
    return params


def _parser(kind: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"prepare_{kind}.py",
        description=(
            "Build a noisy-label training set (clean + simulated noisy labels, HQ/LQ/validation/test splits, "
            "datalist.json, noise_report.csv)."
        ),
    )
    if kind == "la":
        parser.add_argument("--h5-dir", required=True, help="folder with <ID>.h5, train.list and test.list")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument(
            "--train-list",
            nargs="+",
            default=None,
            metavar="FILE[:START:STOP]",
            help="ID lists of the training pool (validation, HQ, LQ), in order; a relative FILE is looked up in "
            "--h5-dir; START:STOP slices its lines like Python (extra.list:14:18). Default: train.list",
        )
        parser.add_argument(
            "--test-list",
            nargs="+",
            default=None,
            metavar="FILE[:START:STOP]",
            help="ID lists of the test cases (clean labels), e.g. test.list extra.list::14. Default: test.list",
        )
        parser.add_argument(
            "--val-list",
            nargs="+",
            default=None,
            metavar="FILE[:START:STOP]",
            help="ID lists of validation cases outside the training pool (clean labels), added to the --val-count "
            "pool cases; the pool's split and training cases stay as they are. Default: none",
        )
        parser.add_argument(
            "--task",
            choices=sorted(LA_TASKS),
            default="atrium",
            help="label task: atrium (the release's binary label) or atrium_band (3 classes: the atrium's core and "
            "its boundary band, for multi-class methods; docs/methods/jcas.md)",
        )
        parser.add_argument(
            "--band-mm",
            type=float,
            default=DEFAULT_BAND_MM,
            help=f"atrium_band: band width in mm (default {DEFAULT_BAND_MM}, two voxels at --downsample 3)",
        )
    else:
        parser.add_argument("--root", required=True, help="MSD-layout folder (imagesTr/, labelsTr/, ...)")
        parser.add_argument("--out", required=True, help="output folder, or a datalist path ending in .json")
        parser.add_argument(
            "--test-count", type=int, default=0, help="test cases taken from the training pool (when no labelsTs/)"
        )
    parser.add_argument("--noise", default="mtcl", help=f"noise simulator, one of {sorted(NOISE_NAMES)}")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="noise parameter (repeatable; JSON values); sizes are in mm, e.g. r_max_mm=6 for mtcl (r_min/r_max "
        "give them in voxels instead); see docs/noise.md",
    )
    parser.add_argument(
        "--on-empty",
        choices=ON_EMPTY_MODES,
        default=DEFAULT_ON_EMPTY,
        help="a noisy label that lost a class of the clean label (or ended empty): redraw (default; another draw "
        "of the same simulator, seeded by seed, case and attempt), keep (kept, counted in the report) or error",
    )
    parser.add_argument(
        "--redraw-attempts",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help=f"draws allowed per case with --on-empty redraw before an error (default {DEFAULT_MAX_ATTEMPTS})",
    )
    parser.add_argument("--alpha", type=float, default=None, help="fraction of LQ cases to corrupt (default: all)")
    hq = parser.add_mutually_exclusive_group()
    hq.add_argument("--hq-fraction", type=float, default=None, help="fraction of training cases kept clean (0.25)")
    hq.add_argument("--hq-count", type=int, default=None, help="number of training cases kept clean")
    parser.add_argument("--val-count", type=int, default=2, help="validation cases from the training pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--downsample", type=int, default=1, help="block size K of the pooling (1 = native)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def _run(kind: str, argv: Sequence[str] | None) -> int:
    parser = _parser(kind)
    args = parser.parse_args(argv)
    test_count = getattr(args, "test_count", 0)
    try:
        params = parse_noise_params(args.param)
        check_noise(args.noise, params)
        check_split_options(
            hq_fraction=args.hq_fraction,
            hq_count=args.hq_count,
            val_count=args.val_count,
            test_count=test_count,
            alpha=args.alpha,
            downsample=args.downsample,
        )
        check_on_empty(args.on_empty, args.redraw_attempts)
        if kind == "la":
            task_params(args.task, args.band_mm)
    except ValueError as exc:
        parser.error(str(exc))  # exit code 2
    options = dict(
        noise=args.noise,
        noise_params=params,
        alpha=args.alpha,
        hq_fraction=args.hq_fraction,
        hq_count=args.hq_count,
        val_count=args.val_count,
        seed=args.seed,
        downsample=args.downsample,
        on_empty=args.on_empty,
        max_attempts=args.redraw_attempts,
        overwrite=args.overwrite,
    )
    log = lambda message: print(message, flush=True)  # noqa: E731
    try:
        if kind == "la":
            prepare_la(
                args.h5_dir, args.out, args.train_list, args.test_list, task=args.task, band_mm=args.band_mm,
                val_lists=args.val_list, log=log, **options,
            )
        else:
            prepare_nifti(args.root, args.out, log=log, test_count=test_count, **options)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # options that only the data can contradict (e.g. too few cases for the splits)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or a read-only output: nothing is left half-written (staged output)
        where = exc.filename or args.out
        print(f"error: {where}: cannot write the prepared dataset ({exc.strerror or exc})", file=sys.stderr)
        return 2
    return 0


def main_la(argv: Sequence[str] | None = None) -> int:
    """``scripts/prepare_la.py``: returns the exit code (0 ok, 2 bad input with the message on stderr)."""
    return _run("la", argv)


def main_nifti(argv: Sequence[str] | None = None) -> int:
    """``scripts/prepare_nifti.py``: returns the exit code (0 ok, 2 bad input with the message on stderr)."""
    return _run("nifti", argv)
