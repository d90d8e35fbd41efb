"""Turning a labelled dataset into the noisy-label training set: splits, simulated noise, datalist.

Shared logic of ``scripts/prepare_la.py`` (LA HDF5 release), ``scripts/prepare_nifti.py`` (MSD NIfTI layout)
and the synthetic demo set. The output folder holds::

    imagesTr/  labelsTr/ (clean)  labelsTr_noisy/ (LQ cases)  imagesTs/  labelsTs/
    datalist.json  noise_report.csv

Order of work per training case: load, check, simulate noise at native resolution (LQ cases; sizes in mm are
converted with the native spacing), then downsample image and labels by ``K`` (image: mean over K x K x K blocks;
labels: majority vote over the same blocks, ties going to the higher class index, i.e. a binary block is
foreground when at least half of it is). Trailing voxels that do not fill a whole block are cropped.

A noisy label that lost a class of its clean label (compared at the stored resolution, after pooling) is handled
by ``on_empty`` (``--on-empty``): ``redraw`` (default; another draw of the same simulator, seeded by
``(seed, case, attempt)``, at most ``max_attempts`` draws, then an error), ``keep`` (kept and counted) or
``error``. ``noise_report.csv`` has one row per training case: ``case_id, quality, noise, params`` (JSON of the
kept draw), ``noisy_dice`` (mean over the foreground classes), ``dice_<c>_<name>`` per foreground class (blank
where the class is in neither map), ``lost_classes`` (JSON list, classes of the clean label missing from the kept
noisy label), ``attempts`` (draws made; 0 for a clean label), ``rejected_draws`` (JSON, the draws that lost a
class and why), ``size_mm`` / ``size_voxels`` (JSON, per axis: what the simulator applied, e.g. the MTCL box side;
see :func:`custom.noise.applied_sizes`). The summary line states the Dice and the lost count per class.

Everything is written into a hidden temporary folder beside the output and renamed at the end, so a failed or
interrupted run leaves nothing half-written. NIfTI files are gzip-compressed with a zero timestamp and no file
name in the header (nibabel's deterministic writer), so two runs with the same seed give byte-identical files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from custom.data.datalist import relative_path
from custom.data.la_h5 import la_affine, read_h5_case, read_id_list
from custom.data.la_tasks import DEFAULT_BAND_MM, LA_TASKS, apply_task, task_labels, task_params
from custom.io import DataError, load_nifti, save_nifti, write_csv, write_json
from custom.noise import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_ON_EMPTY,
    NOISE_NAMES,
    ON_EMPTY_MODES,
    LostClassError,
    applied_sizes,
    check_on_empty,
    class_dice,
    foreground_dice,
    noise_parameters,
    select_corrupted_cases,
    simulate_checked,
)

__all__ = [
    "AFFINE_TOLERANCE",
    "DEFAULT_HQ_FRACTION",
    "CaseSource",
    "check_noise",
    "parse_noise_params",
    "check_split_options",
    "assign_splits",
    "downsample_image",
    "downsample_label",
    "downsample_affine",
    "voxel_spacing",
    "check_label_values",
    "resolve_output",
    "staged_directory",
    "prepare_dataset",
    "parse_list_spec",
    "read_list_specs",
    "la_sources",
    "nifti_sources",
    "read_dataset_labels",
    "prepare_la",
    "prepare_nifti",
    "main_la",
    "main_nifti",
]

AFFINE_TOLERANCE = 1e-3
DEFAULT_HQ_FRACTION = 0.25
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_REPORT_COLUMNS = ["case_id", "quality", "noise", "params", "noisy_dice"]
_CHECK_COLUMNS = ["lost_classes", "attempts", "rejected_draws", "size_mm", "size_voxels"]

# a loaded case: image (H, W, D) float, label (H, W, D) integer-valued, 4x4 affine, NIfTI header or None
LoadedCase = tuple[np.ndarray, np.ndarray, np.ndarray, Any]


@dataclass(frozen=True)
class CaseSource:
    """Where one case comes from and how to load it.

    Attributes:
        case_id: unique case identifier (used for file names and the per-case noise seed).
        image_origin: path (or description) of the image, named in error messages.
        label_origin: path (or description) of the clean label, named in error messages.
        load: returns ``(image, label, affine, header)``; raises :class:`custom.io.DataError` on bad input.
    """

    case_id: str
    image_origin: str
    label_origin: str
    load: Callable[[], LoadedCase]


# ----------------------------------------------------------------------------------------------------------------
# options


def check_noise(name: str, params: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`DataError` unless ``name`` is a known noise simulator that accepts the parameter names in
    ``params`` (checked before any work is done; values are checked by the simulator)."""
    if name not in NOISE_NAMES:
        raise DataError(None, f"unknown noise {name!r}; choose one of {sorted(NOISE_NAMES)}")
    accepted = noise_parameters(name)
    unknown = sorted(set(params or {}) - set(accepted))
    if unknown:
        raise DataError(None, f"noise {name!r} does not take parameter(s) {unknown}; it accepts {sorted(accepted)}")


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


