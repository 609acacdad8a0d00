from __future__ import annotations

import math

import pytest
import torch

from eunets_monai.engine.losses import (
    LOSSES,
    BCEDiceLoss,
    CrossEntropyLoss,
    EUDeepSupervisionLoss,
    ds_warmup_scale,
    get_loss,
)
from eunets_monai.engine.outputs import final_output
from eunets_monai.networks.nets.unet import EUNet


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce_dice_direct(logits: torch.Tensor, label: torch.Tensor, include_background: bool = True) -> float:
    """Paper 003 eqs. 10-11 voxel by voxel: L = L_bce + L_dice, theta = 1, per image and class, then averaged."""
    b, k = logits.shape[:2]
    voxels = logits[0, 0].numel()
    classes = range(0 if include_background or k == 1 else 1, k)
    bce_terms, dice_terms = [], []
    for n in range(b):
        for c in classes:
            p = [sigmoid(v) for v in logits[n, c].flatten().tolist()]
            lab = label[n, 0].flatten().tolist()
            g = [float(v) for v in lab] if k == 1 else [1.0 if int(v) == c else 0.0 for v in lab]
            for pi, gi in zip(p, g):
                bce_terms.append(-(gi * math.log(pi) + (1 - gi) * math.log(1 - pi)))
            num = 2 * sum(pi * gi for pi, gi in zip(p, g)) + 1.0
            den = sum(pi * pi for pi in p) + sum(gi * gi for gi in g) + 1.0
            dice_terms.append(1 - num / den)
    assert len(bce_terms) == b * len(classes) * voxels
    return sum(bce_terms) / len(bce_terms) + sum(dice_terms) / len(dice_terms)


def ce_direct(logits: torch.Tensor, label: torch.Tensor) -> float:
    b, k = logits.shape[:2]
    terms = []
    for n in range(b):
        flat = logits[n].reshape(k, -1)
        for i, y in enumerate(label[n, 0].flatten().tolist()):
            z = flat[:, i].tolist()
            terms.append(-(z[int(y)] - math.log(sum(math.exp(v) for v in z))))
    return sum(terms) / len(terms)


def soft_dice_direct(logits: torch.Tensor, label: torch.Tensor) -> float:
    """MONAI DiceLoss(softmax, one-hot, smooth 1e-5): 1 - (2 sum p g + s) / (sum p + sum g + s), mean over (b, c)."""
    probs = torch.softmax(logits.double(), dim=1)
    b, k = logits.shape[:2]
    terms = []
    for n in range(b):
        for c in range(k):
            p = probs[n, c].flatten().tolist()
            g = [1.0 if int(v) == c else 0.0 for v in label[n, 0].flatten().tolist()]
            terms.append(1 - (2 * sum(a * q for a, q in zip(p, g)) + 1e-5) / (sum(p) + sum(g) + 1e-5))
    return sum(terms) / len(terms)


@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g) * 2
    label = torch.randint(0, 3, (2, 1, 4, 5), generator=g)
    return logits, label


@pytest.mark.parametrize("include_background", [True, False])
def test_bcedice_matches_paper_equations(tiny, include_background):
    logits, label = tiny
    expected = bce_dice_direct(logits, label, include_background)
    got = BCEDiceLoss(include_background=include_background)(logits, label)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    via_factory = get_loss("bcedice", deep_supervision=False, include_background=include_background)(logits, label)
    assert via_factory.item() == pytest.approx(expected, rel=1e-5)


