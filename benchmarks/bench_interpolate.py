"""21-point interpolation vs the floor (21 plain forward passes) and vs loss-landscapes.

    python benchmarks/bench_interpolate.py [--repeats 5]

Two models over 8 batches of 64x1x41x41: a ~1M-parameter net with a cheap forward (strided
conv stem + a large Linear), and a net with 200+ small parameter tensors. Also reports the
peak-memory growth of the probe (measured in a fresh subprocess) and tries evaluating
several points in one batched call (torch.func.functional_call + vmap).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from torch import nn

import landprobe as lp

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _common import RESULTS, environment, paired_ratio, timeit  # noqa: E402


def big_cheap() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 10 * 10, 600),
                         nn.ReLU(), nn.Linear(600, 1))


class ManySmall(nn.Module):
    def __init__(self, depth: int = 100, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 5, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(800, width))
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = self.stem(x)
        for blk in self.blocks:
            h = h + 0.1 * torch.relu(blk(h))
        return self.head(h)


def make_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(64, 1, 41, 41, generator=g), torch.randn(64, 1, generator=g)) for _ in range(8)]


def floor(model, data, loss_fn, points):
    model.eval()
    with torch.no_grad():
        for _ in range(points):
            losses = [loss_fn(model(x), y) for x, y in data]
            torch.stack(losses).cpu()


def floor_inference_mode(model, data, loss_fn, points):
    """The floor under torch.inference_mode instead of no_grad (what landprobe evaluates under)."""
    model.eval()
    with torch.inference_mode():
        for _ in range(points):
            losses = [loss_fn(model(x), y) for x, y in data]
            torch.stack(losses).cpu()


def floor_with_writes(model, data, loss_fn, points, a, b):
    """The floor plus writing new weights before each pass (lerp into the parameters): the
    part of a probe's cost that no implementation avoids when it evaluates in place."""
    model.eval()
    targets = [p.data for p in model.parameters()]
    with torch.no_grad():
        for i in range(points):
            for t, x, y in zip(targets, a, b):
                torch.lerp(x, y, i / max(points - 1, 1), out=t)
            torch.stack([loss_fn(model(x), y) for x, y in data]).cpu()


def loss_landscapes_curve(ma, mb, data, loss_fn, steps):
    import loss_landscapes
    from loss_landscapes.metrics import Metric

    class MeanOverBatches(Metric):
        def __call__(self, wrapper):
            with torch.no_grad():
                return sum(float(loss_fn(wrapper.forward(x), y)) * len(x) for x, y in data) / sum(len(x) for x, _ in data)

    return loss_landscapes.linear_interpolation(ma, mb, MeanOverBatches(), steps=steps, deepcopy_model=True)


def vmapped(model, a, b, data, loss_fn, points, chunk):
    """Several points per call: functional_call under vmap over stacked parameters."""
    from torch.func import functional_call, vmap

    alphas = torch.linspace(0, 1, points)
    names = list(a)
    with torch.no_grad():
        for i in range(0, points, chunk):
            al = alphas[i:i + chunk]
            stacked = {n: torch.stack([torch.lerp(a[n], b[n], float(t)) for t in al]) for n in names}
            f = vmap(lambda p, x: functional_call(model, p, (x,)), in_dims=(0, None))
            for x, y in data:
                out = f(stacked, x)
                torch.stack([loss_fn(o, y) for o in out])


