import pytest
import torch

from eunets_monai.networks.blocks.attention import BottleneckSelfAttention, SkipCrossAttention
from eunets_monai.networks.blocks.mhex import MHEXPlus
from eunets_monai.networks.nets.unet import EUNet, UNet
from eunets_monai.networks.nets.unet_transformer import EUNetTransformer, UNetTransformer
from tests.networks.contract import check_all, count_parameters, pinned_output_stats, skip_attention_modes

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


# Outputs of the code before the ``attention`` option existed (seed 0, widths 4-8-16): the papers' global attention
# must stay bit-for-bit the same by default in 2D, and when asked for explicitly in 3D.
PINNED = {
    (2, False): [18.841306, 5.088324, 0.445301],
    (2, True): [34.963234, 72.133443, 0.568619],
    (3, False): [65.536745, 14.946815, 1.797892],
    (3, True): [106.014809, 239.084307, 2.907666],
}


@pytest.mark.parametrize("spatial_dims,mhex", list(PINNED))
def test_outputs_unchanged_for_the_papers_attention(spatial_dims, mhex, monkeypatch):
    # the pins predate the identity start of the heads' Conv1: build them with PyTorch's default, as then
    monkeypatch.setattr(MHEXPlus, "_init_conv1", lambda self, init: None)
    attention = {} if spatial_dims == 2 else {"attention": "global"}
    torch.manual_seed(0)
    net = UNetTransformer(spatial_dims, 1, 2, channels=SMALL, mhex=mhex, num_heads=2, **attention)
    assert pinned_output_stats(net, spatial_dims) == pytest.approx(PINNED[(spatial_dims, mhex)], rel=1e-4, abs=1e-5)


def test_attention_option_defaults_global_in_2d_reduced_in_3d():
    modes = {sd: skip_attention_modes(UNetTransformer(sd, 1, 2, channels=SMALL, num_heads=2)) for sd in (2, 3)}
    assert modes == {2: {"global"}, 3: {"reduced"}}
    net = UNetTransformer(3, 1, 2, channels=SMALL, num_heads=2, attention="global", kv_size=3)
    assert {(m.attention, m.kv_size) for m in net.modules() if isinstance(m, SkipCrossAttention)} == {("global", 3)}
    with pytest.raises(ValueError, match="attention must be"):
        UNetTransformer(3, 1, 2, channels=SMALL, num_heads=2, attention="swin")
