"""The embedded synthetic demo set: LA-like 3D blobs in MRI-like volumes, generated in seconds, cached on disk.

Each case (all draws from ``rng_for_case(seed, case_id)``):

* **label**: class 1 is the largest connected part of a union of 3-4 random ellipsoids whose boundary is
  roughened by a smooth random field (an atrium-like blob); each further class ``c >= 2`` is an ellipsoid centred
  on a random boundary voxel of the structures drawn so far, minus those structures (an adjacent structure,
  like an appendage or a neighbouring chamber).
* **image**: class ``c >= 1`` brighter than background by ``contrast * (1 + 0.6 (c - 1))`` (so classes differ
  in intensity), an unlabelled dimmer "distractor" ellipsoid, smooth tissue texture, partial-volume blur at the
  edges, a smooth multiplicative bias field and Rician noise; then z-scored over the volume like the LA images.

The contrast-to-noise ratio (about 3 per voxel) is chosen so that a small 3D U-Net learns the segmentation in a
few hundred iterations while the noise and bias still make single-voxel thresholding imperfect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from custom.data.datalist import read_datalist_meta
from custom.data.prepare import prepare_dataset
from custom.data.sources import CaseSource
from custom.io import DataError
from custom.seeding import rng_for_case

logger = logging.getLogger(__name__)

__all__ = [
    "SYNTHETIC_NAME",
    "SYNTHETIC_SPACING_MM",
    "smooth_noise",
    "synthetic_label",
    "synthetic_image",
    "synthetic_case",
    "make_synthetic_dataset",
    "ensure_dataset",
]

SYNTHETIC_NAME = "synthetic_demo"
SYNTHETIC_SPACING_MM = 1.25
_CONTRAST = 1.0  # class-1 brightness above background, in units of the tissue level
_NOISE_SIGMA = 0.3  # Rician noise level (per voxel, before z-scoring)
_SYNTHETIC_MTCL = {"r_min": 2, "r_max": 7}


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(s) != s or s < 8 for s in shape):
        raise ValueError(f"shape must be 3 integers >= 8, got {tuple(shape)}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def smooth_noise(shape: Sequence[int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise of shape ``shape``, rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma=sigma, mode="wrap")
    return (field - field.mean()) / max(float(field.std()), 1e-12)


def _ellipsoid(shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    # implicit function 1 - sum(((x - c) / r)^2): positive inside, 0 on the surface
    axes = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return 1.0 - sum(((axis - c) / r) ** 2 for axis, c, r in zip(axes, centre, radii))  # noqa: B905 (Python 3.9)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == sizes.argmax()


def synthetic_label(shape: Sequence[int], num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """An atrium-like class-1 blob plus one adjacent structure per further class.

    Args:
        shape: ``(H, W, D)``, each >= 8.
        num_classes: C >= 2 (background included).
        rng: all random draws come from it.

    Returns:
        uint8 class-index map ``(H, W, D)``; every class ``0..C-1`` is present.
    """
    shape = _check_shape(shape)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    size = np.asarray(shape, dtype=np.float64)
    centre = size / 2 + rng.uniform(-0.06, 0.06, 3) * size
    field = np.full(shape, -np.inf)
    for _ in range(int(rng.integers(3, 5))):  # a few lobes; each lobe is one vectorised evaluation
        lobe_centre = centre + rng.uniform(-0.1, 0.1, 3) * size
        field = np.maximum(field, _ellipsoid(shape, lobe_centre, rng.uniform(0.15, 0.22, 3) * size))
    field = field + 0.3 * smooth_noise(shape, sigma=max(shape) / 12, rng=rng)  # roughen the boundary
    mask = _largest_component(field > 0)
    if not mask.any():  # cannot happen with these ranges; keeps the contract "class 1 present" unconditional
        mask = _ellipsoid(shape, size / 2, 0.2 * size) > 0
    label = mask.astype(np.uint8)
    for cls in range(2, num_classes):
        occupied = label > 0
        boundary = np.argwhere(occupied & ~ndimage.binary_erosion(occupied))
        anchor = boundary[int(rng.integers(len(boundary)))].astype(np.float64)
        part = (_ellipsoid(shape, anchor, rng.uniform(0.11, 0.15, 3) * size) > 0) & ~occupied
        label[part] = cls
    return label


def synthetic_image(label: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """An MRI-like float32 image for a class-index map ``(H, W, D)``, z-scored over the volume.

    Class ``c >= 1`` is brighter than background by ``contrast * (1 + 0.6 (c - 1))``; texture, an unlabelled distractor,
    partial-volume blur, a bias field and Rician noise make it realistic.
    """
    label = np.asarray(label)
    shape = _check_shape(label.shape)
    size = np.asarray(shape, dtype=np.float64)
    levels = np.concatenate([[0.0], _CONTRAST * (1.0 + 0.6 * np.arange(num_classes - 1))])
    clean = 1.0 + levels[label.astype(np.int64)]
    # a dimmer unlabelled structure near the border (like the aorta or a pulmonary vein); the network must learn
    # brightness *and* shape
    corner = rng.uniform(0.15, 0.3, 3) * size * rng.choice([-1.0, 1.0], 3) + size / 2
    distractor = (_ellipsoid(shape, np.clip(corner, 0, size - 1), rng.uniform(0.06, 0.1, 3) * size) > 0) & (label == 0)
    clean = clean + 0.45 * _CONTRAST * distractor
    clean = clean + 0.08 * smooth_noise(shape, sigma=1.5, rng=rng)  # tissue texture
    clean = ndimage.gaussian_filter(clean, sigma=0.6)  # partial volume at edges
    bias = np.exp(0.15 * smooth_noise(shape, sigma=max(shape) / 3, rng=rng))  # slow coil inhomogeneity
    signal = clean * bias
    # Rician magnitude noise: |signal + n1 + i n2|
    image = np.hypot(signal + _NOISE_SIGMA * rng.standard_normal(shape), _NOISE_SIGMA * rng.standard_normal(shape))
    return ((image - image.mean()) / max(float(image.std()), 1e-12)).astype(np.float32)


def synthetic_case(
    case_id: str, shape: Sequence[int] = (64, 64, 48), num_classes: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label)`` of one synthetic case; depends only on ``(case_id, shape, num_classes, seed)``."""
    rng = rng_for_case(seed, case_id)
    label = synthetic_label(shape, num_classes, rng)
    return synthetic_image(label, num_classes, rng), label


