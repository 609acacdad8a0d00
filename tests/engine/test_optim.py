"""The heads' learning rate: parameter groups and schedules that keep their ratio."""

from __future__ import annotations

import pytest
import torch

from eunets_monai.engine.optim import default_head_lr, param_groups
from eunets_monai.networks import get_network


def _net(mhex: bool = True):
    return get_network("unet", spatial_dims=2, in_channels=1, out_channels=3, channels=[4, 8, 16], mhex=mhex)


def test_heads_get_their_own_rate_and_every_parameter_is_in_one_group():
    net = _net()
    groups = param_groups(net, lr=2e-3, head_lr=0.1)
    assert [g["lr"] for g in groups] == pytest.approx([2e-3, 2e-4]) and [g["lr_scale"] for g in groups] == [1, 0.1]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters()) and len(set(ids)) == len(ids)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.heads.parameters()}


def test_one_group_for_plain_networks_and_head_lr_1():
    assert len(param_groups(_net(mhex=False), 1e-3, head_lr=0.1)) == 1
    assert len(param_groups(_net(), 1e-3, head_lr=1.0)) == 1
    with pytest.raises(ValueError, match="head_lr"):
        param_groups(_net(), 1e-3, head_lr=0.0)


def test_adam_steps_the_heads_at_their_rate_and_plateau_keeps_the_ratio():
    net = _net()
    opt = torch.optim.Adam(param_groups(net, lr=1e-2, head_lr=0.1))
    w0 = net.heads[0].conv2.weight.detach().clone()
    net.train()
    x, y = torch.rand(2, 1, 16, 16), torch.randint(0, 3, (2, 16, 16))
    loss = sum(torch.nn.functional.cross_entropy(o, y) for o in net(x))
    loss.backward()
    opt.step()
    # Adam's first step moves each weight by lr * sign(grad) (up to eps): the heads' rate here
    step = (net.heads[0].conv2.weight.detach() - w0).abs()
    assert step[step > 0].max().item() == pytest.approx(1e-3, rel=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)
    sched.step(1.0)
    sched.step(0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-3, 5e-4])


def test_default_head_lr_by_dimensionality():
    assert default_head_lr(2) == 0.01 and default_head_lr(3) == 1.0
    with pytest.raises(ValueError, match="spatial_dims"):
        default_head_lr(1)
