"""JCAS training: deep-supervised DAR network, two stages, learnable transition matrices (methods.md §3).

``JcasTrainer`` runs methods.md §3 (seed 002, JCAS) on plain supervised batches (image + noisy label):

* epochs ``1 .. warmup_epochs`` (stage 1, ``"warmup"``): :class:`custom.losses.jcas_loss.JcasLoss` without
  transition matrices (cross-entropy on ``P`` and ``Q`` of both levels plus the plain affinity BCE);
* later epochs (stage 2, ``"correction"``): the CALC loss with the class transition ``T_C`` and the affinity
  transition ``T_A``, the volume penalty and the consistency (CACR) term.

The network (a :class:`custom.networks.deep_supervision.DeepSupervisionNet`, e.g. ``JcasVNet``) is updated by the
trainer's main optimiser (the config's ``optimizer``). The transition matrices (:class:`JcasTransitions`) are not
part of the network: they have their own SGD optimiser (momentum 0.9), created here and stepped only in stage 2,
and the exported inference network never contains them. Its learning rate is ``transition_lr="main"`` by default:
before every step it is set to the main optimiser's current rate (first parameter group, after the scheduler),
as the reference does (``tools_ablation/trainS2.py``, ``main()``: ``adjust_learning_rate(optimizer_Class_T, epoch)``
and ``adjust_learning_rate(optimizer_Affinity_T, epoch)`` write ``lr_poly(args.learning_rate, ...)``, the main
poly rate, into the transitions' optimisers every iteration, so their ``--learning-rate-T`` of 1e-3 is never
used). A float gives a constant rate instead.

The warm-up length is ``warmup_epochs``; the configs derive it from ``warmup_fraction`` of ``max_epochs``
(:func:`warmup_epochs_from_fraction`). The initial ``T_C`` is chosen by :func:`build_transitions`
(``transition_init``: the paper's constant weights, ``"prior"`` or ``"estimate"`` from the HQ cases).

The transitions' optimiser state travels in the trainer's own ``state_dict`` (so a checkpoint holding ``trainer``
and ``transitions`` resumes both).

The learned ``T_C`` is logged at every epoch end and written, with its per-epoch history, to
``<output_dir>/transition_matrix.json`` when training completes.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from custom.engines.base import NoisyLabelTrainer
from custom.errors import OptionError
from custom.io import load_nifti, write_json
from custom.losses.jcas_loss import JcasLoss, JcasTransitions
from custom.losses.transition import (
    class_transition_from_confusion,
    label_confusion,
    noisy_class_frequencies,
    prior_class_transition,
)
from custom.networks.deep_supervision import JcasOutput
from custom.noise.hq_draws import hq_noise_draws

__all__ = [
    "JcasTrainer",
    "jcas_stage",
    "noisy_label_frequencies",
    "warmup_epochs_from_fraction",
    "estimate_training_transition",
    "build_transitions",
    "TRANSITION_INITS",
    "TRANSITION_MATRIX_FILE",
]

TRANSITION_MATRIX_FILE = "transition_matrix.json"
# named initialisations of T_C (besides a float: the paper's constant weight)
TRANSITION_INITS = ("prior", "estimate")

_LOGGER = logging.getLogger(__name__)


def warmup_epochs_from_fraction(max_epochs: int, warmup_fraction: float) -> int:
    """Stage-1 epochs for a warm-up that lasts ``warmup_fraction`` of ``max_epochs``: ``floor(fraction * max)``.

    ``0.25`` gives ``max_epochs // 4`` (the configs' earlier fixed warm-up), ``1.0`` stage 1 only, ``0.0`` no
    warm-up (e.g. with ``--init_from`` a warmed-up bundle, as the authors start stage 2 from a warm-up checkpoint).

    Raises:
        OptionError: (a ValueError) naming ``warmup_fraction`` if it is not a number in ``[0, 1]``, or
            ``max_epochs`` if it is not an integer >= 1.
    """
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, (int, float)) or max_epochs != int(max_epochs) or (
        max_epochs < 1
    ):
        raise OptionError("max_epochs", f"must be an integer >= 1, got {max_epochs!r}")
    if isinstance(warmup_fraction, bool) or not isinstance(warmup_fraction, (int, float)) or not (
        0.0 <= warmup_fraction <= 1.0
    ):
        raise OptionError("warmup_fraction", f"must be a number in [0, 1], got {warmup_fraction!r}")
    # the small tolerance keeps e.g. 0.3 * 10 = 2.9999999999999996 at 3
    return int(math.floor(float(warmup_fraction) * int(max_epochs) + 1e-9))


def jcas_stage(epoch: int, warmup_epochs: int) -> str:
    """Training stage of a 1-based ``epoch``: ``"warmup"`` for ``epoch <= warmup_epochs``, else ``"correction"``.

    Raises:
        ValueError: if ``warmup_epochs < 0`` or ``epoch < 1``.
    """
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}.")
    return "warmup" if epoch <= warmup_epochs else "correction"


def _label_volumes(items: Iterable[Mapping[str, Any]], label_key: str) -> Iterator[np.ndarray]:
    # one case at a time: memory stays at one label volume
    for item in items:
        if label_key not in item:
            raise ValueError(f"training item {item.get('case_id', item.get('image'))!r} has no {label_key!r} entry.")
        yield load_nifti(item[label_key])[0]


def noisy_label_frequencies(
    items: Sequence[Mapping[str, Any]], num_classes: int, label_key: str = "label"
) -> torch.Tensor:
    """Class frequencies ``pi`` of the training labels as stored on disk (the noisy ``label`` files).

    The consistency target of JCAS (methods.md §3.3) needs the noisy class frequencies; they are counted once,
    before training, over every voxel of every training label file (not over the augmented patches).

    Args:
        items: datalist items (e.g. ``custom.data.training_sets.supervised_items(...)``) with absolute label paths.
        num_classes: ``C >= 2``.
        label_key: the item key of the (noisy) label file.

    Returns:
        ``(C,)`` float64 CPU tensor summing to 1.

    Raises:
        ValueError: no items, an item without ``label_key``, labels outside ``[0, C)`` or fewer than two classes.
        custom.io.DataError: an unreadable label file.
    """
    if len(items) == 0:
        raise ValueError("no training items to count class frequencies from.")
    return noisy_class_frequencies(num_classes, label_arrays=_label_volumes(items, label_key))


def estimate_training_transition(
    items: Sequence[Mapping[str, Any]],
    datalist_meta: Mapping[str, Any],
    num_classes: int,
    draws_per_case: int = 4,
) -> torch.Tensor:
    """Estimate the ``T_C`` of a training set from its HQ cases *(decision, docs/methods/jcas.md)*.

    The datalist's noise simulator is applied ``draws_per_case`` times to every HQ case's clean label (at native
    resolution, see :func:`custom.noise.hq_draws.hq_noise_draws`); the summed confusion counts give
    ``T_sim[i, j] = P(simulated noisy = j | clean = i)`` over all voxels
    (:func:`custom.losses.transition.class_transition_from_confusion`). One ``T_C`` models every training voxel,
    and only the ``n_noisy`` training items whose ``label`` differs from their
    ``label_clean`` carry noise, so the estimate is ``w I + (1 - w) T_sim`` with ``w = n_clean / n`` (the same
    case-count weighting as the co-teaching keep ratio; exact when the cases have the same class composition on
    average). With ``label_mode`` ``hq`` or ``clean`` every item is clean and the estimate is the identity.

    ``T_sim`` is a whole-volume rate: background far from any structure is never flipped, so its row depends on the
    field of view; the training patches (half of them centred on foreground) see more flipped background.

    Args:
        items: the training items the loss sees (``@supervised_data::items``: ``label``, ``label_clean``,
            ``quality``, ``case_id``, absolute paths).
        datalist_meta: ``custom.data.read_datalist_meta(...)`` (``noise``, ``seed``, ``spacing``, ``downsample``).
        num_classes: ``C >= 2``.
        draws_per_case: noise draws per HQ case (>= 1).

    Returns:
        ``(C, C)`` float64 CPU tensor, row-stochastic, rows = clean, columns = noisy.

    Raises:
        ValueError: no HQ item, no noise simulator recorded in the datalist, or ``draws_per_case < 1``.
    """
    if int(draws_per_case) != draws_per_case or draws_per_case < 1:
        raise ValueError(f"draws_per_case must be an integer >= 1, got {draws_per_case}.")
    hq = [item for item in items if item.get("quality") == "hq"]
    if not hq:
        raise ValueError("transition_init='estimate' needs HQ cases (quality 'hq') in the training set.")
    confusion = np.zeros((int(num_classes), int(num_classes)), dtype=np.float64)
    for clean, noisy in hq_noise_draws(hq, datalist_meta, int(num_classes), int(draws_per_case), estimate_of="T_C"):
        confusion += label_confusion(clean, noisy, num_classes)
    n_noisy = sum(1 for i in items if i.get("quality") != "hq" and i.get("label") != i.get("label_clean"))
    clean_share = (len(items) - n_noisy) / len(items)
    return class_transition_from_confusion(confusion, clean_share=clean_share)


def build_transitions(
    num_classes: int,
    class_frequencies: Sequence[float] | torch.Tensor,
    transition_init: float | str = -2.0,
    items: Sequence[Mapping[str, Any]] | None = None,
    datalist_meta: Mapping[str, Any] | None = None,
    prior_rate: float = 0.2,
    draws_per_case: int = 4,
) -> JcasTransitions:
    """The config's :class:`JcasTransitions`, with ``T_C`` initialised as ``transition_init`` says.

    * a float: every weight ``W`` at that value (the paper code's ``-2``: for two classes ``T_C`` starts with
      ``P(noisy fg | clean bg) = 0.106``, more than LA's whole foreground share of about 7%);
    * ``"prior"``: :func:`custom.losses.transition.prior_class_transition` (``(1 - rho) I + rho 1 pi^T`` with
      ``rho = prior_rate``), which never gives a class more than its share ``pi``;
    * ``"estimate"``: :func:`estimate_training_transition` (the datalist's noise simulator on the HQ cases).

    For the two matrices ``T_A`` starts at the affinity transition implied by ``T_C`` (consistency term 0). The
    matrix is converted to weights by :func:`custom.losses.transition.weights_from_transition`, which clips a
    ratio ``T[i, j] / T[i, i]`` into ``[1e-3, 1 - 1e-3]``; the initial ``T_C`` actually used is logged.

    Args:
        num_classes: ``C``.
        class_frequencies: ``pi``, ``(C,)`` (:func:`noisy_label_frequencies`).
        transition_init: a float, ``"prior"`` or ``"estimate"``.
        items: training items (``"estimate"`` only).
        datalist_meta: the datalist's meta (``"estimate"`` only).
        prior_rate: ``rho`` of ``"prior"``, in ``(0, 0.5)``.
        draws_per_case: noise draws per HQ case of ``"estimate"``.

    Raises:
        OptionError: naming ``transition_init`` for an unknown value, or ``transition_prior_rate`` for a bad rate.
        ValueError: ``"estimate"`` without HQ cases or recorded noise (see :func:`estimate_training_transition`).
    """
    if isinstance(transition_init, (int, float)) and not isinstance(transition_init, bool):
        if not math.isfinite(transition_init):
            raise OptionError("transition_init", f"must be finite, got {transition_init}")
        return JcasTransitions(num_classes, class_frequencies, init=float(transition_init))
    if transition_init not in TRANSITION_INITS:
        raise OptionError(
            "transition_init",
            f"must be a number (the initial weight) or one of {TRANSITION_INITS}, got {transition_init!r}",
        )
    frequencies = torch.as_tensor(class_frequencies, dtype=torch.float64)
    frequencies = frequencies / frequencies.sum()
    if transition_init == "prior":
        if isinstance(prior_rate, bool) or not isinstance(prior_rate, (int, float)) or not 0 < prior_rate < 0.5:
            raise OptionError("transition_prior_rate", f"must be a number in (0, 0.5), got {prior_rate!r}")
        target = prior_class_transition(frequencies, float(prior_rate))
    else:
        if items is None or datalist_meta is None:
            raise ValueError("transition_init='estimate' needs the training items and the datalist meta.")
        target = estimate_training_transition(items, datalist_meta, num_classes, draws_per_case)
    transitions = JcasTransitions(num_classes, class_frequencies, class_transition=target)
    with torch.no_grad():
        used = transitions.class_transition()
    _LOGGER.info(f"initial T_C ({transition_init}; rows clean, cols noisy): {_rounded(used)}")
    return transitions


def _rounded(matrix: torch.Tensor, decimals: int = 4) -> list[list[float]]:
    return np.round(matrix.detach().cpu().double().numpy(), decimals).tolist()


class JcasTrainer(NoisyLabelTrainer):
    """Two-stage JCAS trainer (see the module docstring).

    Args:
        transitions: the learnable ``T_C`` / ``T_A`` and class frequencies (:class:`JcasTransitions`); moved to the
            trainer's device. Put it in the checkpoint (``extra_networks``) to resume it.
        warmup_epochs: number of stage-1 epochs; ``>= max_epochs`` trains stage 1 only (the CE baseline with
            the same network).
        transition_lr: learning rate of the transitions' SGD optimiser: ``"main"`` (default; the main optimiser's
            current rate, first parameter group, copied before every transition step, as the reference does) or a
            positive float (constant).
        transition_momentum: its momentum (0.9, paper code).
        output_dir: where ``transition_matrix.json`` is written at completion (``None``: not written).
        kwargs: ``SupervisedTrainer`` arguments; ``loss_function`` must be a :class:`JcasLoss` (its ``stage`` is
            set by the trainer every iteration), ``network`` must return a :class:`JcasOutput` in ``train()``
            mode and ``optimizer`` must not hold the transition parameters.

    Iteration output (``engine.state.output``): ``image``, ``label``, ``pred`` (level-2 rectified logits ``P2``,
    ``(B, C, H, W, D)``), ``loss``, ``stage`` and the detached unweighted loss parts ``loss_class_fine``,
    ``loss_class_coarse``, ``loss_affinity_coarse``, ``loss_affinity_fine`` (+ ``loss_volume``,
    ``loss_consistency`` in stage 2).

    Raises:
        ValueError: on a loss that is not a :class:`JcasLoss`, mismatched class counts, a negative
            ``warmup_epochs``, a ``transition_lr`` that is neither ``"main"`` nor a positive number, or transition
            parameters in ``optimizer``.
    """

    def __init__(
        self,
        *,
        transitions: JcasTransitions,
        warmup_epochs: int,
        transition_lr: float | str = "main",
        transition_momentum: float = 0.9,
        output_dir: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not isinstance(self.loss_function, JcasLoss):
            raise ValueError(f"loss_function must be a JcasLoss, got {type(self.loss_function).__name__}.")
        if not isinstance(transitions, JcasTransitions):
            raise ValueError(f"transitions must be a JcasTransitions module, got {type(transitions).__name__}.")
        if transitions.num_classes != self.loss_function.num_classes:
            raise ValueError(
                f"transitions are for {transitions.num_classes} classes, the loss for {self.loss_function.num_classes}."
            )
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs}.")
        follow_main = transition_lr == "main"
        is_number = isinstance(transition_lr, (int, float)) and not isinstance(transition_lr, bool)
        if not follow_main and not (is_number and transition_lr > 0):
            raise ValueError(f"transition_lr must be 'main' or a number > 0, got {transition_lr!r}.")
        if not 0 <= transition_momentum < 1:
            raise ValueError(f"transition_momentum must be in [0, 1), got {transition_momentum}.")
        transition_ids = {id(p) for p in transitions.parameters()}
        if any(id(p) in transition_ids for group in self.optimizer.param_groups for p in group["params"]):
            raise ValueError("the main optimizer must not update the transition matrices; they have their own.")
        self.transitions = transitions.to(self.state.device)
        self.warmup_epochs = int(warmup_epochs)
        self.follow_main_lr = follow_main
        initial_lr = float(self.optimizer.param_groups[0]["lr"]) if follow_main else float(transition_lr)
        self.transition_optimizer = torch.optim.SGD(
            self.transitions.parameters(), lr=initial_lr, momentum=float(transition_momentum)
        )
        self.output_dir = None if output_dir is None else str(output_dir)
        self.current_stage = jcas_stage(1, self.warmup_epochs)
        # T_C at each epoch end, written with the final matrices (training logs may not be kept)
        self.transition_history: list[dict[str, Any]] = []
        # stepped between backward and the main optimiser step, so that an AMP grad scaler unscales both
        # optimisers before its update() (the base iteration calls update() right after the main step)
        self.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._step_transitions)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._log_transitions)
        self.add_event_handler(Events.COMPLETED, self._write_transitions)

    # ------------------------------------------------------------------ one step
    def compute_loss(self, engine: JcasTrainer, batch: dict[str, Any]) -> torch.Tensor:
        """Forward both levels and return the stage's JCAS loss (see the class docstring for the outputs)."""
        stage = jcas_stage(engine.state.epoch, self.warmup_epochs)
        self.current_stage = stage
        self.loss_function.stage = stage
        self.transition_optimizer.zero_grad(set_to_none=True)
        output = engine.inferer(batch["image"], engine.network)
        if not isinstance(output, JcasOutput):
            raise ValueError(
                "the network must return a JcasOutput in train() mode (DeepSupervisionNet), got "
                f"{type(output).__name__}."
            )
        engine.state.output[Keys.PRED] = output.fine.rectified_logits
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss, parts = self.loss_function(output, batch["label"], self.transitions)
        engine.state.output["stage"] = stage
        engine.state.output.update({f"loss_{name}": value for name, value in parts.items()})
        return loss

    # ------------------------------------------------------------------ data-parallel hooks of the base trainer
    def extra_optimizers(self) -> list[torch.optim.Optimizer]:
        """The transitions' optimiser: under ``torchrun`` the base trainer averages its gradients over ranks."""
        return [self.transition_optimizer]

    def synced_modules(self) -> list[torch.nn.Module]:
        """The network and the transition matrices start from rank 0's values."""
        return [*super().synced_modules(), self.transitions]

    def _step_transitions(self, engine: JcasTrainer) -> None:
        if self.current_stage != "correction":
            return  # stage 1 does not use T: its parameters and momentum stay untouched
        if self.follow_main_lr:  # the reference's adjust_learning_rate(optimizer_Class_T / _Affinity_T, ...)
            main_lr = self.optimizer.param_groups[0]["lr"]
            for group in self.transition_optimizer.param_groups:
                group["lr"] = main_lr
        if engine.amp and engine.scaler is not None:
            engine.scaler.step(self.transition_optimizer)
        else:
            self.transition_optimizer.step()

    # ------------------------------------------------------------------ reporting
    def transition_summary(self) -> dict[str, Any]:
        """The current ``T_C``, ``T_A`` and ``pi`` as plain lists (host copy; for logs and JSON, not the step)."""
        with torch.no_grad():
            class_transition, affinity_transition = self.transitions()
        return {
            "rows": "clean class",
            "columns": "noisy class",
            "class_transition": _rounded(class_transition),
            "affinity_states": ["dissimilar", "similar"],
            "affinity_transition": _rounded(affinity_transition),
            "class_frequencies": _rounded(self.transitions.class_frequencies[None])[0],
        }

    def _log_transitions(self, engine: JcasTrainer) -> None:
        summary = self.transition_summary()
        self.transition_history.append(
            {
                "epoch": int(engine.state.epoch),
                "stage": self.current_stage,
                "class_transition": summary["class_transition"],
            }
        )
        engine.logger.info(
            f"epoch {engine.state.epoch} ({self.current_stage}): T_C (rows clean, cols noisy) = "
            f"{summary['class_transition']}, T_A = {summary['affinity_transition']}"
        )

    def _write_transitions(self, engine: JcasTrainer) -> None:
        if self.output_dir is None:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
            return
        summary = {
            "epochs": int(engine.state.epoch),
            "iterations": int(engine.state.iteration),
            "warmup_epochs": self.warmup_epochs,
            "final_stage": self.current_stage,
            **self.transition_summary(),
            "history": self.transition_history,
        }
        write_json(summary, Path(self.output_dir) / TRANSITION_MATRIX_FILE)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> OrderedDict:
        """Ignite's engine state plus the transitions' optimiser state (momentum) and ``T_C`` history, for resuming."""
        state = super().state_dict()
        state["transition_optimizer"] = self.transition_optimizer.state_dict()
        state["transition_history"] = list(self.transition_history)
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Inverse of :meth:`state_dict`; a checkpoint without the JCAS entries (engine state only) is accepted."""
        super().load_state_dict(state_dict)
        if "transition_optimizer" in state_dict:
            self.transition_optimizer.load_state_dict(state_dict["transition_optimizer"])
        self.transition_history = list(state_dict.get("transition_history", []))
