"""A training run's output folder: never silently reused, locked against a second run, and cleaned after a failure.

The configs' ``training`` list calls :func:`claim_run_folder` after the option checks and before anything writes to
``output_dir``:

* a folder that already holds a training run or a bundle (``checkpoints/``, ``models/``, ``logs/``, ...) is refused
  unless ``--resume true`` (continue it) or ``--overwrite true`` (delete that run's outputs first) is given; the
  real-data commands of the README therefore name their own ``--output_dir`` and cannot overwrite the Quickstart's
  ``bundles/alc_la``;
* ``<output_dir>/.noisyseg.lock`` holds the process id of the run using the folder; a second run into the same
  folder stops with an error naming the folder and that process, while a lock left by a killed run is taken over;
* when the process ends without finishing the run (an error, Ctrl-C), a folder this run created and that holds no
  checkpoint is removed, and empty ``checkpoints/`` or ``logs/`` folders left by it are removed too.

:class:`RunFolderHandler` marks the run finished when the trainer completes and removes the checkpoint a resumed
run started from once the run has saved a newer one (it would otherwise stay beside the final one).

Example::

    run = claim_run_folder("bundles/alc_la", resume=False, overwrite=False)  # raises OptionError when in use
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from custom.errors import OptionError

__all__ = ["LOCK_FILE", "RUN_OUTPUTS", "RunFolder", "RunFolderHandler", "claim_run_folder", "run_outputs"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".noisyseg.lock"
# what a training run writes into its output_dir (the bundle, the checkpoints and the run's records)
RUN_OUTPUTS = (
    "checkpoints", "logs", "models", "configs", "docs", "scripts", "LICENSE", "eval", "label_audit", "mlruns",
    "mlruns.db", "progress.json", "run_stats.json", "validation_curve.csv", "label_quality.csv",
)
# their presence marks a folder as a training run or a bundle
_RUN_MARKERS = ("checkpoints", "models", "logs", "progress.json", "run_stats.json")
# the folders this process claimed, by resolved path (for RunFolderHandler)
_CLAIMED: dict[Path, RunFolder] = {}


def run_outputs(folder: str | os.PathLike) -> list[str]:
    """Names of the entries of ``folder`` that mark it as a training run or a bundle (empty when it is none)."""
    path = Path(folder)
    if not path.is_dir():
        return []
    found = []
    for name in _RUN_MARKERS:
        entry = path / name
        if entry.is_file() or (entry.is_dir() and any(entry.iterdir())):
            found.append(name)
    return found


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_lock(lock: Path) -> tuple[int | None, str]:
    try:
        pid_text, _, host = lock.read_text().partition(" ")
        return int(pid_text), host.strip()
    except (OSError, ValueError):
        return None, ""


class RunFolder:
    """The lock and the failure cleanup of one training run's output folder (see the module docstring)."""

    def __init__(self, output_dir: str | os.PathLike, created: bool):
        self.path = Path(output_dir).resolve()
        self.created = created
        self.finished = False
        self.lock = self.path / LOCK_FILE
        self._acquire()
        atexit.register(self.release)

    def _acquire(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        mine = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid, host = _read_lock(self.lock)
                ours = pid == os.getpid() and host == socket.gethostname()  # an earlier run of this process
                if pid is not None and not ours and (host != socket.gethostname() or _process_alive(pid)):
                    raise OptionError(
                        "output_dir",
                        f"{self.path} is in use by another training run (process {pid} on {host or 'this host'}, "
                        f"lock file {self.lock}); wait for it to end or choose another --output_dir",
                    ) from None
                if not ours:
                    logger.warning(f"{self.lock}: taking over the lock of process {pid}, which no longer runs")
                with contextlib.suppress(FileNotFoundError):
                    self.lock.unlink()
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(mine + "\n")
            return
        raise OptionError("output_dir", f"{self.path}: cannot take the lock {self.lock}")

    def attach(self, engine: Engine) -> None:
        """Mark the run finished when ``engine`` completes (then the folder is kept whatever happens next)."""
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _completed(self, engine: Engine) -> None:
        self.finished = True
        self.release()

    def release(self) -> None:
        """Remove the lock (if it is still this process's); after an unfinished run, remove what it left empty."""
        pid, _ = _read_lock(self.lock)
        if pid == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.lock.unlink()
        if self.finished or not self.path.is_dir():
            return
        checkpoints = self.path / "checkpoints"
        has_checkpoint = checkpoints.is_dir() and any(checkpoints.glob("*.pt"))
        if self.created and not has_checkpoint and not (self.path / "models").exists():
            shutil.rmtree(self.path, ignore_errors=True)  # only this run's logs were in it
            return
        for name in ("checkpoints", "logs"):
            with contextlib.suppress(OSError):
                (self.path / name).rmdir()  # only when empty


def _remove_run_outputs(folder: Path) -> None:
    for name in RUN_OUTPUTS:
        entry = folder / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()
    for stale in folder.glob("config_*.json"):  # the executed configs of MLflow-tracked runs
        stale.unlink()


def claim_run_folder(output_dir: str | os.PathLike, resume: Any = False, overwrite: Any = False) -> RunFolder:
    """Check that ``output_dir`` may take this training run, lock it and return its :class:`RunFolder`.

    Args:
        output_dir: the run's folder (the bundle).
        resume: ``--resume``: continuing the run already in the folder is what the user asked for.
        overwrite: ``--overwrite``: delete the outputs of the run already in the folder (only the entries a run
            writes, :data:`RUN_OUTPUTS`; other files are kept) before starting.

    Raises:
        OptionError: ``--output_dir`` names a folder that holds a run or a bundle and neither ``resume`` nor
            ``overwrite`` is true, or a folder another running process holds.
    """
    for name, value in (("resume", resume), ("overwrite", overwrite)):
        if not isinstance(value, bool):
            raise OptionError(name, f"must be true or false, got {value!r}")
    if resume and overwrite:
        raise OptionError("overwrite", "cannot be combined with --resume true (one continues the run, one replaces it)")
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OptionError("output_dir", f"{path} is a file, not a folder")
    created = not path.exists()
    found = run_outputs(path)
    if found and not (resume or overwrite):
        raise OptionError(
            "output_dir",
            f"{path} already holds a training run ({', '.join(found)}); pass --resume true to continue it, "
            "--overwrite true to replace it, or choose another --output_dir",
        )
    folder = RunFolder(path, created=created)  # locks first, so that a running process's outputs are never deleted
    _CLAIMED[folder.path] = folder
    if found and overwrite:
        logger.warning(f"--overwrite true: deleting the previous run's outputs in {folder.path}")
        _remove_run_outputs(folder.path)
    return folder


class RunFolderHandler:
    """Ignite handler of a training run's folder, listed in the configs' ``resume_handlers`` (attached after the
    ``CheckpointSaver``):

    * marks the :class:`RunFolder` that :func:`claim_run_folder` returned for ``output_dir`` finished when the
      trainer completes (so that its folder is kept);
    * in a resumed run, deletes the training checkpoints that were in ``resumed_from``'s folder when the run started
      (the one it loaded, e.g. the pre-kill ``checkpoint_epoch=3.pt``, and older ones) once the run has saved a newer
      checkpoint; being attached after the saver, the new checkpoint is on disk before the old ones go. A file the
      run has rewritten since (``checkpoint_final.pt``) is kept.

    Args:
        output_dir: the run's folder.
        resumed_from: the loaded checkpoint's path; ``None`` for a fresh run.
    """

    def __init__(self, output_dir: str | os.PathLike, resumed_from: str | os.PathLike | None = None):
        self.output_dir = Path(output_dir).resolve()
        self.resumed_from = Path(resumed_from) if resumed_from else None
        self.previous: dict[Path, int] = {}

    def _checkpoints(self) -> dict[Path, int]:
        folder = self.resumed_from.parent if self.resumed_from is not None else None
        if folder is None or not folder.is_dir():
            return {}
        return {p: p.stat().st_mtime_ns for p in folder.glob("checkpoint*.pt") if p.is_file()}

    def attach(self, engine: Engine) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
            return  # rank 0 owns the folder
        folder = _CLAIMED.get(self.output_dir)
        if folder is not None:
            folder.attach(engine)
        if self.resumed_from is not None:
            self.previous = self._checkpoints()
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.previous:
            return
        current = self._checkpoints()
        if not any(self.previous.get(path) != mtime for path, mtime in current.items()):
            return  # nothing saved since the run started
        stale = sorted(path for path, mtime in self.previous.items() if current.get(path) == mtime)
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if stale:
            logger.info(f"removed the checkpoints the resumed run started from: {', '.join(p.name for p in stale)}")
        self.previous = {}
