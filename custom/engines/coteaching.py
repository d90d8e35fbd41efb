"""Multi-network trainers that learn from the voxels their networks trust: SP-guided and its baselines (methods.md §2).

One base, small variants named after what they change (nnU-Net style):

=============================  =======  ==========================================================================
trainer                        nets     per step
=============================  =======  ==========================================================================
:class:`CoTeachingTrainer`     2        each net: CE on the voxels its *peer* picks as small-loss by its own CE
:class:`JoCoRTrainer`          2        Eq. 4 joint loss on one shared mask: the small-loss voxels of that loss
:class:`SPGuidedTrainer`       2        as JoCoR, but the mask comes from (superpixel, noisy class) pieces scored
                                        with Eq. 2 on superpixel-pooled probabilities (Eqs. 1-3 of SP-guided)
:class:`SPGuidedVoxelTrainer`  2        SP-guided with voxels as pieces (the "without superpixels" ablation)
:class:`TriNetworkTrainer`     3        each net: CE on the voxels where its two peers agree most
=============================  =======  ==========================================================================

Common mechanics (:class:`CoTeachingTrainer`):

* ``network`` is f1 (exported as ``model.pt``); ``peers`` are f2 (and f3), same architecture, different init.
  ONE optimiser holds every network's parameters (the config passes
  ``$list(@network.parameters()) + list(@peer.parameters())``); the constructor checks it.
* Selection runs without gradient with the current keep ratio ``R_c`` per noisy class (:attr:`keep_ratio`, a CPU
  float64 tensor ``(C,)``): the forget-rate warm-up handler sets it every epoch from :attr:`target_keep_ratio`, the
  refinement stage raises the target (``custom.handlers.superpixel_stage``). With every ``R_c = 1`` nothing is
  scored (first warm-up epoch).
* Losses are averaged over the selected voxels with class-balanced weights *(code)*
  (:func:`custom.losses.joint_loss.class_balanced_mean`; ``class_balanced=False`` gives plain means).
* Per step, ``engine.state.output`` gets detached scalars ``loss_selected`` / ``loss_unselected`` (class-balanced
  mean of the per-voxel loss over the selected / unselected voxels; their difference is the loss gap of Eq. 5,
  averaged per epoch by ``LossGapHandler``) and ``selected_fraction``, plus ``noisy_label`` (before any refinement)
  or ``refined_label`` (after), and ``clean_label`` when the batch has it, for ``LabelQualityHandler``. Nothing
  here reads a device value on the host; only the tiny ``R`` vector is copied to the device (small_loss API).

``trust_hq`` *(decision, not in the papers, which have no HQ set)*: the HQ samples of a batch (``batch["quality"]``
entries ``"hq"``) keep every voxel and only the LQ samples' voxels are ranked, with ``R_c`` the precision of the LQ
labels alone (:func:`estimate_training_keep_ratio` with ``count_hq=False``). Off in the trainer (the papers'
selection); on in the family's configs, where the validation split preferred it (docs/methods/spguided.md).

``keep_ratio_source`` of the configs is resolved by :func:`resolve_keep_ratio`: ``"config"`` (the given ``R_c``),
``"hq_estimate"`` (:func:`estimate_training_keep_ratio`: the datalist's noise simulator applied to the HQ cases'
clean labels, combined with how many training cases are corrupted) or ``"auto"`` (``"hq_estimate"`` when the
training set has HQ cases and the datalist names its noise, else ``"config"``) *(decision)*.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from custom.engines.base import NoisyLabelTrainer
from custom.losses.joint_loss import class_balanced_mean, joint_loss_per_voxel
from custom.noise.hq_draws import hq_noise_draws
from custom.selection.peer_selection import TRINET_RULES, coteaching_masks, jocor_mask, trinet_masks
from custom.selection.small_loss import as_class_ratios
from custom.selection.superpixel import POOLING_MODES, superpixel_selection_mask

__all__ = [
    "KEEP_RATIO_SOURCES",
    "CoTeachingTrainer",
    "JoCoRTrainer",
    "SPGuidedTrainer",
    "SPGuidedVoxelTrainer",
    "TriNetworkTrainer",
    "per_class_keep_ratio",
    "estimate_training_keep_ratio",
    "resolve_keep_ratio",
]

KEEP_RATIO_SOURCES = ("config", "hq_estimate", "auto")

_LOGGER = logging.getLogger(__name__)


def per_class_keep_ratio(keep_ratio: float | Sequence[float] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """``R_c`` as a float64 CPU tensor ``(C,)``: a scalar is repeated, a vector must have ``C`` entries.

    Raises:
        ValueError: wrong length or values outside [0, 1].
    """
    ratios = as_class_ratios(keep_ratio, "keep_ratio")
    if ratios.dim() == 0:
        return ratios.repeat(int(num_classes))
    if ratios.numel() != int(num_classes):
        raise ValueError(f"keep_ratio needs {num_classes} values (one per class), got {ratios.tolist()}.")
    return ratios.clone()


def _masked_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask.to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)


class CoTeachingTrainer(NoisyLabelTrainer):
    """Co-teaching (Han et al. 2018) on voxels; the base of the multi-network trainers (module docstring).

    Args:
        peers: the other network(s): one module (two-network trainers) or a sequence (``num_peers`` modules).
        num_classes: C.
        keep_ratio: target ``R_c`` (scalar or ``(C,)``) reached after the warm-up; also the initial value of
            :attr:`keep_ratio` (the warm-up handler lowers it from 1 at the start of each epoch).
        per_sample: selection budget per batch element instead of over the whole batch (reference: batch).
        class_balanced: class-balanced means over the selected voxels *(code)*; False = plain means.
        trust_hq: HQ samples (``batch[quality_key] == "hq"``) keep every voxel; only the LQ samples' voxels are
            ranked (module docstring). False = every sample is ranked alike (the papers).
        quality_key: batch key of the per-sample quality strings (``"hq"`` / ``"lq"``), read with ``trust_hq``.
        kwargs: ``SupervisedTrainer`` arguments (``network`` = f1, ``optimizer`` over all networks, ...).

    Raises:
        ValueError: wrong number of peers, a peer that is ``network``, an optimiser missing some network's
            parameters, ``num_classes < 2`` or bad ratios; at a step with ``trust_hq``, a batch without
            ``quality_key`` entries for every sample.
    """

    num_peers: int = 1

    def __init__(
        self,
        *,
        peers: nn.Module | Sequence[nn.Module],
        num_classes: int,
        keep_ratio: float | Sequence[float] | torch.Tensor = 1.0,
        per_sample: bool = False,
        class_balanced: bool = True,
        trust_hq: bool = False,
        quality_key: str = "quality",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        peer_list = [peers] if isinstance(peers, nn.Module) else list(peers)
        if len(peer_list) != self.num_peers or not all(isinstance(p, nn.Module) for p in peer_list):
            raise ValueError(f"{type(self).__name__} needs {self.num_peers} peer network(s), got {len(peer_list)}.")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        networks = [self.network, *peer_list]
        if len({id(n) for n in networks}) != len(networks):
            raise ValueError("the peers must be distinct network instances (same architecture, different init).")
        self.peers = [p.to(self.state.device) for p in peer_list]
        self._check_optimizer(self.optimizer, [self.network, *self.peers])
        self.num_classes = int(num_classes)
        self.per_sample = bool(per_sample)
        self.class_balanced = bool(class_balanced)
        self.trust_hq = bool(trust_hq)
        self.quality_key = quality_key
        self.target_keep_ratio = per_class_keep_ratio(keep_ratio, self.num_classes)
        self.keep_ratio = self.target_keep_ratio
        self.labels_refined = False  # set by the refinement stage once the dataset trains on refined labels

    # ------------------------------------------------------------------ state
    @property
    def networks(self) -> list[nn.Module]:
        """``[network, *peers]``: f1 first."""
        return [self.network, *self.peers]

    def synced_modules(self) -> list[nn.Module]:
        """Every network starts identical on all ranks under data-parallel training (see the base class)."""
        return self.networks

    @property
    def keep_ratio(self) -> torch.Tensor:
        """Current ``R_c``, float64 CPU ``(C,)`` (kept on the CPU: the selection reads it without a device sync)."""
        return self._keep_ratio

    @keep_ratio.setter
    def keep_ratio(self, value: float | Sequence[float] | torch.Tensor) -> None:
        self._keep_ratio = per_class_keep_ratio(value, self.num_classes)

    @property
    def target_keep_ratio(self) -> torch.Tensor:
        """``R_c`` after the warm-up (raised by ``gamma`` after each refinement), float64 CPU ``(C,)``."""
        return self._target_keep_ratio

    @target_keep_ratio.setter
    def target_keep_ratio(self, value: float | Sequence[float] | torch.Tensor) -> None:
        self._target_keep_ratio = per_class_keep_ratio(value, self.num_classes)

    def selects_everything(self) -> bool:
        """True when every ``R_c`` is 1 (CPU check, no sync): selection can be skipped."""
        return bool((self._keep_ratio >= 1.0).all())

    @staticmethod
    def _check_optimizer(optimizer: torch.optim.Optimizer, networks: Sequence[nn.Module]) -> None:
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for index, net in enumerate(networks):
            missing = sum(1 for p in net.parameters() if p.requires_grad and id(p) not in held)
            if missing:
                raise ValueError(
                    f"the optimiser does not hold {missing} parameter tensor(s) of network {index} (0 = network): "
                    "one optimiser must update every network (e.g. list(net.parameters()) + list(peer.parameters()))."
                )

    # ------------------------------------------------------------------ HQ rows
    def lq_rows(self, batch: Mapping[str, Any], batch_size: int) -> torch.Tensor | None:
        """CPU int64 indices of the batch's LQ samples under ``trust_hq``; ``None`` when every sample is ranked
        (``trust_hq`` off, or no HQ sample in the batch). Read from the collated quality strings: no device sync."""
        if not self.trust_hq:
            return None
        quality = batch.get(self.quality_key)
        if isinstance(quality, str):
            quality = [quality]
        if not isinstance(quality, Sequence) or len(quality) != batch_size:
            raise ValueError(
                f"trust_hq needs the batch's {self.quality_key!r} entry for each of its {batch_size} samples "
                f"(the datalist's 'quality' of each training item), got {quality!r}."
            )
        rows = [i for i, q in enumerate(quality) if q != "hq"]
        return None if len(rows) == batch_size else torch.tensor(rows, dtype=torch.long)

    def select_on_lq(
        self,
        select: Callable[..., tuple[torch.Tensor, ...]],
        batch: Mapping[str, Any],
        *per_sample_args: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """``select(*per_sample_args)`` (a tuple of bool masks ``(B, *S)``) on the batch's LQ rows only
        (:meth:`lq_rows`); the HQ rows select every voxel. Arguments are sliced along dim 0 on their own device
        (``None`` passes; the first one gives ``B``). Without HQ rows a plain call."""
        batch_size = per_sample_args[0].shape[0]
        rows = self.lq_rows(batch, batch_size)
        if rows is None:
            return select(*per_sample_args)
        if rows.numel() == 0:  # an all-HQ batch: nothing to rank; the call only gives the masks' number and shape
            return tuple(torch.ones_like(mask) for mask in select(*per_sample_args))
        on_device: dict[torch.device, torch.Tensor] = {}  # the row index copied once per device, not per tensor

        def rows_on(device: torch.device) -> torch.Tensor:
            if device not in on_device:
                on_device[device] = rows.to(device)
            return on_device[device]

        sliced = [a if a is None else a.index_select(0, rows_on(a.device)) for a in per_sample_args]
        masks = []
        for sub in select(*sliced):
            full = torch.ones((batch_size, *sub.shape[1:]), dtype=torch.bool, device=sub.device)
            full[rows_on(sub.device)] = sub
            masks.append(full)
        return tuple(masks)

    # ------------------------------------------------------------------ step
    def forward_networks(self, engine: CoTeachingTrainer, image: torch.Tensor) -> list[torch.Tensor]:
        """Logits ``(B, C, *S)`` of every network (train mode); fires ``FORWARD_COMPLETED`` with f1's as ``pred``."""
        for peer in self.peers:
            peer.train()
        logits = [engine.inferer(image, net) for net in self.networks]
        engine.state.output[Keys.PRED] = logits[0]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        return logits

    def selection_terms(
        self, logits: Sequence[torch.Tensor], labels: torch.Tensor, batch: Mapping[str, Any]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(per-voxel loss (B, *S) with gradient, selection mask (B, *S) bool), ...]``; the step loss is the
        sum of their (class-balanced) masked means. Co-teaching: net i's CE on its peer's small-loss voxels."""
        target = labels[:, 0].long()
        ce = [F.cross_entropy(z, target, reduction="none") for z in logits]
        if self.selects_everything():
            everything = torch.ones_like(target, dtype=torch.bool)
            return [(ce[0], everything), (ce[1], everything)]
        mask1, mask2 = self.select_on_lq(
            lambda c1, c2, y: coteaching_masks(c1, c2, y, self.keep_ratio, self.per_sample),
            batch, ce[0].detach(), ce[1].detach(), labels,
        )
        return [(ce[0], mask1), (ce[1], mask2)]

    def reduce(self, loss: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean of ``loss`` over ``mask`` (class-balanced unless ``class_balanced=False``); no host sync."""
        if self.class_balanced:
            return class_balanced_mean(loss, mask, labels, self.num_classes)
        return _masked_mean(loss, mask)

    def compute_loss(self, engine: CoTeachingTrainer, batch: dict[str, Any]) -> torch.Tensor:
        image, labels = batch["image"], batch["label"]
        if labels.dim() != image.dim() or labels.shape[1] != 1:
            raise ValueError(f"label must be (B, 1, *S), got shape {tuple(labels.shape)}.")
        logits = self.forward_networks(engine, image)
        # int64 once per step: every loss / selection function would otherwise convert the float labels again
        target = labels if labels.dtype == torch.long else labels.long()
        terms = self.selection_terms(logits, target, batch)
        reduced = [self.reduce(term, mask, target) for term, mask in terms]
        loss = torch.stack(reduced).sum()
        with torch.no_grad():
            selected = torch.stack(reduced).mean().detach()
            unselected = torch.stack([self.reduce(term.detach(), ~mask, target) for term, mask in terms]).mean()
            fraction = torch.stack([mask.float().mean() for _, mask in terms]).mean()
        output = engine.state.output
        output.update({"loss_selected": selected, "loss_unselected": unselected, "selected_fraction": fraction})
        output["refined_label" if self.labels_refined else "noisy_label"] = labels
        if isinstance(batch.get("clean_label"), torch.Tensor):
            output["clean_label"] = batch["clean_label"]
        return loss


