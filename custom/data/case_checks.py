"""Check every case's image and labels before a run uses them: a bad case is an error naming the file and the problem.

Without these checks, a label with values 0/0.5, -1 or 255, a label whose shape, spacing or position differs from
its image, or an image of 0.0125 mm spacing trains a wrong model with exit status 0, and a 2D or 4D file or a label
value 7 in a binary task ends with a library error that names neither the file nor the cause.

:func:`check_cases` runs on a datalist's items (the configs' ``training`` list checks the training and validation
splits, ``evaluating`` the test split) before any network is built. It reads each file's NIfTI header (shape,
affine) and the voxels of the class labels only (small integer volumes; images are checked for non-finite voxels
when they are cached, :class:`custom.inference.folder_inference.CheckImaged`):

* image and labels are 3D (a trailing axis of size 1 is accepted);
* each label's grid agrees with the image's: same shape, same voxel size and the same position and orientation
  within ``affine_tolerance`` of a voxel;
* the spacing is finite and within ``spacing_range`` mm, and the image resampled to the training spacing keeps at
  least ``min_resampled_size`` voxels per axis and at most ``max_voxels`` voxels in all;
* class labels are finite whole numbers in ``0 .. num_classes - 1``.

Example::

    check_cases(load_datalist("data/demo/datalist.json", "training"), num_classes=2, pixdim=[1.25, 1.25, 1.25])
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np

from custom.io import DataError

__all__ = [
    "AFFINE_TOLERANCE",
    "SPACING_RANGE",
    "check_case",
    "check_case_arrays",
    "check_cases",
    "check_label_values",
    "require_meta",
    "require_streams",
]

logger = logging.getLogger(__name__)

# spacings outside this range (mm) are taken for a wrong header (metres written as mm, a missing pixdim)
SPACING_RANGE = (0.05, 50.0)
# a voxel's fraction by which a label's grid may differ from its image's (rounding in the writing tool)
AFFINE_TOLERANCE = 0.05
# datalist keys of volumes that share the image's grid, and which of them hold classes (superpixel ids do not)
GRID_KEYS = ("label", "label_clean", "clean_label", "superpixel")
CLASS_KEYS = ("label", "label_clean", "clean_label")


def _header(path: str) -> tuple[tuple[int, ...], np.ndarray] | None:
    """``(shape, affine)`` from the file's header; None for a file nibabel cannot read (``LoadImaged`` names it)."""
    try:
        image = nib.load(path)
    except Exception:  # noqa: BLE001 - not NIfTI or unreadable: the loader reports it with the file's name
        return None
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    return shape, np.asarray(image.affine, dtype=np.float64)


def _check_3d(shape: tuple[int, ...], path: str) -> None:
    if len(shape) != 3:
        kind = f"{len(shape)}D" + (" (several channels or time points)" if len(shape) == 4 else "")
        raise DataError(path, f"expected a 3D volume, got a {kind} one of shape {list(shape)}")


def _check_spacing(
    shape: tuple[int, ...], affine: np.ndarray, path: str, pixdim: Sequence[float] | None,
    spacing_range: Sequence[float], min_resampled_size: int, max_voxels: int | None,
) -> np.ndarray:
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    low, high = spacing_range
    if not np.all(np.isfinite(spacing)) or np.any(spacing < low) or np.any(spacing > high):
        raise DataError(path, f"spacing {np.round(spacing, 5).tolist()} mm is outside the sane range [{low}, {high}] "
                        "mm; check the pixdim (or affine) in its header")
    if pixdim is not None:
        target = np.asarray(pixdim, dtype=np.float64)
        resampled = [int(np.ceil(n * s / t - 1e-6)) for n, s, t in zip(shape, spacing, target)]  # noqa: B905
        total = int(np.prod(resampled, dtype=np.float64))
        if max_voxels is not None and total > max_voxels:  # the wording of CheckImaged, which checks it at caching
            raise DataError(path, f"spacing {np.round(spacing, 4).tolist()} mm and size {list(shape)} would need a "
                            f"{resampled} grid ({total:,} voxels) at {[round(float(t), 4) for t in target]} mm, over "
                            f"the limit of {max_voxels:,} voxels (max_voxels); check the file's spacing in its header")
        if min(resampled) < min_resampled_size:
            raise DataError(path, f"size {list(shape)} at spacing {np.round(spacing, 5).tolist()} mm shrinks to "
                            f"{resampled} voxels at the training spacing {target.tolist()} mm; check the spacing "
                            "in its header")
    return spacing


def _check_same_grid(
    image: tuple[tuple[int, ...], np.ndarray], image_path: str, label: tuple[tuple[int, ...], np.ndarray],
    label_path: str, tolerance: float,
) -> None:
    (shape, affine), (label_shape, label_affine) = image, label
    if label_shape != shape:
        raise DataError(label_path, f"shape {list(label_shape)} differs from its image's {list(shape)} ({image_path})")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    label_spacing = np.linalg.norm(label_affine[:3, :3], axis=0)
    if np.any(np.abs(label_spacing - spacing) > tolerance * spacing):
        raise DataError(label_path, f"spacing {np.round(label_spacing, 4).tolist()} mm differs from its image's "
                        f"{np.round(spacing, 4).tolist()} mm ({image_path})")
    # the eight corner voxels of the grid, placed by each affine: the label must lie on the image
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]).T
    shift = float(np.max(np.linalg.norm((label_affine @ corners - affine @ corners)[:3], axis=0)))
    if shift > tolerance * float(np.min(spacing)):
        raise DataError(label_path, f"position or orientation differs from its image's by up to {shift:.3g} mm "
                        f"(affine; {image_path}): the label does not lie on the image")


