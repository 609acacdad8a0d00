"""
MONAI's own bundle checks for every bundle, offline: ``verify_metadata`` against the schema shipped in
``bundles/_shared``, ``verify_net_in_out`` and ``ckpt_export`` (TorchScript by tracing: the EU-Net forward is
Python control flow over heads, which ``torch.jit.script`` does not take).
"""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from eunets_monai.data import presets
from eunets_monai.engine.optim import default_head_lr
from eunets_monai.engine.precision import AutocastInferer
from tests.bundles.helpers import ALL_VARIANTS, BUNDLE_NAMES, SCHEMA, cli, configs

# Four levels: the transformer bottleneck stays small. verify_net_in_out runs on 32^3 (32^2 for a 2D network)
# instead of the patch of metadata.json (2 CPU cores).
NET = {"network_def#channels": [8, 16, 32, 64]}
VARIANTS = {v.name: v for v in ALL_VARIANTS}


def net_io(bundle: str) -> dict:
    return {**NET, "_meta_#network_data_format#inputs#image#spatial_shape": [32] * VARIANTS[bundle].spatial_dims}


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_verify_metadata(bundle):
    verify_metadata(meta_file=str(configs(bundle) / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((configs(bundle) / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["channel_def"] == {"0": "image"}
    assert fmt["outputs"]["pred"]["channel_def"] == presets.get_task(VARIANTS[bundle].task).channel_def
    assert {"version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task"} <= set(meta)


def test_verify_metadata_cli_offline_and_rejects_a_broken_file(tmp_path):
    meta = configs("eunet_spleen") / "metadata.json"
    ok = cli(["verify_metadata", "--meta_file", meta, "--filepath", SCHEMA], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    broken = json.loads(meta.read_text())
    del broken["network_data_format"]
    bad_file = tmp_path / "metadata.json"
    bad_file.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(bad_file), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_verify_net_in_out(bundle):
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs(bundle) / "metadata.json"),
        config_file=str(configs(bundle) / "inference.json"),
        **net_io(bundle),
    )


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_ckpt_export_torchscript_matches_eager(bundle, tmp_path):
    inference = str(configs(bundle) / "inference.json")
    parser = ConfigParser()
    parser.read_config(inference)
    parser.update(NET)
    net = parser.get_parsed_content("network_def")
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial weights and BatchNorm statistics
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(ckpt),
        meta_file=str(configs(bundle) / "metadata.json"),
        config_file=inference,
        use_trace=True,
        input_shape=[1, 1] + [16] * VARIANTS[bundle].spatial_dims,
        **NET,
    )
    exported = torch.jit.load(str(ts))
    x = torch.rand(1, 1, *[16] * VARIANTS[bundle].spatial_dims)
    with torch.no_grad():
        expected = net.eval()(x)
        got = exported(x)
    assert got.shape == (1, net.out_channels, *x.shape[2:])
    # 1e-3: the traced graph may take another scaled-dot-product-attention kernel than eager mode (float32 rounding
    # differs in a few of EFEN's voxels, up to ~5e-4 of the logits' range, larger since the heads start as the
    # identity); a wrong export differs by orders of magnitude more.
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * scale)


def test_mhex_false_gives_the_plain_baseline():
    parser = ConfigParser()
    parser.read_config(str(configs("eunet_hippocampus") / "inference.json"))
    parser.update({"network_def#channels": [8, 16]})
    net = parser.get_parsed_content("network_def")
    assert net.out_channels == 3 and net.heads is not None
    parser.update({"mhex": False})
    plain = parser.get_parsed_content("network_def", lazy=False)
    assert plain.heads is None and plain.spatial_dims == net.spatial_dims


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_train_config_gives_the_heads_their_rate_and_autocasts_both_engines(bundle):
    parser = ConfigParser()
    parser.read_config(str(configs(bundle) / "train.json"))
    parser.update({"network_def#channels": [8, 16, 32, 64], "device": "$torch.device('cpu')", "learning_rate": 2e-3})
    net, opt = parser.get_parsed_content("network_def"), parser.get_parsed_content("optimizer")
    rate = default_head_lr(VARIANTS[bundle].spatial_dims)
    assert parser.get_parsed_content("head_lr") == rate
    if rate == 1.0:  # one group at the full rate
        assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == pytest.approx(2e-3)
    else:
        body, heads = opt.param_groups
        assert heads["lr"] == pytest.approx(2e-3 * rate) and body["lr"] == pytest.approx(2e-3)
        assert {id(p) for p in heads["params"]} == {id(p) for p in net.heads.parameters()}
    for key in ("train#inferer", "validate#inferer"):
        inferer = parser.get_parsed_content(key)
        assert isinstance(inferer, AutocastInferer) and inferer.precision == "auto", key
    assert parser.get_parsed_content("precision") == "auto"
    # 2D bundles train channels-last (faster on CPUs), 3D ones in the default format
    weight = parser.get_parsed_content("network").output_conv.weight
    fmt = torch.channels_last if VARIANTS[bundle].spatial_dims == 2 else torch.contiguous_format
    assert weight.is_contiguous(memory_format=fmt)
