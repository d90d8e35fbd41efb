"""Writing a prepared dataset all at once: the output paths and a staged folder renamed into place at the end.

Everything is written into a hidden temporary folder beside the output and renamed at the end, so a failed or
interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from custom.io import DataError

__all__ = ["resolve_output", "staged_directory", "apply_umask"]


def resolve_output(out: str | os.PathLike) -> tuple[Path, Path]:
    """``(data_dir, datalist_path)`` for ``--out``: a folder gets ``folder/datalist.json``; a ``*.json`` path is
    the datalist itself and the data go into a folder beside it named after its stem (``x/la.json`` ->
    ``x/la/``), whose paths the datalist stores relative to ``x/``."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        return out.parent / out.stem, out
    return out, out / "datalist.json"


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def apply_umask(root: Path) -> None:
    # mkdtemp / mkstemp create private 0700 / 0600 entries; the published output gets the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    for path in (root, *(root.rglob("*") if root.is_dir() else ())):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def staged_directory(final_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``final_dir``; on success rename it onto ``final_dir``.

    On any exception (including KeyboardInterrupt) the temporary folder is removed and ``final_dir`` is left as
    it was. An existing non-empty ``final_dir`` is refused unless ``overwrite`` (then replaced at the very end).

    Raises:
        DataError: ``final_dir`` is a file, or a non-empty folder without ``overwrite``.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not final_dir.is_dir():
        raise DataError(final_dir, "output exists and is not a folder")
    if _is_nonempty_dir(final_dir) and not overwrite:
        raise DataError(final_dir, "output folder exists and is not empty; choose another output or overwrite it")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        yield tmp
        apply_umask(tmp)
        if _is_nonempty_dir(final_dir):
            if not overwrite:  # filled meanwhile, e.g. by a concurrent run: keep what is there
                raise DataError(final_dir, "output folder was filled by another process meanwhile")
            trash = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.old-", dir=final_dir.parent))
            os.replace(final_dir, trash / "old")
            os.replace(tmp, final_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final_dir)  # POSIX replaces an empty folder atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
