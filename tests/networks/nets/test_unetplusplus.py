import pytest
import torch

from eunets_monai.networks.nets.unetplusplus import EUNetPlusPlus, NestedBlock, UNetPlusPlus
from tests.networks.contract import check_all, count_parameters

SMALL = (4, 8, 16, 32)


def small_unetpp(spatial_dims: int, mhex: bool) -> UNetPlusPlus:
    # 3D with one level less: the nested grid grows quadratically with depth (6 nodes -> 3) and 3D dominates test time
    channels = SMALL if spatial_dims == 2 else SMALL[:-1]
    return UNetPlusPlus(spatial_dims, in_channels=1, out_channels=3, channels=channels, mhex=mhex)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_contract(spatial_dims):
    check_all(small_unetpp, spatial_dims)


def reference_decode(net: UNetPlusPlus, features: list[torch.Tensor]) -> torch.Tensor:
    """X^{i,j} = H([X^{i,0..j-1}, Up(X^{i+1,j-1})]) written as a memoised recursion, heads on the main path."""
    levels = len(features)
    memo: dict[tuple[int, int], torch.Tensor] = {}

    def node(i: int, j: int) -> torch.Tensor:
        if (i, j) not in memo:
            if j == 0:
                memo[i, j] = features[i]
            else:
                block = net.nested[j - 1][i]
                x = block.conv(torch.cat([*(node(i, k) for k in range(j)), block.upsample(node(i + 1, j - 1))], 1))
                if net.heads is not None and i + j == levels - 1:
                    x = net.heads[j - 1](x)[0]
                memo[i, j] = x
        return memo[i, j]

    return node(0, levels - 1)


@pytest.mark.parametrize("mhex", [False, True])
def test_dense_nested_skips_match_the_equation(mhex):
    torch.manual_seed(0)
    net = UNetPlusPlus(2, 1, 2, channels=(2, 4, 8, 16), mhex=mhex).eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        expected = net.output_conv(reference_decode(net, net.encode(x)))
        torch.testing.assert_close(net(x), expected)


def test_node_layout_and_widths():
    net = UNetPlusPlus(2, 1, 2)  # widths 32-512: X^{0,4} reads 4 x 32 same-level + 64 up-sampled channels
    assert [len(col) for col in net.nested] == [4, 3, 2, 1]
    assert net.nested[3][0].conv.conv_0.conv.in_channels == 4 * 32 + 64
    assert net.nested[0][3].conv.conv_0.conv.in_channels == 256 + 512
    assert [h.conv1.in_channels for h in EUNetPlusPlus(2, 1, 2).heads] == [256, 128, 64, 32]


def test_heads_sit_on_main_path_nodes():
    torch.manual_seed(0)
    net = EUNetPlusPlus(2, 1, 2, channels=(2, 4, 8, 16)).eval()
    out = net.forward_explained(torch.rand(1, 1, 32, 32))
    assert [h.stage for h in out.heads] == [0, 1, 2]
    assert [tuple(h.features.shape[1:]) for h in out.heads] == [(8, 8, 8), (4, 16, 16), (2, 32, 32)]


def test_eu_nested_blocks_are_residual_and_plain_ones_are_not():
    assert type(EUNetPlusPlus(2, 1, 2, channels=SMALL).nested[0][0].conv).__name__ == "ResidualDoubleConv"
    assert type(UNetPlusPlus(2, 1, 2, channels=SMALL).nested[0][0].conv).__name__ == "DoubleConv"


def test_deconv_upsampling_option():
    net = UNetPlusPlus(3, 1, 2, channels=SMALL, upsample="deconv").eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 19, 26, 17)).shape == (1, 2, 19, 26, 17)
    with pytest.raises(ValueError, match="upsample must be one of"):
        NestedBlock(2, 8, 4, 1, 4, upsample="pixelshuffle")


def test_wrong_input_dims():
    with pytest.raises(ValueError, match="2D and expects"):
        small_unetpp(2, True)(torch.rand(1, 1, 16, 16, 16))


def test_paper_parameter_counts():
    # paper 000 Table 1: UN++ 9.16M, EUN++ 9.25M at widths 32-512, 1 input channel, 2 classes
    plain, eu = count_parameters(UNetPlusPlus(2, 1, 2)), count_parameters(EUNetPlusPlus(2, 1, 2))
    assert (plain, eu) == (9_159_138, 9_247_138)
    assert round(plain / 1e6, 2) == 9.16 and round(eu / 1e6, 2) == 9.25
    assert 0 < eu - plain < 100_000
    assert count_parameters(UNetPlusPlus(2, 1, 2, upsample="deconv")) == 9_045_282
