"""Label audit: the refined label of every noisy (LQ) training case as NIfTI, and a CSV ranking which annotations
to re-check first. One writer (:func:`write_label_audit`), two sources:

* ALC (:func:`alc_audit_cases`): the EMA teacher's fused prediction over ``T`` perturbations (input noise +
  MC dropout, :func:`custom.refinement.teacher_fusion.alc_refine`), sliding window over the whole volume; the
  ranking score is the case's uncertainty ``U`` (Eq. 7 of ALC, higher = re-check first).
* SP-guided (:func:`spguided_audit_cases`): the labels written by the refinement stage
  (``<run>/refined_labels/round_<r>/<case_id>.nii.gz``, the latest round per case); the score is the fraction of
  voxels changed from the original noisy label.

Output (``audit_dir``): ``labels/<case_id>.nii.gz`` (source geometry and affine) and ``label_audit.csv`` with
``rank, case_id, score_name, score, changed_fraction, refined_label, noisy_label`` and, when the datalist knows
the clean label (simulated noise), ``noisy_dice`` / ``refined_dice`` against it (for evaluation only: they play
no part in the ranking). Entry points: ``scripts/export_label_audit.py`` and the ``label_audit`` run id of the
method configs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from custom.init_from import load_weights
from custom.io import DataError, load_nifti, save_nifti, write_csv

__all__ = [
    "AUDIT_CSV",
    "AUDIT_LABEL_DIR",
    "REFINED_LABEL_DIR",
    "AuditCase",
    "to_source_geometry",
    "SlidingWindowPredictor",
    "write_label_audit",
    "alc_audit_cases",
    "spguided_audit_cases",
    "latest_refined_labels",
    "export_alc_audit",
    "export_spguided_audit",
]

AUDIT_CSV = "label_audit.csv"
AUDIT_LABEL_DIR = "labels"
#: where the SP-guided refinement stage writes ``round_<r>/<case_id>.nii.gz`` inside the run folder
REFINED_LABEL_DIR = "refined_labels"


class AuditCase(NamedTuple):
    """One audited case.

    Attributes:
        case_id: datalist ``case_id``.
        refined: refined labels ``(H, W, D)`` in the noisy label file's geometry.
        affine: affine to write ``refined`` with (the noisy label file's).
        header: NIfTI header to write with (or ``None``).
        score: ranking score, higher = re-check first.
        noisy_label: path of the original noisy label.
        clean_label: path of the clean label, if known (evaluation only).
    """

    case_id: str
    refined: np.ndarray
    affine: np.ndarray
    header: Any
    score: float
    noisy_label: str
    clean_label: str | None = None


def to_source_geometry(refined: torch.Tensor, loaded_label: torch.Tensor, load_transform: Any) -> np.ndarray:
    """Map a label map ``(1, *S)`` computed on ``load_transform``'s output back to the source file's grid.

    ``loaded_label`` is the ``label`` MetaTensor that ``load_transform`` produced (its ``applied_operations`` record
    orientation / spacing); those spatial steps are inverted with nearest-neighbour interpolation
    (``monai.transforms.Invertd``). Without a trace (plain tensors) the map is returned unchanged.

    Returns:
        int64 array ``(H, W, D)``.
    """
    from monai.data import MetaTensor
    from monai.transforms import Invertd, InvertibleTransform

    if isinstance(loaded_label, MetaTensor) and isinstance(load_transform, InvertibleTransform):
        if loaded_label.applied_operations:
            data = {"label": loaded_label, "refined": MetaTensor(refined.detach().float().cpu())}
            refined = Invertd("refined", load_transform, orig_keys="label", nearest_interp=True)(data)["refined"]
    array = refined.detach().cpu().numpy() if isinstance(refined, torch.Tensor) else np.asarray(refined)
    return np.rint(array[0]).astype(np.int64)


class SlidingWindowPredictor(nn.Module):
    """``network`` evaluated through ``inferer`` (e.g. a ``SlidingWindowInferer``) as one module, so that
    whole-volume predictions can go through functions written for a network (MC-dropout modes reach the
    wrapped network's layers)."""

    def __init__(self, network: nn.Module, inferer: Callable[..., torch.Tensor] | None = None) -> None:
        super().__init__()
        self.network = network
        self.inferer = inferer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x) if self.inferer is None else self.inferer(x, self.network)
        return out.as_tensor() if hasattr(out, "as_tensor") else out


def _case_id(item: Mapping[str, Any]) -> str:
    return str(item.get("case_id") or Path(str(item["image"])).name.split(".")[0])


def _int_labels(path: str) -> np.ndarray:
    return np.rint(load_nifti(path)[0]).astype(np.int64)


def write_label_audit(
    cases: Iterable[AuditCase], audit_dir: str | Path, score_name: str, num_classes: int
) -> Path:
    """Write every case's refined label and the ranked ``label_audit.csv`` (module docstring); returns the CSV path.

    Raises:
        custom.io.DataError: a refined map whose shape differs from its noisy label file.
    """
    from custom.noise.quality import foreground_dice

    audit_dir = Path(audit_dir)
    dtype = np.uint8 if int(num_classes) <= 256 else np.int16
    rows = []
    for case in cases:
        noisy = _int_labels(case.noisy_label)
        if noisy.shape != case.refined.shape:
            raise DataError(case.noisy_label, f"refined label shape {case.refined.shape} differs from {noisy.shape}")
        path = audit_dir / AUDIT_LABEL_DIR / f"{case.case_id}.nii.gz"
        save_nifti(case.refined, case.affine, path, header=case.header, dtype=dtype)
        row: dict[str, Any] = {
            "case_id": case.case_id, "score_name": score_name, "score": round(float(case.score), 6),
            "changed_fraction": round(float(np.mean(case.refined != noisy)), 6),
            "refined_label": str(path), "noisy_label": case.noisy_label,
        }
        if case.clean_label:
            clean = _int_labels(case.clean_label)
            row["noisy_dice"] = round(foreground_dice(noisy, clean, num_classes), 6)
            row["refined_dice"] = round(foreground_dice(case.refined, clean, num_classes), 6)
        rows.append(row)
    rows.sort(key=lambda r: (-r["score"], r["case_id"]))
    ranked = [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)]
    return write_csv(ranked, audit_dir / AUDIT_CSV)


