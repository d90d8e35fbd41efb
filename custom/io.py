"""Safe file input/output: clear errors that name the file, and atomic writes.

Every writer in the project goes through :func:`atomic_output` so that an interrupted run
leaves either the previous file or the complete new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataError", "atomic_output", "listed", "load_nifti", "save_nifti", "read_json", "state_dict_problems",
           "weights_file_problem", "write_json", "write_csv"]


class DataError(ValueError):
    """Bad input data. The message always starts with the offending file's path."""

    user_error = True  # custom.errors: an uncaught one prints its message only, no traceback

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def _full_suffix(path: Path) -> str:
    # keep ".nii.gz" intact so that writers which pick a format from the name still work
    suffixes = path.suffixes
    return "".join(suffixes[-2:]) if suffixes[-2:] == [".nii", ".gz"] else path.suffix


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Example::

        with atomic_output("out/case.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + _full_suffix(final), dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; published outputs get the usual permissions (0666 minus the umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def load_nifti(path: str | os.PathLike, dtype: Any = None) -> tuple[np.ndarray, np.ndarray, Any]:
    """Load a NIfTI file as ``(array, affine, header)``.

    Raises:
        DataError: when the file is missing, unreadable or not a 3D image.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = nib.load(str(path))
        array = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(path, f"expected a 3D image, got shape {array.shape}")
    if dtype is not None:
        array = array.astype(dtype)
    return array, np.asarray(img.affine, dtype=np.float64), img.header


def save_nifti(
    array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, header: Any = None, dtype: Any = None
) -> Path:
    """Write ``array`` as NIfTI atomically, keeping ``header`` (e.g. the source image's) when given."""
    import nibabel as nib

    array = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(array, affine, header=hdr)
    img.set_data_dtype(array.dtype)
    if hdr is not None:
        # the source header's scaling would rescale integer labels; labels are stored verbatim
        img.header.set_slope_inter(1.0, 0.0)
    with atomic_output(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def read_json(path: str | os.PathLike, what: str = "JSON") -> Any:
    """The parsed content of the JSON file ``path`` (any JSON value: the caller checks its type).

    Raises:
        DataError: the file cannot be read, is not UTF-8 text or not JSON: ``<path>: cannot read <what> (<error>)``,
            e.g. ``what="datalist JSON"``.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read {what} ({type(exc).__name__}: {exc})") from exc


def write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n")
    return Path(path)


def write_csv(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, fieldnames: Sequence[str] | None = None
) -> Path:
    """Write a list of dicts as CSV atomically; columns are the union of keys in first-seen order."""
    if fieldnames is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(key, None)
        fieldnames = list(seen)
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(fieldnames))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _json_default(v) if isinstance(v, (np.generic,)) else v for k, v in row.items()})
    return Path(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def weights_file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with ``path`` as a ``torch.save`` file, read without unpickling anything: missing, empty, not a
    zip archive (text, a pickle of an old torch, another format; its first bytes are named) or a cut-short or
    corrupt archive; None when it is a complete archive."""
    path = Path(path)
    if not path.is_file():
        return "no such file"
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    if not zipfile.is_zipfile(path):
        head = path.read_bytes()[:16]
        kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary data"
        return f"not a readable PyTorch file: it holds {kind} starting {head!r} ({size} bytes), not the zip archive " \
            "torch.save writes"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        return f"a cut-short or corrupt PyTorch file ({type(exc).__name__}: {exc})"
    return None if bad is None else f"a corrupt PyTorch file (member {bad} fails its checksum)"


def listed(keys: Sequence[str], shown: int = 3) -> str:
    """The first ``shown`` of ``keys``, comma-separated, with how many more there are."""
    text = ", ".join(keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def state_dict_problems(state: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """What keeps ``state`` (tensors read from a file) from loading into a module whose ``state_dict()`` is
    ``expected``: missing keys, unexpected keys, shapes that differ (file vs network); empty when it fits."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {listed(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatch (file vs network) {listed(wrong_shape)}")
    return problems
