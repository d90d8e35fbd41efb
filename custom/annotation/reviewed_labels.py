"""Fold an annotator's reviewed labels back into a datalist for retraining (docs/deploy.md, "The annotator's loop").

A case reviewed in MONAI Label has its submitted label in the studies folder's ``labels/final/<image id>.nii.gz``.
:func:`merge_reviewed_labels` writes a new datalist in which every ``training`` case with such a file trains on it
as a high-quality case: ``label`` -> the reviewed file, ``quality`` -> ``"hq"``; the datalist's ``reviewed_cases``
lists them. Items keep their keys (a batch collates items key by key), so ``noisy_dice`` still describes the
original noisy label, and ``label_clean`` is kept (evaluation only).
Cases meet files by name: the ``case_id`` is the reviewed file's name without ``.nii.gz`` / ``.nii`` (the datastore's
image id, see :mod:`custom.annotation.audit_queue`). Nothing else changes; paths are rewritten relative to the new
datalist's folder, so it can be written anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from custom.data.datalist import FILE_SUFFIXES, SPLITS, load_datalist, read_datalist_meta, relative_path
from custom.io import DataError, write_json

__all__ = ["reviewed_label_files", "merge_reviewed_labels"]

_LABEL_EXTENSIONS = (".nii.gz", ".nii")


def reviewed_label_files(reviewed_dir: str | os.PathLike) -> dict[str, Path]:
    """``case id -> file`` of the labels in ``reviewed_dir`` (e.g. ``<studies>/labels/final``).

    Raises:
        DataError: the folder does not exist, or two files give the same case id.
    """
    folder = Path(reviewed_dir)
    if not folder.is_dir():
        raise DataError(folder, "folder of reviewed labels not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        ext = next((e for e in _LABEL_EXTENSIONS if path.name.endswith(e) and len(path.name) > len(e)), None)
        if ext is None or not path.is_file():
            continue
        case_id = path.name[: -len(ext)]
        if case_id in found:
            raise DataError(path, f"a second reviewed label of case {case_id!r} (also {found[case_id].name})")
        found[case_id] = path.resolve()
    return found


def _relative_item(item: dict[str, Any], out: Path) -> dict[str, Any]:
    result = {}
    for key, value in item.items():
        is_file = isinstance(value, str) and (key in ("image", "label", "label_clean")
                                              or value.lower().endswith(FILE_SUFFIXES))
        result[key] = relative_path(value, out) if is_file and os.path.isabs(value) else value
    return result


def merge_reviewed_labels(
    datalist: str | os.PathLike, reviewed_dir: str | os.PathLike, out: str | os.PathLike
) -> tuple[Path, list[str]]:
    """Write ``out``: ``datalist`` with the reviewed labels of ``reviewed_dir`` as HQ training labels.

    Returns:
        ``(out, case ids that now train on a reviewed label)``.

    Raises:
        DataError: unreadable datalist or folder, a reviewed label of a case that is not in ``training`` (a
            validation or test case must not be trained on; an unknown name is a typo), or ``out`` is the
            input datalist.
    """
    datalist, out = Path(datalist), Path(out)
    if out.resolve() == datalist.resolve():
        raise DataError(out, "write the merged datalist to a new file (the input is kept as it is)")
    reviewed = reviewed_label_files(reviewed_dir)
    content: dict[str, Any] = dict(read_datalist_meta(datalist))
    with open(datalist) as f:
        splits = json.load(f)
    loaded = {split: load_datalist(datalist, split, check_files=True) for split in SPLITS if split in splits}
    for split, items in loaded.items():
        stray = sorted({str(i["case_id"]) for i in items} & set(reviewed)) if split != "training" else []
        if stray:
            raise DataError(Path(reviewed_dir), f"reviewed label(s) of {split} case(s) {stray}: only training cases "
                                                "may train on a reviewed label")
    unknown = sorted(set(reviewed) - {str(i["case_id"]) for i in loaded["training"]})
    if unknown:
        raise DataError(Path(reviewed_dir), f"reviewed label(s) of case(s) {unknown} that the datalist's training "
                                            "split does not have (names must be the case ids)")
    merged: list[str] = []
    for item in loaded["training"]:
        path = reviewed.get(str(item["case_id"]))
        if path is not None:
            item.update({"label": str(path), "quality": "hq"})
            merged.append(str(item["case_id"]))
    for split, items in loaded.items():
        content[split] = [_relative_item(item, out) for item in items]
    content["reviewed_cases"] = sorted(set(content.get("reviewed_cases", [])) | set(merged))
    return write_json(content, out), merged
