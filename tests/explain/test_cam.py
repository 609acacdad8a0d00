from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from eunets_monai.explain.cam import head_cam, mhex_cam, minmax_normalize, stage_cams
from eunets_monai.networks.blocks.mhex import MHEXPlus
from eunets_monai.networks.nets.unet import EUNet, UNet

SHAPES = {2: (11, 14), 3: (7, 10, 6)}  # odd sizes: the net pads internally and crops back


def tiny_eunet(spatial_dims: int, classes: int = 3) -> EUNet:
    torch.manual_seed(0)
    net = EUNet(spatial_dims, 1, classes, channels=(3, 4, 5)).eval()
    for head in net.heads:  # random W1: with the identity start W_equiv = W2 would hide a mixed-up product
        head.reset_parameters("default")
    return net


def direct_cam(head: MHEXPlus, features: torch.Tensor) -> torch.Tensor:
    """CAM_c(p) = sum_j (sum_i W2[c, i] W1[i, j]) A[j, p], one pixel at a time from the raw weights."""
    w1 = head.conv1.weight.flatten(1).tolist()
    w2 = head.conv2.weight.flatten(1).tolist()
    b, c_in, *spatial = features.shape
    k, c_mid = len(w2), len(w1)
    out = torch.zeros(b, k, *spatial, dtype=features.dtype)
    for n, c in itertools.product(range(b), range(k)):
        for p in itertools.product(*(range(s) for s in spatial)):
            a = features[(n, slice(None), *p)].tolist()
            out[(n, c, *p)] = sum(w2[c][i] * w1[i][j] * a[j] for i in range(c_mid) for j in range(c_in))
    return out


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_stage_cams_equal_direct_loop(spatial_dims):
    net = tiny_eunet(spatial_dims)
    with torch.no_grad():  # no backward pass is needed: the CAM comes from the forward pass alone
        out = net.forward_explained(torch.rand(2, 1, *SHAPES[spatial_dims]))
        cams = stage_cams(out)
    assert len(cams) == len(out.heads) == 2
    for cam, h in zip(cams, out.heads):
        assert cam.shape == (2, 3, *h.features.shape[2:])
        torch.testing.assert_close(cam, direct_cam(h.head, h.features), rtol=1e-4, atol=1e-5)


def test_equivalent_kernel_composes_kxk_kernels():
    head = MHEXPlus(2, 4, 3)
    # A k x k Conv1: the composed kernel applied once equals Conv2(Conv1(A)) without the ReLU.
    head.conv1 = nn.Conv2d(4, 4, kernel_size=3, padding=1, bias=False)
    a = torch.rand(2, 4, 9, 7)
    assert head.equivalent_kernel().shape == (3, 4, 3, 3)
    torch.testing.assert_close(head_cam(head, a), head.conv2(head.conv1(a)), rtol=1e-4, atol=1e-5)
    head3 = MHEXPlus(3, 4, 2)
    head3.conv1 = nn.Conv3d(4, 4, kernel_size=3, padding=1, bias=False)
    a3 = torch.rand(1, 4, 5, 6, 4)
    torch.testing.assert_close(head_cam(head3, a3), head3.conv2(head3.conv1(a3)), rtol=1e-4, atol=1e-5)
    head.conv2 = nn.Conv2d(4, 3, kernel_size=3, bias=False)
    with pytest.raises(ValueError, match="1x1 Conv2"):
        head.equivalent_kernel()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mhex_cam_shape_range_and_definition(spatial_dims):
    net = tiny_eunet(spatial_dims)
    x = torch.rand(2, 1, *SHAPES[spatial_dims])
    with torch.no_grad():
        out = net.forward_explained(x)
        cam = mhex_cam(out)
        raw = mhex_cam(out, normalize="none")
    assert cam.shape == raw.shape == (2, 3, *SHAPES[spatial_dims])
    assert cam.min() >= 0 and cam.max() <= 1
    # every (image, class) map either spans [0, 1] or is all zero
    flat = cam.flatten(2)
    assert torch.all(((flat.amax(-1) - 1).abs() < 1e-6) | (flat.amax(-1) == 0))
    assert ((flat.amax(-1) - 1).abs() < 1e-6).any()
    resized = [out.to_output_grid(c) for c in stage_cams(out)]
    torch.testing.assert_close(raw, sum(resized))
    # the documented pipeline, written out: ReLU -> min-max per stage -> mean -> min-max
    expected = torch.zeros_like(cam)
    for n, c in itertools.product(range(2), range(3)):
        stages = []
        for r in resized:
            m = r[n, c].clamp_min(0)
            stages.append((m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else torch.zeros_like(m))
        mean = sum(stages) / len(stages)
        expected[n, c] = (mean - mean.min()) / (mean.max() - mean.min()) if mean.max() > mean.min() else 0
    torch.testing.assert_close(cam, expected, rtol=1e-4, atol=1e-5)


def test_minmax_normalize_constant_map_is_zero():
    x = torch.stack([torch.full((4, 4), 3.0), torch.arange(16.0).view(4, 4)]).unsqueeze(0)
    y = minmax_normalize(x)
    assert torch.equal(y[0, 0], torch.zeros(4, 4))
    assert y[0, 1].min() == 0 and y[0, 1].max() == 1


def test_errors():
    plain = UNet(2, 1, 2, channels=(3, 4, 5)).eval()
    with torch.no_grad():
        out = plain.forward_explained(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="MHEX"):
        stage_cams(out)
    with torch.no_grad():
        out = tiny_eunet(2).forward_explained(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="normalize"):
        mhex_cam(out, normalize="softmax")


@pytest.mark.parametrize("normalize", ["none", "minmax"])
def test_class_subset_equals_the_same_channels_of_the_full_cam(normalize):
    net = tiny_eunet(3, classes=3)
    with torch.no_grad():
        out = net.forward_explained(torch.rand(2, 1, *SHAPES[3]))
        full, fg = mhex_cam(out, normalize), mhex_cam(out, normalize, classes=[1, 2])
        swapped = mhex_cam(out, normalize, classes=[2, 0])
    torch.testing.assert_close(fg, full[:, 1:])
    torch.testing.assert_close(swapped, full[:, [2, 0]])