class JoCoRTrainer(CoTeachingTrainer):
    """JoCoR (Wei et al. 2020) on voxels: Eq. 4 joint loss, one mask shared by both networks.

    Args:
        lam: weight of the symmetric-KL agreement term (0.65).
        kwargs: :class:`CoTeachingTrainer` arguments.
    """

    def __init__(self, *, lam: float = 0.65, **kwargs: Any) -> None:
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}.")
        super().__init__(**kwargs)
        self.lam = float(lam)

    def selection_mask(
        self, logits: Sequence[torch.Tensor], labels: torch.Tensor, joint_loss: torch.Tensor, batch: Mapping[str, Any]
    ) -> torch.Tensor:
        """Voxels ``(B, *S)`` the joint loss is averaged over: the small-loss voxels of the joint loss itself."""
        (mask,) = self.select_on_lq(
            lambda j, y: (jocor_mask(j, y, self.keep_ratio, self.per_sample),),
            batch, joint_loss.detach(), labels,
        )
        return mask

    def selection_terms(
        self, logits: Sequence[torch.Tensor], labels: torch.Tensor, batch: Mapping[str, Any]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        joint = joint_loss_per_voxel(logits[0], logits[1], labels, self.lam)
        if self.selects_everything():
            return [(joint, torch.ones_like(joint, dtype=torch.bool))]
        return [(joint, self.selection_mask(logits, labels, joint, batch))]


class SPGuidedTrainer(JoCoRTrainer):
    """SP-guided (seed 000, methods.md §2.1-2.4): JoCoR's loss on the voxels of the small-loss superpixel pieces.

    The batch carries the supervoxel map under ``superpixel_key`` (``(B, 1, *S)``, ids per patch made contiguous
    by ``RelabelContiguousd``) and the per-sample counts under ``count_key`` (a CPU tensor ``(B,)``; without it K
    is read from the device, one sync per step).

    Args:
        pool: ``"superpixel"`` (reference code: a piece gets its whole superpixel's mean) or ``"piece"``.
        superpixel_key: batch key of the supervoxel ids.
        count_key: batch key of the per-sample supervoxel counts (``None``: infer).
        lam: the weight of Eq. 2 and Eq. 4 (configs/spguided_la.json's default, chosen on the validation split;
            JoCoR's own default is 0.65).
        kwargs: :class:`JoCoRTrainer` arguments.
    """

    use_superpixels: bool = True

    def __init__(
        self,
        *,
        pool: str = "superpixel",
        superpixel_key: str = "superpixel",
        count_key: str | None = "superpixel_count",
        lam: float = 0.3,
        **kwargs: Any,
    ) -> None:
        if pool not in POOLING_MODES:
            raise ValueError(f"pool must be one of {POOLING_MODES}, got {pool!r}.")
        super().__init__(lam=lam, **kwargs)
        self.pool = pool
        self.superpixel_key = superpixel_key
        self.count_key = count_key

    def selection_mask(
        self, logits: Sequence[torch.Tensor], labels: torch.Tensor, joint_loss: torch.Tensor, batch: Mapping[str, Any]
    ) -> torch.Tensor:
        superpixels, counts = None, None
        if self.use_superpixels:
            superpixels = batch.get(self.superpixel_key)
            if not isinstance(superpixels, torch.Tensor):
                raise ValueError(
                    f"the batch has no {self.superpixel_key!r} map: add supervoxels to the datalist "
                    "(custom.data.supervoxels.ensure_supervoxels) and load them with the image."
                )
            counts = batch.get(self.count_key) if self.count_key else None
        counts = counts if isinstance(counts, torch.Tensor) else None
        with torch.no_grad():
            probs1 = torch.softmax(logits[0].detach().float(), dim=1)
            probs2 = torch.softmax(logits[1].detach().float(), dim=1)
            (mask,) = self.select_on_lq(
                lambda p1, p2, y, sp, k: (
                    superpixel_selection_mask(
                        p1, p2, y, sp, self.keep_ratio, self.lam, num_superpixels=k, pool=self.pool,
                        per_sample=self.per_sample,
                    ).mask,
                ),
                batch, probs1, probs2, labels, superpixels, counts,
            )
        return mask


class SPGuidedVoxelTrainer(SPGuidedTrainer):
    """SP-guided with every voxel its own piece (the "without superpixels" ablation, SP-guided Table 2 row 2).

    Selection and refinement use the same code path with ``superpixels=None``; no supervoxel map is needed.
    """

    use_superpixels = False


class TriNetworkTrainer(CoTeachingTrainer):
    """Tri-network (Zhang et al. 2020): three networks, each trained on the voxels its two peers choose.

    Args:
        peers: two peer networks.
        rule: ``"agreement"`` (smallest ``|CE_j - CE_k|`` of the peers) or ``"consensus"`` (small-loss for both).
        kwargs: :class:`CoTeachingTrainer` arguments.
    """

    num_peers = 2

    def __init__(self, *, rule: str = "agreement", **kwargs: Any) -> None:
        if rule not in TRINET_RULES:
            raise ValueError(f"rule must be one of {TRINET_RULES}, got {rule!r}.")
        super().__init__(**kwargs)
        self.rule = rule

    def selection_terms(
        self, logits: Sequence[torch.Tensor], labels: torch.Tensor, batch: Mapping[str, Any]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        target = labels[:, 0].long()
        ce = [F.cross_entropy(z, target, reduction="none") for z in logits]
        if self.selects_everything():
            everything = torch.ones_like(target, dtype=torch.bool)
            return [(term, everything) for term in ce]
        masks = self.select_on_lq(
            lambda c1, c2, c3, y: tuple(trinet_masks(c1, c2, c3, y, self.keep_ratio, self.rule, self.per_sample)),
            batch, *(c.detach() for c in ce), labels,
        )
        return list(zip(ce, masks))


# ---------------------------------------------------------------------- R at config time
def estimate_training_keep_ratio(
    items: Sequence[Mapping[str, Any]],
    datalist_meta: Mapping[str, Any],
    num_classes: int,
    min_ratio: float = 0.5,
    draws_per_case: int = 4,
    count_hq: bool = True,
) -> torch.Tensor:
    """Estimate ``R_c`` of a training set from its HQ cases *(decision, methods.md §2 "R")*.

    The datalist's noise simulator (``meta["noise"]``: name and parameters, ``meta["seed"]``) is applied
    ``draws_per_case`` times to every HQ case's clean label (case ids ``"<case_id>#hq_estimate<k>"``, so the draws
    differ from each other and from the LQ cases'; several draws average out e.g. MTCL's 50/50 dilate/erode choice
    when there are few HQ cases); per class c this gives, per corrupted case, the voxels labelled c (``T_c``) and
    those of them that are right (``A_c``), and per clean case the voxels of class c (``N_c``), all averaged over
    the HQ cases and draws. With ``n_clean`` training cases whose label is clean (HQ, and LQ items whose ``label``
    is their ``label_clean`` file, i.e. not corrupted) and ``n_noisy`` corrupted ones, the expected precision of the
    training labels is ``R_c = (n_clean N_c + n_noisy A_c) / (n_clean N_c + n_noisy T_c)``.

    Resolution: ``scripts/prepare_la.py`` / ``prepare_nifti.py`` simulate the noise at native resolution and
    downsample afterwards (``meta["downsample"]`` = K). The estimate does the same: each HQ label is upsampled K
    times per axis (nearest), corrupted at the native spacing, and pooled back with the preparation's own majority
    vote (:func:`custom.transforms.resampling.downsample_label`), so that a voxel-sized simulator parameter (MTCL's
    radii) means what it meant when the LQ labels were made. Simulating at the stored resolution instead would apply K
    times the physical noise (measured at K = 2 on ``mtcl_hq25``: R_fg 0.548 against a true precision of 0.767).
    Only the datalist's own simulator is known.

    Args:
        items: training items with absolute paths (``label``, ``label_clean``, ``quality``, ``case_id``).
        datalist_meta: ``custom.data.read_datalist_meta(...)``.
        num_classes: C.
        min_ratio: lower clamp of the estimate.
        draws_per_case: noise draws per HQ case.
        count_hq: count the HQ cases among the ``n_clean`` cases whose voxels are ranked; False for a trainer with
            ``trust_hq`` (only the LQ labels are ranked, so ``R_c`` is their precision alone).

    Returns:
        float64 CPU tensor ``(C,)``.

    Raises:
        ValueError: no HQ item, no noise simulator recorded in the datalist, or ``draws_per_case < 1``.
    """
    if int(draws_per_case) < 1:
        raise ValueError(f"draws_per_case must be >= 1, got {draws_per_case}.")
    hq = [i for i in items if i.get("quality") == "hq"]
    if not hq:
        raise ValueError("keep_ratio_source='hq_estimate' needs HQ cases in the training set.")
    classes = int(num_classes)
    clean_count = np.zeros(classes)
    noisy_total = np.zeros(classes)
    noisy_right = np.zeros(classes)
    for clean, noisy in hq_noise_draws(hq, datalist_meta, classes, int(draws_per_case), estimate_of="R"):
        clean_count += np.bincount(clean.ravel(), minlength=classes)[:classes]
        noisy_total += np.bincount(noisy.ravel(), minlength=classes)[:classes]
        right = (noisy == clean).ravel().astype(np.float64)
        noisy_right += np.bincount(noisy.ravel(), weights=right, minlength=classes)[:classes]
    n_hq = len(hq) * int(draws_per_case)
    n_noisy = sum(1 for i in items if i.get("quality") != "hq" and i.get("label") != i.get("label_clean"))
    n_clean = len(items) - n_noisy - (0 if count_hq else len(hq))
    numerator = n_clean * clean_count / n_hq + n_noisy * noisy_right / n_hq
    denominator = n_clean * clean_count / n_hq + n_noisy * noisy_total / n_hq
    ratio = np.where(denominator > 0, numerator / np.maximum(denominator, 1e-12), 1.0)
    return torch.as_tensor(np.clip(ratio, float(min_ratio), 1.0), dtype=torch.float64)


def resolve_keep_ratio(
    source: str,
    keep_ratio: float | Sequence[float],
    items: Sequence[Mapping[str, Any]],
    datalist_meta: Mapping[str, Any],
    num_classes: int,
    min_ratio: float = 0.5,
    draws_per_case: int = 4,
    trust_hq: bool = False,
) -> list[float]:
    """The target ``R_c`` for a config: ``source`` in :data:`KEEP_RATIO_SOURCES` (module docstring); with
    ``trust_hq`` (the trainer's option) an estimate is the precision of the LQ labels alone.

    Returns:
        ``C`` floats (logged, so that every run states the ratios it used).

    Raises:
        ValueError: unknown source, or ``"hq_estimate"`` without HQ cases / recorded noise.
    """
    if source not in KEEP_RATIO_SOURCES:
        raise ValueError(f"keep_ratio_source must be one of {KEEP_RATIO_SOURCES}, got {source!r}.")
    if source == "auto":
        noise = datalist_meta.get("noise") or {}
        has_noise = isinstance(noise, Mapping) and bool(noise.get("name"))
        source = "hq_estimate" if has_noise and any(i.get("quality") == "hq" for i in items) else "config"
    if source == "config":
        ratios = per_class_keep_ratio(keep_ratio, num_classes)
    else:
        ratios = estimate_training_keep_ratio(
            items, datalist_meta, num_classes, min_ratio, draws_per_case, count_hq=not trust_hq
        )
    values = [round(float(r), 6) for r in ratios]
    _LOGGER.info(f"keep ratio R per class ({source}): {values}")
    return values
