"""Two-level deep-supervision wrapper with DAR for JCAS (methods.md §3; Guo & Yuan, MICCAI 2022).

Wraps any backbone with the decoder interface::

    decoder_channels: tuple[int, ...]             # channels of the decoder maps, coarse -> fine
    forward_features(x) -> list[Tensor]           # decoder maps coarse -> fine; the last is full resolution

(e.g. :class:`custom.networks.vnet.PaperVNet`). The last two decoder maps are the two output levels
(level 1 = ``coarse``, the second-to-last map, typically half resolution; level 2 = ``fine``, the last map, full
resolution). Each level gets a 1x1x1 classifier head (logits ``Q``, ``C`` channels) and a 1x1x1 feature head
(``f``, ``d`` channels); DAR (:mod:`custom.networks.dar`) turns them into rectified logits ``P`` and a token
affinity ``A``. The backbone's own classifier is not used.

In ``train()`` mode :meth:`DeepSupervisionNet.forward` returns a :class:`JcasOutput` with everything the JCAS
losses need; in ``eval()`` mode it returns only the inference output ``softmax(P2) + softmax(Q2)``. The
transition matrices live in the loss (:mod:`custom.losses.jcas_loss`), so the inference network never needs
them; :meth:`DeepSupervisionNet.inference_network` gives a stand-alone :class:`JcasInference` module for
``torch.jit.script`` / ``torch.jit.trace`` export. A traced export is specialised to the traced input size (trace
with the sliding-window ROI); a scripted one is not, but needs a backbone whose ``forward_features`` scripts.

The backbone's own final classifier gets no gradient (its parameters are unused: DDP needs
``find_unused_parameters=True``, or pass those parameters to no optimiser). :class:`JcasVNet`, the
config/bundle-constructible network, drops that classifier.

This module imports only ``torch`` and its siblings ``vnet.py`` / ``dar.py`` (relatively), so the three files can be
copied into a bundle's ``scripts/`` folder and run without this repository.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

# relative imports only: this module is copied with vnet.py and dar.py into a trained bundle's scripts/ folder
from .dar import differentiated_affinity_rectify, effective_token_grid, pool_to_tokens, token_affinity
from .vnet import PaperVNet

__all__ = [
    "JcasLevelOutput",
    "JcasOutput",
    "JcasInference",
    "DeepSupervisionNet",
    "JcasVNet",
    "jcas_inference_probabilities",
]


class JcasLevelOutput(NamedTuple):
    """Training outputs of one level.

    Attributes:
        logits: ``Q``, ``(B, C, H_l, W_l, D_l)`` classifier logits at the level's resolution.
        features: ``f``, ``(B, d, H_l, W_l, D_l)`` feature-head output (before the ReLU of the affinity).
        rectified_logits: ``P``, ``(B, C, H_l, W_l, D_l)`` DAR-rectified logits (``P = Q`` if DAR is disabled).
        affinity: ``A``, ``(B, N, N)`` token affinity in ``[1e-10, 1]``.
        token_grid: the ``(h, w, d)`` token grid of ``A`` (``N = h w d``); pool the labels onto it with
            :func:`custom.networks.dar.token_class_labels` to build the affinity targets.
    """

    logits: torch.Tensor
    features: torch.Tensor
    rectified_logits: torch.Tensor
    affinity: torch.Tensor
    token_grid: tuple[int, int, int]


class JcasOutput(NamedTuple):
    """Training outputs of both levels: ``coarse`` = level 1 (half resolution), ``fine`` = level 2 (full)."""

    coarse: JcasLevelOutput
    fine: JcasLevelOutput


def jcas_inference_probabilities(rectified_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Inference output of JCAS: ``softmax(P) + softmax(Q)`` over the class axis (methods.md §3.1).

    Args:
        rectified_logits: ``P``, ``(B, C, H, W, D)`` logits.
        logits: ``Q``, ``(B, C, H, W, D)`` logits.

    Returns:
        ``(B, C, H, W, D)``; sums to 2 over the classes (argmax / thresholding at 1 are what it is meant for).
    """
    return torch.softmax(rectified_logits, dim=1) + torch.softmax(logits, dim=1)


def _check_backbone(backbone: nn.Module) -> tuple[int, int]:
    if not callable(getattr(backbone, "forward_features", None)):
        raise ValueError(f"backbone {type(backbone).__name__} must define forward_features(x) -> list of tensors.")
    channels = getattr(backbone, "decoder_channels", None)
    if channels is None or len(channels) < 2:
        raise ValueError(
            f"backbone {type(backbone).__name__} must expose decoder_channels with at least two levels, "
            f"got {channels}."
        )
    return int(channels[-2]), int(channels[-1])