def _peak_growth(fn) -> int:
    """Bytes by which the resident set's peak rose above its level before ``fn`` (Linux)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    status = lambda key: int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
    before = status("VmRSS")
    fn()
    return status("VmHWM") - before


def memory_child(points: int) -> None:
    """Run in a fresh process: peak RSS growth of a plain pass and of the probe."""
    torch.manual_seed(0)
    model, data, loss_fn = big_cheap(), make_data(), nn.MSELoss()
    a, b = big_cheap().state_dict(), big_cheap().state_dict()
    floor(model, data, loss_fn, 2)  # warm the allocator
    plain = _peak_growth(lambda: floor(model, data, loss_fn, 2))
    probe = _peak_growth(lambda: lp.LandscapeProbe(model, loss_fn, data).interpolate(a, b, points=points))
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"plain_pass_growth_bytes": plain, "probe_growth_bytes": probe, "param_bytes": param_bytes}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--points", type=int, default=21)
    ap.add_argument("--out", default=str(RESULTS / "interpolate.json"))
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(51)
        return
    torch.manual_seed(0)
    data, loss_fn = make_data(), nn.MSELoss()
    report = {"env": environment(), "points": args.points, "batches": "8 x 64x1x41x41", "models": {}}
    for name, make in [("big_cheap_1M", big_cheap), ("many_small_200plus", ManySmall)]:
        model, ma, mb = make(), make(), make()
        n_params = sum(p.numel() for p in model.parameters())
        n_tensors = len(list(model.parameters()))
        probe = lp.LandscapeProbe(model, loss_fn, data)
        pa = [p.detach().clone() for p in ma.parameters()]
        pb = [p.detach().clone() for p in mb.parameters()]
        fns = {
            "floor": lambda: floor(model, data, loss_fn, args.points),
            "floor_with_writes": lambda: floor_with_writes(model, data, loss_fn, args.points, pa, pb),
            "floor_inference_mode": lambda: floor_inference_mode(model, data, loss_fn, args.points),
            "landprobe": lambda: probe.interpolate(ma, mb, points=args.points),
            "loss_landscapes": lambda: loss_landscapes_curve(ma, mb, data, loss_fn, args.points),
        }
        t = timeit(fns, repeats=args.repeats)
        sda, sdb = ma.state_dict(), mb.state_dict()
        tv = timeit({"floor": fns["floor"],
                     "landprobe_batch_points3": lambda: probe.interpolate(ma, mb, points=args.points, batch_points=3),
                     "vmap_chunk3_plain": lambda: vmapped(model, sda, sdb, data, loss_fn, args.points, 3)},
                    repeats=max(2, args.repeats // 2))
        f = t["floor"]["median_s"]
        report["models"][name] = {
            "parameters": n_params, "tensors": n_tensors, "timings": t,
            "ratio_landprobe_over_floor": t["landprobe"]["median_s"] / f,
            "ratio_loss_landscapes_over_floor": t["loss_landscapes"]["median_s"] / f,
            "ratio_floor_with_writes_over_floor": t["floor_with_writes"]["median_s"] / f,
            "ratio_landprobe_over_floor_with_writes": t["landprobe"]["median_s"] / t["floor_with_writes"]["median_s"],
            "ratio_floor_inference_mode_over_floor": t["floor_inference_mode"]["median_s"] / f,
            "paired_wall_landprobe_over_floor": paired_ratio(t, "landprobe", "floor"),
            "paired_cpu_landprobe_over_floor": paired_ratio(t, "landprobe", "floor", "cpu_runs"),
            "paired_wall_loss_landscapes_over_floor": paired_ratio(t, "loss_landscapes", "floor"),
            "paired_cpu_loss_landscapes_over_floor": paired_ratio(t, "loss_landscapes", "floor", "cpu_runs"),
            "vmap_timings": tv,
            "ratio_landprobe_batch_points3_over_floor": tv["landprobe_batch_points3"]["median_s"] / tv["floor"]["median_s"],
            "ratio_plain_vmap3_over_floor": tv["vmap_chunk3_plain"]["median_s"] / tv["floor"]["median_s"],
        }
        print(name, json.dumps({k: v for k, v in report["models"][name].items() if "timings" not in k}))
    mem = subprocess.run([sys.executable, __file__, "--memory-child"], capture_output=True, text=True, check=True)
    m = json.loads(mem.stdout.strip().splitlines()[-1])
    m["probe_growth_in_param_copies"] = m["probe_growth_bytes"] / m["param_bytes"]
    m["what"] = ("peak RSS growth (VmHWM after /proc/self/clear_refs) during a 51-point interpolation of "
                 "big_cheap_1M, and during two plain passes over the data, in a fresh process")
    report["peak_memory"] = m
    print("memory", json.dumps(m))
    RESULTS.mkdir(exist_ok=True)
    lp.common.io.save_json(args.out, report)


if __name__ == "__main__":
    main()
