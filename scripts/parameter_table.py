"""
Print the parameter table of all ten networks at the paper's 2D setting (widths 32-64-128-256-512, 1 input
channel, 2 classes) beside paper 000's Table 1, as Markdown (the README's table is this script's output;
tests/scripts/test_parameter_table.py keeps them in sync).

    python scripts/parameter_table.py
"""

from __future__ import annotations

from eunets_monai.networks import NETWORKS, get_network

# Paper 000, Table 1 (millions of parameters); EFEN is not in it.
PAPER = {
    "unet": ("UN", 7.76, "EUN", 7.85),
    "unetplusplus": ("UN++", 9.16, "EUN++", 9.25),
    "ahf_unet": ("AHF-UN", 9.86, "AHF-EUN", 9.95),
    "unet_transformer": ("UN-T", 9.42, "EUN-T", 9.51),
    "efen": ("EFEN", None, "EU-EFEN", None),
}


def count(name: str, mhex: bool) -> int:
    net = get_network(name, spatial_dims=2, in_channels=1, out_channels=2, mhex=mhex)
    return sum(p.numel() for p in net.parameters())


def gap(ours: float, paper: float | None) -> str:
    return "n/a" if paper is None else f"{100 * (ours - paper) / paper:+.1f}%"


def millions(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}M"


def table() -> str:
    lines = [
        "| network | ours | paper (Table 1) | gap | MHEX+ adds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in NETWORKS:
        plain_label, plain_paper, eu_label, eu_paper = PAPER[name]
        plain, eu = count(name, False) / 1e6, count(name, True) / 1e6
        lines.append(f"| {plain_label} | {plain:.2f}M | {millions(plain_paper)} | {gap(plain, plain_paper)} | |")
        lines.append(f"| {eu_label} | {eu:.2f}M | {millions(eu_paper)} | {gap(eu, eu_paper)} | {eu - plain:.3f}M |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