def _noisy_items(items: Sequence[Mapping[str, Any]], include_hq: bool) -> list[Mapping[str, Any]]:
    return [i for i in items if include_hq or i.get("quality") != "hq"]


def alc_audit_cases(
    teacher: nn.Module,
    items: Sequence[Mapping[str, Any]],
    load_transform: Callable[[dict], dict],
    inferer: Callable[..., torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    num_samples: int = 8,
    noise_std: float = 0.1,
    noise_clip: float = 0.2,
    tau: float = 1.0,
    fusion_mode: str = "softmax",
    uncertainty_mode: str = "weighted_kl",
    seed: int = 0,
    include_hq: bool = False,
    batch_norm: str = "batch",
) -> Iterator[AuditCase]:
    """ALC source: the teacher's refined label and uncertainty per (LQ) case, one whole volume at a time.

    ``batch_norm`` is the teacher's BatchNorm mode while sampling (as in training, see
    :func:`custom.refinement.teacher_fusion.teacher_sampling_mode`); in ``"batch"`` mode the statistics are those of
    each sliding-window batch.

    Each of the ``T`` perturbations is one sliding-window pass over the whole volume (``mc_chunk=1``), so memory
    holds ``T`` probability volumes. Input noise comes from a generator seeded with ``seed``; dropout masks from
    PyTorch's global RNG (seeded with ``seed`` here too).
    """
    from custom.refinement.teacher_fusion import alc_refine

    if device is None:
        device = next(iter(teacher.parameters())).device
    predictor = SlidingWindowPredictor(teacher, inferer).to(device)
    torch.manual_seed(int(seed))
    generator = torch.Generator(device=device).manual_seed(int(seed))
    for item in _noisy_items(items, include_hq):
        data = load_transform({"image": item["image"], "label": item["label"]})
        image = torch.as_tensor(data["image"]).as_subclass(torch.Tensor).unsqueeze(0).to(device)
        result = alc_refine(
            predictor, image, num_samples=num_samples, noise_std=noise_std, noise_clip=noise_clip, mc_chunk=1,
            tau=tau, weight_mode=fusion_mode, uncertainty_mode=uncertainty_mode, generator=generator,
            batch_norm=batch_norm,
        )
        refined = to_source_geometry(result.refined_labels[0], data["label"], load_transform)
        _, affine, header = load_nifti(item["label"])
        yield AuditCase(
            _case_id(item), refined, affine, header, float(result.uncertainty[0]), str(item["label"]),
            item.get("label_clean"),
        )


_ROUND_DIR = re.compile(r"^round_(\d+)$")


def latest_refined_labels(run_dir: str | Path) -> dict[str, Path]:
    """``case_id -> refined label file`` of the highest round under ``run_dir/refined_labels/round_<r>/``."""
    root = Path(run_dir) / REFINED_LABEL_DIR
    rounds = sorted(
        ((int(m.group(1)), p) for p in root.glob("round_*") if p.is_dir() and (m := _ROUND_DIR.match(p.name))),
        key=lambda pair: pair[0],
    )
    latest: dict[str, Path] = {}
    for _, folder in rounds:  # later rounds overwrite earlier ones
        for path in folder.glob("*.nii.gz"):
            latest[path.name[: -len(".nii.gz")]] = path
    return latest


def spguided_audit_cases(
    items: Sequence[Mapping[str, Any]], run_dir: str | Path, include_hq: bool = False
) -> Iterator[AuditCase]:
    """SP-guided source: the latest refined label per (LQ) case from the run folder; score = fraction changed.

    ``items`` are the *original* training items (noisy ``label`` paths, e.g. ``@data::training``). A case that was
    never refined is listed with its noisy label (score 0).
    """
    refined_files = latest_refined_labels(run_dir)
    for item in _noisy_items(items, include_hq):
        case_id = _case_id(item)
        noisy, affine, header = load_nifti(item["label"])
        noisy = np.rint(noisy).astype(np.int64)
        refined = _int_labels(str(refined_files[case_id])) if case_id in refined_files else noisy
        if refined.shape != noisy.shape:
            raise DataError(refined_files[case_id], f"shape {refined.shape} differs from the noisy label's "
                                                    f"{noisy.shape}")
        score = float(np.mean(refined != noisy))
        yield AuditCase(case_id, refined, affine, header, score, str(item["label"]), item.get("label_clean"))


def export_alc_audit(
    teacher: nn.Module,
    items: Sequence[Mapping[str, Any]],
    load_transform: Callable[[dict], dict],
    audit_dir: str | Path,
    num_classes: int,
    inferer: Callable[..., torch.Tensor] | None = None,
    checkpoint: str | Path | None = None,
    **kwargs: Any,
) -> Path:
    """Load the teacher's weights (``checkpoint``, e.g. ``<run>/models/extra/teacher.pt``) if given, then write the ALC
    audit (:func:`alc_audit_cases` keyword arguments pass through). Returns the CSV path."""
    if checkpoint is not None:
        load_weights(teacher, checkpoint)  # checked: a bad file is named with what it holds
    cases = alc_audit_cases(teacher, items, load_transform, inferer, **kwargs)
    return write_label_audit(cases, audit_dir, "teacher_uncertainty", num_classes)


def export_spguided_audit(
    items: Sequence[Mapping[str, Any]],
    run_dir: str | Path,
    num_classes: int,
    audit_dir: str | Path | None = None,
    include_hq: bool = False,
) -> Path:
    """Write the SP-guided audit from a run folder (default ``audit_dir``: ``<run_dir>/label_audit``)."""
    audit_dir = Path(run_dir) / "label_audit" if audit_dir is None else Path(audit_dir)
    cases = spguided_audit_cases(items, run_dir, include_hq)
    return write_label_audit(cases, audit_dir, "changed_fraction", num_classes)
