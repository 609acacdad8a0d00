"""The EU-Net family: five U-Net architectures, each plain (``mhex=False``) and with MHEX+ (``mhex=True``)."""

from __future__ import annotations

from eunets_monai.networks.blocks.mhex import HEAD_INITS, MHEXPlus
from eunets_monai.networks.nets import (
    EFEN,
    EUEFEN,
    AHFEUNet,
    AHFUNet,
    EUNet,
    EUNetBase,
    EUNetOutputs,
    EUNetPlusPlus,
    EUNetTransformer,
    HeadOutputs,
    UNet,
    UNetPlusPlus,
    UNetTransformer,
)

# Architecture name -> class; ``mhex`` picks the EU variant or its plain baseline.
NETWORKS: dict[str, type[EUNetBase]] = {
    "unet": UNet,
    "unetplusplus": UNetPlusPlus,
    "ahf_unet": AHFUNet,
    "unet_transformer": UNetTransformer,
    "efen": EFEN,
}


def get_network(name: str, **kwargs) -> EUNetBase:
    """
    Build a network of the family by name.

    Args:
        name: one of :py:data:`NETWORKS` (``"unet"``, ...).
        kwargs: the architecture's arguments, e.g. ``spatial_dims=3, in_channels=1, out_channels=2, mhex=True``.

    Examples::

        >>> net = get_network("unet", spatial_dims=2, in_channels=1, out_channels=2, mhex=True)
    """
    try:
        cls = NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETWORKS)}.") from None
    return cls(**kwargs)


__all__ = [
    "NETWORKS",
    "get_network",
    "MHEXPlus",
    "HEAD_INITS",
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
