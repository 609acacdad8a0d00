"""
Benchmark (not a test): for every architecture, parameters and the EU/plain ratios of forward time and of one
training step, measured side by side in one run (interleaved repetitions, medians).

Goals (issue 2): forward ratio <= 1.10, training-step ratio <= 1.15.

With ``--attention-3d``, the 3D cost of the skip attention instead (issue 13): forward and training-step time and
peak memory of U-Net, U-Net Transformer and EFEN, plain and EU, for every ``attention`` option, at each
``--sizes`` patch. Every row runs in a subprocess of its own so that its peak memory is its own: on CPU the growth
of the process' peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) over the one after building the
network, first after a forward pass (no grad), then after a training step (which includes the forward's peak
only if it is larger); on CUDA ``torch.cuda.max_memory_allocated``. Goals: at the largest size, the
U-Net Transformer's forward <= 2x and EFEN's <= 4x the U-Net's (same mhex), each with the fastest attention.

    python scripts/benchmark_networks.py                 # paper 2D setting, 1x1x128x128
    python scripts/benchmark_networks.py --spatial-dims 3 --size 32 --channels 16 32 64 128 256
    python scripts/benchmark_networks.py --json          # last line: one JSON object
    python scripts/benchmark_networks.py --attention-3d --sizes 64 96 --batch 1 --threads 1 --repeats 2 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from eunets_monai.networks import NETWORKS, get_network
from eunets_monai.networks.blocks.attention import ATTENTION_MODES

ATTENTION_NETWORKS = ("unet_transformer", "efen")


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
    parser.add_argument("--attention-3d", action="store_true", help="3D cost table of the skip attention options")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="--attention-3d patch edges")
    parser.add_argument(
        "--attention", nargs="+", default=list(ATTENTION_MODES), choices=ATTENTION_MODES, help="--attention-3d options"
    )
    parser.add_argument(
        "--global-max-size",
        type=int,
        default=None,
        help="--attention-3d: skip 'global' rows above this edge (quadratic: minutes per 96^3 patch on a CPU)",
    )
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: one --attention-3d row, as JSON
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


def peak_memory_mb(device: torch.device) -> float:
    """The process' peak so far: resident set on CPU (ru_maxrss, KiB on Linux), allocated tensors on CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_row(spec: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """One --attention-3d row, in a fresh process: peak memory of a forward then a training step, then medians."""
    torch.manual_seed(0)
    shape = (args.batch, 1, *([spec["size"]] * 3))
    x = torch.rand(shape, device=device)
    y = torch.randint(0, args.out_channels, (args.batch, 1, *shape[2:]), device=device)
    extra = {"attention": spec["attention"]} if spec["attention"] else {}
    net = get_network(
        spec["network"],
        spatial_dims=3,
        in_channels=1,
        out_channels=args.out_channels,
        channels=tuple(args.channels),
        mhex=spec["mhex"],
        **extra,
    ).to(device)
    forward, train_step = make_steps(net, x, y)
    sync(device)
    base = peak_memory_mb(device)
    forward_s = [time_call(forward, device)]
    forward_mb = peak_memory_mb(device) - base
    train_s = [time_call(train_step, device)]
    train_mb = peak_memory_mb(device) - base
    for _ in range(args.repeats):
        forward_s.append(time_call(forward, device))
        train_s.append(time_call(train_step, device))
    if args.repeats:  # the first calls (allocator, one-off set-up) only count when nothing else was timed
        forward_s, train_s = forward_s[1:], train_s[1:]
    return {
        **spec,
        "params": sum(p.numel() for p in net.parameters()),
        "forward_s": statistics.median(forward_s),
        "train_step_s": statistics.median(train_s),
        "forward_peak_mb": forward_mb,
        "train_step_peak_mb": train_mb,
    }


def attention_rows(args: argparse.Namespace) -> list[dict]:
    """The rows of the --attention-3d table: size x network x attention option x (plain, EU)."""
    specs = []
    for size in args.sizes:
        for name in ("unet", *ATTENTION_NETWORKS):
            for attention in args.attention if name in ATTENTION_NETWORKS else [None]:
                if attention == "global" and args.global_max_size and size > args.global_max_size:
                    continue
                specs += [{"size": size, "network": name, "attention": attention, "mhex": m} for m in (False, True)]
    return specs


def run_row(spec: dict, args: argparse.Namespace) -> dict:
    """Run one row in a subprocess (its own peak memory); one clear line if it fails."""
    cmd = [sys.executable, __file__, "--row", json.dumps(spec), "--batch", str(args.batch), "--device", args.device]
    cmd += ["--channels", *map(str, args.channels), "--out-channels", str(args.out_channels)]
    cmd += ["--repeats", str(args.repeats)] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: benchmark row {spec} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def attention_goals(rows: list[dict]) -> dict:
    """Forward ratios to the U-Net at the largest size, per mhex, with each network's fastest attention option."""
    size = max(r["size"] for r in rows)
    goals = {}
    for mhex in (False, True):
        at = [r for r in rows if r["size"] == size and r["mhex"] == mhex]
        unet = next(r["forward_s"] for r in at if r["network"] == "unet")
        for name, limit in (("unet_transformer", 2.0), ("efen", 4.0)):
            best = min((r for r in at if r["network"] == name), key=lambda r: r["forward_s"])
            ratio = best["forward_s"] / unet
            key = f"{name}_{'eu' if mhex else 'plain'}"
            goals[key] = {"attention": best["attention"], "forward_ratio": ratio, "limit": limit, "met": ratio <= limit}
    return {"size": size, "ratios": goals, "met": all(g["met"] for g in goals.values())}


def main_attention_3d(args: argparse.Namespace, device: torch.device) -> None:
    setting = (
        f"3D attention cost, batch {args.batch}, sizes {args.sizes}, channels {tuple(args.channels)}, "
        f"{args.out_channels} classes, device {device}, torch {torch.__version__}, "
        f"{args.threads or torch.get_num_threads()} threads, {args.repeats} timed repeats after 1 warm-up, "
        f"{'CUDA max_memory_allocated' if device.type == 'cuda' else 'CPU ru_maxrss growth'} per row subprocess"
    )
    print(setting)
    print(
        f"{'size':>4s} {'network':17s} {'attention':9s} {'EU':>3s} {'params':>8s} {'fwd s':>8s} {'train s':>8s} "
        f"{'fwd MB':>8s} {'train MB':>9s}"
    )
    rows = []
    for spec in attention_rows(args):
        r = run_row(spec, args)
        rows.append(r)
        print(
            f"{r['size']:4d} {r['network']:17s} {r['attention'] or '-':9s} {'yes' if r['mhex'] else 'no':>3s} "
            f"{r['params'] / 1e6:7.3f}M {r['forward_s']:8.2f} {r['train_step_s']:8.2f} "
            f"{r['forward_peak_mb']:8.0f} {r['train_step_peak_mb']:9.0f}",
            flush=True,
        )
    goals = attention_goals(rows)
    for key, g in goals["ratios"].items():
        print(
            f"{goals['size']}^3 {key} ({g['attention']}) / U-Net forward: {g['forward_ratio']:.2f} "
            f"(goal <= {g['limit']:.0f}: {'met' if g['met'] else 'NOT met'})"
        )
    if args.json:
        print(json.dumps({"setting": setting, "results": rows, "goals": goals}))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = False
    device = torch.device(args.device)
    if args.row:
        print(json.dumps(measure_row(json.loads(args.row), args, device)))
        return
    if args.attention_3d:
        main_attention_3d(args, device)
        return
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
