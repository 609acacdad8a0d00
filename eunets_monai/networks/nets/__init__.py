from eunets_monai.networks.nets.base import EUNetBase, EUNetOutputs, HeadOutputs
from eunets_monai.networks.nets.unet import EUNet, UNet

__all__ = ["EUNetBase", "EUNetOutputs", "HeadOutputs", "UNet", "EUNet"]
