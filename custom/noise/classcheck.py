"""No silently erased classes: what happens when a noisy label loses a class that the clean label has.

A simulator can erase a thin structure (an MTCL erosion wider than it) or, after block pooling, a small one. A
noisy label "loses" class ``c`` when ``c`` is present in the clean label and absent from the noisy one; a noisy
label that ends empty (all background) loses every class of the clean label. :func:`simulate_checked` applies
one of three policies (``on_empty``):

* ``"redraw"`` (default): draw again from the same simulator with the same parameters (so within its range),
  attempt ``k`` seeded by ``(seed, case_id, k)``, until no class is lost; after ``max_attempts`` draws, a
  :class:`LostClassError`. A simulator that draws nothing (:data:`custom.noise.registry.DRAWLESS_NOISES`) would
  give the same label again: the error comes at once.
* ``"keep"``: keep the first draw; the lost classes are returned, to be counted and reported.
* ``"error"``: a :class:`LostClassError` naming the case, the classes and the draw.

The first draw is always attempt 0, the case's usual draw, so a label that loses nothing is the same whatever
the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from custom.noise.labelmap import as_label_array, foreground_classes
from custom.noise.registry import DRAWLESS_NOISES, NoiseResult, simulate_noise

__all__ = [
    "ON_EMPTY_MODES",
    "DEFAULT_ON_EMPTY",
    "DEFAULT_MAX_ATTEMPTS",
    "LostClassError",
    "CheckedNoise",
    "lost_classes",
    "check_on_empty",
    "simulate_checked",
]

ON_EMPTY_MODES: tuple[str, ...] = ("error", "keep", "redraw")
DEFAULT_ON_EMPTY = "redraw"
DEFAULT_MAX_ATTEMPTS = 10


class LostClassError(ValueError):
    """A noisy label lost a class of its clean label and the policy does not allow it."""


@dataclass
class CheckedNoise:
    """The kept draw and what the class check saw.

    Attributes:
        result: the kept :class:`custom.noise.NoiseResult` (its ``noisy`` map at the simulator's resolution).
        checked: the noisy map the check compared (``result.noisy`` passed through ``view``).
        attempts: draws made (1 = the first draw was kept).
        lost: classes lost in the kept draw (non-empty only with ``on_empty="keep"``).
        rejected: one dict per rejected draw: ``{"attempt", "lost", "params"}``.
    """

    result: NoiseResult
    checked: np.ndarray
    attempts: int = 1
    lost: list[int] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """``"ok"`` (first draw kept), ``"redrawn"`` (a later draw kept) or ``"kept_lost"`` (a lost class kept)."""
        if self.lost:
            return "kept_lost"
        return "redrawn" if self.rejected else "ok"


def lost_classes(noisy: np.ndarray, clean: np.ndarray) -> list[int]:
    """Foreground classes present in ``clean`` and absent from ``noisy`` (sorted; empty when none is lost).

    Args:
        noisy: class-index map ``(H, W, D)``.
        clean: class-index map, same shape.

    Raises:
        ValueError: shapes differ or a map is not a valid label map.
    """
    noisy_arr, clean_arr = as_label_array(noisy, name="noisy"), as_label_array(clean, name="clean")
    if noisy_arr.shape != clean_arr.shape:
        raise ValueError(f"noisy and clean shapes differ: {noisy_arr.shape} and {clean_arr.shape}.")
    present = set(foreground_classes(noisy_arr).tolist())
    return [int(c) for c in foreground_classes(clean_arr) if int(c) not in present]


def check_on_empty(on_empty: str, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
    """Raise ``ValueError`` unless ``on_empty`` is one of :data:`ON_EMPTY_MODES` and ``max_attempts >= 1``."""
    if on_empty not in ON_EMPTY_MODES:
        raise ValueError(f"on_empty must be one of {ON_EMPTY_MODES}, got {on_empty!r}.")
    if isinstance(max_attempts, bool) or int(max_attempts) != max_attempts or max_attempts < 1:
        raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}.")


def _names(classes: Sequence[int], class_names: dict[int, str] | None) -> str:
    return ", ".join(f"{c} ({class_names[c]})" if class_names and c in class_names else str(c) for c in classes)


def simulate_checked(
    name: str,
    label: np.ndarray,
    *,
    seed: int,
    case_id: str,
    on_empty: str = DEFAULT_ON_EMPTY,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    view: Callable[[np.ndarray], np.ndarray] | None = None,
    class_names: dict[int, str] | None = None,
    **kwargs: Any,
) -> CheckedNoise:
    """:func:`custom.noise.simulate_noise` with the lost-class policy ``on_empty`` (see the module docstring).

    Args:
        name, label, seed, case_id: as in :func:`custom.noise.simulate_noise`; ``label`` is ``(H, W, D)``.
        on_empty: ``"redraw"``, ``"keep"`` or ``"error"``.
        max_attempts: draws allowed with ``"redraw"`` (attempts ``0..max_attempts-1``).
        view: maps a label at the simulator's resolution to the one that is kept (e.g. block pooling to the
            stored resolution); applied to the clean and the noisy map before they are compared. ``None``:
            identity.
        class_names: ``{class index: name}`` for the error messages.
        kwargs: ``num_classes``, ``spacing`` and the simulator parameters.

    Returns:
        :class:`CheckedNoise`.

    Raises:
        LostClassError: a class was lost and ``on_empty="error"``, or every one of the ``max_attempts`` draws
            lost one (``"redraw"``), or a simulator that draws nothing lost one (``"redraw"``).
        ValueError: a bad ``on_empty`` / ``max_attempts``, or what ``simulate_noise`` raises.
    """
    check_on_empty(on_empty, max_attempts)
    transform = view or (lambda array: array)
    clean = transform(np.asarray(label))
    rejected: list[dict[str, Any]] = []
    limit = int(max_attempts) if on_empty == "redraw" else 1
    for attempt in range(limit):
        result = simulate_noise(name, label, seed=seed, case_id=case_id, attempt=attempt, **kwargs)
        checked = transform(result.noisy)
        lost = lost_classes(checked, clean)
        if not lost:
            return CheckedNoise(result, checked, attempt + 1, [], rejected)
        where = f"case {case_id!r}: noise {name!r} (draw {attempt}: {_describe(result.params)})"
        if on_empty == "keep":
            return CheckedNoise(result, checked, attempt + 1, lost, rejected)
        if on_empty == "error":
            raise LostClassError(
                f"{where} erased class(es) {_names(lost, class_names)} of the clean label; use on_empty='redraw' "
                "to draw again, 'keep' to keep it (counted in the report), or smaller noise sizes."
            )
        rejected.append({"attempt": attempt, "lost": lost, "params": dict(result.params)})
        if name in DRAWLESS_NOISES:
            raise LostClassError(
                f"{where} erased class(es) {_names(lost, class_names)} of the clean label, and it draws nothing "
                "random, so a redraw would give the same label; use on_empty='keep' or other parameters."
            )
    draws = "; ".join(f"draw {r['attempt']} ({_describe(r['params'])}) lost {r['lost']}" for r in rejected)
    raise LostClassError(
        f"case {case_id!r}: each of {limit} draws of noise {name!r} erased a class of the clean label ({draws}); "
        "the simulator's range is too strong for this label: use smaller sizes, or on_empty='keep' to keep such a "
        "label (counted in the report)."
    )


def _describe(params: dict[str, Any]) -> str:
    shown = {k: v for k, v in params.items() if k in ("op", "r", "r_mm", "r_voxels", "beta", "rate", "attempt")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "no drawn parameters"