class JcasInference(nn.Module):
    """Stand-alone inference network: ``x -> softmax(P2) + softmax(Q2)``; no transition matrices, no level 1.

    Shares its modules with the :class:`DeepSupervisionNet` it was made from (built by
    :meth:`DeepSupervisionNet.inference_network`). It is scriptable when the backbone's ``forward_features`` is.

    Args:
        backbone: the backbone (see module docstring).
        classifier: level-2 classifier head (1x1x1 conv, ``C`` outputs).
        feature_head: level-2 feature head (1x1x1 conv, ``d`` outputs).
        token_grid: requested DAR token grid.
        use_dar: if False, ``P = Q`` (the output is ``2 softmax(Q2)``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        classifier: nn.Module,
        feature_head: nn.Module,
        token_grid: tuple[int, int, int],
        use_dar: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.feature_head = feature_head
        self.token_grid = [int(g) for g in token_grid]
        self.use_dar = bool(use_dar)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_channels, H, W, D)`` -> ``(B, C, H, W, D)`` probabilities summing to 2."""
        fine = self.backbone.forward_features(x)[-1]
        logits = self.classifier(fine)
        if self.use_dar:
            rectified, _ = differentiated_affinity_rectify(self.feature_head(fine), logits, self.token_grid)
        else:
            rectified = logits
        return jcas_inference_probabilities(rectified, logits)


class DeepSupervisionNet(nn.Module):
    """JCAS network: a backbone with two supervised output levels, each with classifier, feature head and DAR.

    Args:
        backbone: module with ``decoder_channels`` and ``forward_features`` (see module docstring).
        num_classes: ``C >= 2``.
        feature_dim: ``d``, channels of the feature heads used for the affinity.
        token_grid: requested DAR token grid ``(h, w, d)`` for both levels (clipped per axis to the level's
            size); the affinity costs ``O(B (h w d)^2)`` memory per level.
        use_dar: if False (ablation), ``P = Q``; the affinity is still computed for the affinity loss.
        detach_feature_heads: if True *(decision, not in the paper)*, the feature heads read a detached copy of
            the decoder maps in training: the affinity loss (and DAR's use of ``f``) trains the heads, not the
            backbone. The reference trains the backbone through them too; at width 8 that costs the segmentation
            its accuracy (docs/methods/jcas.md, "Diagnosis"). Inference is unchanged.

    Shapes:
        input ``(B, in_channels, H, W, D)``; ``train()``: :class:`JcasOutput`; ``eval()``:
        ``(B, C, H, W, D)`` = ``softmax(P2) + softmax(Q2)``.

    Raises:
        ValueError: on a backbone without the decoder interface or bad sizes.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        feature_dim: int = 16,
        token_grid: tuple[int, int, int] = (16, 16, 16),
        use_dar: bool = True,
        detach_feature_heads: bool = False,
    ):
        super().__init__()
        coarse_channels, fine_channels = _check_backbone(backbone)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}.")
        if len(token_grid) != 3 or any(int(g) < 1 for g in token_grid):
            raise ValueError(f"token_grid must be three positive integers, got {token_grid}.")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)
        self.token_grid = tuple(int(g) for g in token_grid)
        self.use_dar = bool(use_dar)
        self.detach_feature_heads = bool(detach_feature_heads)
        self.coarse_classifier = nn.Conv3d(coarse_channels, num_classes, kernel_size=1)
        self.coarse_feature_head = nn.Conv3d(coarse_channels, feature_dim, kernel_size=1)
        self.fine_classifier = nn.Conv3d(fine_channels, num_classes, kernel_size=1)
        self.fine_feature_head = nn.Conv3d(fine_channels, feature_dim, kernel_size=1)

    def _level(self, decoder_map: torch.Tensor, classifier: nn.Module, feature_head: nn.Module) -> JcasLevelOutput:
        logits = classifier(decoder_map)
        features = feature_head(decoder_map.detach() if self.detach_feature_heads else decoder_map)
        grid = effective_token_grid([int(s) for s in logits.shape[2:]], list(self.token_grid))
        if self.use_dar:
            rectified, affinity = differentiated_affinity_rectify(features, logits, list(self.token_grid))
        else:
            rectified, affinity = logits, token_affinity(pool_to_tokens(features, grid))
        return JcasLevelOutput(logits, features, rectified, affinity, (grid[0], grid[1], grid[2]))

    def training_output(self, x: torch.Tensor) -> JcasOutput:
        """Both levels' ``Q``, ``f``, ``P``, ``A`` and token grids (what the JCAS losses consume), in any mode."""
        decoder_maps = self.backbone.forward_features(x)
        if len(decoder_maps) < 2:
            raise ValueError(f"backbone.forward_features returned {len(decoder_maps)} maps; two are needed.")
        coarse = self._level(decoder_maps[-2], self.coarse_classifier, self.coarse_feature_head)
        fine = self._level(decoder_maps[-1], self.fine_classifier, self.fine_feature_head)
        return JcasOutput(coarse=coarse, fine=fine)

    def inference_output(self, x: torch.Tensor) -> torch.Tensor:
        """``softmax(P2) + softmax(Q2)``, ``(B, C, H, W, D)``; level 1 is not computed."""
        fine = self.backbone.forward_features(x)[-1]
        logits = self.fine_classifier(fine)
        if self.use_dar:
            rectified, _ = differentiated_affinity_rectify(self.fine_feature_head(fine), logits, list(self.token_grid))
        else:
            rectified = logits
        return jcas_inference_probabilities(rectified, logits)

    def forward(self, x: torch.Tensor) -> JcasOutput | torch.Tensor:
        """:meth:`training_output` in ``train()`` mode, :meth:`inference_output` in ``eval()`` mode."""
        return self.training_output(x) if self.training else self.inference_output(x)

    def inference_network(self) -> JcasInference:
        """A :class:`JcasInference` sharing this network's backbone and level-2 heads (for export).

        The modules are shared, not copied: export after training, and call ``.eval()`` on the result first
        (which also switches this network's backbone to eval mode; it is left untouched here).
        """
        return JcasInference(self.backbone, self.fine_classifier, self.fine_feature_head, self.token_grid, self.use_dar)


