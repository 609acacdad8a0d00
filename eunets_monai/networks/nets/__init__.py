from eunets_monai.networks.nets.ahf_unet import AHFEUNet, AHFUNet
from eunets_monai.networks.nets.base import EUNetBase, EUNetOutputs, HeadOutputs
from eunets_monai.networks.nets.efen import EFEN, EUEFEN
from eunets_monai.networks.nets.unet import EUNet, UNet
from eunets_monai.networks.nets.unet_transformer import EUNetTransformer, UNetTransformer
from eunets_monai.networks.nets.unetplusplus import EUNetPlusPlus, UNetPlusPlus

__all__ = [
    "EUNetBase",
    "EUNetOutputs",
    "HeadOutputs",
    "UNet",
    "EUNet",
    "UNetPlusPlus",
    "EUNetPlusPlus",
    "AHFUNet",
    "AHFEUNet",
    "UNetTransformer",
    "EUNetTransformer",
    "EFEN",
    "EUEFEN",
]
