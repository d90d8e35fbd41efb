"""One entry point for every label-noise simulator: ``simulate_noise(name, label, seed=..., case_id=...)``.

Each simulator here only *draws* its random parameters from the case's generator
(``custom.seeding.rng_for_case(seed, case_id)``; a redraw ``attempt > 0`` uses its own stream per
``(seed, case_id, attempt)``) and hands them to a deterministic function of ``custom.noise.morphology`` /
``affine`` / ``flips`` / ``ellipsoid``; the drawn parameters are returned with the noisy map, so every noisy label
can be reproduced and explained.

Units: sizes are physical (mm) and converted with the label's ``spacing`` (mm per axis) by the rule of
:mod:`custom.noise.units` (per axis, half up); the only voxel-valued parameters are MTCL's explicit voxel form
``r_min`` / ``r_max``. Noise names and their parameters (defaults in brackets):

* ``none``: identity.
* ``mtcl``: ``r_min_mm`` [1.875], ``r_max_mm`` [9.375] (mm): cube side range. Draws dilation or erosion
  (50/50), then a side ``k`` uniformly from ``{k_min..k_max}``, the sides on the grid of the finest axis
  (``k_min = round_half_up(r_min_mm / min(spacing))``, ``k_max`` likewise, both >= 1), and applies once a box of
  ``round_half_up(k * min(spacing) / spacing[i])`` voxels (>= 1) along axis ``i``. The defaults are the MTCL /
  ALC values 3..15 voxels at the LA's 0.625 mm, and give exactly the reference draws there (same calls to the
  generator, same cubes). Needs ``spacing``. Voxel form (the MTCL reference, spacing ignored): ``r_min`` [3],
  ``r_max`` [15] (voxels, integers); giving either one selects it, mixing it with the mm form is an error.
  Reported as ``{"op", "r" (side in voxels along the finest axis), "r_voxels" (per axis), "r_mm" (per axis,
  voxels x spacing; null without spacing), "units", "r_range_voxels", "r_range_mm"}``. On three LA cases the
  mean noisy Dice over these draws is 0.62-0.69 per case (MTCL reports ~0.67).
* ``sp``: ``beta`` [0.7] (relative, unitless), ``theta`` [15] (degrees), ``step`` ["euclidean"]. Uniform choice of
  the three below (SP-guided).
* ``sp_dilate`` / ``sp_erode``: ``beta``, ``step``. Volume changed by the factor beta (see
  :func:`custom.noise.morphology.volume_targeted_morphology`); no size parameter: the boundary displacement is
  found from beta (reported as ``thresholds``, in mm for ``step="euclidean"`` with a spacing).
* ``sp_affine``: ``beta``, ``theta``. Rotation by ``U(-theta, theta)`` degrees about an axis drawn uniformly on
  the sphere, through the foreground centroid, then a shift along a direction drawn uniformly on the sphere so
  that ``(|FP| + |FN|) / |clean| ~ beta`` (see :func:`custom.noise.affine.affine_to_mismatch`); rotation and
  shift are done in mm, the shift is reported in mm (``shift_vector``) and voxels (``shift_voxels``). theta = 15
  degrees by default: on LA a 15 degree rotation alone already costs a mismatch of ~0.4-0.5 (the reference
  used 30 degrees on 2D images).
* ``symmetric``: ``rate`` (required, probability). Needs ``num_classes``.
* ``class_conditional``: ``matrix`` (required, C x C probabilities, rows = clean class).
* ``ellipsoid``: ``connectivity`` [3] (1, 2 or 3: 6-, 18- or 26-neighbourhood); sizes come from each component's
  own moments, so spacing plays no role.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from custom.noise.affine import affine_to_mismatch
from custom.noise.ellipsoid import ellipsoid_relabel
from custom.noise.flips import check_transition_matrix, class_conditional_flip, symmetric_flip
from custom.noise.labelmap import as_label_array, as_spacing, check_num_classes
from custom.noise.morphology import STEP_SHAPES, cube_morphology, volume_targeted_morphology
from custom.noise.units import mm_to_voxels, round_half_up, voxels_to_mm
from custom.seeding import rng_for_case

__all__ = [
    "NoiseResult",
    "NOISE_NAMES",
    "DRAWLESS_NOISES",
    "MTCL_SIZE_MM",
    "MTCL_SIZE_VOXELS",
    "simulate_noise",
    "noise_parameters",
    "needs_spacing",
    "applied_sizes",
]

NOISE_NAMES: tuple[str, ...] = (
    "none",
    "mtcl",
    "sp",
    "sp_dilate",
    "sp_erode",
    "sp_affine",
    "symmetric",
    "class_conditional",
    "ellipsoid",
)
# simulators that draw nothing: the same parameters always give the same label, so a redraw cannot help
DRAWLESS_NOISES: tuple[str, ...] = ("none", "sp_dilate", "sp_erode", "ellipsoid")
# MTCL / ALC cube sides: 3..15 voxels of the LA data (0.625 mm), i.e. 1.875..9.375 mm
MTCL_SIZE_VOXELS = (3, 15)
MTCL_SIZE_MM = (1.875, 9.375)
_MTCL_VOXEL_FORM = ("r_min", "r_max")
_MTCL_MM_FORM = ("r_min_mm", "r_max_mm")


@dataclass
class NoiseResult:
    """A noisy label map and the parameters that produced it.

    Attributes:
        noisy: integer class-index map, same shape and dtype as the clean input.
        params: JSON-serialisable dict, ``{"noise": name, ...drawn parameters and achieved noise level}``.
    """

    noisy: np.ndarray
    params: dict


def _positive(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return number


def _theta(value: Any) -> float:
    try:
        theta = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"theta must be a number of degrees, got {value!r}.") from None
    if not 0.0 <= theta <= 180.0:
        raise ValueError(f"theta must be in [0, 180] degrees, got {value!r}.")
    return theta


def _step(value: Any) -> str:
    if value not in STEP_SHAPES:
        raise ValueError(f"step must be one of {STEP_SHAPES}, got {value!r}.")
    return str(value)


def _none(labels: np.ndarray, rng: np.random.Generator, num_classes: int | None, spacing: np.ndarray) -> tuple:
    return labels.copy(), {}


def _mtcl(
    labels: np.ndarray,
    rng: np.random.Generator,
    num_classes: int | None,
    spacing: np.ndarray | None,
    r_min_mm=MTCL_SIZE_MM[0],
    r_max_mm=MTCL_SIZE_MM[1],
    r_min=None,
    r_max=None,
) -> tuple:
    if r_min is not None or r_max is not None:  # the voxel form (MTCL reference): spacing plays no role
        r_min = MTCL_SIZE_VOXELS[0] if r_min is None else r_min
        r_max = MTCL_SIZE_VOXELS[1] if r_max is None else r_max
        for name, value in (("r_min", r_min), ("r_max", r_max)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer number of voxels >= 1, got {value!r}.")
        if r_min > r_max:
            raise ValueError(f"r_min must be <= r_max, got r_min={r_min}, r_max={r_max}.")
        k_min, k_max = int(r_min), int(r_max)
        units = {"units": "voxel", "r_range_voxels": [k_min, k_max], "r_range_mm": None}
        finest = None
    else:
        low, high = _positive(r_min_mm, "r_min_mm"), _positive(r_max_mm, "r_max_mm")
        if low > high:
            raise ValueError(f"r_min_mm must be <= r_max_mm, got r_min_mm={r_min_mm}, r_max_mm={r_max_mm}.")
        if spacing is None:
            raise ValueError(
                "mtcl sizes are in mm (r_min_mm, r_max_mm): give the voxel spacing (mm per axis), or give the "
                "sizes in voxels with r_min / r_max."
            )
        finest = float(np.min(spacing))
        k_min, k_max = (max(1, int(round_half_up(v / finest))) for v in (low, high))
        units = {"units": "mm", "r_range_voxels": [k_min, k_max], "r_range_mm": [low, high]}
    # the same two draws, in the same order, as the MTCL reference: op, then the side
    op = "dilate" if rng.random() < 0.5 else "erode"
    size = int(rng.integers(k_min, k_max + 1))
    sides = (size,) * 3 if finest is None else mm_to_voxels(size * finest, spacing, minimum=1)
    info = {
        "op": op,
        "r": size,
        "r_voxels": list(sides),
        "r_mm": None if spacing is None else voxels_to_mm(sides, spacing),
        **units,
    }
    return cube_morphology(labels, sides, op), info


def _sp_morphology(labels, rng, spacing, op: str, beta, step) -> tuple:
    noisy, info = volume_targeted_morphology(labels, _positive(beta, "beta"), op, _step(step), spacing)
    return noisy, {"op": op, "beta": float(beta), "step": step, **info}


def _sp_dilate(labels, rng, num_classes, spacing, beta=0.7, step="euclidean") -> tuple:
    return _sp_morphology(labels, rng, spacing, "dilate", beta, step)


def _sp_erode(labels, rng, num_classes, spacing, beta=0.7, step="euclidean") -> tuple:
    return _sp_morphology(labels, rng, spacing, "erode", beta, step)


def _sp_affine(labels, rng, num_classes, spacing, beta=0.7, theta=15.0) -> tuple:
    beta, theta = _positive(beta, "beta"), _theta(theta)
    drawn_angle = float(rng.uniform(-theta, theta))
    axis = rng.standard_normal(3)  # a normalised Gaussian vector is uniform on the sphere
    direction = rng.standard_normal(3)
    noisy, info = affine_to_mismatch(labels, beta, drawn_angle, axis, direction, spacing)
    return noisy, {"op": "affine", "beta": beta, "theta": theta, "drawn_angle_deg": round(drawn_angle, 6), **info}


def _sp(labels, rng, num_classes, spacing, beta=0.7, theta=15.0, step="euclidean") -> tuple:
    beta, theta, step = _positive(beta, "beta"), _theta(theta), _step(step)
    op = ("dilate", "erode", "affine")[int(rng.integers(3))]
    if op == "affine":
        return _sp_affine(labels, rng, num_classes, spacing, beta=beta, theta=theta)
    return _sp_morphology(labels, rng, spacing, op, beta, step)


def _symmetric(labels, rng, num_classes, spacing, rate=None) -> tuple:
    if rate is None:
        raise ValueError("symmetric noise needs the parameter rate (flip probability in [0, 1]).")
    if num_classes is None:
        raise ValueError("symmetric noise needs num_classes (the classes a voxel can flip to).")
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}.") from None
    noisy = symmetric_flip(labels, rate, num_classes, rng)
    return noisy, {"rate": rate, "num_classes": num_classes, "flipped_fraction": float(np.mean(noisy != labels))}


def _class_conditional(labels, rng, num_classes, spacing, matrix=None) -> tuple:
    if matrix is None:
        raise ValueError("class_conditional noise needs the parameter matrix (C x C, rows = clean class).")
    transition = check_transition_matrix(matrix, num_classes)
    noisy = class_conditional_flip(labels, transition, rng)
    return noisy, {"matrix": transition.tolist(), "flipped_fraction": float(np.mean(noisy != labels))}


def _ellipsoid(labels, rng, num_classes, spacing, connectivity=3) -> tuple:
    noisy, info = ellipsoid_relabel(labels, connectivity)
    return noisy, {"connectivity": connectivity, **info}


_SIMULATORS: dict[str, Callable[..., tuple]] = {
    "none": _none,
    "mtcl": _mtcl,
    "sp": _sp,
    "sp_dilate": _sp_dilate,
    "sp_erode": _sp_erode,
    "sp_affine": _sp_affine,
    "symmetric": _symmetric,
    "class_conditional": _class_conditional,
    "ellipsoid": _ellipsoid,
}


def noise_parameters(name: str) -> dict[str, Any]:
    """The parameters ``simulate_noise`` accepts for ``name`` with their defaults.

    ``None`` means required (``symmetric``'s ``rate``, ``class_conditional``'s ``matrix``) or, for ``mtcl``'s
    voxel form ``r_min`` / ``r_max``, not used unless given.

    Raises:
        ValueError: unknown noise name.
    """
    simulator = _lookup(name)
    fixed = ("labels", "rng", "num_classes", "spacing")
    return {k: p.default for k, p in inspect.signature(simulator).parameters.items() if k not in fixed}


def _lookup(name: str) -> Callable[..., tuple]:
    if name not in _SIMULATORS:
        raise ValueError(f"unknown noise {name!r}; choose one of {', '.join(NOISE_NAMES)}.")
    return _SIMULATORS[name]


def needs_spacing(name: str, params: Mapping[str, Any] | None = None) -> bool:
    """Whether ``simulate_noise(name, ..., **params)`` needs the voxel spacing (its sizes are in mm).

    True for ``mtcl`` in its mm form (the default); the ``sp`` family works without one (unit voxels).

    Raises:
        ValueError: unknown noise name.
    """
    _lookup(name)
    given = {k for k, v in (params or {}).items() if v is not None}
    return name == "mtcl" and not given & set(_MTCL_VOXEL_FORM)


def _case_rng(seed: int, case_id: str, attempt: int) -> np.random.Generator:
    if isinstance(attempt, bool) or int(attempt) != attempt or attempt < 0:
        raise ValueError(f"attempt must be an integer >= 0, got {attempt!r}.")
    if attempt == 0:
        return rng_for_case(seed, case_id)
    # a stream of its own per (seed, case, attempt), independent of attempt 0's stream
    return np.random.default_rng([int(seed) % (2**32), zlib.crc32(str(case_id).encode("utf-8")), int(attempt)])


def simulate_noise(
    name: str,
    label: np.ndarray,
    *,
    seed: int,
    case_id: str,
    num_classes: int | None = None,
    spacing: Sequence[float] | None = None,
    attempt: int = 0,
    **params: Any,
) -> NoiseResult:
    """Corrupt a clean 3D label map with the simulator ``name``, deterministically per ``(seed, case_id)``.

    Args:
        name: one of :data:`NOISE_NAMES` (see the module docstring for each one's parameters and their units).
        label: clean class-index map, shape ``(H, W, D)``; integer (or whole-valued float / bool) dtype.
        seed: experiment seed.
        case_id: case identifier; together with ``seed`` it fixes every random draw.
        num_classes: C (background included); required by ``symmetric``, checked against the label otherwise.
        spacing: voxel size per axis (mm); converts ``mtcl``'s mm sizes to voxels (required there unless the voxel
            form ``r_min`` / ``r_max`` is given) and is used by the ``sp`` family (Euclidean steps, rotation and
            shift in mm). ``None``: unit voxels for the ``sp`` family.
        attempt: 0 for the case's draw; ``k > 0`` redraws from a stream of its own per ``(seed, case_id, k)``
            (used when a draw lost a class, see :mod:`custom.noise.classcheck`); recorded in the params.
        params: simulator parameters, e.g. ``beta=0.5``, ``rate=0.1`` or ``r_max_mm=6.0``.

    Returns:
        :class:`NoiseResult` with the noisy map (same shape and dtype as ``label``) and the parameters.

    Raises:
        ValueError: unknown ``name`` (the message lists :data:`NOISE_NAMES`), unknown or invalid parameters
            (e.g. mtcl sizes given both in mm and in voxels, or in mm without ``spacing``), a bad ``attempt``
            or an invalid label map.
    """
    simulator = _lookup(name)
    accepted = noise_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"noise {name!r} does not take parameter(s) {unknown}; it accepts {sorted(accepted)}.")
    if name == "mtcl":
        given = {k for k, v in params.items() if v is not None}
        if given & set(_MTCL_VOXEL_FORM) and given & set(_MTCL_MM_FORM):
            raise ValueError(
                "give the mtcl sizes either in mm (r_min_mm, r_max_mm) or in voxels (r_min, r_max), not both; "
                f"got {sorted(given)}."
            )
    if num_classes is not None:
        num_classes = check_num_classes(num_classes)
    array = np.asarray(label)
    labels = as_label_array(array, num_classes)
    if num_classes is not None and np.issubdtype(array.dtype, np.integer):
        if num_classes - 1 > np.iinfo(array.dtype).max:
            raise ValueError(f"label dtype {array.dtype} cannot hold class {num_classes - 1}.")
    if array.dtype == bool and name in ("symmetric", "class_conditional") and (num_classes or 2) > 2:
        raise ValueError("a bool label map can only hold 2 classes.")
    rng = _case_rng(seed, case_id, attempt)
    voxel_size = None if spacing is None else as_spacing(spacing)
    noisy, drawn = simulator(labels, rng, num_classes, voxel_size, **params)
    record = {"noise": name, **drawn, **({"attempt": int(attempt)} if attempt else {})}
    return NoiseResult(noisy=np.asarray(noisy).astype(array.dtype, copy=False), params=record)


def _rounded(values: Any, digits: int = 4) -> Any:
    if isinstance(values, (list, tuple, np.ndarray)):
        return [_rounded(v, digits) for v in values]
    return round(float(values), digits)


def applied_sizes(params: Mapping[str, Any], spacing: Sequence[float] | None = None) -> tuple[Any, Any]:
    """The physical sizes a simulator applied, in mm and in voxels per axis, from its reported ``params``.

    * ``mtcl``: the box side per axis (``r_mm``, ``r_voxels``);
    * ``sp_affine`` (or ``sp`` that chose it): the translation per axis (``shift_vector``, ``shift_voxels``);
    * ``sp_dilate`` / ``sp_erode`` (or ``sp`` that chose them): per class the boundary displacement per axis
      (``thresholds``; a Euclidean distance in mm divided by each axis' voxel size, or a number of 3x3x3 steps
      times each axis' voxel size).

    Args:
        params: :attr:`NoiseResult.params`.
        spacing: voxel size per axis (mm) the simulator was given; ``None`` when it had none.

    Returns:
        ``(size_mm, size_voxels)``: nested lists (``None`` where not defined, e.g. mm without a spacing, or a
        simulator without a size such as ``symmetric``).
    """
    voxel_size = None if spacing is None else as_spacing(spacing)
    if params.get("noise") == "mtcl" and "r_voxels" in params:
        return params.get("r_mm"), params["r_voxels"]
    if "shift_voxels" in params:
        vector = params.get("shift_vector") if params.get("shift_unit") == "mm" else None
        return vector, params["shift_voxels"]
    if "thresholds" in params:
        thresholds = np.asarray(params["thresholds"], dtype=np.float64)
        if params.get("threshold_unit") == "mm":
            per_axis = None if voxel_size is None else thresholds[:, None] / voxel_size[None, :]
            return _rounded(thresholds), None if per_axis is None else _rounded(per_axis)
        in_mm = None if voxel_size is None else thresholds[:, None] * voxel_size[None, :]
        return None if in_mm is None else _rounded(in_mm), _rounded(thresholds)
    return None, None
