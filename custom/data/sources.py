"""Where the cases of a dataset come from: the LA HDF5 release (ID lists) and MSD-layout NIfTI folders.

A :class:`CaseSource` names a case and loads it on demand, so the preparation (:mod:`custom.data.prepare`) reads one
case at a time. Discovery checks what it can before any case is loaded: missing files, unpaired images and labels,
IDs listed twice, class names in ``dataset.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from custom.data.la_h5 import la_affine, read_h5_case, read_id_list
from custom.data.la_tasks import apply_task
from custom.io import DataError, load_nifti, read_json

__all__ = [
    "AFFINE_TOLERANCE",
    "CaseSource",
    "LoadedCase",
    "check_label_values",
    "parse_list_spec",
    "read_list_specs",
    "la_sources",
    "with_task",
    "nifti_sources",
    "read_dataset_labels",
    "infer_num_classes",
]

AFFINE_TOLERANCE = 1e-3
_NIFTI_SUFFIXES = (".nii.gz", ".nii")

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
    content = read_json(path)
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


def infer_num_classes(sources: Sequence[CaseSource]) -> int:
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


def with_task(source: CaseSource, task: str, params: Mapping[str, Any]) -> CaseSource:
    """``source`` with its clean label mapped to ``task`` (:func:`custom.data.la_tasks.apply_task`) on loading."""

    def load() -> LoadedCase:
        image, label, affine, header = source.load()
        return image, apply_task(label, task, params), affine, header

    return CaseSource(source.case_id, source.image_origin, source.label_origin, load)
