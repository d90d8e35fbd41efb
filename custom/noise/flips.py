"""Per-voxel label flips (JCAS-style noise): symmetric and class-conditional (asymmetric) transition noise."""

from __future__ import annotations

import numpy as np

from custom.noise.labelmap import as_label_array, check_num_classes

__all__ = ["check_transition_matrix", "symmetric_flip", "class_conditional_flip"]


def symmetric_flip(label: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Flip each voxel with probability ``rate`` to a class drawn uniformly among the *other* classes.

    Equivalent to :func:`class_conditional_flip` with ``T = (1 - rate) I + rate / (C - 1) (1 - I)``.

    Args:
        label: class-index map, shape ``(H, W, D)``, values in ``0..num_classes-1``.
        rate: flip probability in ``[0, 1]``; 0 is the identity, 1 never keeps the clean class.
        num_classes: C >= 2, background included.
        rng: NumPy generator (all draws come from it, so the result is reproducible).

    Returns:
        noisy class-index map, same shape and dtype as ``label``.

    Raises:
        ValueError: ``rate`` outside ``[0, 1]``, ``num_classes < 2`` or label values outside ``0..C-1``.
    """
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}.")
    num_classes = check_num_classes(num_classes)
    labels = as_label_array(label, num_classes)
    flip = rng.random(labels.shape) < rate
    # adding an offset in 1..C-1 modulo C lands uniformly on each of the C-1 other classes
    offset = rng.integers(1, num_classes, size=labels.shape)
    noisy = np.where(flip, (labels + offset) % num_classes, labels)
    return noisy.astype(np.asarray(label).dtype, copy=False)


def check_transition_matrix(matrix: np.ndarray, num_classes: int | None = None, atol: float = 1e-6) -> np.ndarray:
    """Return ``matrix`` as a float64 ``(C, C)`` row-stochastic array, or raise ``ValueError``.

    Rows are clean classes, columns noisy classes: ``matrix[i, j] = P(noisy = j | clean = i)``.
    """
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] < 2:
        raise ValueError(f"matrix must be a square C x C array with C >= 2, got shape {values.shape}.")
    if num_classes is not None and values.shape[0] != num_classes:
        raise ValueError(f"matrix is {values.shape[0]} x {values.shape[0]} but num_classes is {num_classes}.")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("matrix entries must be finite and non-negative.")
    row_sums = values.sum(axis=1)
    if not np.allclose(row_sums, 1.0, atol=atol):
        raise ValueError(f"every row of matrix must sum to 1 (rows = clean class), got row sums {row_sums.tolist()}.")
    return values


def class_conditional_flip(label: np.ndarray, matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw each voxel's noisy class from the row of ``matrix`` for its clean class.

    Args:
        label: class-index map, shape ``(H, W, D)``, values in ``0..C-1``.
        matrix: ``(C, C)`` row-stochastic transition matrix; rows = clean class, columns = noisy class.
        rng: NumPy generator.

    Returns:
        noisy class-index map, same shape and dtype as ``label``.

    Raises:
        ValueError: ``matrix`` not square/row-stochastic or label values outside ``0..C-1``.
    """
    transition = check_transition_matrix(matrix)
    num_classes = transition.shape[0]
    labels = as_label_array(label, num_classes)
    cumulative = np.cumsum(transition, axis=1)
    cumulative[:, -1] = np.inf  # rows sum to 1 only up to rounding: make sure every draw lands in a column
    uniform = rng.random(labels.shape)
    noisy = np.empty_like(labels)
    for clean_class in range(num_classes):  # C passes of vectorised inverse-CDF sampling (C is small)
        voxels = labels == clean_class
        noisy[voxels] = np.searchsorted(cumulative[clean_class], uniform[voxels], side="right")
    return noisy.astype(np.asarray(label).dtype, copy=False)
