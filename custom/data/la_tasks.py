"""Label tasks built from the LA release: the binary atrium as released, and a 3-class task for multi-class methods.

The LA HDF5 release has one foreground class. ``atrium_band`` splits it by distance to the atrium's surface into
an inner *core* (class 1) and a *boundary band* (class 2, the voxels within ``band_mm`` of the background), so a
multi-class method (JCAS) can be run on real images with real anatomy. The band is where annotators disagree and
where the MTCL simulator's dilations and erosions act, so the band class carries most of the noise; it is a
derived task (the band is not the atrial wall of the image), stated as such wherever it is reported.

The split is made on the clean native-resolution label (0.625 mm), before noise and downsampling, so the noise
simulators see a 3-class map and the noisy band moves with the noisy surface.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from custom.data.la_h5 import LA_LABELS, LA_SPACING_MM

__all__ = ["LA_TASKS", "DEFAULT_BAND_MM", "task_labels", "task_params", "boundary_band_label", "apply_task"]

DEFAULT_BAND_MM = 3.75  # two voxels at the CPU protocol's 1.875 mm
LA_TASKS: dict[str, dict[str, str]] = {
    "atrium": dict(LA_LABELS),
    "atrium_band": {"0": "background", "1": "la_core", "2": "la_boundary_band"},
}


def task_labels(task: str) -> dict[str, str]:
    """The ``labels`` mapping (class index as a string -> name) of ``task``.

    Raises:
        ValueError: unknown task.
    """
    if task not in LA_TASKS:
        raise ValueError(f"--task: unknown LA task {task!r}; choose from {sorted(LA_TASKS)}")
    return dict(LA_TASKS[task])


def task_params(task: str, band_mm: float = DEFAULT_BAND_MM) -> dict[str, float]:
    """The parameters of ``task`` as recorded in the datalist (``{}`` for ``atrium``), checked.

    Raises:
        ValueError: unknown task, or ``band_mm`` not positive for ``atrium_band``.
    """
    task_labels(task)
    if task == "atrium":
        return {}
    if not band_mm > 0:
        raise ValueError(f"--band-mm must be > 0, got {band_mm}")
    return {"band_mm": float(band_mm)}


def boundary_band_label(
    label: np.ndarray, band_mm: float = DEFAULT_BAND_MM, spacing_mm: float = LA_SPACING_MM
) -> np.ndarray:
    """Split a binary label into core (1) and boundary band (2) by the Euclidean distance to the background.

    Args:
        label: 3D integer array ``(H, W, D)``; every value > 0 is foreground.
        band_mm: width of the band in mm: a foreground voxel whose centre is at most ``band_mm`` from the nearest
            background voxel centre is band (the outermost foreground voxels are at distance one voxel).
        spacing_mm: isotropic voxel spacing of ``label`` in mm.

    Returns:
        uint8 array of the same shape: 0 background, 1 core, 2 band. A foreground thinner than the band is all band.

    Raises:
        ValueError: ``label`` is not 3D, or ``band_mm`` / ``spacing_mm`` is not positive.
    """
    from scipy.ndimage import distance_transform_edt

    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"expected a 3D label, got shape {label.shape}")
    if not band_mm > 0 or not spacing_mm > 0:
        raise ValueError(f"band_mm and spacing_mm must be > 0, got {band_mm} and {spacing_mm}")
    foreground = label > 0
    out = np.zeros(label.shape, dtype=np.uint8)
    if not foreground.any():
        return out
    # the distance transform only over the foreground's bounding box plus a background margin: the volumes are
    # ~30 M voxels, the atrium a few percent of them
    voxels = np.argwhere(foreground)
    lo = np.maximum(voxels.min(axis=0) - 1, 0)
    hi = voxels.max(axis=0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    fg_box = np.pad(foreground[box], 1, constant_values=False)  # background around the box too (volume edges)
    distance = distance_transform_edt(fg_box, sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
    region = out[box]
    region[foreground[box]] = 1
    region[foreground[box] & (distance <= band_mm + 1e-6)] = 2
    return out


def apply_task(label: np.ndarray, task: str, params: Mapping[str, float] | None = None) -> np.ndarray:
    """The clean label of ``task`` from a released binary LA label (native resolution)."""
    task_labels(task)
    if task == "atrium":
        return label
    return boundary_band_label(label, **dict(params or {}))
