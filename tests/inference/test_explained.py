from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer, SlidingWindowInferer

from eunets_monai.explain.cam import mhex_cam
from eunets_monai.explain.gradcam import seg_grad_cam
from eunets_monai.inference.explained import ExplainedPredictor
from eunets_monai.networks.nets.unet import EUNet, UNet
from eunets_monai.uncertainty.baselines import softmax_entropy
from eunets_monai.uncertainty.collaboration import collaboration_gradient, collaboration_to_unit
from eunets_monai.uncertainty.single_pass import heads_mutual_information


def tiny(spatial_dims: int, mhex: bool = True) -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims, 1, 2, channels=(3, 4, 5), mhex=mhex).eval()


def test_channel_layout_and_parts_match_their_functions():
    net = tiny(2)
    x = torch.rand(2, 1, 10, 13)
    predictor = ExplainedPredictor(net)
    assert predictor.channel_slices == {"logits": slice(0, 2), "cam": slice(2, 4), "uncertainty": slice(4, 5)}
    with torch.no_grad():
        y = predictor(x)
        logits = net(x)
        cam = mhex_cam(net.forward_explained(x))
    assert y.shape == (2, 5, 10, 13) and not y.requires_grad
    torch.testing.assert_close(y[:, predictor.channel_slices["logits"]], logits)
    torch.testing.assert_close(y[:, predictor.channel_slices["cam"]], cam)
    torch.testing.assert_close(y[:, predictor.channel_slices["uncertainty"]], softmax_entropy(logits, normalize=True))
    assert all(p.grad is None for p in net.parameters())


def test_disabled_parts_are_left_out_and_exact_mode():
    net = tiny(2)
    x = torch.rand(1, 1, 6, 5)
    only_cam = ExplainedPredictor(net, uncertainty=None)
    only_unc = ExplainedPredictor(net, cam=False, uncertainty="collaboration_exact")
    plain = ExplainedPredictor(net, cam=False, uncertainty=None)
    assert only_cam.channel_slices == {"logits": slice(0, 2), "cam": slice(2, 4)}
    assert only_unc.channel_slices == {"logits": slice(0, 2), "uncertainty": slice(2, 3)}
    raw = ExplainedPredictor(net, uncertainty=None, cam_normalize="none")
    with torch.no_grad():
        assert only_cam(x).shape == (1, 4, 6, 5)
        torch.testing.assert_close(raw(x)[:, 2:], mhex_cam(net.forward_explained(x), normalize="none"))
        u = collaboration_gradient(net, x, mode="exact")
        torch.testing.assert_close(only_unc(x)[:, 2:], collaboration_to_unit(u, len(net.heads) - 1))
        torch.testing.assert_close(plain(x), net(x))


def test_plain_network_policy():
    plain = tiny(2, mhex=False)
    with pytest.raises(ValueError, match="no MHEX\\+ heads.*cam='gradcam'"):
        ExplainedPredictor(plain, uncertainty=None)
    with pytest.raises(ValueError, match="needs >= 2"):
        ExplainedPredictor(plain, cam="gradcam", uncertainty="heads_mi")
    predictor = ExplainedPredictor(plain, cam="gradcam", uncertainty=None)
    x = torch.rand(1, 1, 9, 8)
    with torch.no_grad():
        y = predictor(x)
    torch.testing.assert_close(y[:, 2:], seg_grad_cam(plain, x))
    torch.testing.assert_close(y[:, :2], plain(x))
    with pytest.raises(ValueError, match="cam must be"):
        ExplainedPredictor(tiny(2), cam="score-cam")
    with pytest.raises(ValueError, match="uncertainty must be"):
        ExplainedPredictor(tiny(2), uncertainty="mc")
    with pytest.raises(ValueError, match="cam_normalize"):
        ExplainedPredictor(tiny(2), cam_normalize="softmax")


