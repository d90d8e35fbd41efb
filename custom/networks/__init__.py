"""Networks: the papers' V-Net (MC-dropout capable) and an nnU-Net-style DynUNet factory."""

from custom.networks.dynunet import NnUNetDynUNet, nnunet_kernels_and_strides
from custom.networks.vnet import PaperVNet

__all__ = ["PaperVNet", "NnUNetDynUNet", "nnunet_kernels_and_strides"]
