"""Placeholder main job until the bundles land: a real forward pass of all networks on an embedded default."""

from __future__ import annotations

import torch

from eunets_monai.networks import NETWORKS, get_network


def main() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 1, 35, 50, 36)  # a hippocampus-sized volume
    for name in NETWORKS:
        for mhex in (False, True):
            net = get_network(name, spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32, 64), mhex=mhex)
            with torch.no_grad():
                y = net.eval()(x)
            n = sum(p.numel() for p in net.parameters())
            print(f"{name:18s} mhex={mhex!s:5s} params={n:>9,d} output={tuple(y.shape)}")


if __name__ == "__main__":
    main()