def test_sliding_window_inferer_3d_volume_bigger_than_roi():
    net = tiny(3)
    predictor = ExplainedPredictor(net)
    volume = MetaTensor(torch.rand(1, 1, 19, 14, 12))
    inferer = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2, overlap=0.25)
    with torch.no_grad():  # as MONAI's evaluators and bundles run it
        y = inferer(volume, predictor)
        logits = inferer(volume, net)
    assert y.shape == (1, 5, 19, 14, 12)
    torch.testing.assert_close(torch.as_tensor(y[:, :2]), torch.as_tensor(logits), rtol=1e-4, atol=1e-5)
    rest = y[:, 2:]
    assert rest.min() >= 0 and rest.max() <= 1 + 1e-6 and rest[:, -1].std() > 0  # blends of [0, 1] maps


def test_slice_inferer_runs_a_2d_predictor_on_a_volume():
    net = tiny(2)
    predictor = ExplainedPredictor(net)
    volume = torch.rand(1, 1, 10, 9, 2)
    inferer = SliceInferer(roi_size=(8, 8), spatial_dim=2, sw_batch_size=2, overlap=0.25)
    with torch.no_grad():
        y = inferer(volume, predictor)
    assert y.shape == (1, 5, 10, 9, 2)
    assert y[:, 4].min() >= 0 and y[:, 4].max() <= 1


def test_eunet_in_predictor_keeps_eval_mode():
    net = EUNet(2, 1, 3, channels=(3, 4, 5, 6)).eval()
    with torch.no_grad():
        y = ExplainedPredictor(net)(torch.rand(1, 1, 16, 16))
    assert y.shape == (1, 7, 16, 16) and not net.training


def test_uncertainty_methods_and_their_unit_mappings():
    net = EUNet(2, 1, 3, channels=(3, 4, 5, 6)).eval()
    x = torch.rand(1, 1, 12, 10)
    with torch.no_grad():
        out = net.forward_explained(x)
        cold = ExplainedPredictor(net, cam=False, uncertainty="entropy", temperature=2.0)(x)[:, 3:]
        mi = ExplainedPredictor(net, cam=False, uncertainty="heads_mi")(x)[:, 3:]
        sketch = ExplainedPredictor(net, cam=False, uncertainty="collaboration", num_probes=8)(x)[:, 3:]
    torch.testing.assert_close(cold, softmax_entropy(out.logits / 2, normalize=True))
    torch.testing.assert_close(mi, heads_mutual_information(out, normalize=True))
    u = collaboration_gradient(net, x, mode="sketch", num_probes=8)
    torch.testing.assert_close(sketch, (u + 2) / 4)
    for m in (cold, mi, sketch):
        assert m.min() >= 0 and m.max() <= 1 and m.std() > 0
    with pytest.warns(FutureWarning, match="former name"):
        assert ExplainedPredictor(net, uncertainty="fast").uncertainty == "entropy"
    with pytest.raises(ValueError, match="temperature"):
        ExplainedPredictor(net, temperature=0)


def test_entropy_of_a_single_sigmoid_channel():
    net = UNet(2, 1, 1, channels=(3, 4, 5)).eval()  # plain network: entropy needs no heads
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        y = ExplainedPredictor(net, cam="gradcam")(x)
        p = torch.sigmoid(net(x))
    h = -(p * p.log() + (1 - p) * (1 - p).log()) / torch.log(torch.tensor(2.0))
    torch.testing.assert_close(y[:, 2:], h, rtol=1e-4, atol=1e-5)


def test_cam_classes_select_and_order_the_cam_channels():
    torch.manual_seed(0)
    net = EUNet(3, 1, 3, channels=(4, 8, 16)).eval()
    x = torch.rand(1, 1, 12, 16, 8)
    full = ExplainedPredictor(net, cam_normalize="none", uncertainty=None)
    fg = ExplainedPredictor(net, cam_normalize="none", uncertainty=None, cam_classes=range(1, 3))
    assert fg.channel_slices == {"logits": slice(0, 3), "cam": slice(3, 5)}
    torch.testing.assert_close(fg(x)[:, 3:5], full(x)[:, 4:6])
    with pytest.raises(ValueError, match="cam_classes must be class indices"):
        ExplainedPredictor(net, cam_classes=[3])
