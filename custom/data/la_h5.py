"""Reading the left-atrium HDF5 release (2018 Atrial Segmentation Challenge, UA-MT / MTCL form).

One file per case, ``<ID>.h5`` with keys ``image`` (float32, z-scored) and ``label`` (uint8, 1 = left atrium),
plus ``train.list`` / ``test.list`` (one ID per line) beside them. No spacing is stored: 0.625 mm isotropic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from custom.io import DataError

__all__ = ["LA_SPACING_MM", "LA_LABELS", "read_id_list", "read_h5_case", "la_affine"]

LA_SPACING_MM = 0.625
LA_LABELS = {"0": "background", "1": "left_atrium"}


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Case IDs from a ``train.list`` / ``test.list`` file: one per line, blank lines ignored.

    Raises:
        DataError: the file is missing, unreadable, empty or lists an ID twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "ID list not found")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read ID list ({type(exc).__name__}: {exc})") from exc
    # some releases write "<ID>/mri_norm2.h5" paths; the ID is the first path component
    ids = [line.strip().split("/")[0] for line in lines if line.strip()]
    if not ids:
        raise DataError(path, "ID list is empty")
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(path, f"ID list repeats {duplicates}")
    return ids


def read_h5_case(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one case as ``(image, label)``: float32 and uint8 arrays of the same 3D shape ``(H, W, D)``.

    Raises:
        DataError: the file is missing or not HDF5, lacks ``image`` or ``label``, holds non-3D arrays or arrays
            of different shapes, or a label that is not integer-valued.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with h5py.File(path, "r") as f:
            missing = [key for key in ("image", "label") if key not in f]
            if missing:
                raise DataError(path, f"missing HDF5 key(s) {missing} (found: {sorted(f.keys())})")
            image = np.asarray(f["image"][()])
            label = np.asarray(f["label"][()])
    except DataError:
        raise
    except Exception as exc:  # h5py raises OSError and others for corrupt files
        raise DataError(path, f"cannot read HDF5 ({type(exc).__name__}: {exc})") from exc
    if image.ndim != 3:
        raise DataError(path, f"'image' must be 3D, got shape {image.shape}")
    if label.shape != image.shape:
        raise DataError(path, f"'label' shape {label.shape} differs from 'image' shape {image.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise DataError(path, "'label' holds non-integer values")
    return image.astype(np.float32, copy=False), label


def la_affine(downsample: int = 1) -> np.ndarray:
    """The 4x4 RAS affine of an LA volume: diagonal 0.625 mm spacing, times ``downsample`` after block pooling.

    The origin moves to the centre of the first K x K x K block so that world coordinates stay aligned with
    the native-resolution volume.
    """
    if downsample < 1:
        raise ValueError(f"downsample must be >= 1, got {downsample}")
    affine = np.diag([LA_SPACING_MM * downsample] * 3 + [1.0])
    affine[:3, 3] = LA_SPACING_MM * (downsample - 1) / 2.0
    return affine
