"""
Benchmark (not a test): for every architecture, parameters and the EU/plain ratios of forward time and of one
training step, measured side by side in one run (interleaved repetitions, medians).

Goals (issue 2): forward ratio <= 1.10, training-step ratio <= 1.15.

    python scripts/benchmark_networks.py                 # paper 2D setting, 1x1x128x128
    python scripts/benchmark_networks.py --spatial-dims 3 --size 32 --channels 16 32 64 128 256
    python scripts/benchmark_networks.py --json          # last line: one JSON object
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from eunets_monai.networks import NETWORKS, get_network


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    parser.add_argument("--size", type=int, default=128, help="input edge length")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--out-channels", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions per variant (after 2 warm-ups)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    return parser.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def make_steps(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """A no-grad eval forward and one full training step (forward, deep-supervision loss, backward, Adam)."""
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def forward() -> None:
        net.eval()
        with torch.no_grad():
            net(x)

    def train_step() -> None:
        net.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()

    return forward, train_step


def benchmark(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    shape = (args.batch, 1, *([args.size] * args.spatial_dims))
    x = torch.rand(shape, device=device)
    y = torch.randint(0, args.out_channels, (args.batch, 1, *shape[2:]), device=device)
    steps, params = {}, {}
    for mhex in (False, True):
        net = get_network(
            name,
            spatial_dims=args.spatial_dims,
            in_channels=1,
            out_channels=args.out_channels,
            channels=tuple(args.channels),
            mhex=mhex,
        ).to(device)
        params[mhex] = sum(p.numel() for p in net.parameters())
        steps[mhex] = make_steps(net, x, y)
    times = {(mhex, kind): [] for mhex in (False, True) for kind in (0, 1)}
    for rep in range(args.repeats + 2):
        for kind in (0, 1):
            # alternate which variant goes first so drift on a noisy machine hits both alike
            for mhex in (False, True) if rep % 2 == 0 else (True, False):
                t = time_call(steps[mhex][kind], device)
                if rep >= 2:
                    times[(mhex, kind)].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "network": name,
        "params_plain": params[False],
        "params_eu": params[True],
        "params_added": params[True] - params[False],
        "forward_plain_s": med[(False, 0)],
        "forward_eu_s": med[(True, 0)],
        "forward_ratio": med[(True, 0)] / med[(False, 0)],
        "train_step_plain_s": med[(False, 1)],
        "train_step_eu_s": med[(True, 1)],
        "train_step_ratio": med[(True, 1)] / med[(False, 1)],
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = False
    device = torch.device(args.device)
    setting = (
        f"{args.spatial_dims}D, batch {args.batch}, input {args.size}^{args.spatial_dims}, "
        f"channels {tuple(args.channels)}, {args.out_channels} classes, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(setting)
    header = f"{'network':18s} {'plain':>10s} {'EU':>10s} {'added':>8s} {'fwd ratio':>10s} {'train ratio':>12s}"
    print(header)
    rows = []
    for name in args.networks:
        r = benchmark(name, args, device)
        rows.append(r)
        print(
            f"{name:18s} {r['params_plain'] / 1e6:9.3f}M {r['params_eu'] / 1e6:9.3f}M {r['params_added'] / 1e6:7.3f}M "
            f"{r['forward_ratio']:10.3f} {r['train_step_ratio']:12.3f}",
            flush=True,
        )
    fwd_ok = all(r["forward_ratio"] <= 1.10 for r in rows)
    train_ok = all(r["train_step_ratio"] <= 1.15 for r in rows)
    verdict = {True: "met", False: "NOT met"}
    print(f"goals: forward <= 1.10: {verdict[fwd_ok]}; train step <= 1.15: {verdict[train_ok]}")
    if args.json:
        print(json.dumps({"setting": setting, "results": rows, "forward_goal_met": fwd_ok, "train_goal_met": train_ok}))


if __name__ == "__main__":
    main()
