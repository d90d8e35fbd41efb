"""Segment every NIfTI image of a folder with a trained network and write label maps beside a report.

This module is copied verbatim into trained bundles (``scripts/folder_inference.py``, with its two project imports
``input_checks.py`` and ``io.py`` beside it) and must run without the ``custom`` package: besides those two it
imports only torch, numpy, nibabel, monai, tqdm and the standard library (:class:`SegmentationWriter` reaches
ignite, MONAI's engine library, through MONAI).

Each output ``<case><suffix>.nii.gz`` has exactly the input file's voxel grid (shape and
affine; the header is copied) and holds integer labels. A case that fails (missing or corrupt
file, not 3D, wrong geometry after inversion, any exception) is reported and skipped; the other
cases are still written. The per-case report is a CSV with the columns
``case, input, output, status, message, seconds``.

Example::

    pre, post = default_inference_transforms(pixdim=(0.625, 0.625, 0.625))
    inferer = monai.inferers.SlidingWindowInferer(roi_size=(112, 112, 80), overlap=0.5)
    rows = infer_folder(net, "images/", "segmentations/", pre, inferer, post, device="cuda")

The same outputs through MONAI's engines: a ``Dataset`` over :func:`nifti_datalist` with the
preprocessing, a ``SupervisedEvaluator`` with the postprocessing, and :class:`SegmentationWriter`
among its handlers (what a bundle's ``evaluator`` does).
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from tqdm import tqdm

if __package__ and __package__.startswith("custom"):
    from custom.inference.input_checks import (
        DEFAULT_MAX_VOXELS,
        CheckImaged,
        InputError,
        SetAsideStrayKeysd,
        default_inference_transforms,
    )
    from custom.io import DataError, atomic_output, state_dict_problems, weights_file_problem
else:  # the copy in a trained bundle's scripts/ package, beside the copies of these two modules
    from .input_checks import (  # noqa: F401 (re-exported for the bundles' configs)
        DEFAULT_MAX_VOXELS,
        CheckImaged,
        InputError,
        SetAsideStrayKeysd,
        default_inference_transforms,
    )
    from .io import DataError, atomic_output, state_dict_problems, weights_file_problem

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "BatchInferenceError",
    "REPORT_COLUMNS",
    "CheckImaged",
    "InputError",
    "SegmentationWriter",
    "SetAsideStrayKeysd",
    "default_inference_transforms",
    "infer_folder",
    "load_bundle_weights",
    "list_nifti_files",
    "nifti_datalist",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
REPORT_COLUMNS = ("case", "input", "output", "status", "message", "seconds")


# ---------------------------------------------------------------------------------------------
# files


def _case_name(path: Path) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def list_nifti_files(input_dir_or_files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The input images: a folder's ``*.nii`` / ``*.nii.gz`` files (sorted, hidden files skipped),
    a single NIfTI path, or an explicit list of paths (kept in order, existence checked later).

    Raises:
        FileNotFoundError: naming the folder when it does not exist or holds no NIfTI file, or
            when an explicit list is empty.
    """
    if isinstance(input_dir_or_files, (str, os.PathLike)):
        path = Path(input_dir_or_files)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and _case_name(p) is not None
            )
            if not files:
                raise FileNotFoundError(f"{path}: no NIfTI files (*.nii, *.nii.gz) in this folder")
            return files
        if _case_name(path) is not None:
            return [path]
        raise FileNotFoundError(f"{path}: no such folder")
    files = [Path(p) for p in input_dir_or_files]
    if not files:
        raise FileNotFoundError("no input files given")
    return files


def _input_files(
    input_dir_or_files: str | os.PathLike | Iterable[str | os.PathLike],
    output_dir: str | os.PathLike | None,
    suffix: str,
) -> list[Path]:
    """:func:`list_nifti_files`, less earlier outputs (``*<suffix>.nii.gz``) when the input folder is ``output_dir``."""
    files = list_nifti_files(input_dir_or_files)
    if output_dir is None:
        return files
    if isinstance(input_dir_or_files, (str, os.PathLike)) and Path(input_dir_or_files).is_dir():
        if Path(input_dir_or_files).resolve() == Path(output_dir).resolve():
            files = [f for f in files if not f.name.endswith(f"{suffix}.nii.gz")]
    return files