def _default_noise(num_classes: int, noise: str | None, noise_params: Mapping[str, Any] | None) -> tuple[str, dict]:
    if noise is not None:
        return noise, dict(noise_params or {})
    # binary: MTCL cube dilation/erosion with cube sides 2..7 at 1.25 mm, about the physical boundary shift of
    # MTCL's 3..15 at LA's 0.625 mm (mean LQ noisy Dice 0.60-0.71 over seeds 0-2 here, ~0.7 on LA); several
    # classes: per-voxel flips
    if num_classes == 2:
        return "mtcl", dict(noise_params or _SYNTHETIC_MTCL)
    return "symmetric", dict(noise_params or {"rate": 0.3})


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_cases: int = 20,
    shape: Sequence[int] = (64, 64, 48),
    num_classes: int = 2,
    hq_fraction: float = 0.25,
    val_count: int = 2,
    test_count: int = 4,
    noise: str | None = None,
    noise_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> str:
    """Generate the synthetic demo set into ``out_dir`` (atomically) and return its datalist path.

    Args:
        out_dir: output folder; must not exist or be empty (unless ``overwrite``).
        num_cases: cases in total (test + validation + HQ + LQ).
        shape: volume shape ``(H, W, D)``; spacing is 1.25 mm isotropic.
        num_classes: C >= 2 (class 2 onwards are structures adjacent to class 1).
        hq_fraction: fraction of the training cases (after test and validation) with clean labels.
        val_count, test_count: held-out cases with clean labels.
        noise: noise simulator for the LQ cases; ``None`` picks ``"mtcl"`` for C = 2 (cube sides 2..7 voxels,
            about MTCL's 3..15 at LA resolution, unless ``noise_params`` says otherwise) and ``"symmetric"`` (rate
            0.3 unless ``noise_params`` says otherwise) for C > 2.
        noise_params: keyword arguments of the simulator.
        seed: everything (images, labels, splits, noise) is a function of it.
        overwrite: replace a non-empty ``out_dir``.
        log: progress printer, one line per case (``None``: silent).

    Raises:
        ValueError: bad arguments. DataError: ``out_dir`` exists and is not empty.
    """
    shape = _check_shape(shape)
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    noise, params = _default_noise(num_classes, noise, noise_params)
    spacing = SYNTHETIC_SPACING_MM
    affine = np.diag([spacing, spacing, spacing, 1.0])

    def source(case_id: str) -> CaseSource:
        def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, None]:
            image, label = synthetic_case(case_id, shape, num_classes, seed)
            return image, label, affine, None

        return CaseSource(case_id, f"<synthetic {case_id}>", f"<synthetic {case_id}>", load)

    sources = [source(f"synth_{index:03d}") for index in range(num_cases)]
    labels = {"0": "background", "1": "left_atrium", **{str(c): f"structure_{c}" for c in range(2, num_classes)}}
    path = prepare_dataset(
        sources, [], out_dir, num_classes=num_classes, labels=labels, noise=noise, noise_params=params,
        hq_fraction=hq_fraction, val_count=val_count, test_count=test_count, seed=seed, name=SYNTHETIC_NAME,
        description=f"synthetic LA-like demo set, {num_cases} cases of {shape} at {spacing} mm, C={num_classes}",
        extra_meta={"synthetic": True, "shape": list(shape)}, overwrite=overwrite, log=log,
    )
    return str(path)


