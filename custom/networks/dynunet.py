"""MONAI's DynUNet configured the nnU-Net way: kernel sizes and strides derived from the patch size and spacing.

Imports only torch and MONAI so that it can be copied into a trained bundle's ``scripts/`` folder.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import DynUNet

__all__ = ["nnunet_kernels_and_strides", "NnUNetDynUNet"]


def nnunet_kernels_and_strides(
    patch_size: Sequence[int], spacing: Sequence[float], min_size: int = 8, max_levels: int = 5
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's rule: halve an axis while it stays >= ``min_size`` and its spacing is at most twice the finest.

    Anisotropic axes are not down-sampled (and get kernel 1) until the others have caught up, as in nnU-Net.

    Returns:
        ``(kernels, strides)``, one entry per level; the first stride is ``[1, 1, 1]``.
    """
    if len(patch_size) != len(spacing):
        raise ValueError(f"patch_size {list(patch_size)} and spacing {list(spacing)} must have the same length.")
    sizes = [int(s) for s in patch_size]
    spacings = [float(s) for s in spacing]
    kernels, strides = [], [[1] * len(sizes)]
    while len(strides) < max_levels + 1:
        finest = min(spacings)
        kernels.append([3 if sp / finest <= 2 else 1 for sp in spacings])
        stride = [2 if (sz >= 2 * min_size and sp / finest <= 2) else 1 for sz, sp in zip(sizes, spacings)]
        if all(s == 1 for s in stride):
            break
        strides.append(stride)
        sizes = [sz // st for sz, st in zip(sizes, stride)]
        spacings = [sp * st for sp, st in zip(spacings, stride)]
    kernels.append([3 if sp / min(spacings) <= 2 else 1 for sp in spacings])
    return kernels[: len(strides)], strides


class NnUNetDynUNet(DynUNet):
    """``DynUNet`` with nnU-Net's kernels/strides for ``patch_size`` and ``spacing`` and filters ``32 * 2^k`` (cap 320).

    Input ``(B, in_channels, H, W, D)`` (sides divisible by the product of the strides) -> logits ``(B, C, H, W, D)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        patch_size: Sequence[int] = (128, 128, 128),
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        base_filters: int = 32,
        max_filters: int = 320,
        dropout: float | None = None,
        norm_name: str = "instance",
    ):
        kernels, strides = nnunet_kernels_and_strides(patch_size, spacing)
        filters = [min(base_filters * 2**i, max_filters) for i in range(len(strides))]
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, kernel_size=kernels,
            strides=strides, upsample_kernel_size=strides[1:], filters=filters, dropout=dropout, norm_name=norm_name,
            res_block=False,
        )
