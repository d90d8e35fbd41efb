"""How far a noisy label map is from the clean one: foreground Dice (mean, per class), mismatch ratio, volume change."""

from __future__ import annotations

import numpy as np

from custom.noise.labelmap import as_label_array

__all__ = ["confusion_counts", "foreground_dice", "class_dice", "mismatch_ratio", "relative_volume_change"]


def confusion_counts(noisy: np.ndarray, clean: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Voxel counts ``M[c_clean, c_noisy]`` of two class-index maps of the same shape.

    Args:
        noisy: class-index map, any shape.
        clean: class-index map, same shape as ``noisy``.
        num_classes: minimum matrix size; grown to fit the largest label present.

    Returns:
        int64 array of shape ``(C, C)``; rows are clean classes, columns noisy classes.

    Raises:
        ValueError: shapes differ or the maps are not valid label maps.
    """
    noisy_arr = np.asarray(noisy)
    clean_arr = np.asarray(clean)
    if noisy_arr.shape != clean_arr.shape:
        raise ValueError(
            f"noisy and clean label maps must have the same shape, got {noisy_arr.shape} and {clean_arr.shape}."
        )
    noisy_arr = _as_int_labels(noisy_arr, "noisy")
    clean_arr = _as_int_labels(clean_arr, "clean")
    size = max(int(noisy_arr.max(initial=0)), int(clean_arr.max(initial=0))) + 1
    if num_classes is not None:
        size = max(size, int(num_classes))
    # one bincount over the joint index instead of a loop over class pairs
    joint = clean_arr.ravel() * size + noisy_arr.ravel()
    return np.bincount(joint, minlength=size * size).reshape(size, size)


def _as_int_labels(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 3:
        return as_label_array(array, name=name)
    # not 3D: reuse the 3D checks on a reshaped view
    return as_label_array(array.reshape(1, 1, -1), name=name).reshape(array.shape)


def foreground_dice(noisy: np.ndarray, clean: np.ndarray, num_classes: int | None = None) -> float:
    """Mean Dice over the foreground classes present in either map.

    Dice of class ``c`` is ``2 |N_c & G_c| / (|N_c| + |G_c|)``; classes absent from both maps are skipped,
    so that a missing structure neither rewards nor punishes. Both maps empty gives 1.0.

    Args:
        noisy: class-index map (e.g. ``H, W, D``).
        clean: class-index map, same shape.
        num_classes: optional number of classes; only used to size the confusion matrix.

    Raises:
        ValueError: shapes differ or non-integer / negative values.
    """
    counts = confusion_counts(noisy, clean, num_classes)
    intersection = np.diag(counts)[1:].astype(np.float64)
    clean_sizes = counts.sum(axis=1)[1:]
    noisy_sizes = counts.sum(axis=0)[1:]
    denominator = (clean_sizes + noisy_sizes).astype(np.float64)
    present = denominator > 0
    if not np.any(present):
        return 1.0
    return float(np.mean(2.0 * intersection[present] / denominator[present]))


def mismatch_ratio(noisy: np.ndarray, clean: np.ndarray) -> float:
    """``sum_c (|FP_c| + |FN_c|) / sum_c |clean_c|`` over foreground classes (the noise level of SP-guided).

    For a binary map this is ``(|FP| + |FN|) / |clean|``. A voxel whose foreground class changed counts twice
    (a false negative of the clean class and a false positive of the noisy class). Returns 0.0 when both maps
    have no foreground and ``inf`` when only the clean map is empty.
    """
    noisy_arr = np.asarray(noisy)
    clean_arr = np.asarray(clean)
    if noisy_arr.shape != clean_arr.shape:
        raise ValueError(
            f"noisy and clean label maps must have the same shape, got {noisy_arr.shape} and {clean_arr.shape}."
        )
    differ = noisy_arr != clean_arr
    both_foreground = (noisy_arr > 0) & (clean_arr > 0)
    wrong = int(np.count_nonzero(differ)) + int(np.count_nonzero(differ & both_foreground))
    clean_volume = int(np.count_nonzero(clean_arr))
    if clean_volume == 0:
        return 0.0 if wrong == 0 else float("inf")
    return wrong / clean_volume


def relative_volume_change(noisy: np.ndarray, clean: np.ndarray) -> float:
    """``(|noisy foreground| - |clean foreground|) / |clean foreground|`` (signed; SP-guided's beta is its size)."""
    clean_volume = int(np.count_nonzero(np.asarray(clean)))
    noisy_volume = int(np.count_nonzero(np.asarray(noisy)))
    if clean_volume == 0:
        return 0.0 if noisy_volume == 0 else float("inf")
    return (noisy_volume - clean_volume) / clean_volume


def class_dice(noisy: np.ndarray, clean: np.ndarray, num_classes: int) -> list[float | None]:
    """Dice of each foreground class ``1..C-1``: ``2 |N_c & G_c| / (|N_c| + |G_c|)``, ``None`` when ``c`` is
    absent from both maps (0.0 when only one holds it, e.g. a class the noise erased).

    Args:
        noisy: class-index map, any shape.
        clean: class-index map, same shape.
        num_classes: C (background included).

    Returns:
        list of ``C - 1`` floats or ``None``, index 0 for class 1.

    Raises:
        ValueError: shapes differ, non-integer / negative values, or a value ``>= num_classes``.
    """
    counts = confusion_counts(noisy, clean, num_classes)
    if counts.shape[0] > num_classes:
        raise ValueError(f"label value {counts.shape[0] - 1} is outside 0..{num_classes - 1}.")
    intersection = np.diag(counts)[1:].astype(np.float64)
    denominator = (counts.sum(axis=1)[1:] + counts.sum(axis=0)[1:]).astype(np.float64)
    return [None if d == 0 else float(2.0 * i / d) for i, d in zip(intersection, denominator)]
