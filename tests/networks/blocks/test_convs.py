import torch

from eunets_monai.networks.blocks.convs import DoubleConv, ResidualDoubleConv, center_crop_to


def test_residual_block_adds_no_parameters():
    plain, residual = DoubleConv(2, 8, 4), ResidualDoubleConv(2, 8, 4)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in residual.parameters())


def test_residual_block_is_identity_shortcut_around_second_conv():
    block = ResidualDoubleConv(3, 2, 4, norm=None).eval()
    x = torch.randn(1, 2, 5, 6, 7)
    h = block.conv_0(x)
    torch.testing.assert_close(block(x), torch.relu(block.conv_1(h) + h))


def test_unpadded_double_conv_trims_two_per_side():
    assert DoubleConv(2, 1, 4, padding=False)(torch.rand(1, 1, 20, 17)).shape == (1, 4, 16, 13)


def test_center_crop():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    torch.testing.assert_close(center_crop_to(x, (2, 4)), x[:, :, 2:4, 1:5])