def _progress(message: str) -> None:
    """One progress line: through logging when a handler shows INFO (as in ``monai.bundle run``), else printed."""
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(message)
    else:
        print(message, flush=True)


DEMO_FOLDER_PREFIX = "demo"


def _is_demo_folder(dataset_dir: Path) -> bool:
    return dataset_dir.name.lower().startswith(DEMO_FOLDER_PREFIX)


def ensure_dataset(dataset_dir: str | os.PathLike, datalist: str | os.PathLike | None = None,
                   num_classes: int = 2, seed: int = 0, make_demo: bool | None = None) -> str:
    """Return a usable datalist path, generating the synthetic demo set on first use when asked for.

    * ``datalist`` (or ``dataset_dir/datalist.json``) exists: return it.
    * ``dataset_dir`` is missing or empty and the demo is asked for (``make_demo`` True, or ``make_demo`` None and
      the folder's name starts with ``demo``: the configs' ``data/demo`` and ``data/demo3``, ``--dataset_dir demo``):
      generate the demo set there once (staged in a temporary folder and renamed, so an interrupted generation
      leaves nothing; later calls reuse it) and return its datalist. A line announces the generation and one line
      per case shows its progress (logging at INFO, or printed).
    * ``dataset_dir`` is missing or empty otherwise (e.g. a mistyped path): :class:`DataError` naming it; nothing
      is created.
    * ``dataset_dir`` holds files but no datalist: :class:`DataError`.

    Raises:
        DataError: a missing or empty dataset folder that is no demo folder; files without a datalist; an
            explicit ``datalist`` elsewhere that does not exist; or a cached synthetic set generated with another
            ``num_classes``.
    """
    dataset_dir = Path(dataset_dir)
    default = dataset_dir / "datalist.json"
    if datalist is not None:
        datalist = Path(datalist)
        if datalist.is_file():
            return str(datalist)
        if datalist.resolve() != default.resolve():
            raise DataError(datalist, f"datalist not found (a demo set is only generated as {default})")
    if not default.is_file():
        if dataset_dir.exists() and not dataset_dir.is_dir():
            raise DataError(dataset_dir, "dataset path exists and is not a folder")
        if dataset_dir.is_dir() and any(p for p in dataset_dir.iterdir()):
            raise DataError(
                dataset_dir, "folder holds files but no datalist.json; give the datalist path or use an empty folder"
            )
        if not (_is_demo_folder(dataset_dir) if make_demo is None else make_demo):
            state = "is empty" if dataset_dir.is_dir() else "not found"
            raise DataError(
                dataset_dir,
                f"dataset folder {state} (no datalist.json); check --dataset_dir, prepare the data "
                "(scripts/prepare_la.py, scripts/prepare_nifti.py), or ask for the synthetic demo set with a folder "
                "whose name starts with 'demo' (e.g. --dataset_dir data/demo)",
            )
        _progress(f"generating the synthetic demo dataset in {dataset_dir} (once; later runs reuse it)")
        try:
            make_synthetic_dataset(dataset_dir, num_classes=num_classes, seed=seed, log=_progress)
        except (OSError, DataError):
            if not default.is_file():  # another process may have finished the same generation first
                raise
        return str(default)
    meta = read_datalist_meta(default)
    if meta.get("synthetic") and meta.get("num_classes") != num_classes:
        raise DataError(
            default, f"cached synthetic set has num_classes={meta.get('num_classes')}, requested {num_classes}; "
            "use another dataset folder",
        )
    return str(default)
