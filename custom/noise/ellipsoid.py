"""Ellipsoid label noise (JCAS-style): each connected component redrawn as its best-fit ellipsoid.

The ellipsoid of a component has the component's centroid, the shape of its covariance matrix (axes along the
eigenvectors, lengths proportional to the square roots of the eigenvalues) and the component's voxel count:
it is the set of the ``V`` voxels of smallest Mahalanobis distance to the centroid (up to voxels tied at the
same distance, which are kept or dropped together so that symmetric shapes stay symmetric). The covariance is that of
the union of unit voxel cubes (the voxel-centre covariance plus ``I / 12``), which keeps it invertible for a
single voxel or a flat component. The Mahalanobis distance is affine-invariant, so voxel spacing plays no role.

Overlaps (multi-class or nearby components): a voxel inside several ellipsoids goes to the one in which it is
deepest (smallest Mahalanobis distance relative to that ellipsoid's radius); everything else is background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from custom.noise.labelmap import as_label_array, foreground_classes

__all__ = ["component_moments", "ellipsoid_relabel"]


def component_moments(components: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts, centroids and covariances of labelled components ``1..count``.

    Args:
        components: component-index map (0 = none), shape ``(H, W, D)``.
        count: number of components.

    Returns:
        ``(sizes (K,), centroids (K, 3), covariances (K, 3, 3))`` in voxel units; each covariance includes the
        ``I / 12`` of a unit cube.
    """
    index = np.nonzero(components)
    ids = components[index] - 1
    coords = np.stack(index, axis=1).astype(np.float64)  # (N, 3)
    sizes = np.bincount(ids, minlength=count).astype(np.float64)
    # first and second moments per component with bincount, instead of a loop over components
    centroids = np.stack([np.bincount(ids, coords[:, a], minlength=count) for a in range(3)], axis=1) / sizes[:, None]
    centred = coords - centroids[ids]
    covariances = np.empty((count, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            value = np.bincount(ids, centred[:, a] * centred[:, b], minlength=count) / sizes
            covariances[:, a, b] = covariances[:, b, a] = value
    covariances += np.eye(3) / 12.0
    return sizes.astype(np.int64), centroids, covariances


def _volume_threshold(distance: np.ndarray, size: int) -> float:
    """The distance ``t`` for which ``#(distance <= t)`` is closest to ``size``.

    Voxels at equal distance are taken or left together (a symmetric component stays symmetric), so the count
    can miss ``size`` by part of one shell of tied voxels.
    """
    values, counts = np.unique(distance, return_counts=True)
    return float(values[int(np.argmin(np.abs(np.cumsum(counts) - size)))])


def ellipsoid_relabel(label: np.ndarray, connectivity: int = 3) -> tuple[np.ndarray, dict]:
    """Replace each connected component of each foreground class by its volume-matched best-fit ellipsoid.

    Args:
        label: class-index map, shape ``(H, W, D)``.
        connectivity: neighbourhood for connected components: 1 (6-), 2 (18-) or 3 (26-connected).

    Returns:
        ``(noisy, info)``: the noisy map (same shape and dtype as ``label``) and ``{"components": K}``.

    Raises:
        ValueError: bad ``connectivity`` or an invalid label map.
    """
    labels = as_label_array(label)
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}.")
    structure = ndimage.generate_binary_structure(3, connectivity)
    shape = np.array(labels.shape)
    noisy = np.zeros_like(labels)
    depth = np.full(labels.shape, np.inf)  # Mahalanobis^2 / radius^2 of the ellipsoid that owns each voxel
    total = 0
    for cls in foreground_classes(labels):
        components, count = ndimage.label(labels == cls, structure=structure)
        total += count
        sizes, centroids, covariances = component_moments(components, count)
        for size, centroid, covariance in zip(sizes, centroids, covariances):  # a loop over components, not voxels
            precision = np.linalg.inv(covariance)
            # radius of the continuous ellipsoid of the same volume: 4/3 pi r^3 sqrt(det) = size
            radius = np.cbrt(3.0 * size / (4.0 * np.pi * np.sqrt(np.linalg.det(covariance))))
            half = 1.5 * radius * np.sqrt(np.diag(covariance)) + 2.0
            low = np.clip(np.floor(centroid - half).astype(int), 0, shape - 1)
            high = np.clip(np.ceil(centroid + half).astype(int) + 1, 1, shape)
            box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
            grid = np.stack(np.meshgrid(*[np.arange(lo, hi) for lo, hi in zip(low, high)], indexing="ij"), axis=-1)
            offset = grid.reshape(-1, 3) - centroid
            distance = np.einsum("ni,ij,nj->n", offset, precision, offset).reshape(grid.shape[:3])
            # symmetric voxels have equal distances up to rounding: merge them so that ties stay ties
            distance = np.round(distance, 9)
            threshold = _volume_threshold(distance, int(size))
            relative = distance / max(threshold, 1e-12)
            inside = (distance <= threshold) & (relative < depth[box])
            noisy[box][inside] = cls
            depth[box][inside] = relative[inside]
    return noisy.astype(np.asarray(label).dtype, copy=False), {"components": int(total)}
