"""The V-Net of the noisy-label LA papers (UA-MT, MTCL, ALC): 3x3x3 convolutions, 16 base filters, ~9.4 M parameters.

This is *not* MONAI's ``monai.networks.nets.VNet`` (5x5x5 convolutions, ~46 M parameters). It follows the
architecture used by the ALC/MTCL reference code: residual-free convolution stages, strided 2x2x2 down-sampling,
transposed-convolution up-sampling with additive skips, BatchNorm, and two ``Dropout3d(p=0.5)`` layers (on the
bottleneck and before the output convolution) that can stay active at inference for Monte-Carlo sampling.

This module imports only ``torch`` so that it can be copied verbatim into a trained bundle's ``scripts/`` folder.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PaperVNet"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(16, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"normalization must be 'batch', 'instance', 'group' or 'none', got {kind!r}.")


class _ConvStage(nn.Sequential):
    """``num_convs`` x (3x3x3 conv, norm, ReLU) at constant width."""

    def __init__(self, num_convs: int, in_channels: int, out_channels: int, normalization: str):
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers += [
                nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, padding=1),
                _norm(normalization, out_channels),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class _Resample(nn.Sequential):
    """2x2x2 strided convolution (down) or transposed convolution (up), then norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, normalization: str, up: bool):
        conv = nn.ConvTranspose3d if up else nn.Conv3d
        super().__init__(
            conv(in_channels, out_channels, kernel_size=2, stride=2), _norm(normalization, out_channels), nn.ReLU(True)
        )


class PaperVNet(nn.Module):
    """V-Net with 3x3x3 kernels as used by UA-MT / MTCL / ALC (4 down-samplings; input sides divisible by 16).

    Args:
        spatial_dims: must be 3 (kept for MONAI-style signatures).
        in_channels: input channels.
        out_channels: number of classes ``C``.
        base_filters: width of the first stage (16 in the papers; doubles at each level).
        dropout: probability of the two ``Dropout3d`` layers (0 disables them).
        normalization: ``"batch"`` (papers), ``"instance"``, ``"group"`` or ``"none"``.

    Shapes:
        ``forward``: input ``(B, in_channels, H, W, D)`` -> logits ``(B, C, H, W, D)`` (not softmaxed).
        ``forward_features``: decoder feature maps coarse to fine, channels ``decoder_channels``
        (``8f, 4f, 2f, f`` at 1/8, 1/4, 1/2 and full resolution); the last is the classifier's input.
    """

    #: every input side must be divisible by this (four 2x down-samplings); checked at start-up by the bundles
    size_divisor = 16

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        base_filters: int = 16,
        dropout: float = 0.5,
        normalization: str = "batch",
    ):
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"PaperVNet is 3D only, got spatial_dims={spatial_dims}.")
        if base_filters < 1 or out_channels < 1 or in_channels < 1:
            raise ValueError("in_channels, out_channels and base_filters must be positive.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        f = base_filters
        n = normalization
        self.encoder = nn.ModuleList(
            [_ConvStage(1, in_channels, f, n), _ConvStage(2, 2 * f, 2 * f, n), _ConvStage(3, 4 * f, 4 * f, n),
             _ConvStage(3, 8 * f, 8 * f, n), _ConvStage(3, 16 * f, 16 * f, n)]
        )
        self.down = nn.ModuleList([_Resample(f * 2**i, f * 2 ** (i + 1), n, up=False) for i in range(4)])
        self.up = nn.ModuleList([_Resample(f * 2 ** (4 - i), f * 2 ** (3 - i), n, up=True) for i in range(4)])
        self.decoder = nn.ModuleList(
            [_ConvStage(3, 8 * f, 8 * f, n), _ConvStage(3, 4 * f, 4 * f, n), _ConvStage(2, 2 * f, 2 * f, n),
             _ConvStage(1, f, f, n)]
        )
        self.bottleneck_dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.head_dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.out_conv = nn.Conv3d(f, out_channels, kernel_size=1)
        self.decoder_channels = (8 * f, 4 * f, 2 * f, f)
        self.out_channels = out_channels

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder feature maps, coarse to fine (see class docstring)."""
        skips: list[torch.Tensor] = []
        # zip over the ModuleLists (not indexing with a loop variable) keeps the network scriptable
        for stage, down in zip(self.encoder, self.down):
            x = stage(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck_dropout(self.encoder[4](x))
        features: list[torch.Tensor] = []
        for i, (up, stage) in enumerate(zip(self.up, self.decoder)):
            # additive skips, as in the papers' V-Net (not concatenation)
            x = stage(up(x) + skips[3 - i])
            features.append(x)
        return features

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Final dropout + 1x1x1 convolution on the full-resolution decoder features -> logits."""
        return self.out_conv(self.head_dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.forward_features(x)[-1])
