"""Training checkpoints written atomically: a temporary file beside the target, then a rename.

MONAI's ``CheckpointSaver`` gives ignite's ``DiskSaver`` ``atomic=False`` (for the file permissions), so
``torch.save`` writes straight into ``checkpoint_epoch=N.pt``; a full disk or a kill mid-write leaves a half-written
checkpoint under the final name (and on a full disk, an ignite ``enforce fail`` message that names no cause).
:class:`AtomicCheckpointSaver` is MONAI's handler with every save going through :func:`custom.io.atomic_output`:
the final name appears only once the file is complete, with the usual permissions (0666 minus the umask). A write
that fails removes the temporary file and stops the run with a :class:`~custom.io.DataError` naming the file and the
cause (e.g. no space left, with the bytes free).

Example (``configs/base/common.json``)::

    {"_target_": "custom.handlers.atomic_checkpoint.AtomicCheckpointSaver", "save_dir": "@checkpoint_dir", ...}
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from custom.io import DataError, atomic_output

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver"]


# free bytes below which a failed write is taken for a full disk (torch's zip writer reports a short write as
# "enforce fail ... unexpected pos", not as ENOSPC)
_FULL_DISK_BYTES = 1 << 20


def _write_problem(error: BaseException, partial: Path) -> str:
    """Why writing ``partial`` (the temporary file, still on disk) failed: a full disk with the bytes free, else the
    error itself."""
    try:
        free = shutil.disk_usage(partial.parent).free
        written = partial.stat().st_size if partial.exists() else 0
    except OSError:
        free, written = None, 0
    enospc = isinstance(error, OSError) and error.errno == errno.ENOSPC
    if enospc or (free is not None and free < _FULL_DISK_BYTES):
        if free is None:
            return "no space left on the device"
        return f"no space left on the device ({free:,} bytes free in {partial.parent} after {written:,} bytes written)"
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


class AtomicDiskSaver(DiskSaver):
    """An ignite ``DiskSaver`` that writes each checkpoint to a temporary file, then renames it (see the module
    docstring). ``filename``, when given, replaces the names ignite makes (MONAI's fixed ``checkpoint_final.pt`` and
    ``model_best_val.pt``)."""

    def __init__(self, dirname: str, filename: str | None = None):
        super().__init__(dirname=dirname, require_empty=False, atomic=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:  # under DDP one rank writes, as ignite's DiskSaver does
            return
        path = Path(self.dirname) / (self.filename or filename)
        with atomic_output(path) as tmp:
            try:
                torch.save(checkpoint, tmp)
            except (OSError, RuntimeError) as error:  # atomic_output then removes the temporary file
                raise DataError(path, f"cannot write the checkpoint: {_write_problem(error, tmp)}") from error

    def remove(self, filename: str) -> None:
        super().remove(filename=self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose final, key-metric and interval checkpoints are written
    through :class:`AtomicDiskSaver`."""

    def __init__(self, save_dir: str, save_dict: dict[str, Any], **kwargs: Any):
        super().__init__(save_dir, save_dict, **kwargs)
        fixed = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": None,
        }
        for attribute, filename in fixed.items():
            checkpoint = getattr(self, attribute, None)
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(dirname=self.save_dir, filename=filename)
