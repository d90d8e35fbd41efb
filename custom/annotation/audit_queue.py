"""The label audit as an annotator's work queue: which case to review next, and which refined label to offer for it.

Reads ``label_audit.csv`` (written by :func:`custom.refinement.label_audit.write_label_audit`: ``rank, case_id,
score_name, score, changed_fraction, refined_label, noisy_label, ...``) and answers, for the images of an
annotation datastore, which one is the most suspicious case that nobody has reviewed yet.

Images and audit rows meet by name: a datastore image id (MONAI Label's local datastore: the study file's name
without ``.nii.gz`` / ``.nii`` / ``.nrrd`` ...) is the audit's ``case_id`` when they are equal; a path or a file name
is first reduced to its stem by :func:`case_id_of`. The datalist writers name image files ``<case_id>.nii.gz``, so
copying the audited training images into the studies folder keeps the names.

Standard library only: the MONAI Label app (:mod:`custom.annotation.monailabel_audit`) is copied next to this file
into the app folder, where this repository is not importable.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = ["AUDIT_CSV", "AuditEntry", "AuditQueue", "case_id_of", "read_audit"]

AUDIT_CSV = "label_audit.csv"
# the image formats of MONAI Label's local datastore (longest first, so that ".nii.gz" wins over ".gz")
_EXTENSIONS = (".nii.gz", ".nrrd.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")
_REQUIRED_COLUMNS = ("rank", "case_id", "score", "refined_label")


class AuditEntry(NamedTuple):
    """One row of ``label_audit.csv``.

    Attributes:
        rank: 1 = the most suspicious annotation.
        case_id: the audited case (the image's file stem).
        score_name: what ``score`` measures (e.g. ``teacher_uncertainty``).
        score: the ranking score (higher = re-check first).
        changed_fraction: fraction of voxels the refined label changes in the noisy one (``None`` when absent).
        refined_label: absolute path of the refined label (NIfTI, the noisy label file's geometry).
    """

    rank: int
    case_id: str
    score_name: str
    score: float
    changed_fraction: float | None
    refined_label: Path


def case_id_of(name: str | os.PathLike) -> str:
    """The case id of an image id, file name or path: the file name without its image extension
    (``/x/synth_004.nii.gz`` -> ``synth_004``; an id without extension is returned as it is)."""
    base = Path(str(name)).name
    lowered = base.lower()
    for ext in _EXTENSIONS:
        if lowered.endswith(ext) and len(base) > len(ext):
            return base[: -len(ext)]
    return base


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_audit(csv_path: str | os.PathLike) -> list[AuditEntry]:
    """The rows of ``label_audit.csv``, in rank order.

    A relative ``refined_label`` is taken relative to the CSV's folder; a refined label that is not there is looked
    for in ``<csv folder>/labels/<case_id>.nii.gz`` (an audit folder that was moved or copied).

    Raises:
        FileNotFoundError: no such CSV.
        ValueError: a required column is missing, a rank is not an integer, or a case id appears twice.
    """
    path = Path(csv_path)
    folder = path.resolve().parent
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; a label_audit.csv has {_REQUIRED_COLUMNS}")
        entries = []
        for line, row in enumerate(reader, start=2):
            try:
                rank = int(row["rank"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: rank {row['rank']!r} is not an integer") from None
            refined = Path(row["refined_label"])
            if not refined.is_absolute():
                refined = folder / refined
            if not refined.is_file():
                moved = folder / "labels" / f"{row['case_id']}.nii.gz"
                refined = moved if moved.is_file() else refined
            score = _float_or_none(row.get("score"))
            entries.append(AuditEntry(rank, row["case_id"], row.get("score_name") or "", 0.0 if score is None
                                      else score, _float_or_none(row.get("changed_fraction")), refined))
    seen: set[str] = set()
    for entry in entries:
        if entry.case_id in seen:
            raise ValueError(f"{path}: case {entry.case_id!r} appears twice")
        seen.add(entry.case_id)
    return sorted(entries, key=lambda e: (e.rank, e.case_id))


class AuditQueue:
    """The audit's cases in rank order, matched to the images of a datastore.

    Args:
        entries: the audit rows (:func:`read_audit`), in any order.
    """

    def __init__(self, entries: Iterable[AuditEntry]) -> None:
        self.entries: list[AuditEntry] = sorted(entries, key=lambda e: (e.rank, e.case_id))
        self._by_case = {e.case_id: e for e in self.entries}

    @classmethod
    def from_csv(cls, csv_path: str | os.PathLike) -> AuditQueue:
        return cls(read_audit(csv_path))

    def entry(self, image: str | os.PathLike) -> AuditEntry | None:
        """The audit row of an image id, file name or path (:func:`case_id_of`), or ``None``."""
        return self._by_case.get(str(image)) or self._by_case.get(case_id_of(image))

    def pending(self, image_ids: Iterable[str], submitted: Collection[str] = ()) -> list[tuple[str, AuditEntry]]:
        """``(image id, audit row)`` of every datastore image that the audit ranks and that has no submitted label,
        most suspicious first. Images the audit does not know are left out."""
        done = {case_id_of(i) for i in submitted} | {str(i) for i in submitted}
        matched = []
        for image_id in image_ids:
            entry = self.entry(image_id)
            if entry is not None and str(image_id) not in done and entry.case_id not in done:
                matched.append((str(image_id), entry))
        return sorted(matched, key=lambda pair: (pair[1].rank, pair[1].case_id, pair[0]))

    def next_case(self, image_ids: Sequence[str] | Iterable[str],
                  submitted: Collection[str] = ()) -> tuple[str, AuditEntry] | None:
        """The most suspicious unreviewed image: ``(image id, audit row)``, or ``None`` when every audited image of
        the datastore has a submitted label (or none is audited)."""
        pending = self.pending(image_ids, submitted)
        return pending[0] if pending else None
