from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.visualize import GradCAM

from eunets_monai.explain.gradcam import SegGradCAM, seg_grad_cam
from eunets_monai.networks.nets.unet import EUNet, UNet


def tiny_net(spatial_dims: int, mhex: bool, classes: int = 3) -> UNet:
    torch.manual_seed(1)
    return UNet(spatial_dims, 1, classes, channels=(3, 4, 5), mhex=mhex).eval()


def manual_seg_grad_cam(net, x, layer, c):
    """Seg-Grad-CAM written out with plain autograd: score = logits of c summed over the pixels predicted as c."""
    store = {}
    handle = layer.register_forward_hook(lambda _m, _a, out: store.update(a=out))
    with torch.enable_grad():
        logits = net(x)
        handle.remove()
        region = logits.argmax(1) == c
        score = sum(logits[b, c][region[b]].sum() for b in range(x.shape[0]))
        (grad,) = torch.autograd.grad(score, store["a"])
    weights = grad.mean(dim=tuple(range(2, grad.ndim)), keepdim=True)
    cam = torch.relu((weights * store["a"]).sum(1, keepdim=True)).detach()
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False), region


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mhex", [False, True])
def test_target_is_logits_summed_over_predicted_region(spatial_dims, mhex):
    net = tiny_net(spatial_dims, mhex)
    shape = (16, 12) if spatial_dims == 2 else (8, 8, 4)  # multiples of 4: no internal padding
    x = torch.rand(2, 1, *shape)
    layer = net.up_blocks[0]
    for c in range(3):
        expected, region = manual_seg_grad_cam(net, x, layer, c)
        got = seg_grad_cam(net, x, target_layer="up_blocks.0", class_idx=c, normalize="none")
        assert got.shape == (2, 1, *shape)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in net.parameters())  # autograd.grad on activations only
    assert not layer._forward_hooks  # the hook is removed


def test_whole_image_region_equals_monai_gradcam():
    """With M_c = every pixel, Seg-Grad-CAM is MONAI's GradCAM (without its normaliser)."""
    net = tiny_net(2, mhex=True)
    x = torch.rand(1, 1, 16, 16)
    ones = torch.ones(1, 3, 16, 16, dtype=torch.bool)
    ours = seg_grad_cam(net, x, target_layer="up_blocks.1", class_idx=2, region=ones, normalize="none")
    monai = GradCAM(net, target_layers="up_blocks.1", postprocessing=lambda t: t)(x, class_idx=2)
    torch.testing.assert_close(ours, monai, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_range_default_layer_and_no_grad(spatial_dims):
    shape = (13, 10) if spatial_dims == 2 else (5, 7, 6)  # odd sizes: maps come back on the input grid
    for mhex in (False, True):
        net = tiny_net(spatial_dims, mhex)
        x = torch.rand(2, 1, *shape)
        with torch.no_grad():  # inferers run like this; Grad-CAM switches gradients on itself
            cam = SegGradCAM(net)(x)
            one = SegGradCAM(net, net.up_blocks[1])(x, class_idx=1)
            maps, logits = SegGradCAM(net, "up_blocks.1.conv").explain(x, class_idx=[0, 2])
        assert cam.shape == (2, 3, *shape) and one.shape == (2, 1, *shape) and maps.shape == (2, 2, *shape)
        for m in (cam, one, maps):
            assert m.min() >= 0 and m.max() <= 1 and not m.requires_grad
        assert cam.flatten(2).amax(-1).max() == pytest.approx(1.0)
        torch.testing.assert_close(logits, net(x))


def test_default_layer_crops_internal_padding():
    """Odd sizes: the layer's map lives on the padded grid, so it is resized to that grid and cropped."""
    net = tiny_net(2, mhex=False)
    x = torch.rand(1, 1, 13, 10)  # padded to 16 x 12 inside
    got = seg_grad_cam(net, x, class_idx=0, normalize="none")
    full = manual_seg_grad_cam_on_padded(net, x, 0)
    torch.testing.assert_close(got, full[..., 1:14, 1:11], rtol=1e-4, atol=1e-6)


def manual_seg_grad_cam_on_padded(net, x, c):
    """The default target (the output conv's input) on the padded grid, region from the cropped logits."""
    store = {}
    handle = net.output_conv.register_forward_pre_hook(lambda _m, args: store.update(a=args[0]))
    with torch.enable_grad():
        logits = net(x)
        handle.remove()
        a = store["a"]
        full_logits = net.output_conv(a)[..., 1:14, 1:11]
        region = logits.argmax(1) == c
        (grad,) = torch.autograd.grad((full_logits[:, c] * region).sum(), a)
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()


def test_label_region_and_errors():
    net = tiny_net(2, mhex=True)
    x = torch.rand(1, 1, 8, 8)
    empty = torch.zeros(1, 1, 8, 8, dtype=torch.long)  # no pixel labelled 2: the class-2 map is all zero
    cam = seg_grad_cam(net, x, target_layer="up_blocks.1", region=empty)
    assert torch.equal(cam[:, 2], torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="no submodule"):
        SegGradCAM(net, "decoder.7")
    with pytest.raises(ValueError, match="out of range"):
        seg_grad_cam(net, x, class_idx=3)
    with pytest.raises(ValueError, match="region"):
        seg_grad_cam(net, x, region=torch.zeros(1, 1, 4, 4))
    with pytest.raises(TypeError, match="one tensor"):
        seg_grad_cam(net, x, target_layer="heads.0")  # MHEX+ returns a tuple


def test_eunet_default_layer_runs():
    net = EUNet(3, 1, 2, channels=(3, 4, 5)).eval()
    assert seg_grad_cam(net, torch.rand(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