def check_split_options(
    *,
    hq_fraction: float | None,
    hq_count: int | None,
    val_count: int,
    test_count: int,
    alpha: float | None,
    downsample: int,
) -> None:
    """Validate the split / noise options shared by the CLIs and :func:`prepare_dataset`.

    Raises:
        ValueError: an option out of range, or both ``hq_fraction`` and ``hq_count`` given.
    """
    if hq_fraction is not None and hq_count is not None:
        raise ValueError("give either hq_fraction or hq_count, not both")
    if hq_fraction is not None and not 0.0 <= hq_fraction <= 1.0:
        raise ValueError(f"hq_fraction must be in [0, 1], got {hq_fraction}")
    if hq_count is not None and hq_count < 0:
        raise ValueError(f"hq_count must be >= 0, got {hq_count}")
    if val_count < 0 or test_count < 0:
        raise ValueError(f"val_count and test_count must be >= 0, got {val_count} and {test_count}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if int(downsample) != downsample or downsample < 1:
        raise ValueError(f"downsample must be an integer >= 1, got {downsample}")


def _round_half_up(value: float) -> int:
    # Python's round() rounds half to even (round(5.5) = 6 but round(4.5) = 4); counts should not depend on parity
    return int(math.floor(value + 0.5))


def assign_splits(
    case_ids: Sequence[str],
    *,
    seed: int,
    val_count: int = 2,
    test_count: int = 0,
    hq_fraction: float | None = None,
    hq_count: int | None = None,
) -> dict[str, list[str]]:
    """Deterministically split case IDs into ``test``, ``validation``, ``hq`` and ``lq``.

    The IDs are sorted, shuffled by a generator seeded with ``seed`` (so the result depends on the set of IDs and
    the seed, not on their order), then cut into consecutive slices: ``test_count`` test cases,
    ``val_count`` validation cases, the HQ cases, and the rest (LQ). The HQ count is ``hq_count`` or
    ``round(hq_fraction * remaining)`` (half up; default fraction 0.25). Each returned list keeps the input order.

    Raises:
        ValueError: bad options, duplicate IDs, or fewer than one training case left after the held-out splits.
    """
    check_split_options(
        hq_fraction=hq_fraction, hq_count=hq_count, val_count=val_count, test_count=test_count, alpha=None, downsample=1
    )
    ids = [str(i) for i in case_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("case IDs must be unique")
    remaining = len(ids) - val_count - test_count
    if remaining < 1:
        raise ValueError(
            f"{len(ids)} cases cannot hold {test_count} test + {val_count} validation cases and still train"
        )
    if hq_count is None:
        hq_count = _round_half_up((DEFAULT_HQ_FRACTION if hq_fraction is None else hq_fraction) * remaining)
    if hq_count > remaining:
        raise ValueError(f"hq_count {hq_count} exceeds the {remaining} training cases")
    rng = np.random.default_rng([int(seed) % (2**32), 0x5B1])  # fixed salt: independent of the noise streams
    shuffled = [sorted(ids)[i] for i in rng.permutation(len(ids))]
    cuts = np.cumsum([test_count, val_count, hq_count])
    groups = {
        "test": set(shuffled[: cuts[0]]),
        "validation": set(shuffled[cuts[0] : cuts[1]]),
        "hq": set(shuffled[cuts[1] : cuts[2]]),
        "lq": set(shuffled[cuts[2] :]),
    }
    return {name: [i for i in ids if i in members] for name, members in groups.items()}


# ----------------------------------------------------------------------------------------------------------------
# resampling


def _crop_to_blocks(array: np.ndarray, factor: int) -> np.ndarray:
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array (H, W, D), got shape {array.shape}")
    if any(size < factor for size in array.shape):
        raise ValueError(f"shape {array.shape} is smaller than the downsampling factor {factor}")
    h, w, d = (size // factor * factor for size in array.shape)
    return array[:h, :w, :d]


def _blocks(array: np.ndarray, factor: int) -> np.ndarray:
    # (H, W, D) -> (H/K, W/K, D/K, K^3): one row per block
    h, w, d = (size // factor for size in array.shape)
    view = array.reshape(h, factor, w, factor, d, factor).transpose(0, 2, 4, 1, 3, 5)
    return view.reshape(h, w, d, factor**3)


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor``^3 blocks (trailing voxels cropped). ``(H, W, D)`` -> float32
    ``(H//K, W//K, D//K)``. ``factor=1`` returns a float32 copy."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    image = _crop_to_blocks(np.asarray(image), factor)
    if factor == 1:
        return image.astype(np.float32, copy=True)
    return _blocks(image.astype(np.float64), factor).mean(axis=-1).astype(np.float32)


def downsample_label(label: np.ndarray, factor: int, num_classes: int) -> np.ndarray:
    """Majority vote over non-overlapping ``factor``^3 blocks of an integer label map ``(H, W, D)`` with values in
    ``[0, num_classes)``; ties go to the higher class (a binary block with half its voxels foreground is
    foreground). Returns the label's dtype, shape ``(H//K, W//K, D//K)``."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    label = _crop_to_blocks(np.asarray(label), factor)
    if factor == 1:
        return label.copy()
    blocks = _blocks(label, factor)
    # votes[..., c] = voxels of class c per block; scanning classes from the top makes argmax prefer higher ones
    votes = np.stack([(blocks == c).sum(axis=-1) for c in range(num_classes - 1, -1, -1)], axis=-1)
    return (num_classes - 1 - votes.argmax(axis=-1)).astype(label.dtype)


def downsample_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """The affine of a volume pooled by ``factor``^3 blocks: voxel axes scaled by K, origin moved to the centre
    of the first block (so world coordinates of structures do not shift)."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    result = affine.copy()
    result[:3, :3] = affine[:3, :3] * factor
    result[:3, 3] = affine[:3, 3] + affine[:3, :3] @ np.full(3, (factor - 1) / 2.0)
    return result


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the three array axes: the lengths of the affine's first three columns."""
    sizes = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return tuple(float(s) for s in sizes)  # type: ignore[return-value]


def _check_integer_values(label: np.ndarray, origin: str | os.PathLike) -> None:
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise DataError(origin, "label holds non-integer values")


def check_label_values(label: np.ndarray, num_classes: int, origin: str | os.PathLike) -> np.ndarray:
    """Return ``label`` as uint8 (uint16 beyond 256 classes) after checking it holds integers in
    ``[0, num_classes)``.

    Raises:
        DataError: non-integer values or values outside the declared classes (naming ``origin``).
    """
    label = np.asarray(label)
    _check_integer_values(label, origin)
    outside = [v for v in np.unique(label).tolist() if not 0 <= v < num_classes]
    if outside:
        raise DataError(origin, f"label values {outside[:10]} are outside the declared classes 0..{num_classes - 1}")
    return label.astype(np.uint8 if num_classes <= 256 else np.uint16)


# ----------------------------------------------------------------------------------------------------------------
# output


def resolve_output(out: str | os.PathLike) -> tuple[Path, Path]:
    """``(data_dir, datalist_path)`` for ``--out``: a folder gets ``folder/datalist.json``; a ``*.json`` path is
    the datalist itself and the data go into a folder beside it named after its stem (``x/la.json`` ->
    ``x/la/``), whose paths the datalist stores relative to ``x/``."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        return out.parent / out.stem, out
    return out, out / "datalist.json"


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _apply_umask(root: Path) -> None:
    # mkdtemp / mkstemp create private 0700 / 0600 entries; the published output gets the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    for path in (root, *(root.rglob("*") if root.is_dir() else ())):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def staged_directory(final_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``final_dir``; on success rename it onto ``final_dir``.

    On any exception (including KeyboardInterrupt) the temporary folder is removed and ``final_dir`` is left as
    it was. An existing non-empty ``final_dir`` is refused unless ``overwrite`` (then replaced at the very end).

    Raises:
        DataError: ``final_dir`` is a file, or a non-empty folder without ``overwrite``.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not final_dir.is_dir():
        raise DataError(final_dir, "output exists and is not a folder")
    if _is_nonempty_dir(final_dir) and not overwrite:
        raise DataError(final_dir, "output folder exists and is not empty; choose another output or overwrite it")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        yield tmp
        _apply_umask(tmp)
        if _is_nonempty_dir(final_dir):
            if not overwrite:  # filled meanwhile, e.g. by a concurrent run: keep what is there
                raise DataError(final_dir, "output folder was filled by another process meanwhile")
            trash = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.old-", dir=final_dir.parent))
            os.replace(final_dir, trash / "old")
            os.replace(tmp, final_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final_dir)  # POSIX replaces an empty folder atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _builtin(value: Any) -> Any:
    # noise parameters may hold numpy scalars/arrays; make them JSON-friendly and stable
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_builtin(v) for v in value]
    return value


def _describe_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items() if k != "noise" and not isinstance(v, (list, dict)))


def _dice_columns(labels: Mapping[str, str], num_classes: int) -> list[str]:
    # one column per foreground class, named by index and a file-name-safe form of the class name
    columns = []
    for c in range(1, num_classes):
        slug = re.sub(r"[^0-9A-Za-z]+", "_", str(labels.get(str(c), ""))).strip("_")
        columns.append(f"dice_{c}_{slug}" if slug else f"dice_{c}")
    return columns


def _sizes_text(size_mm: Any, size_voxels: Any) -> str:
    # short per-case form for the progress line, e.g. "size=[3.125, 3.125, 3.125] mm = [5, 5, 5] vox"
    if size_voxels is None:
        return ""
    return f"size={size_mm} mm = {size_voxels} vox" if size_mm is not None else f"size={size_voxels} vox"


def _class_summary(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], labels: Mapping[str, str]) -> dict:
    """Per foreground class over the LQ rows: mean Dice (where the class is in either map), lost and redrawn
    counts. Keys are the class indices as strings."""
    lq = [row for row in rows if row["quality"] == "lq"]
    summary = {}
    for c, column in enumerate(columns, start=1):
        values = [float(row[column]) for row in lq if row[column] != ""]
        summary[str(c)] = {
            "name": str(labels.get(str(c), f"class_{c}")),
            "mean_noisy_dice_lq": round(float(np.mean(values)), 6) if values else None,
            "lq_cases_lost": sum(c in row["_lost"] for row in lq),
            "lq_cases_redrawn": sum(any(c in r["lost"] for r in row["_rejected"]) for row in lq),
        }
    return summary


def _per_class_text(noise_check: Mapping[str, Any]) -> str:
    # "per class (LQ noisy-vs-clean Dice, LQ cases that lost the class): heart 0.8123, lost 0; vessel 0.6012, lost 1"
    parts = []
    for info in noise_check["per_class"].values():
        dice = "n/a" if info["mean_noisy_dice_lq"] is None else f"{info['mean_noisy_dice_lq']:.4f}"
        parts.append(f"{info['name']} {dice}, lost {info['lq_cases_lost']}")
    return "per class (LQ noisy-vs-clean Dice, LQ cases that lost the class): " + "; ".join(parts)


def _on_empty_text(noise_check: Mapping[str, Any], lq_cases: int) -> str:
    redrawn, kept = noise_check["redrawn_cases"], noise_check["cases_with_lost_class"]
    text = (
        f"lost-class check (--on-empty {noise_check['on_empty']}): {len(redrawn)} of {lq_cases} LQ cases redrawn "
        f"({noise_check['rejected_draws']} draws rejected), {len(kept)} kept with a lost class"
    )
    per_class = noise_check["per_class"].values()
    details = [f"{i['name']}: {i['lq_cases_redrawn']} redrawn" for i in per_class if i["lq_cases_redrawn"]]
    if details:
        text += " (" + ", ".join(details) + ")"
    if kept:
        text += f"; kept: {', '.join(kept)}"
    return text


# ----------------------------------------------------------------------------------------------------------------
# the pipeline


def prepare_dataset(
    train_sources: Sequence[CaseSource],
    test_sources: Sequence[CaseSource],
    out: str | os.PathLike,
    *,
    num_classes: int,
    labels: Mapping[str, str],
    noise: str = "mtcl",
    noise_params: Mapping[str, Any] | None = None,
    alpha: float | None = None,
    hq_fraction: float | None = None,
    hq_count: int | None = None,
    val_count: int = 2,
    test_count: int = 0,
    seed: int = 0,
    downsample: int = 1,
    on_empty: str = DEFAULT_ON_EMPTY,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    name: str = "",
    description: str = "",
    extra_meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
    val_sources: Sequence[CaseSource] = (),
) -> Path:
    """Split, corrupt, downsample and write a dataset with its datalist and noise report.

    Args:
        train_sources: the labelled training pool (validation, HQ, LQ and, with ``test_count``, test cases).
        test_sources: dedicated test cases (clean labels); must be empty when ``test_count > 0``.
        val_sources: dedicated validation cases (clean labels), listed after the pool's ``val_count`` ones; the
            pool's split does not depend on them, so adding some leaves the training cases and their labels as
            they are.
        out: output folder, or a ``*.json`` datalist path (see :func:`resolve_output`).
        num_classes: C >= 2; every label must hold values in ``[0, C)``.
        labels: class names, ``{"0": "background", ...}`` with C entries.
        noise: a name from ``custom.noise.NOISE_NAMES``; applied to LQ cases at native resolution.
        noise_params: keyword arguments of the noise simulator.
        alpha: fraction of LQ cases that get corrupted (``select_corrupted_cases``); the others keep their clean
            label but stay LQ. ``None`` corrupts every LQ case.
        hq_fraction, hq_count, val_count, test_count, seed: see :func:`assign_splits`.
        downsample: block size K of the image mean / label majority pooling (1 = native resolution).
        on_empty: what to do with a noisy label that lost a class of the clean label (compared after pooling):
            ``"redraw"`` (draw again, deterministic per ``(seed, case, attempt)``), ``"keep"`` (keep, count and
            report it) or ``"error"`` (stop with a :class:`DataError` naming the case and class).
        max_attempts: draws allowed per case with ``"redraw"`` before the :class:`DataError`.
        name, description, extra_meta: stored in the datalist (which also gets ``noise_check``: the policy and,
            per class, the LQ mean Dice and the numbers of LQ cases that lost the class / were redrawn for it).
        overwrite: replace an existing non-empty output folder.
        log: progress printer (one line per case); ``None`` is silent.

    Returns:
        The datalist path.

    Raises:
        DataError: bad input data (naming the file), an unknown noise name (checked before any work), or a
            noisy label that lost a class when ``on_empty`` forbids it (or every redraw lost one).
        ValueError: bad options.
    """
    check_noise(noise, noise_params)
    check_on_empty(on_empty, max_attempts)
    check_split_options(
        hq_fraction=hq_fraction,
        hq_count=hq_count,
        val_count=val_count,
        test_count=test_count,
        alpha=alpha,
        downsample=downsample,
    )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if sorted(int(k) for k in labels) != list(range(num_classes)):
        raise ValueError(f"labels {dict(labels)} must name the classes 0..{num_classes - 1}")
    if test_sources and test_count:
        raise ValueError("test cases are given already: test_count must be 0")
    for source in (*train_sources, *val_sources, *test_sources):
        # the ID becomes a file name in the output
        if not source.case_id or source.case_id.startswith(".") or any(c in source.case_id for c in "/\\\0"):
            raise DataError(source.image_origin, f"case ID {source.case_id!r} is not usable as a file name")
    all_ids = [s.case_id for s in (*train_sources, *val_sources, *test_sources)]
    duplicates = sorted({i for i in all_ids if all_ids.count(i) > 1})
    if duplicates:
        raise DataError(None, f"case IDs appear more than once: {duplicates}")
    noise_params = dict(noise_params or {})
    downsample = int(downsample)
    say = log or (lambda message: None)

    splits = assign_splits(
        [s.case_id for s in train_sources],
        seed=seed,
        val_count=val_count,
        test_count=test_count,
        hq_fraction=hq_fraction,
        hq_count=hq_count,
    )
    corrupted = set(splits["lq"] if alpha is None else select_corrupted_cases(splits["lq"], alpha, seed))
    role = {case_id: group for group, members in splits.items() for case_id in members}
    role.update({s.case_id: "test" for s in test_sources})
    role.update({s.case_id: "validation" for s in val_sources})
    # training-pool order first (as listed), then the dedicated validation and test cases
    ordered = [*train_sources, *val_sources, *test_sources]

    data_dir, datalist_path = resolve_output(out)
    if datalist_path.parent != data_dir and datalist_path.exists() and not overwrite:
        raise DataError(datalist_path, "datalist exists; choose another output or overwrite it")

    def final(rel: str) -> str:
        return relative_path(data_dir / rel, datalist_path)

    entries: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    report: list[dict[str, Any]] = []
    class_names = {int(k): str(v) for k, v in labels.items()}
    dice_columns = _dice_columns(labels, num_classes)
    spacings: list[tuple[float, float, float]] = []
    with staged_directory(data_dir, overwrite=overwrite) as stage:
        for index, source in enumerate(ordered, start=1):
            case_id, group = source.case_id, role[source.case_id]
            image, clean, affine, header = source.load()
            clean = check_label_values(clean, num_classes, source.label_origin)
            native_spacing = voxel_spacing(affine)
            noisy = None
            noise_used, params_used = "none", {}
            check = {"lost": [], "attempts": 0, "rejected": [], "size_mm": None, "size_voxels": None}
            if group == "lq":
                noisy = clean
                if case_id in corrupted:
                    try:
                        checked = simulate_checked(
                            noise,
                            clean,
                            seed=seed,
                            case_id=case_id,
                            on_empty=on_empty,
                            max_attempts=max_attempts,
                            # the label that is kept is the pooled one: a class must survive the pooling too
                            view=lambda array: downsample_label(array, downsample, num_classes),
                            class_names=class_names,
                            num_classes=num_classes,
                            spacing=native_spacing,
                            **noise_params,
                        )
                    except LostClassError as exc:
                        raise DataError(source.label_origin, f"{exc} (--on-empty {on_empty})") from exc
                    except (TypeError, ValueError) as exc:
                        raise DataError(source.label_origin, f"noise {noise!r} failed: {exc}") from exc
                    result = checked.result
                    noisy = check_label_values(result.noisy, num_classes, f"{source.label_origin} ({noise} noise)")
                    noise_used, params_used = noise, _builtin(dict(result.params))
                    size_mm, size_voxels = applied_sizes(result.params, native_spacing)
                    check = {
                        "lost": checked.lost,
                        "attempts": checked.attempts,
                        "rejected": _builtin(checked.rejected),
                        "size_mm": _builtin(size_mm),
                        "size_voxels": _builtin(size_voxels),
                    }
                    if checked.lost:
                        names = ", ".join(class_names.get(c, str(c)) for c in checked.lost)
                        say(f"warning: {case_id}: the noisy label lost {names} (kept: --on-empty keep)")

            image = downsample_image(image, downsample)
            clean = downsample_label(clean, downsample, num_classes)
            out_affine = downsample_affine(affine, downsample)
            header = header if downsample == 1 else None  # a pooled volume no longer matches the source header

            test = group == "test"
            image_rel = f"{'imagesTs' if test else 'imagesTr'}/{case_id}.nii.gz"
            clean_rel = f"{'labelsTs' if test else 'labelsTr'}/{case_id}.nii.gz"
            save_nifti(image, out_affine, stage / image_rel, header=header, dtype=np.float32)
            save_nifti(clean, out_affine, stage / clean_rel, header=header, dtype=clean.dtype)
            clean_path = final(clean_rel)
            item = {"case_id": case_id, "image": final(image_rel), "label": clean_path, "label_clean": clean_path}
            status = group
            if group in ("hq", "lq"):
                spacings.append(voxel_spacing(out_affine))
                dice = 1.0
                stored_noisy = clean
                if noisy is not None:
                    noisy = downsample_label(noisy, downsample, num_classes)
                    noisy_rel = f"labelsTr_noisy/{case_id}.nii.gz"
                    save_nifti(noisy, out_affine, stage / noisy_rel, header=header, dtype=noisy.dtype)
                    item["label"] = final(noisy_rel)
                    dice = float(foreground_dice(noisy, clean, num_classes))
                    stored_noisy = noisy
                item.update({"quality": group, "noisy_dice": round(dice, 6)})
                entries["training"].append(item)
                per_class = class_dice(stored_noisy, clean, num_classes)
                report.append(
                    {
                        "case_id": case_id,
                        "quality": group,
                        "noise": noise_used,
                        "params": json.dumps(params_used, sort_keys=True),
                        "noisy_dice": f"{dice:.6f}",
                        **{col: "" if d is None else f"{d:.6f}" for col, d in zip(dice_columns, per_class)},
                        "lost_classes": json.dumps(check["lost"]),
                        "attempts": check["attempts"],
                        "rejected_draws": json.dumps(check["rejected"], sort_keys=True),
                        "size_mm": "" if check["size_mm"] is None else json.dumps(check["size_mm"]),
                        "size_voxels": "" if check["size_voxels"] is None else json.dumps(check["size_voxels"]),
                        "_lost": check["lost"],
                        "_rejected": check["rejected"],
                    }
                )
                redrawn = f"redrawn: draw {check['attempts']} kept" if check["rejected"] else ""
                lost = f"LOST {check['lost']}" if check["lost"] else ""
                parts = (
                    group,
                    noise_used,
                    _describe_params(params_used),
                    _sizes_text(check["size_mm"], check["size_voxels"]),
                    redrawn,
                    lost,
                    f"noisy_dice={dice:.3f}",
                )
                status = "  ".join(part for part in parts if part)
            else:
                entries["validation" if group == "validation" else "test"].append(item)
            say(f"[{index:>3}/{len(ordered)}] {case_id}  {status}")

        lq_dice = [row["noisy_dice"] for row in entries["training"] if row["quality"] == "lq"]
        mean_lq = round(float(np.mean(lq_dice)), 6) if lq_dice else None
        per_class_summary = _class_summary(report, dice_columns, labels)
        noise_check = {
            "on_empty": on_empty,
            "max_attempts": int(max_attempts),
            "per_class": per_class_summary,
            "redrawn_cases": [row["case_id"] for row in report if row["_rejected"]],
            "rejected_draws": sum(len(row["_rejected"]) for row in report),
            "cases_with_lost_class": [row["case_id"] for row in report if row["_lost"]],
        }
        datalist = {
            "name": name,
            "description": description,
            "labels": {str(k): v for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))},
            "num_classes": int(num_classes),
            "spacing": [round(float(s), 6) for s in np.median(np.asarray(spacings), axis=0)],
            "seed": int(seed),
            "downsample": downsample,
            "noise": {"name": noise, "params": _builtin(noise_params), "alpha": alpha},
            "mean_noisy_dice_lq": mean_lq,
            "noise_check": noise_check,
            **_builtin(dict(extra_meta or {})),
            **entries,
        }
        rows = [{k: v for k, v in row.items() if not k.startswith("_")} for row in report]
        write_csv(rows, stage / "noise_report.csv", fieldnames=[*_REPORT_COLUMNS, *dice_columns, *_CHECK_COLUMNS])
        inside = datalist_path.parent == data_dir
        if inside:
            write_json(datalist, stage / datalist_path.name)
    if not inside:
        write_json(datalist, datalist_path)
        _apply_umask(datalist_path)
    counts = {k: len(v) for k, v in splits.items()}
    counts["test"] += len(test_sources)
    counts["validation"] += len(val_sources)
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    if mean_lq is None:
        say(f"{summary}; no LQ cases")
    else:
        say(f"{summary}; mean noisy Dice on the {len(lq_dice)} LQ cases: {mean_lq:.4f}; {_per_class_text(noise_check)}")
        say(_on_empty_text(noise_check, len(lq_dice)))
    say(f"datalist: {datalist_path}")
    return datalist_path


# ----------------------------------------------------------------------------------------------------------------
# sources


def parse_list_spec(spec: str, h5_dir: str | os.PathLike) -> tuple[Path, slice]:
    """``FILE`` or ``FILE:START:STOP`` (a Python slice of the file's lines; either bound may be empty) -> ``(path,
    slice)``. A relative ``FILE`` that does not exist as given is looked up in ``h5_dir``.

    Examples: ``test.list`` (every ID), ``extra.list::14`` (the first 14), ``extra.list:14:18`` (lines 15-18).

    Raises:
        DataError: a bound that is not an integer.
    """
    name, bounds = spec, []
    parts = spec.split(":")
    if len(parts) == 3:
        name, bounds = parts[0], parts[1:]
    elif len(parts) != 1:
        raise DataError(spec, "expected FILE or FILE:START:STOP (e.g. extra.list::14)")
    try:
        start, stop = (int(b) if b.strip() else None for b in bounds) if bounds else (None, None)
    except ValueError:
        raise DataError(spec, "START and STOP of FILE:START:STOP must be integers or empty") from None
    path = Path(name)
    if not path.is_absolute() and not path.exists():
        path = Path(h5_dir) / name
    return path, slice(start, stop)


def read_list_specs(specs: Sequence[str], h5_dir: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """The IDs of several list specs (:func:`parse_list_spec`) in order, and for each ID the spec that listed it.

    Raises:
        DataError: a missing/empty list, an empty slice, or an ID listed twice (naming both specs).
    """
    ids: list[str] = []
    origin: dict[str, str] = {}
    for spec in specs:
        path, part = parse_list_spec(spec, h5_dir)
        chosen = read_id_list(path)[part]
        if not chosen:
            raise DataError(path, f"{spec!r} selects no ID")
        for case_id in chosen:
            if case_id in origin:
                raise DataError(path, f"ID {case_id} is listed twice ({origin[case_id]} and {spec})")
            origin[case_id] = spec
            ids.append(case_id)
    return ids, origin


def la_sources(
    h5_dir: str | os.PathLike,
    train_lists: Sequence[str] | None = None,
    test_lists: Sequence[str] | None = None,
    val_lists: Sequence[str] | None = None,
) -> tuple[list[CaseSource], list[CaseSource], list[CaseSource]]:
    """Training-pool, test and dedicated validation sources of an LA HDF5 folder (``train.list``, ``test.list``,
    ``<ID>.h5``).

    Missing ``.h5`` files are reported before any work. A missing ``test.list`` means no test split (unless
    ``test_lists`` names lists).

    Args:
        h5_dir: folder of ``<ID>.h5`` files and their lists.
        train_lists: list specs of the training pool (:func:`parse_list_spec`; default ``["train.list"]``).
        test_lists: list specs of the test cases (default ``["test.list"]`` where it exists, else none).
        val_lists: list specs of validation cases outside the pool (default none): they join the pool's
            ``val_count`` validation cases and leave the pool's split (hence the training cases) as it is.

    Raises:
        DataError: missing folder, missing/empty list, a listed file that does not exist, or an ID in two of the
            three groups.
    """
    h5_dir = Path(h5_dir)
    if not h5_dir.is_dir():
        raise DataError(h5_dir, "HDF5 folder not found")
    if test_lists is None:
        test_lists = ["test.list"] if (h5_dir / "test.list").exists() else []
    groups = {
        "the training pool": read_list_specs(train_lists or ["train.list"], h5_dir),
        "the test cases": read_list_specs(test_lists, h5_dir) if test_lists else ([], {}),
        "the validation lists": read_list_specs(val_lists, h5_dir) if val_lists else ([], {}),
    }
    names = list(groups)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            (ids_a, origin_a), (ids_b, origin_b) = groups[first], groups[second]
            both = sorted(set(ids_a) & set(ids_b))
            if both:
                raise DataError(
                    parse_list_spec(origin_b[both[0]], h5_dir)[0],
                    f"IDs in both {first} and {second}: {both} (e.g. {both[0]}: "
                    f"{origin_a[both[0]]} and {origin_b[both[0]]})",
                )
    for ids, origin in groups.values():
        for case_id in ids:
            if not (h5_dir / f"{case_id}.h5").is_file():
                raise DataError(h5_dir / f"{case_id}.h5", f"file not found (listed in {origin[case_id]})")

    def source(case_id: str) -> CaseSource:
        path = h5_dir / f"{case_id}.h5"

        def load() -> LoadedCase:
            image, label = read_h5_case(path)
            return image, label, la_affine(1), None

        return CaseSource(case_id, str(path), str(path), load)

    return tuple([source(i) for i in ids] for ids, _ in groups.values())  # type: ignore[return-value]


def _nifti_case_id(path: Path) -> str | None:
    if path.name.startswith(".") or not path.is_file():
        return None  # hidden files (e.g. macOS "._x.nii.gz") and folders are not cases
    for suffix in _NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _list_nifti(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(folder, "folder not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case_id = _nifti_case_id(path)
        if case_id is None:
            continue
        if case_id in files:
            raise DataError(path, f"case {case_id!r} is stored twice ({files[case_id].name})")
        files[case_id] = path
    if not files:
        raise DataError(folder, "folder holds no NIfTI files (*.nii, *.nii.gz)")
    return files


def _pair_images_labels(image_dir: Path, label_dir: Path) -> list[tuple[str, Path, Path]]:
    images, labels = _list_nifti(image_dir), _list_nifti(label_dir)
    pairs = []
    for image_id, image_path in images.items():
        # nnU-Net names single-channel images "<case>_0000"; other channels are not supported
        case_id = image_id[:-5] if image_id not in labels and image_id.endswith("_0000") else image_id
        if case_id not in labels:
            raise DataError(image_path, f"no matching label {case_id}.nii.gz in {label_dir}")
        pairs.append((case_id, image_path, labels[case_id]))
    paired = {case_id for case_id, _, _ in pairs}
    for case_id, label_path in labels.items():
        if case_id not in paired:
            raise DataError(label_path, f"no matching image in {image_dir}")
    if len(paired) != len(pairs):
        raise DataError(image_dir, "several images map to the same case (multi-channel images are not supported)")
    return pairs


def _nifti_source(case_id: str, image_path: Path, label_path: Path) -> CaseSource:
    def load() -> LoadedCase:
        image, image_affine, header = load_nifti(image_path)
        label, label_affine, _ = load_nifti(label_path)
        if label.shape != image.shape:
            raise DataError(
                label_path, f"label shape {label.shape} differs from image shape {image.shape} ({image_path})"
            )
        gap = float(np.max(np.abs(label_affine - image_affine)))
        if gap > AFFINE_TOLERANCE:
            raise DataError(
                label_path, f"label affine differs from the image's ({image_path}) by {gap:.4g} > {AFFINE_TOLERANCE}"
            )
        return image.astype(np.float32, copy=False), label, image_affine, header

    return CaseSource(case_id, str(image_path), str(label_path), load)


_LABELS_LOOKALIKES = {"label", "classes", "class_names", "label_names", "labelnames"}


def read_dataset_labels(path: str | os.PathLike) -> dict[str, str] | None:
    """Class names from an MSD ``dataset.json`` (``{"0": "background", ...}``) or an nnU-Net v2 one
    (``{"background": 0, ...}``); ``None`` when the file does not exist or has no ``labels`` (nor a look-alike).

    Raises:
        DataError: unreadable JSON, JSON that is not an object (e.g. a list), a look-alike key (``"label"``,
            ``"classes"``, ...) instead of ``"labels"``, or labels that are not the contiguous classes ``0..C-1``
            with C >= 2.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read JSON ({type(exc).__name__}: {exc})") from exc
    if not isinstance(content, dict):
        raise DataError(path, f"must be a JSON object with a 'labels' entry, got a {type(content).__name__}")
    raw = content.get("labels")
    if raw is None and "labels" not in content:
        near = [k for k in content if str(k).strip().lower() in _LABELS_LOOKALIKES]
        if near:
            raise DataError(path, f"has {near[0]!r} but no 'labels' entry (the class names must be under 'labels')")
        return None
    if not isinstance(raw, dict) or not raw:
        raise DataError(path, "'labels' must be a non-empty object")
    if all(str(k).strip().isdigit() for k in raw):
        names = {int(k): str(v) for k, v in raw.items()}
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
        names = {int(v): str(k) for k, v in raw.items()}
    else:
        raise DataError(path, "'labels' must map indices to names (MSD) or names to integer indices (nnU-Net v2)")
    if sorted(names) != list(range(len(names))) or len(names) < 2:
        raise DataError(path, f"'labels' must declare the contiguous classes 0..C-1 with C >= 2, got {sorted(names)}")
    return {str(k): names[k] for k in sorted(names)}


def nifti_sources(
    root: str | os.PathLike, log: Callable[[str], None] | None = print
) -> tuple[list[CaseSource], list[CaseSource], dict[str, str] | None]:
    """Training sources, test sources and declared class names of an MSD-layout folder.

    ``imagesTr/`` + ``labelsTr/`` are required; ``imagesTs/`` + ``labelsTs/`` give the test split when both
    exist (``imagesTs/`` alone, as in the public MSD release, is ignored). Class names come from
    ``dataset.json`` when present.

    Raises:
        DataError: missing or empty folders, images without labels or labels without images, ``labelsTs/``
            without ``imagesTs/``, a case in both splits, or a bad ``dataset.json``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    train = [_nifti_source(*pair) for pair in _pair_images_labels(root / "imagesTr", root / "labelsTr")]
    test: list[CaseSource] = []
    if (root / "labelsTs").is_dir():
        if not (root / "imagesTs").is_dir():
            raise DataError(root / "labelsTs", "labelsTs/ exists but imagesTs/ does not")
        test = [_nifti_source(*pair) for pair in _pair_images_labels(root / "imagesTs", root / "labelsTs")]
    elif (root / "imagesTs").is_dir() and log is not None:
        log(f"note: {root / 'imagesTs'} has no labelsTs/ beside it and is ignored")
    both = sorted({s.case_id for s in train} & {s.case_id for s in test})
    if both:
        raise DataError(root / "imagesTs", f"cases also in imagesTr/: {both}")
    return train, test, read_dataset_labels(root / "dataset.json")


def _infer_num_classes(sources: Sequence[CaseSource]) -> int:
    """Without declared classes, the largest label value seen decides (background-only data still gives C = 2);
    every class ``1..C-1`` must then occur in some label, so that a stray value (a 7 in a binary task) is an error
    naming its file instead of a silent 8-class task."""
    largest, largest_origin = 1, None
    seen: set[int] = set()
    for source in sources:
        label = load_nifti(source.label_origin)[0]
        _check_integer_values(label, source.label_origin)
        if label.size and float(np.min(label)) < 0:
            raise DataError(source.label_origin, f"label holds the negative value {np.min(label)}")
        values = {int(v) for v in np.unique(label)} if label.size else set()
        seen |= values
        if values and max(values) > largest:
            largest, largest_origin = max(values), source.label_origin
    missing = sorted(set(range(1, largest + 1)) - seen)
    if missing:
        raise DataError(
            largest_origin,
            f"label value {largest} implies {largest + 1} classes, but classes {missing} occur in no label; "
            "declare the classes in dataset.json ('labels') or fix the label",
        )
    return largest + 1


# ----------------------------------------------------------------------------------------------------------------
# entry points


def _check_output_apart(source_dir: str | os.PathLike, out: str | os.PathLike) -> None:
    # replacing an output folder that holds the input would delete the input
    data_dir = resolve_output(out)[0].resolve()
    source = Path(source_dir).resolve()
    if source == data_dir or data_dir in source.parents:
        raise DataError(out, f"the output must not contain the input folder {source}")


def prepare_la(
    h5_dir: str | os.PathLike,
    out: str | os.PathLike,
    train_lists: Sequence[str] | None = None,
    test_lists: Sequence[str] | None = None,
    task: str = "atrium",
    band_mm: float = DEFAULT_BAND_MM,
    val_lists: Sequence[str] | None = None,
    **options: Any,
) -> Path:
    """Prepare the LA HDF5 release (see :func:`la_sources` for the lists, :func:`prepare_dataset` for
    ``options``); returns the datalist path. ``task`` (:data:`custom.data.la_tasks.LA_TASKS`) is the released
    binary atrium, or ``atrium_band``: 3 classes, the atrium split into core and a ``band_mm`` boundary band."""
    check_noise(options.get("noise", "mtcl"), options.get("noise_params"))
    labels = task_labels(task)
    params = task_params(task, band_mm)
    _check_output_apart(h5_dir, out)
    train, test, val = la_sources(h5_dir, train_lists, test_lists, val_lists)
    if task != "atrium":
        train, test, val = ([_with_task(s, task, params) for s in sources] for sources in (train, test, val))
    options["extra_meta"] = {
        **dict(options.get("extra_meta") or {}),
        "train_lists": list(train_lists or ["train.list"]),
        "test_lists": list(test_lists) if test_lists is not None else ["test.list"],
        **({"val_lists": list(val_lists)} if val_lists else {}),
        "task": task,
        **({"task_params": params} if params else {}),
    }
    options.setdefault("name", "la2018_noisy")
    options.setdefault(
        "description", f"Left atrium LGE-MRI (2018 challenge, {Path(h5_dir).name}) with simulated label noise"
    )
    return prepare_dataset(train, test, out, num_classes=len(labels), labels=labels, val_sources=val, **options)


def _with_task(source: CaseSource, task: str, params: Mapping[str, Any]) -> CaseSource:
    """``source`` with its clean label mapped to ``task`` (:func:`custom.data.la_tasks.apply_task`) on loading."""

    def load() -> LoadedCase:
        image, label, affine, header = source.load()
        return image, apply_task(label, task, params), affine, header

    return CaseSource(source.case_id, source.image_origin, source.label_origin, load)


def prepare_nifti(
    root: str | os.PathLike, out: str | os.PathLike, log: Callable[[str], None] | None = print, **options: Any
) -> Path:
    """Prepare an MSD-layout NIfTI dataset (see :func:`prepare_dataset` for ``options``); returns the datalist
    path. Without ``dataset.json`` labels, C is the largest label value + 1 (labels are scanned once first)."""
    check_noise(options.get("noise", "mtcl"), options.get("noise_params"))
    _check_output_apart(root, out)
    train, test, labels = nifti_sources(root, log=log)
    if labels is None:
        num_classes = _infer_num_classes([*train, *test])
        labels = {"0": "background", **{str(c): f"class_{c}" for c in range(1, num_classes)}}
    options.setdefault("name", Path(root).resolve().name)
    options.setdefault("description", f"{Path(root).resolve().name} with simulated label noise")
    return prepare_dataset(train, test, out, num_classes=len(labels), labels=labels, log=log, **options)


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
    return 0


def main_la(argv: Sequence[str] | None = None) -> int:
    """``scripts/prepare_la.py``: returns the exit code (0 ok, 2 bad input with the message on stderr)."""
    return _run("la", argv)


def main_nifti(argv: Sequence[str] | None = None) -> int:
    """``scripts/prepare_nifti.py``: returns the exit code (0 ok, 2 bad input with the message on stderr)."""
    return _run("nifti", argv)
