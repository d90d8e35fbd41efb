"""Networks: the papers' V-Net (MC-dropout capable), the JCAS two-level V-Net and an nnU-Net-style DynUNet."""

from custom.networks.deep_supervision import DeepSupervisionNet, JcasVNet
from custom.networks.dynunet import NnUNetDynUNet, nnunet_kernels_and_strides
from custom.networks.vnet import PaperVNet

__all__ = ["PaperVNet", "NnUNetDynUNet", "JcasVNet", "DeepSupervisionNet", "nnunet_kernels_and_strides"]
