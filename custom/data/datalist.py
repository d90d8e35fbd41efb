"""The datalist: a MONAI decathlon-style JSON that is the contract between data preparation and training.

Layout (paths relative to the datalist file's folder)::

    {"name": ..., "labels": {"0": "background", "1": "left_atrium"}, "num_classes": 2,
     "spacing": [0.625, 0.625, 0.625], "seed": 0, "noise": {"name": "mtcl", "params": {}},
     "mean_noisy_dice_lq": 0.67,
     "training":   [{"case_id", "image", "label", "label_clean", "quality": "hq" | "lq", "noisy_dice"}],
     "validation": [{"case_id", "image", "label", "label_clean"}],
     "test":       [{"case_id", "image", "label", "label_clean"}]}

``label`` is what training uses (the clean label for HQ cases, the noisy one for LQ cases); ``label_clean`` is
for evaluation only. Keys starting with ``image_`` are refused: MONAI 1.6.1 ``Spacingd`` treats them as
metadata of the ``image`` key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from custom.io import DataError, read_json

__all__ = [
    "SPLITS",
    "QUALITIES",
    "REQUIRED_KEYS",
    "FILE_SUFFIXES",
    "validate_datalist",
    "load_datalist",
    "read_datalist_meta",
    "relative_path",
]

SPLITS = ("training", "validation", "test")
QUALITIES = ("hq", "lq")
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "training": ("case_id", "image", "label", "quality"),
    "validation": ("case_id", "image", "label"),
    "test": ("case_id", "image", "label"),
}
# string values with these endings are file references: resolved against the datalist folder and checked
FILE_SUFFIXES = (".nii", ".nii.gz", ".npy", ".npz", ".h5", ".hdf5", ".nrrd", ".mha", ".mhd")


def _is_file_reference(key: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    return key in ("image", "label", "label_clean") or value.lower().endswith(FILE_SUFFIXES)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(path, "datalist not found")
    content = read_json(path, "datalist JSON")
    if not isinstance(content, dict):
        raise DataError(path, f"a datalist must be a JSON object, got {type(content).__name__}")
    return content


def _validate_meta(content: Mapping[str, Any], path: Path) -> None:
    num_classes = content.get("num_classes")
    bad_count = isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    if num_classes is not None and bad_count:
        raise DataError(path, f"'num_classes' must be an integer >= 2, got {num_classes!r}")
    labels = content.get("labels")
    if labels is not None:
        if not isinstance(labels, dict) or not all(str(k).isdigit() for k in labels):
            raise DataError(path, "'labels' must map class indices ('0', '1', ...) to names")
        if num_classes is not None and sorted(int(k) for k in labels) != list(range(num_classes)):
            declared = sorted(labels, key=int)
            raise DataError(path, f"'labels' declares classes {declared} but 'num_classes' is {num_classes}")
    spacing = content.get("spacing")
    if spacing is not None and (
        not isinstance(spacing, list)
        or len(spacing) != 3
        or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in spacing)
    ):
        raise DataError(path, f"'spacing' must be a list of 3 positive numbers, got {spacing!r}")


def validate_datalist(content: Mapping[str, Any], path: str | os.PathLike, split: str) -> list[dict[str, Any]]:
    """Check the structure of one split of a parsed datalist and return its items (unchanged copies).

    Args:
        content: the parsed datalist JSON.
        path: the datalist file, used in error messages only.
        split: one of :data:`SPLITS`.

    Raises:
        ValueError: ``split`` is not one of :data:`SPLITS`.
        DataError: the split is missing or not a list, an item is not an object, lacks a required key, has an
            ``image_*`` key, a bad ``quality`` or a duplicate ``case_id``; or the metadata is inconsistent.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    _validate_meta(content, path)
    if split not in content:
        raise DataError(path, f"no '{split}' split (found keys: {sorted(content)})")
    items = content[split]
    if not isinstance(items, list):
        raise DataError(path, f"'{split}' must be a list of items, got {type(items).__name__}")
    if split == "training" and not items:
        raise DataError(path, "the 'training' split is empty")
    seen: set[str] = set()
    result = []
    for index, item in enumerate(items):
        where = f"{split}[{index}]"
        if not isinstance(item, dict):
            raise DataError(path, f"{where} must be an object, got {type(item).__name__}")
        missing = [key for key in REQUIRED_KEYS[split] if key not in item]
        if missing:
            raise DataError(path, f"{where} lacks required key(s) {missing}")
        where = f"{split}[{index}] (case {item['case_id']!r})"
        trap = [key for key in item if key.startswith("image_")]
        if trap:
            raise DataError(path, f"{where} has key(s) {trap}: keys starting with 'image_' are reserved by MONAI")
        for key in ("image", "label"):
            if not isinstance(item[key], str) or not item[key]:
                raise DataError(path, f"{where} '{key}' must be a non-empty path string, got {item[key]!r}")
        if "quality" in item and item["quality"] not in QUALITIES:
            raise DataError(path, f"{where} has quality {item['quality']!r}; expected one of {QUALITIES}")
        case_id = str(item["case_id"])
        if case_id in seen:
            raise DataError(path, f"{where} duplicates case_id {case_id!r}")
        seen.add(case_id)
        result.append(dict(item))
    return result


def load_datalist(
    path: str | os.PathLike, split: str = "training", check_files: bool = True, quality: str | None = None
) -> list[dict[str, Any]]:
    """Read one split of a datalist, with file references made absolute.

    Args:
        path: the datalist JSON file.
        split: ``"training"``, ``"validation"`` or ``"test"``.
        check_files: when True, every referenced file (``image``, ``label``, ``label_clean`` and any other value
            ending in a known image suffix) must exist.
        quality: keep only training items of this quality (``"hq"`` or ``"lq"``); ``None`` keeps all.

    Returns:
        The items as new dicts (absolute paths), in datalist order. A quality filter may return an empty list.

    Raises:
        ValueError: bad ``split`` or ``quality`` argument.
        DataError: unreadable or malformed datalist, or a missing file; the message names the datalist, the
            item and the problem.
    """
    if quality is not None:
        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {QUALITIES} or None, got {quality!r}")
        if split != "training":
            raise ValueError(f"quality filtering only applies to the 'training' split, not {split!r}")
    path = Path(path)
    items = validate_datalist(_read_json(path), path, split)
    base = path.resolve().parent
    result = []
    for index, item in enumerate(items):
        if quality is not None and item["quality"] != quality:
            continue
        for key, value in item.items():
            if not _is_file_reference(key, value):
                continue
            full = Path(value) if os.path.isabs(value) else base / value
            if check_files and not full.is_file():
                raise DataError(path, f"{split}[{index}] (case {item['case_id']!r}) '{key}' file not found: {full}")
            item[key] = str(full)
        result.append(item)
    return result


def read_datalist_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Everything in a datalist except the splits: ``labels``, ``num_classes``, ``spacing``, ``noise``, ...

    Raises:
        DataError: unreadable datalist or inconsistent ``labels`` / ``num_classes`` / ``spacing``.
    """
    path = Path(path)
    content = _read_json(path)
    _validate_meta(content, path)
    return {key: value for key, value in content.items() if key not in SPLITS}


def relative_path(target: str | os.PathLike, datalist_path: str | os.PathLike) -> str:
    """``target`` relative to the datalist's folder, with forward slashes (the form stored in a datalist)."""
    rel = os.path.relpath(Path(target).resolve(), Path(datalist_path).resolve().parent)
    return Path(rel).as_posix()