def test_bcedice_single_channel_binary():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 6, 2, generator=g)
    label = torch.randint(0, 2, (3, 1, 6, 2), generator=g)
    assert BCEDiceLoss()(logits, label).item() == pytest.approx(bce_dice_direct(logits, label), rel=1e-5)
    # theta = 1 keeps an empty prediction of an empty mask finite and small
    empty = BCEDiceLoss()(torch.full((1, 1, 4, 4), -30.0), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    assert 0 <= empty.item() < 1e-6


def test_ce_and_dice_match_direct(tiny):
    logits, label = tiny
    assert CrossEntropyLoss()(logits, label).item() == pytest.approx(ce_direct(logits, label), rel=1e-5)
    assert get_loss("ce", False)(logits, label).item() == pytest.approx(ce_direct(logits, label), rel=1e-5)
    assert get_loss("dice", False)(logits, label).item() == pytest.approx(soft_dice_direct(logits, label), rel=1e-5)
    dicece = get_loss("dicece", False)(logits, label).item()
    assert dicece == pytest.approx(soft_dice_direct(logits, label) + ce_direct(logits, label), rel=1e-5)
    focal = get_loss("focal", False)(logits, label)
    assert torch.isfinite(focal) and 0 < focal.item() < ce_direct(logits, label)


@pytest.mark.parametrize(
    ("weight_mode", "weights", "expected"),
    [
        ("exp", None, [1.0, 0.5, 0.25, 0.125, 0.0625, 0.0625]),
        ("two", None, [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]),
        ("same", None, [1.0] * 6),
        ("exp", [1.0, 0.3, 0.2, 0.1, 0.0, 0.0], [1.0, 0.3, 0.2, 0.1, 0.0, 0.0]),
    ],
)
@pytest.mark.parametrize("name", LOSSES)
def test_deep_supervision_weights(tiny, name, weight_mode, weights, expected):
    logits, label = tiny
    g = torch.Generator().manual_seed(2)
    preds = [logits] + [torch.randn(logits.shape, generator=g) for _ in range(5)]
    base = get_loss(name, deep_supervision=False)
    direct = sum(w * base(p, label).item() for w, p in zip(expected, preds))
    loss = get_loss(name, weight_mode=weight_mode, weights=weights)
    assert loss(preds, label).item() == pytest.approx(direct, rel=1e-5)
    # a plain tensor (eval-mode output or a network without heads) is the final output alone
    assert loss(logits, label).item() == pytest.approx(base(logits, label).item(), rel=1e-6)
    # deep_supervision=False ignores the heads of a training list
    assert base(preds, label).item() == pytest.approx(base(logits, label).item(), rel=1e-6)


def test_lower_resolution_head_gets_resized_integer_target(tiny):
    logits, label = tiny
    label = label.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # (2, 1, 8, 10)
    full = logits.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    loss = get_loss("dicece")
    base = get_loss("dicece", deep_supervision=False)
    # the head at half resolution sees the nearest-resized label, i.e. the original tiny label
    expected = base(full, label).item() + 0.5 * base(logits, tiny[1]).item()
    assert loss([full, logits], label).item() == pytest.approx(expected, rel=1e-5)


def test_bad_targets(tiny):
    logits, label = tiny
    onehot = torch.nn.functional.one_hot(label[:, 0], 3).permute(0, 3, 1, 2)
    for name in LOSSES:
        with pytest.raises(ValueError, match=r"class map \(B, 1, \*S\)"):
            get_loss(name)(logits, onehot)
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("jaccard")
    with pytest.raises(ValueError, match="weight_mode"):
        get_loss("dice", weight_mode="linear")
    with pytest.raises(ValueError, match="empty"):
        final_output([])


def test_final_output():
    a, b = torch.zeros(1), torch.ones(1)
    assert final_output([a, b]) is a and final_output((b, a)) is b and final_output(a) is a


def _tiny_problem():
    torch.manual_seed(0)
    net = EUNet(2, 1, 3, channels=(4, 8, 16)).train()
    x = torch.randn(2, 1, 16, 16)
    y = (x > 0.5).long() + (x > 1.2).long()  # a learnable 3-class map of the image
    return net, x, y


@pytest.mark.parametrize("name", LOSSES)
def test_every_head_gets_gradient(name):
    net, x, y = _tiny_problem()
    loss_fn = get_loss(name)
    assert isinstance(loss_fn, EUDeepSupervisionLoss)
    loss_fn(net(x), y).backward()
    assert len(net.heads) == 2
    assert all(float(h.conv2.weight.grad.abs().sum()) > 0 for h in net.heads)


def test_eunet_training_lowers_loss():
    net, x, y = _tiny_problem()
    loss_fn = get_loss("bcedice")
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("head_scale", [0.0, 0.37, 1.0])
def test_head_scale_multiplies_only_the_heads_weights(tiny, head_scale):
    logits, label = tiny
    g = torch.Generator().manual_seed(3)
    preds = [logits] + [torch.randn(logits.shape, generator=g) for _ in range(3)]
    base = get_loss("dicece", deep_supervision=False)
    direct = base(preds[0], label).item() + sum(
        head_scale * w * base(p, label).item() for w, p in zip([0.5, 0.25, 0.125], preds[1:])
    )
    loss = get_loss("dicece")
    loss.head_scale = head_scale
    assert loss(preds, label).item() == pytest.approx(direct, rel=1e-5)


def test_ds_warmup_scale_is_a_linear_ramp_from_zero():
    # direct: (iteration - 1) / warmup, capped at 1; ignite counts iterations from 1
    assert [ds_warmup_scale(i, 4) for i in range(1, 8)] == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1, 1])
    assert ds_warmup_scale(1, 0) == 1.0 and ds_warmup_scale(500, 0) == 1.0
    with pytest.raises(ValueError, match="warmup_iters"):
        ds_warmup_scale(1, -1)
