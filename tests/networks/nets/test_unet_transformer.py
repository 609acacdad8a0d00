import pytest
import torch

from eunets_monai.networks.blocks.attention import BottleneckSelfAttention, SkipCrossAttention
from eunets_monai.networks.nets.unet import EUNet, UNet
from eunets_monai.networks.nets.unet_transformer import EUNetTransformer, UNetTransformer
from tests.networks.contract import check_all, count_parameters

SMALL = (4, 8, 16)


def small_unet_transformer(spatial_dims: int, mhex: bool) -> UNetTransformer:
    return UNetTransformer(spatial_dims, in_channels=1, out_channels=3, channels=SMALL, mhex=mhex, num_heads=2)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_contract(spatial_dims):
    check_all(small_unet_transformer, spatial_dims)


def test_attention_sits_at_bottleneck_and_every_skip():
    net = EUNetTransformer(3, 1, 2, channels=SMALL, num_heads=2)
    assert isinstance(net.mhsa, BottleneckSelfAttention)
    assert len(net.mhca) == len(net.up_blocks) == len(net.heads) == len(SMALL) - 1
    assert all(isinstance(m, SkipCrossAttention) and m.query_in is not None for m in net.mhca)
    # deepest first: the MHCA of stage i filters the skip of width channels[-2 - i]
    assert [m.w_v.in_features for m in net.mhca] == list(SMALL[-2::-1])


def test_sequence_positional_encoding_runs():
    net = UNetTransformer(2, 2, 2, channels=SMALL, num_heads=2, pe_mode="sequence").eval()
    with torch.no_grad():
        assert net(torch.rand(1, 2, 21, 30)).shape == (1, 2, 21, 30)


def test_bad_heads_and_inputs():
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        UNetTransformer(2, 1, 2, channels=SMALL, num_heads=3)
    with pytest.raises(ValueError, match="2D and expects"):
        small_unet_transformer(2, True)(torch.rand(1, 1, 8, 8, 8))


def test_paper_parameter_counts():
    # paper 000 Table 1: UN-T 9.42M, EUN-T 9.51M at widths 32-512, 1 input channel, 2 classes
    plain, eu = UNetTransformer(2, 1, 2), EUNetTransformer(2, 1, 2)
    assert round(count_parameters(plain) / 1e6, 2) == 9.42
    assert round(count_parameters(eu) / 1e6, 2) == 9.51
    assert 0 < count_parameters(eu) - count_parameters(plain) < 100_000
    # the attention adds the same to U-Net and EU-Net: the heads are the only EU difference
    extra = count_parameters(plain) - count_parameters(UNet(2, 1, 2))
    assert count_parameters(eu) - count_parameters(EUNet(2, 1, 2)) == extra
    assert extra == count_parameters(plain.mhsa) + count_parameters(plain.mhca)
