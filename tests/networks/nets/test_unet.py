import pytest
import torch

from eunets_monai.networks.nets.unet import EUNet, UNet, unpadded_output_size, valid_unpadded_sizes
from tests.networks.contract import check_all, count_parameters

SMALL = (4, 8, 16, 32)


def small_unet(spatial_dims: int, mhex: bool) -> UNet:
    return UNet(spatial_dims, in_channels=1, out_channels=3, channels=SMALL, mhex=mhex)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_contract(spatial_dims):
    check_all(small_unet, spatial_dims)


def test_original_unpadded_572_gives_388():
    net = UNet(2, 1, 2, channels=(2, 4, 8, 16, 32), padding=False).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 572, 572)).shape == (1, 2, 388, 388)
    assert unpadded_output_size(572, levels=5) == 388


def test_unpadded_rejects_invalid_size_with_suggestions():
    net = UNet(2, 1, 2, channels=SMALL, padding=False)
    nearby = [s for s in valid_unpadded_sizes(levels=4, upto=125) if abs(s - 61) <= 64]
    assert nearby, "the message must be able to suggest sizes"
    with pytest.raises(ValueError, match=rf"cannot take spatial size 61 .*valid sizes near it: \[{nearby[0]}, "):
        net(torch.rand(1, 1, 61, nearby[0]))


def test_valid_unpadded_sizes_are_accepted_3d():
    net = UNet(3, 1, 2, channels=(2, 4, 8), padding=False).eval()
    size = valid_unpadded_sizes(levels=3, upto=100)[0]
    out = unpadded_output_size(size, 3)
    with torch.no_grad():
        assert net(torch.rand(1, 1, size, size, size)).shape == (1, 2, out, out, out)


def test_unpadded_eu_net_is_refused():
    # the identity shortcut of the residual decoder block needs same-size convolutions
    with pytest.raises(ValueError, match="padded"):
        UNet(2, 1, 2, channels=SMALL, mhex=True, padding=False)


def test_wrong_input_dims_and_channels():
    net = small_unet(3, True)
    with pytest.raises(ValueError, match="3D and expects"):
        net(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="expects 1 input channel"):
        net(torch.rand(1, 2, 16, 16, 16))


def test_paper_parameter_counts():
    # paper 000 Table 1: UN 7.76M, EUN 7.85M at widths 32-512, 1 input channel, 2 classes
    plain, eu = UNet(2, 1, 2), EUNet(2, 1, 2)
    assert round(count_parameters(plain) / 1e6, 2) == 7.76
    assert round(count_parameters(eu) / 1e6, 2) == 7.85
    assert 0 < count_parameters(eu) - count_parameters(plain) < 100_000
