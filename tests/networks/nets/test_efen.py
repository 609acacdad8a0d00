import pytest
import torch

from eunets_monai.networks.blocks.attention import SkipCrossAttention
from eunets_monai.networks.blocks.mhex import MHEXPlus
from eunets_monai.networks.nets.efen import EFEN, EUEFEN
from tests.networks.contract import check_all, count_parameters, pinned_output_stats, skip_attention_modes

SMALL = (4, 8, 16)


def small_efen(spatial_dims: int, mhex: bool) -> EFEN:
    return EFEN(spatial_dims, in_channels=1, out_channels=3, channels=SMALL, mhex=mhex)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_contract(spatial_dims):
    check_all(small_efen, spatial_dims)


def test_structure_two_unets_heads_on_final_decoder():
    net = EUEFEN(2, 1, 2, channels=SMALL)
    assert len(net.decoder1) == len(net.decoder2) == len(net.heads) == len(SMALL) - 1
    assert len(net.fusions) == len(SMALL) - 1  # every E2 level with a D1 output of its size
    out = net.eval().forward_explained(torch.rand(1, 1, 24, 40))
    # heads see D2's stages, deepest first, at the decoder's widths
    assert [h.features.shape[1] for h in out.heads] == list(SMALL[-2::-1])


def test_first_unet_reaches_output_through_reextraction():
    # D1 feeds D2 only through E2's fusions (eq. 3): its first stage must still move the logits
    torch.manual_seed(0)
    net = EFEN(2, 1, 2, channels=SMALL).eval()
    x = torch.rand(1, 1, 16, 16)
    w = net.decoder1[0].up.conv.conv_0.conv.weight
    (g,) = torch.autograd.grad(net(x).sum(), w)
    assert g.abs().sum() > 0


def test_heads_option_and_sequence_encoding():
    net = EFEN(3, 2, 2, channels=SMALL, num_heads=2, pe_mode="sequence").eval()
    with torch.no_grad():
        assert net(torch.rand(1, 2, 9, 12, 10)).shape == (1, 2, 9, 12, 10)
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        EFEN(2, 1, 2, channels=SMALL, num_heads=3)


def test_parameter_counts_at_paper_setting():
    # no entry in paper 000's Table 1; the count of this reading of paper 003 at widths 32-512, 1 channel, 2 classes
    plain, eu = EFEN(2, 1, 2), EUEFEN(2, 1, 2)
    assert count_parameters(plain) == 24_239_490
    assert 0 < count_parameters(eu) - count_parameters(plain) < 100_000


# Outputs of the code before the ``attention`` option existed (seed 0, widths 4-8-16): the papers' global attention
# must stay bit-for-bit the same by default in 2D, and when asked for explicitly in 3D.
PINNED = {
    (2, False): [21.007431, 4.64465, 0.481431],
    (2, True): [34.812079, 71.83052, 0.565665],
    (3, False): [66.21031, 15.198048, 1.798138],
    (3, True): [111.947489, 230.513612, 3.060951],
}


@pytest.mark.parametrize("spatial_dims,mhex", list(PINNED))
def test_outputs_unchanged_for_the_papers_attention(spatial_dims, mhex, monkeypatch):
    # the pins predate the identity start of the heads' Conv1: build them with PyTorch's default, as then
    monkeypatch.setattr(MHEXPlus, "_init_conv1", lambda self, init: None)
    attention = {} if spatial_dims == 2 else {"attention": "global"}
    torch.manual_seed(0)
    net = EFEN(spatial_dims, 1, 2, channels=SMALL, mhex=mhex, num_heads=1, **attention)
    assert pinned_output_stats(net, spatial_dims) == pytest.approx(PINNED[(spatial_dims, mhex)], rel=1e-4, abs=1e-5)


def test_attention_option_defaults_global_in_2d_reduced_in_3d():
    modes = {sd: skip_attention_modes(EFEN(sd, 1, 2, channels=SMALL, num_heads=1)) for sd in (2, 3)}
    assert modes == {2: {"global"}, 3: {"reduced"}}
    net = EFEN(3, 1, 2, channels=SMALL, num_heads=1, attention="global", kv_size=3)
    assert {(m.attention, m.kv_size) for m in net.modules() if isinstance(m, SkipCrossAttention)} == {("global", 3)}
    with pytest.raises(ValueError, match="attention must be"):
        EFEN(3, 1, 2, channels=SMALL, num_heads=1, attention="swin")