def nifti_datalist(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    image_key: str = "image",
    suffix: str = "_seg",
    missing_ok: bool = True,
) -> list[dict[str, str]]:
    """The images :func:`infer_folder` would segment, as ``[{image_key: path}, ...]`` for a MONAI ``Dataset``.

    Args:
        input_dir: a folder of NIfTI files (or one NIfTI path).
        output_dir: where the label maps go; when it is ``input_dir``, earlier outputs are left out.
        image_key: key of the image path in each record.
        suffix: the output suffix (see :func:`infer_folder`).
        missing_ok: return ``[]`` for a missing or empty folder instead of raising (so that a config can be
            instantiated, e.g. by MONAI's ``check_properties``, before its ``dataset_dir`` exists).

    Raises:
        FileNotFoundError: for a missing or empty folder when ``missing_ok`` is False.
    """
    try:
        files = _input_files(input_dir, output_dir, suffix)
    except FileNotFoundError:
        if missing_ok:
            return []
        raise
    return [{image_key: str(f)} for f in files]


def _write_report(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(REPORT_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)


def _input_geometry(path: Path) -> tuple[np.ndarray, tuple[int, ...], Any]:
    """``(affine, spatial shape, header)`` of a 3D NIfTI file; raises with the problem otherwise."""
    if not path.is_file():
        raise FileNotFoundError("file not found")
    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise ValueError(f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"expected a 3D image, got shape {shape}")
    return np.asarray(image.affine, dtype=np.float64), shape, image.header


_WRAPPERS = ("applying transform", "Failed to instantiate component", "Failed to evaluate")


def _cause_message(exc: BaseException) -> str:
    """``"Type: message"`` of the outermost exception of ``exc``'s chain that is not one of MONAI's wrappers
    (``RuntimeError: applying transform <LoadImaged ...>`` hides e.g. ``EOFError: Compressed file ended ...``)."""
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    for candidate in chain:
        if not (type(candidate) is RuntimeError and str(candidate).startswith(_WRAPPERS)):
            return f"{type(candidate).__name__}: {' '.join(str(candidate).split())}"
    return f"{type(exc).__name__}: {exc}"


# a full, over-quota or read-only output folder: every following case would fail the same way
_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class OutputError(OSError):
    """The output folder cannot take more files (full disk, quota, read-only): batch inference stops there, naming
    the folder and how far it got, instead of blaming each remaining input."""

    user_error = True  # custom.errors prints only its message, no traceback


def _output_error(exc: BaseException, path: Path, done: int, total: int) -> OutputError | None:
    """An :class:`OutputError` for ``exc`` when it is a full or read-only output (None otherwise)."""
    if not (isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS):
        return None
    try:
        free = f", {shutil.disk_usage(path.parent).free:,} bytes free"
    except OSError:
        free = ""
    error = OutputError(
        f"{path.parent}: cannot write {path.name}: {exc.strerror}{free}; {done} of {total} images were segmented "
        "before it (their outputs are kept)"
    )
    error.errno = exc.errno
    return error


class BatchInferenceError(RuntimeError):
    """Some images of a folder could not be segmented (the others were written); the message says which and why."""

    user_error = True


def _label_dtype(labels: np.ndarray) -> np.dtype:
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low >= 0 and high <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if low >= np.iinfo(np.int16).min and high <= np.iinfo(np.int16).max:
        return np.dtype(np.int16)
    raise ValueError(f"labels in [{low}, {high}] do not fit int16")


def _write_labels(labels: np.ndarray, affine: np.ndarray, header: Any, path: Path) -> None:
    # the input header is copied and its affine passed unchanged, so nibabel keeps the input's
    # sform/qform (codes included) verbatim: the output grid is exactly the input grid
    header = header.copy() if isinstance(header, nib.Nifti1Header) else None
    image = nib.Nifti1Image(labels, affine, header=header)
    image.set_data_dtype(labels.dtype)
    image.header.set_slope_inter(1.0, 0.0)  # labels are stored verbatim, never rescaled
    image.header["cal_min"], image.header["cal_max"] = 0, 0
    with atomic_output(path) as tmp:
        nib.save(image, str(tmp))


# ---------------------------------------------------------------------------------------------
# inference


def _predict_case(
    network: torch.nn.Module,
    path: Path,
    preprocessing: Callable,
    inferer: Callable,
    postprocessing: Callable,
    device: torch.device,
    image_key: str,
    pred_key: str,
    amp: bool,
) -> tuple[np.ndarray, Any]:
    """Label map on the postprocessed grid, and the postprocessed prediction (for its affine)."""
    data = preprocessing({image_key: str(path)})
    if not isinstance(data, Mapping):
        raise ValueError(f"preprocessing must return one dict, got {type(data).__name__}")
    image = data[image_key]
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(np.asarray(image))
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=amp and device.type == "cuda"):
        pred = inferer(image.unsqueeze(0).to(device), network)
    if isinstance(pred, (list, tuple)):  # deep-supervision networks: the first output is the full-resolution one
        pred = pred[0]
    data = dict(data)
    data[pred_key] = pred[0].float()
    data = postprocessing(data)
    result = data[pred_key]
    return _label_array(result), result