def check_label_values(values: np.ndarray, num_classes: int, path: str) -> None:
    """Raise a DataError naming ``path`` unless every voxel is a whole number in ``0 .. num_classes - 1``."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            found = np.unique(values[bad])[:5].tolist()
            raise DataError(path, f"{int(bad.sum())} voxel(s) are not whole class numbers (e.g. {found}); a label "
                            f"holds the classes 0..{num_classes - 1}")
    if values.size and (values.min() < 0 or values.max() > num_classes - 1):
        outside = np.unique(values[(values < 0) | (values > num_classes - 1)])[:5]
        raise DataError(path, f"label values {[int(v) for v in outside]} are outside the task's classes "
                        f"0..{num_classes - 1} (num_classes {num_classes} in the datalist)")


def check_case(
    item: Mapping[str, Any],
    num_classes: int,
    pixdim: Sequence[float] | None = None,
    spacing_range: Sequence[float] = SPACING_RANGE,
    min_resampled_size: int = 4,
    affine_tolerance: float = AFFINE_TOLERANCE,
    max_voxels: int | None = None,
) -> None:
    """Check one datalist item (``image`` and the label keys it has; see the module docstring).

    Raises:
        DataError: naming the file and the problem.
    """
    image_path = str(item["image"])
    image = _header(image_path)
    if image is None:
        return
    _check_3d(image[0], image_path)
    _check_spacing(image[0], image[1], image_path, pixdim, spacing_range, min_resampled_size, max_voxels)
    for key in GRID_KEYS:
        if not item.get(key):
            continue
        label_path = str(item[key])
        label = _header(label_path)
        if label is None:
            continue
        _check_3d(label[0], label_path)
        _check_same_grid(image, image_path, label, label_path, affine_tolerance)
        if key in CLASS_KEYS:
            check_label_values(np.asanyarray(nib.load(label_path).dataobj), num_classes, label_path)


def check_case_arrays(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, image_origin: str, label_origin: str,
    spacing_range: Sequence[float] = SPACING_RANGE,
) -> None:
    """Check a case loaded in memory (dataset preparation: ``scripts/prepare_nifti.py``, ``scripts/prepare_la.py``):
    image and label 3D and of one shape, the spacing within ``spacing_range`` mm, every image voxel finite (one NaN
    voxel would be copied into the prepared image and turn its whole normalised volume into NaN).

    Raises:
        DataError: naming the image's or label's origin and the problem.
    """
    _check_3d(tuple(np.shape(image)), image_origin)
    _check_3d(tuple(np.shape(label)), label_origin)
    if np.shape(label) != np.shape(image):
        raise DataError(label_origin, f"shape {list(np.shape(label))} differs from its image's "
                        f"{list(np.shape(image))} ({image_origin})")
    _check_spacing(tuple(np.shape(image)), np.asarray(affine, dtype=np.float64), image_origin, None, spacing_range,
                   1, None)
    bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
    if bad:
        raise DataError(image_origin, f"{bad} non-finite voxel(s) (NaN or Inf); replace them (e.g. with 0) before "
                        "preparing the dataset")


def check_cases(items: Iterable[Mapping[str, Any]], num_classes: int, pixdim: Sequence[float] | None = None,
                **kwargs: Any) -> int:
    """:func:`check_case` for every item; returns how many were checked.

    Raises:
        DataError: naming the first bad file and its problem.
    """
    count = 0
    for item in items:
        check_case(item, int(num_classes), pixdim, **kwargs)
        count += 1
    return count


# datalist entries the configs read, with what they mean (for the message)
_REQUIRED_META = {
    "num_classes": "the number of classes, background included",
    "spacing": "the training voxel size in mm, [x, y, z]",
}


def require_meta(meta: Mapping[str, Any], datalist: str) -> Mapping[str, Any]:
    """``meta`` (:func:`custom.data.read_datalist_meta`), if it has the entries the configs read.

    Raises:
        DataError: naming the datalist and the missing entry (a KeyError without a file before).
    """
    for key, meaning in _REQUIRED_META.items():
        if meta.get(key) is None:
            raise DataError(datalist, f"lacks '{key}' ({meaning}); add it, or write the datalist with "
                            "scripts/prepare_nifti.py")
    return meta


def require_streams(split: tuple[list, list], datalist: str) -> tuple[list, list]:
    """``(hq_items, lq_items)`` of a two-stream method (ALC, MTCL, ...), if both streams have a case.

    Raises:
        DataError: naming the datalist and the empty stream (``num_samples=0`` from the DataLoader before).
    """
    for items, name, hint in ((split[0], "HQ", "'quality': 'hq'"), (split[1], "LQ", "'quality': 'lq'")):
        if not items:
            raise DataError(datalist, f"the training split has no {name} case (no item with {hint}), and this "
                            "method trains on both HQ and LQ cases; use a datalist with both, or a single-stream "
                            "method (configs/supervised_la.json)")
    return split
