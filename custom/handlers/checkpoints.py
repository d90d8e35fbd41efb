"""Training checkpoints: the newest readable one to resume from, and the best-metric tracker they carry."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from custom.io import DataError

__all__ = ["best_metric_state", "latest_checkpoint"]

logger = logging.getLogger(__name__)


def _checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is no readable ``torch.save`` zip archive (truncated, corrupt), or None when it is one."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if bad is None else f"member {bad} is corrupt"


def latest_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """Path of the newest readable training checkpoint (``checkpoint*.pt``) in ``checkpoint_dir``, or ``None``.

    A newer checkpoint that is cut short or corrupt (not a complete zip archive, e.g. a copy interrupted or a full
    disk) is skipped with a warning that names it, and the previous valid one is used.

    Raises:
        DataError: naming the folder and each file, when checkpoints exist but none of them is readable.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    candidates = sorted(
        (p for p in folder.glob("checkpoint*.pt") if p.is_file()), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    if not candidates:
        return None
    problems = []
    for path in candidates:
        problem = _checkpoint_problem(path)
        if problem is None:
            if problems:
                logger.warning(f"resuming from {path}: the newer {'; '.join(problems)}")
            return str(path)
        problems.append(f"{path} is unreadable ({problem})")
    raise DataError(folder, f"no readable checkpoint to resume from: {'; '.join(problems)}")


class _NoState:
    """Stands in for a missing best-metric tracker in ``checkpoint_objects``: nothing to save or restore."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


def best_metric_state(handlers: Sequence[Any]) -> Any:
    """The best-metric tracker of the validation handlers (the ``_key_metric_checkpoint`` of MONAI's key-metric
    ``CheckpointSaver``: which ``model_best_val.pt`` is kept, with its score), for the training checkpoints, so that a
    resumed run does not replace the best model with a worse one; an object with an empty state when there is none.
    """
    for handler in handlers:
        tracker = getattr(handler, "_key_metric_checkpoint", None)
        if tracker is not None and hasattr(tracker, "state_dict"):
            return tracker
    return _NoState()
