"""
The attention bundles at their own 3D patch (metadata.json: 96^3): every skip attention attends to a bounded set of
keys (at most 8^3 pooled cells), so the cost grows linearly with the voxels and ``verify_net_in_out`` or sliding-
window inference take seconds on a CPU instead of minutes (issue 13). Timings and peak memory are measured by
``scripts/benchmark_networks.py --attention-3d``, not here; this checks the shapes that set the cost.
"""

from __future__ import annotations

import math

import pytest
from monai.bundle import ConfigParser, verify_net_in_out

from eunets_monai.networks.blocks import attention
from tests.bundles.helpers import ALL_VARIANTS, configs

VARIANTS = {v.name: v for v in ALL_VARIANTS}
ATTENTION_BUNDLES = [n for n, v in VARIANTS.items() if "attention" in v.arch.network_kwargs and v.spatial_dims == 3]
# Five levels as in the bundles, narrow widths (8 heads of width 1) so the 96^3 convs stay cheap on 2 CPU cores.
NARROW = {"network_def#channels": [8, 8, 8, 8, 8]}


def test_the_attention_bundles_are_the_transformer_and_efen():
    assert {"efen_eu_spleen", "eunet_transformer_spleen"} <= set(ATTENTION_BUNDLES)
    assert {VARIANTS[n].arch.prefix for n in ATTENTION_BUNDLES} == {"efen_eu", "eunet_transformer"}


@pytest.mark.parametrize("bundle", ATTENTION_BUNDLES)
def test_verify_net_in_out_at_the_bundle_patch_attends_to_bounded_keys(bundle, monkeypatch):
    calls = []
    exact = attention.multihead_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q.shape[1], k.shape[1]))
        return exact(q, k, v, *args, **kwargs)

    monkeypatch.setattr(attention, "multihead_attention", spy)
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs(bundle) / "metadata.json"),
        config_file=str(configs(bundle) / "inference.json"),
        **NARROW,
    )
    finest = math.prod(p // 2 for p in VARIANTS[bundle].patch_size)
    assert max(n for n, _ in calls) == finest, "the finest skip has half the patch's edge"
    assert max(m for _, m in calls) <= 8**3, "no attention may have more keys than the pooled 8^3 grid"


@pytest.mark.parametrize("bundle", ATTENTION_BUNDLES)
def test_attention_override_and_2d_keep_the_papers_global_attention(bundle):
    def modes(**overrides) -> set[str]:
        parser = ConfigParser()
        parser.read_config(str(configs(bundle) / "inference.json"))
        parser.update({"channels": [8, 16, 32], **overrides})
        net = parser.get_parsed_content("network_def")
        return {m.attention for m in net.modules() if isinstance(m, attention.SkipCrossAttention)}

    assert modes() == {"reduced"}
    assert modes(attention="global") == {"global"}
    assert modes(spatial_dims=2) == {"global"}
