"""SP-guided's label refinement rounds (methods.md §2.5-2.7) as an ignite handler; the forget-rate warm-up and the
loss gap (Eq. 5) that trigger them are in :mod:`custom.handlers.coteaching_schedule` (re-exported here).

* :class:`SuperpixelRefinementStage` (Eqs. 6-8, §2.6-2.7): when the gap's maximum has not improved for
  ``patience`` epochs, refine every training case (:func:`refine_case`: both networks in eval mode, sliding-window
  ``p = (p1 + p2) / 2`` on the whole volume, supervoxels from the cached NIfTI,
  :func:`custom.refinement.superpixel_refinement.refine_labels_by_superpixel`), write
  ``output_dir/refined_labels/round_<r>/<case_id>.nii.gz`` in the source label's geometry and affine, swap the
  paths into the training dataset (``CacheDataset.set_data`` re-caches; the loader must not use persistent
  workers), raise ``R <- max(R, min(gamma R, R_max))`` and log refined-vs-clean Dice per case and round
  (``refined_labels/refinement_log.csv``). Rounds continue up to ``max_rounds`` (1 = the released code; more =
  the paper) and stop early when the gap's maximum after a refinement does not exceed the one before it.

HQ cases (``quality == "hq"``: clean labels) are not refined unless ``refine_hq`` *(decision)*.

``refine_by_epoch`` *(decision, default None = the paper)*: when the loss-gap criterion has not fired by that epoch,
the first round runs anyway. Short schedules need it (in the old 30-epoch CPU profile the gap still rose at the last
epoch). The method configs leave it off; ``configs/cpu_la.json`` keeps a late deadline (epoch 34 of 50) as a safety
net, which no protocol run has reached: the gap fired by itself (docs/methods/spguided.md).

Under ``torch.distributed`` the epoch's loss gap is averaged over ranks (every rank refines at the same epoch) and
only rank 0 writes files: ``loss_gap.csv``, the log and the refined NIfTI labels, which the other ranks read after a
barrier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from custom.distributed import barrier, is_main_process
from custom.handlers.coteaching_schedule import KeepRatioWarmup, LossGapHandler, warmup_keep_ratio
from custom.io import load_nifti, save_nifti, write_csv
from custom.refinement.gate_calibration import calibrate_min_confidence, case_gate_threshold, label_agreement
from custom.refinement.label_audit import REFINED_LABEL_DIR
from custom.refinement.superpixel_refinement import (
    check_min_confidence,
    pooled_refinement_masks,
    update_keep_ratio,
)
from custom.refinement.volume_refinement import (  # noqa: F401  (re-exported: the stage's functional core)
    RefinedCase,
    ScoredCase,
    averaged_probabilities,
    case_refinement_mask,
    finish_case,
    refine_case,
    score_case,
)

__all__ = [
    "REFINED_LABEL_DIR",
    "REFINEMENT_LOG",
    "warmup_keep_ratio",
    "KeepRatioWarmup",
    "LossGapHandler",
    "averaged_probabilities",
    "RefinedCase",
    "ScoredCase",
    "score_case",
    "finish_case",
    "refine_case",
    "REFINE_BUDGETS",
    "REFINE_GATES",
    "REFINE_CASE_GATES",
    "SuperpixelRefinementStage",
]

REFINEMENT_LOG = "refinement_log.csv"
REFINE_BUDGETS = ("pooled", "per_case")
REFINE_GATES = ("fixed", "hq_calibrated")
GATE_LOG = "gate_calibration.csv"
REFINE_CASE_GATES = ("none", "hq_agreement")
CASE_GATE_LOG = "case_gate.csv"


def _case_id(item: Mapping[str, Any]) -> str:
    return str(item.get("case_id") or Path(str(item["image"])).name.split(".")[0])


def _label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.int16


class SuperpixelRefinementStage:
    """Label refinement rounds of SP-guided, triggered by the loss-gap criterion (module docstring).

    Attach it to a :class:`custom.engines.coteaching.CoTeachingTrainer` (it reads ``networks``, ``target_keep_ratio``
    and sets ``labels_refined``); it attaches its :class:`LossGapHandler` first so that the gap of the epoch is
    known when it decides. Put it in the checkpoint (``state_dict``) to resume rounds, ratios and label paths.

    Args:
        dataset: the training dataset (``CacheDataset``/``Dataset``; its ``data`` items get the new ``label``).
        load_transform: evaluation load transform for whole volumes (``@transforms::eval``).
        inferer: sliding-window inferer (``@inferer``).
        output_dir: run folder; refined labels go to ``output_dir/refined_labels/round_<r>/``.
        num_classes: C.
        loss_gap: the Eq. 5 handler (default: ``LossGapHandler(patience=5, output_dir=output_dir)``).
        gamma: ``R`` growth per refinement (1.1).
        max_keep_ratio: ``R_max`` per class (scalar or ``(C,)``; reference configs: 0.95 bg, 0.9 fg).
        max_rounds: refinement rounds at most (1 = released code; 0 disables refinement).
        use_superpixels: False = voxel pieces (ablation).
        pool: ``"superpixel"`` or ``"piece"``.
        refine_hq: also refine HQ cases (default False: their labels are clean).
        refine_by_epoch: run the first round at the end of this epoch if the loss gap has not triggered it before
            (None: only the loss gap triggers rounds, as in the paper).
        refine_from_epoch: no first round before the end of this epoch (None: whenever the loss gap fires, the
            paper); a gap criterion met earlier triggers the round at that epoch, unless the gap rose again since.
        refine_budget: ``"pooled"`` (default, the authors' ``label_update``): one budget ``(1 - R_c) N_c`` over all
            refined cases, spent on the globally least reliable pieces (:func:`pooled_refinement_masks`); or
            ``"per_case"``: every case spends its own ``(1 - R_c) N_c`` (uncorrupted cases lose correct labels).
        refine_min_confidence: a taken piece is relabelled only where the two networks' pooled probability of the
            new class reaches this (0 = the paper; :func:`custom.refinement.superpixel_refinement.apply_refinement`);
            a list gives one gate per noisy class (``num_classes`` entries): a piece labelled ``c`` needs entry ``c``.
        refine_gate: ``"fixed"`` (default): the gate is ``refine_min_confidence``; ``"hq_calibrated"``: every round
            first refines the HQ cases as a dry run (scored among the refined cases, their labels never changed) and
            uses the smallest gate, at least ``refine_min_confidence``, at which none of them loses more than
            ``refine_gate_tolerance`` Dice (:mod:`custom.refinement.gate_calibration`; logged in
            ``refined_labels/gate_calibration.csv``).
        refine_gate_tolerance: the Dice an HQ case may lose in that dry run (0.02).
        refine_case_gate: ``"none"`` (default: every LQ case is refined, the paper) or ``"hq_agreement"``: a case is
            refined only when the foreground Dice between its labels and the networks' prediction lies more than
            ``refine_case_gate_margin`` below that of every HQ case (:func:`case_gate_threshold`); the others keep
            their labels and the budget is pooled over the refined ones. Logged in ``refined_labels/case_gate.csv``.
        refine_case_gate_margin: that margin (0.02).
        terminate_when_done: end training when refinement stops (default False: train on to ``max_epochs``).
        superpixel_key: item key of the supervoxel map.
    """

    def __init__(
        self,
        dataset: Any,
        load_transform: Callable[[dict], dict],
        inferer: Callable[..., torch.Tensor] | None,
        output_dir: str,
        num_classes: int,
        loss_gap: LossGapHandler | None = None,
        gamma: float = 1.1,
        max_keep_ratio: float | Sequence[float] = 0.95,
        max_rounds: int = 1,
        use_superpixels: bool = True,
        pool: str = "superpixel",
        refine_hq: bool = False,
        terminate_when_done: bool = False,
        superpixel_key: str = "superpixel",
        refine_by_epoch: int | None = None,
        refine_from_epoch: int | None = None,
        refine_budget: str = "pooled",
        refine_min_confidence: float | Sequence[float] = 0.0,
        refine_gate: str = "fixed",
        refine_gate_tolerance: float = 0.02,
        refine_case_gate: str = "none",
        refine_case_gate_margin: float = 0.02,
    ) -> None:
        # checked at build time, not at the first round
        gate = check_min_confidence(refine_min_confidence, "refine_min_confidence")
        if gate.dim() == 1 and gate.numel() != int(num_classes):
            raise ValueError(
                f"refine_min_confidence needs one gate per class ({num_classes}), got {gate.tolist()}."
            )
        if gate.dim() == 1 and refine_gate == "hq_calibrated":
            raise ValueError("refine_gate='hq_calibrated' calibrates one gate: refine_min_confidence must be a number.")
        if refine_gate not in REFINE_GATES:
            raise ValueError(f"refine_gate must be one of {REFINE_GATES}, got {refine_gate!r}.")
        if not 0.0 <= float(refine_gate_tolerance) <= 1.0:
            raise ValueError(f"refine_gate_tolerance must be in [0, 1], got {refine_gate_tolerance}.")
        if refine_case_gate not in REFINE_CASE_GATES:
            raise ValueError(f"refine_case_gate must be one of {REFINE_CASE_GATES}, got {refine_case_gate!r}.")
        if not 0.0 <= float(refine_case_gate_margin) <= 1.0:
            raise ValueError(f"refine_case_gate_margin must be in [0, 1], got {refine_case_gate_margin}.")
        if refine_budget not in REFINE_BUDGETS:
            raise ValueError(f"refine_budget must be one of {REFINE_BUDGETS}, got {refine_budget!r}.")
        if refine_by_epoch is not None and int(refine_by_epoch) < 1:
            raise ValueError(f"refine_by_epoch must be None or >= 1, got {refine_by_epoch}.")
        if refine_from_epoch is not None and int(refine_from_epoch) < 1:
            raise ValueError(f"refine_from_epoch must be None or >= 1, got {refine_from_epoch}.")
        if refine_from_epoch is not None and refine_by_epoch is not None and int(refine_from_epoch) > int(
            refine_by_epoch
        ):
            raise ValueError(
                f"refine_from_epoch ({refine_from_epoch}) must not be after refine_by_epoch ({refine_by_epoch})."
            )
        if int(max_rounds) < 0:
            raise ValueError(f"max_rounds must be >= 0, got {max_rounds}.")
        if not gamma >= 1.0:
            raise ValueError(f"gamma must be >= 1, got {gamma}.")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if not hasattr(dataset, "data"):
            raise ValueError("dataset must expose its items as .data (a MONAI Dataset/CacheDataset).")
        self.dataset = dataset
        self.load_transform = load_transform
        self.inferer = inferer
        self.output_dir = Path(output_dir)
        self.num_classes = int(num_classes)
        self.loss_gap = loss_gap if loss_gap is not None else LossGapHandler(output_dir=output_dir)
        self.gamma = float(gamma)
        self.max_keep_ratio = max_keep_ratio
        self.max_rounds = int(max_rounds)
        self.use_superpixels = bool(use_superpixels)
        self.pool = pool
        self.refine_hq = bool(refine_hq)
        self.terminate_when_done = bool(terminate_when_done)
        self.superpixel_key = superpixel_key
        self.refine_by_epoch = None if refine_by_epoch is None else int(refine_by_epoch)
        self.refine_from_epoch = None if refine_from_epoch is None else int(refine_from_epoch)
        self.refine_budget = refine_budget
        # one gate (float) or one per noisy class (list): logged as given
        self.refine_min_confidence = float(gate) if gate.dim() == 0 else [float(g) for g in gate]
        self.refine_gate = refine_gate
        self.refine_gate_tolerance = float(refine_gate_tolerance)
        self.refine_case_gate = refine_case_gate
        self.refine_case_gate_margin = float(refine_case_gate_margin)
        self.gate_rows: list[dict[str, Any]] = []
        self.case_gate_rows: list[dict[str, Any]] = []
        self.trigger = ""  # what triggered the last round: "loss_gap" or "deadline"
        self.round = 0
        self.done = self.max_rounds == 0
        self.stop_reason = "max_rounds is 0" if self.done else ""
        self.previous_best = -math.inf  # gap maximum of the round before the last refinement
        self.rows: list[dict[str, Any]] = []
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        self.loss_gap.attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    # ------------------------------------------------------------------ decisions
    def epoch_completed(self, engine: Engine) -> None:
        tracker = self.loss_gap.tracker
        if self.done:
            return
        if self.round == 0 and self.refine_from_epoch is not None and engine.state.epoch < self.refine_from_epoch:
            return  # too early: a gap that has stopped rising still counts, and triggers the round at that epoch
        deadline = self.round == 0 and self.refine_by_epoch is not None and engine.state.epoch >= self.refine_by_epoch
        if not (tracker.should_stop or deadline):
            return
        self.trigger = "loss_gap" if tracker.should_stop else "deadline"
        if self.round > 0 and not tracker.best > self.previous_best:
            self._finish(engine, f"the loss gap did not rise after refinement round {self.round}")
            return
        self.previous_best = tracker.best
        self.refine(engine)
        tracker.reset()
        if self.round >= self.max_rounds:
            self._finish(engine, f"max_rounds={self.max_rounds} reached")

    def _finish(self, engine: Engine, reason: str) -> None:
        self.done, self.stop_reason = True, reason
        engine.logger.info(f"SP-guided refinement stops: {reason}")
        if self.terminate_when_done:
            engine.terminate()

    # ------------------------------------------------------------------ one round
    def refine(self, engine: Engine) -> list[dict[str, Any]]:
        """Refine every (LQ) training case, write the NIfTI files, swap them in and raise ``R``; returns the rows."""
        self.round += 1
        round_dir = self.output_dir / REFINED_LABEL_DIR / f"round_{self.round}"
        networks = list(getattr(engine, "networks", None) or [engine.network])
        keep_ratio = engine.target_keep_ratio
        items = list(self.dataset.data)
        chosen = [i for i, item in enumerate(items) if self.refine_hq or item.get("quality") != "hq"]
        device = getattr(engine.state, "device", None)
        refined: dict[int, RefinedCase] = {}

        def score(i: int) -> ScoredCase:
            return score_case(networks, items[i], self.load_transform, self.inferer, device, self.use_superpixels,
                              self.pool, self.superpixel_key)

        scored = {i: score(i) for i in chosen}
        agreement = {i: float(label_agreement(scored[i].scores)[0]) for i in chosen}
        hq_scores: dict[int, Any] = {}
        if self.refine_gate == "hq_calibrated" or self.refine_case_gate == "hq_agreement":
            hq_scores = {i: score(i).scores for i, item in enumerate(items)
                         if item.get("quality") == "hq" and i not in scored}
        active = chosen
        if self.refine_case_gate == "hq_agreement":
            active = self._gate_cases(engine, items, chosen, agreement, hq_scores)
        if self.refine_budget == "pooled":
            masks = dict(zip(active, pooled_refinement_masks([scored[i].scores for i in active], keep_ratio)))
        else:
            masks = {i: case_refinement_mask(scored[i].scores, keep_ratio) for i in active}
        gate = self.refine_min_confidence
        if self.refine_gate == "hq_calibrated":
            gate = self._calibrate_gate(engine, items, active, scored, keep_ratio, hq_scores)
        for i in active:
            case = scored[i]
            refined[i] = finish_case(case, masks[i].to(case.scores.loss.device), self.load_transform, gate)
        new_items, rows = [], []
        for index, item in enumerate(items):
            if index not in agreement:
                new_items.append(item)
                continue
            case_id = _case_id(item)
            row = {
                "round": self.round, "epoch": engine.state.epoch, "trigger": self.trigger or "manual",
                "case_id": case_id, "budget": self.refine_budget, "min_confidence": gate,
                "agreement": round(agreement[index], 6), "refined": index in refined,
            }
            case = refined.get(index)
            if case is None:  # kept by the case gate: its labels stay as they are
                path = Path(item["label"])
                row.update({"changed_fraction": 0.0, "label": str(path)})
            else:
                path = round_dir / f"{case_id}.nii.gz"
                if is_main_process():  # the other ranks read rank 0's files after the barrier below
                    save_nifti(case.label, case.affine, path, header=case.header,
                               dtype=_label_dtype(self.num_classes))
                row.update({"changed_fraction": round(case.changed_fraction, 6), "label": str(path)})
            clean_path = item.get("label_clean")
            if clean_path:
                from custom.noise.quality import foreground_dice

                clean = np.rint(load_nifti(clean_path)[0]).astype(np.int64)
                before = np.rint(load_nifti(item["label"])[0]).astype(np.int64)
                row["dice_before"] = round(foreground_dice(before, clean, self.num_classes), 6)
                if case is None:  # kept: the same labels
                    row["dice_after"] = row["dice_before"]
                else:
                    row["dice_after"] = round(foreground_dice(case.label, clean, self.num_classes), 6)
            rows.append(row)
            new_items.append({**item, "label": str(path)})
        barrier()
        self._swap(new_items)
        engine.target_keep_ratio = update_keep_ratio(keep_ratio, self.gamma, self.max_keep_ratio)
        engine.labels_refined = True
        self.rows.extend(rows)
        if is_main_process():
            write_csv(self.rows, self.output_dir / REFINED_LABEL_DIR / REFINEMENT_LOG)
        summary = {"round": self.round, "epoch": engine.state.epoch, "cases": len(rows),
                   "mean_changed_fraction": _mean(r["changed_fraction"] for r in rows),
                   "mean_dice_before": _mean(r.get("dice_before") for r in rows),
                   "mean_dice_after": _mean(r.get("dice_after") for r in rows),
                   "new_target_keep_ratio": [round(float(r), 4) for r in engine.target_keep_ratio]}
        engine.state.metrics["refined_label_dice"] = summary["mean_dice_after"]
        engine.logger.info(f"SP-guided label refinement: {summary}")
        return rows

    def _calibrate_gate(
        self,
        engine: Engine,
        items: list[dict[str, Any]],
        chosen: list[int],
        scored: dict[int, ScoredCase],
        keep_ratio: torch.Tensor,
        hq_scored: Mapping[int, Any],
    ) -> float:
        """The HQ dry run of ``refine_gate="hq_calibrated"``: the gate for this round, logged per round."""
        hq = list(hq_scored)
        if not hq:
            engine.logger.warning("refine_gate='hq_calibrated' found no HQ case: the gate stays refine_min_confidence.")
            return self.refine_min_confidence
        hq_scores = [hq_scored[i] for i in hq]
        if self.refine_budget == "pooled":  # HQ cases compete for the budget as uncorrupted refined cases would
            hq_masks = pooled_refinement_masks([scored[i].scores for i in chosen] + hq_scores, keep_ratio)[len(chosen):]
        else:
            hq_masks = [case_refinement_mask(s, keep_ratio) for s in hq_scores]
        result = calibrate_min_confidence(hq_scores, hq_masks, self.refine_gate_tolerance, self.refine_min_confidence)
        for i, dice in zip(hq, result.dice):
            self.gate_rows.append({
                "round": self.round, "epoch": engine.state.epoch, "case_id": _case_id(items[i]),
                "min_confidence": result.min_confidence, "tolerance": self.refine_gate_tolerance,
                "dry_run_dice": dice,
            })
        if is_main_process():
            write_csv(self.gate_rows, self.output_dir / REFINED_LABEL_DIR / GATE_LOG)
        engine.logger.info(
            f"SP-guided refinement gate from {len(hq)} HQ cases: {result.min_confidence:.2f} "
            f"(worst HQ Dice loss {result.worst_dice_loss:.4f}, tolerance {self.refine_gate_tolerance})"
        )
        return result.min_confidence

    def _gate_cases(
        self,
        engine: Engine,
        items: list[dict[str, Any]],
        chosen: list[int],
        agreement: Mapping[int, float],
        hq_scored: Mapping[int, Any],
    ) -> list[int]:
        """``refine_case_gate="hq_agreement"``: the cases of ``chosen`` to refine this round, logged per round."""
        if not hq_scored:
            engine.logger.warning("refine_case_gate='hq_agreement' found no HQ case: every case is refined.")
            return list(chosen)
        hq_agreement = {i: float(label_agreement(s)[0]) for i, s in hq_scored.items()}
        threshold = case_gate_threshold(list(hq_agreement.values()), self.refine_case_gate_margin)
        active = [i for i in chosen if agreement[i] < threshold]
        for i, value in [*hq_agreement.items(), *((i, agreement[i]) for i in chosen)]:
            self.case_gate_rows.append({
                "round": self.round, "epoch": engine.state.epoch, "case_id": _case_id(items[i]),
                "quality": items[i].get("quality", ""), "agreement": round(value, 6),
                "threshold": round(threshold, 6), "refined": i in active,
            })
        if is_main_process():
            write_csv(self.case_gate_rows, self.output_dir / REFINED_LABEL_DIR / CASE_GATE_LOG)
        engine.logger.info(
            f"SP-guided case gate: {len(active)} of {len(chosen)} cases refined (label agreement below "
            f"{threshold:.4f}, the least-agreeing of {len(hq_agreement)} HQ cases minus {self.refine_case_gate_margin})"
        )
        return active

    def _swap(self, items: list[dict[str, Any]]) -> None:
        if hasattr(self.dataset, "set_data"):
            self.dataset.set_data(items)  # CacheDataset: re-runs the cached (deterministic) transforms
        else:
            self.dataset.data = items

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        engine = self._engine
        return {
            "round": self.round,
            "trigger": self.trigger,
            "done": self.done,
            "stop_reason": self.stop_reason,
            "previous_best": self.previous_best,
            "labels": {_case_id(item): item["label"] for item in self.dataset.data},
            "target_keep_ratio": None if engine is None else [float(r) for r in engine.target_keep_ratio],
            "loss_gap": self.loss_gap.state_dict(),
            "rows": list(self.rows),
            "gate_rows": list(self.gate_rows),
            "case_gate_rows": list(self.case_gate_rows),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.round = int(state["round"])
        self.trigger = str(state.get("trigger", ""))
        self.done = bool(state["done"])
        self.stop_reason = str(state.get("stop_reason", ""))
        self.previous_best = float(state["previous_best"])
        self.rows = list(state.get("rows", []))
        self.gate_rows = list(state.get("gate_rows", []))
        self.case_gate_rows = list(state.get("case_gate_rows", []))
        self.loss_gap.load_state_dict(state["loss_gap"])
        labels = state.get("labels", {})
        items = [{**item, "label": labels.get(_case_id(item), item["label"])} for item in self.dataset.data]
        if any(new["label"] != old["label"] for new, old in zip(items, self.dataset.data)):
            self._swap(items)
        if self._engine is not None:
            if state.get("target_keep_ratio") is not None:
                self._engine.target_keep_ratio = torch.as_tensor(state["target_keep_ratio"], dtype=torch.float64)
            self._engine.labels_refined = self.round > 0


def _mean(values: Any) -> float | None:
    numbers = [v for v in values if v is not None]
    return round(float(np.mean(numbers)), 6) if numbers else None