def _label_array(result: Any) -> np.ndarray:
    """The postprocessed prediction as a ``(H, W, D)`` array (a single channel is dropped)."""
    labels = result.detach().cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)
    if labels.ndim == 4:
        if labels.shape[0] != 1:
            raise ValueError(
                f"postprocessing left {labels.shape[0]} channels; expected a label map (add AsDiscreted(argmax=True))"
            )
        labels = labels[0]
    return labels


def _check_and_cast(labels: np.ndarray, result: Any, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    if labels.shape != shape:
        raise ValueError(
            f"prediction shape {labels.shape} after postprocessing differs from the input shape {shape} "
            "(does postprocessing invert the spatial preprocessing with Invertd?)"
        )
    if isinstance(result, MetaTensor):
        result_affine = np.asarray(result.affine.detach().cpu(), dtype=np.float64)
        if result_affine.shape == (4, 4) and not np.allclose(result_affine, affine, rtol=1e-4, atol=1e-3):
            raise ValueError(
                "prediction affine after postprocessing differs from the input affine "
                f"({np.round(result_affine, 4).tolist()} vs {np.round(affine, 4).tolist()})"
            )
    rounded = np.rint(labels)
    if not np.allclose(rounded, labels):
        raise ValueError("postprocessed prediction is not an integer label map (add AsDiscreted(argmax=True))")
    return rounded.astype(_label_dtype(rounded))


def load_bundle_weights(
    network: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load a bundle's ``models/model.pt`` (a plain state_dict of tensors) into ``network``, checking first what the
    file is: a :class:`DataError` naming the file says what it holds instead (missing, empty, text, a cut-short
    archive, Python objects, tensors of another network). Never unpickles anything but tensors."""
    import pickle

    problem = weights_file_problem(path)
    if problem:
        raise DataError(path, problem)
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise DataError(path, "holds Python objects besides tensors (a pickled network or a training checkpoint?); "
                              "a bundle's model.pt is a plain state_dict of tensors") from error
    except (RuntimeError, EOFError, OSError) as error:
        raise DataError(path, f"not a readable PyTorch file ({type(error).__name__}: {error})") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(path, f"holds a {type(state).__name__}, not a state_dict of tensors")
    problems = state_dict_problems(state, network.state_dict())  # the same check as training's --init_from
    if problems:
        raise DataError(path, f"does not match the network {type(network).__name__}: {'; '.join(problems)}")
    network.load_state_dict(state)
    return network


def infer_folder(
    network: torch.nn.Module,
    input_dir_or_files: str | os.PathLike | Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    preprocessing: Callable,
    inferer: Callable,
    postprocessing: Callable,
    device: str | torch.device = "cpu",
    image_key: str = "image",
    pred_key: str = "pred",
    suffix: str = "_seg",
    amp: bool = False,
    report_name: str | None = "inference_report.csv",
    raise_on_error: bool = False,
) -> list[dict[str, Any]]:
    """Segment each NIfTI image and write ``<case><suffix>.nii.gz`` on the input grid.

    Per case: ``preprocessing({image_key: path})`` -> ``inferer(image[None], network)`` (eval mode,
    no gradient, autocast when ``amp`` on CUDA) -> ``postprocessing`` with the network output
    ``(C, H, W, D)`` under ``pred_key`` -> a ``(1, H, W, D)`` or ``(H, W, D)`` integer label map that
    must have the input's spatial shape (and, when a MetaTensor, its affine). It is saved as uint8
    (int16 when labels exceed 255) with the input header and affine, through a temporary file and
    ``os.replace``. Failures are reported per case and skipped.

    Args:
        network: the segmentation network; moved to ``device`` and put in eval mode (its previous
            train/eval mode is restored at the end).
        input_dir_or_files: a folder (its ``*.nii`` / ``*.nii.gz`` files, sorted), one NIfTI path,
            or a list of paths. Files named ``*<suffix>.nii.gz`` are skipped when the folder is
            also ``output_dir`` (earlier outputs).
        output_dir: where the label maps and the report go (created when missing).
        preprocessing: callable on ``{image_key: path}`` returning a dict with a channel-first
            image, e.g. from :func:`default_inference_transforms`.
        inferer: e.g. ``monai.inferers.SlidingWindowInferer``; called as ``inferer(x, network)``
            with ``x`` of shape ``(1, C_in, H, W, D)``; must return logits ``(1, C, H, W, D)``.
        postprocessing: callable on the dict, must invert the spatial preprocessing (``Invertd``)
            and take the argmax.
        device: where the network runs.
        image_key: key of the image in the dicts.
        pred_key: key of the prediction in the dicts.
        suffix: appended to the case name for the output file.
        amp: mixed precision (only used on CUDA).
        report_name: file name of the CSV report in ``output_dir``; None writes no report.
        raise_on_error: after all cases, raise :class:`BatchInferenceError` when any case failed (the bundles'
            command lines: a non-zero exit status); False returns the rows only.

    Returns:
        One dict per input with the keys of :data:`REPORT_COLUMNS`: ``case``, ``input``,
        ``output`` (empty on error), ``status`` (``"ok"`` / ``"error"``), ``message`` (the problem)
        and ``seconds``.

    A summary line (``segmented: N ok, M failed, K skipped (earlier outputs); report: <path>``) is logged and
    printed to stderr.

    Raises:
        FileNotFoundError: naming the folder when it does not exist or holds no NIfTI file.
        BatchInferenceError: with ``raise_on_error``, when any case failed (after all cases were tried), naming each
            failed file and its problem.
    """
    files = _input_files(input_dir_or_files, output_dir, suffix)
    skipped = 0
    if isinstance(input_dir_or_files, (str, os.PathLike)):
        skipped = len(list_nifti_files(input_dir_or_files)) - len(files)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report_path = output_dir / report_name if report_name else None
    device = torch.device(device)
    was_training = network.training
    network = network.to(device).eval()

    rows: list[dict[str, Any]] = []
    written: set[str] = set()
    try:
        for path in tqdm(files, desc="segmenting", unit="case", disable=None):
            start = time.perf_counter()
            case = _case_name(path) or path.name
            output_path = output_dir / f"{case}{suffix}.nii.gz"
            row = {"case": case, "input": str(path), "output": "", "status": "ok", "message": ""}
            try:
                if case in written:
                    raise ValueError(f"another input already produced {output_path.name}")
                affine, shape, header = _input_geometry(path)
                labels, result = _predict_case(
                    network, path, preprocessing, inferer, postprocessing, device, image_key, pred_key, amp
                )
                labels = _check_and_cast(labels, result, shape, affine)
                _write_labels(labels, affine, header, output_path)
                written.add(case)
                row["output"] = str(output_path)
            except Exception as exc:  # one bad case must not stop the folder
                full = _output_error(exc, output_path, len(written), len(files))
                if full is not None:  # ... but a full or read-only output stops every case: say so once
                    raise full from exc
                row["status"] = "error"
                row["message"] = _cause_message(exc)
                logger.warning(f"{path}: {row['message']}")
            row["seconds"] = round(time.perf_counter() - start, 3)
            rows.append(row)
            if report_path is not None:
                try:
                    _write_report(rows, report_path)  # rewritten after every case: a crash keeps the progress
                except OSError as exc:
                    full = _output_error(exc, report_path, len(written), len(files))
                    if full is None:
                        raise
                    raise full from exc
    finally:
        network.train(was_training)
    n_ok = sum(r["status"] == "ok" for r in rows)
    failed = [r for r in rows if r["status"] != "ok"]
    where = f"report: {report_path}" if report_path is not None else f"outputs in {output_dir}"
    summary = f"segmented: {n_ok} ok, {len(failed)} failed, {skipped} skipped (earlier outputs); {where}"
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(summary)
    else:  # logging not configured (a script, a notebook): the summary is still shown, once
        print(summary, file=sys.stderr, flush=True)
    if failed and raise_on_error:
        details = "; ".join(f"{r['input']}: {r['message']}" for r in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise BatchInferenceError(f"{len(failed)} of {len(rows)} images failed ({where}): {details}{more}")
    return rows


class SegmentationWriter:
    """Ignite handler: write the label maps of a MONAI evaluator exactly as :func:`infer_folder` does.

    Attach it to a ``SupervisedEvaluator`` whose ``postprocessing`` ends with a label map on the input grid (the
    bundle's ``postprocessing``: softmax, ``Invertd``, argmax). After every iteration each case's ``pred_key`` is
    written to ``<output_dir>/<case><suffix>.nii.gz`` with the input file's header and affine (uint8, int16 when
    labels exceed 255); the input file is the ``filename_or_obj`` of the image's metadata. Unlike
    :func:`infer_folder`, a case that fails stops the run (the error names the file).

    Args:
        output_dir: where the label maps go (created when missing).
        image_key: key of the image (a ``MetaTensor`` that remembers its file) in the batch or output.
        pred_key: key of the postprocessed label map in the output.
        suffix: appended to the case name.

    Raises:
        ValueError: at write time, when a case's source file is unknown or its label map does not match the input
            geometry.
    """

    def __init__(
        self, output_dir: str | os.PathLike, image_key: str = "image", pred_key: str = "pred", suffix: str = "_seg"
    ) -> None:
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.pred_key = pred_key
        self.suffix = suffix
        self.written: list[Path] = []

    def attach(self, engine: Any) -> None:
        """Run after every iteration of ``engine`` (an ignite ``Engine``)."""
        from monai.utils import optional_import  # ignite, through MONAI: needed by MONAI's engines, not infer_folder

        events, _ = optional_import("ignite.engine", name="Events")
        engine.add_event_handler(events.ITERATION_COMPLETED, self)

    def _source(self, output: Mapping[str, Any], batch: Any) -> Path:
        for item in (output, batch):
            image = item.get(self.image_key) if isinstance(item, Mapping) else None
            meta = getattr(image, "meta", None) or {}
            source = meta.get("filename_or_obj")
            if isinstance(source, (list, tuple)) and len(source) == 1:
                source = source[0]
            if isinstance(source, (str, os.PathLike)) and str(source):
                return Path(source)
        raise ValueError(f"cannot tell which file {self.image_key!r} was loaded from (no filename_or_obj metadata)")

    def __call__(self, engine: Any) -> None:
        outputs, batches = engine.state.output, engine.state.batch
        if isinstance(outputs, Mapping):
            outputs, batches = [outputs], [batches]
        for i, output in enumerate(outputs):
            batch = batches[i] if isinstance(batches, Sequence) and i < len(batches) else None
            path = self._source(output, batch)
            try:
                affine, shape, header = _input_geometry(path)
                result = output[self.pred_key]
                labels = _check_and_cast(_label_array(result), result, shape, affine)
                target = self.output_dir / f"{_case_name(path) or path.name}{self.suffix}.nii.gz"
                _write_labels(labels, affine, header, target)
            except Exception as exc:
                raise ValueError(f"{path}: {type(exc).__name__}: {exc}") from exc
            self.written.append(target)
            logger.info(f"wrote {target}")