class JcasVNet(DeepSupervisionNet):
    """The JCAS network on the papers' V-Net, constructible from plain keyword arguments (configs and bundles).

    A :class:`custom.networks.vnet.PaperVNet` backbone (its levels at 1/2 and full resolution are JCAS levels 1
    and 2) wrapped by :class:`DeepSupervisionNet`. The backbone's own 1x1x1 classifier is replaced by an identity:
    each JCAS level has its own classifier and feature heads, and an unused classifier would only need
    ``find_unused_parameters`` under DDP. Dropout acts at the bottleneck only (the backbone's pre-classifier
    dropout belongs to the dropped classifier).

    Args:
        spatial_dims: must be 3.
        in_channels: input channels.
        out_channels: number of classes ``C >= 2``.
        base_filters: width of the first V-Net stage (16 in the papers).
        dropout: probability of the bottleneck ``Dropout3d``.
        normalization: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        feature_dim: ``d``, channels of the feature heads used by the affinity.
        token_grid: requested DAR token grid ``(h, w, d)`` (clipped per level to the level's size).
        use_dar: if False (ablation), ``P = Q``.
        detach_feature_heads: see :class:`DeepSupervisionNet`.

    Shapes:
        input ``(B, in_channels, H, W, D)`` with ``H, W, D`` divisible by 16. ``train()``: :class:`JcasOutput`
        (level 1 at ``(H/2, W/2, D/2)``); ``eval()``: ``(B, C, H, W, D)`` = ``softmax(P2) + softmax(Q2)``, i.e.
        probabilities summing to 2, so a standard ``softmax -> argmax`` post-processing gives the same labels.

    TorchScript: ``torch.jit.script`` compiles the inference path only; the scripted module returns the
    inference output in either mode (the training outputs are not an export format).

    Raises:
        ValueError: on bad arguments (see :class:`DeepSupervisionNet` and :class:`PaperVNet`).
    """

    #: every input side must be divisible by this (the V-Net backbone's four 2x down-samplings)
    size_divisor = 16

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        base_filters: int = 16,
        dropout: float = 0.5,
        normalization: str = "batch",
        feature_dim: int = 16,
        token_grid: tuple[int, int, int] | list[int] = (16, 16, 16),
        use_dar: bool = True,
        detach_feature_heads: bool = False,
    ):
        backbone = PaperVNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            base_filters=base_filters,
            dropout=dropout,
            normalization=normalization,
        )
        backbone.out_conv = nn.Identity()
        super().__init__(
            backbone, out_channels, feature_dim=feature_dim, token_grid=tuple(token_grid), use_dar=use_dar,
            detach_feature_heads=detach_feature_heads,
        )

    # no return annotation on purpose: TorchScript then infers Tensor for the compiled (inference) path, whereas an
    # annotation naming JcasOutput would make it try to compile the training NamedTuples too
    def forward(self, x: torch.Tensor):
        """:meth:`training_output` (:class:`JcasOutput`) in ``train()`` mode, else :meth:`inference_output`."""
        # torch.jit.is_scripting() is a compile-time constant: the scripted graph holds the inference path only
        if self.training and not torch.jit.is_scripting():
            return self.training_output(x)
        return self.inference_output(x)
