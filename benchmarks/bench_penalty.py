"""Benchmark: SubnetNormPenalty forward+backward vs the naive Python-loop formulation.

Two models with 200 small parameter tensors each (100 layers, weight + bias):
``conv100`` (100 Conv2d(16, 16, 3) layers, batch 32 of 16x32x32 maps) and ``mlp100``
(100 Linear(16, 16) layers, batch 64). For each, in one process:

- the penalty's forward+backward (``.grad`` reset to ``None`` before each run, as after
  ``optimizer.zero_grad()``), ours vs the naive ``sum(p.pow(2).sum() for p in params)`` per
  subnet, runs interleaved, median and IQR after warm-up; for a Mix-like setting (l2 on the
  first third, l1 on the second, l2 on the last) and for each kind on the whole model;
- one training step of the model (forward, MSE, backward, SGD step), to express the penalty's
  cost as a fraction of a step.

Run:  python benchmarks/bench_penalty.py [--repeats 200] [--out benchmarks/results/penalty.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch
from torch import nn

from landprobe.common.io import save_json
from landprobe.penalties import SubnetNormPenalty

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_model  # noqa: E402


def make_conv100() -> tuple[nn.Module, torch.Tensor]:
    layers = []
    for _ in range(100):
        layers += [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers), torch.randn(32, 16, 32, 32)   # CIFAR-sized batch of 32


def make_mlp100() -> tuple[nn.Module, torch.Tensor]:
    layers = []
    for _ in range(100):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    return nn.Sequential(*layers), torch.randn(64, 16)


def naive_norm(kind: str, params: list[torch.Tensor]) -> torch.Tensor:
    if kind == "l2_squared":
        return sum(p.pow(2).sum() for p in params)
    if kind == "l1":
        return sum(p.abs().sum() for p in params)
    if kind == "l2norm":
        return torch.sqrt(sum(p.pow(2).sum() for p in params))
    if kind == "group":
        return sum(p.reshape(p.shape[0], -1).norm(dim=1).sum() if p.dim() >= 2 else p.abs().sum() for p in params)
    if kind == "spectral":  # exact, by SVD: the formulation a user would write without power iteration
        return sum(torch.linalg.matrix_norm(p.reshape(p.shape[0], -1), 2) for p in params)
    raise ValueError(kind)


def stats(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4)
    return {"median_us": statistics.median(times) * 1e6, "iqr_us": (q[2] - q[0]) * 1e6,
            "min_us": min(times) * 1e6, "n": len(times)}


def time_pair(params, ours, naive, repeats: int, warmup: int) -> dict:
    """Interleave ours (autograd), ours direct and naive; each run is forward + backward from fresh (None) grads.

    ``ours`` is the penalty object: "ours" runs ``ours().backward()``, "direct" runs
    ``ours.backward()`` (value and gradient without autograd), "naive" runs ``naive().backward()``.

    Records wall time (perf_counter) and the calling thread's CPU time (thread_time): the
    penalty's small ops run on this one thread, so its CPU time is its cost even when other
    processes share the cores (wall time then includes waiting for a core).
    """
    out = {"ours": ([], []), "direct": ([], []), "naive": ([], [])}
    runs = (("ours", lambda: ours().backward()), ("direct", ours.backward), ("naive", lambda: naive().backward()))
    for i in range(warmup + repeats):
        for name, fn in runs:
            for p in params:
                p.grad = None
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            t, c = time.perf_counter() - t0, time.thread_time() - c0
            if i >= warmup:
                out[name][0].append(t)
                out[name][1].append(c)
    res = {k: {"wall": stats(w), "cpu": stats(c)} for k, (w, c) in out.items()}
    res["speedup_wall"] = res["naive"]["wall"]["median_us"] / res["ours"]["wall"]["median_us"]
    res["speedup_cpu"] = res["naive"]["cpu"]["median_us"] / res["ours"]["cpu"]["median_us"]
    res["direct_speedup_wall"] = res["naive"]["wall"]["median_us"] / res["direct"]["wall"]["median_us"]
    res["direct_speedup_cpu"] = res["naive"]["cpu"]["median_us"] / res["direct"]["cpu"]["median_us"]
    return res


def time_step(model, x, repeats: int, warmup: int) -> dict:
    y = torch.randn_like(model(x))
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    wall, cpu = [], []
    for i in range(warmup + repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {"wall": stats(wall), "cpu_all_threads": stats(cpu)}


def bench_model(name, model, x, repeats, warmup) -> dict:
    torch.manual_seed(0)
    params = list(model.parameters())
    n = len(model) // 2  # layers
    thirds = [f"{2 * i}" for i in range(n)]
    a, b = thirds[: n // 3], thirds[n // 3: 2 * n // 3]
    c = thirds[2 * n // 3:]
    mix_sel = {tuple(a): "l2_squared", tuple(b): "l1", tuple(c): "l2_squared"}
    mix = SubnetNormPenalty(model, mix_sel, weight=2e-4)
    groups = [[p for i in sel for p in model[int(i)].parameters()] for sel in (a, b, c)]

    def naive_mix():
        return 2e-4 * (naive_norm("l2_squared", groups[0]) + naive_norm("l1", groups[1]) + naive_norm("l2_squared", groups[2]))

    res = {"n_tensors": len(params), "n_params": sum(p.numel() for p in params),
           "input_shape": list(x.shape)}
    res["mix"] = time_pair(params, mix, naive_mix, repeats, warmup)
    res["kinds"] = {}
    for kind in ("l2_squared", "l1", "l2norm", "group", "spectral"):
        pen = SubnetNormPenalty(model, {"*": kind}, weight=2e-4, include_bias=kind != "spectral")
        sel = params if kind != "spectral" else [p for p in params if p.dim() >= 2]
        reps = repeats if kind != "spectral" else max(repeats // 4, 10)
        res["kinds"][kind] = time_pair(params, pen, lambda k=kind, s=sel: 2e-4 * naive_norm(k, s), reps, warmup)
    res["train_step"] = time_step(model, x, 50, 5)
    step = res["train_step"]
    for clock, sclock in (("wall", "wall"), ("cpu", "cpu_all_threads")):
        res["mix"][f"fraction_of_step_{clock}"] = res["mix"]["ours"][clock]["median_us"] / step[sclock]["median_us"]
        res["mix"][f"direct_fraction_of_step_{clock}"] = res["mix"]["direct"][clock]["median_us"] / step[sclock]["median_us"]
        res["mix"][f"naive_fraction_of_step_{clock}"] = res["mix"]["naive"][clock]["median_us"] / step[sclock]["median_us"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/penalty.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "src/landprobe/penalties.py",
                                     "benchmarks/bench_penalty.py"], capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", None
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "penalty_files_dirty": dirty,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg_start": os.getloadavg()},
        "method": "forward+backward from None grads, ours (penalty().backward()), direct (penalty.backward(), no autograd graph) and naive interleaved, median and IQR over repeats "
                  "after warm-up; clocks: wall (perf_counter) and CPU time of the calling thread (thread_time; "
                  "the penalty's ops are single-threaded, so this is its cost when other processes share the "
                  "cores); train step = zero_grad, forward, MSE, backward, SGD step, wall and process CPU time "
                  "(all threads); fraction_of_step_cpu = penalty thread CPU / step process CPU",
        "models": {},
    }
    for name, make in (("conv100", make_conv100), ("mlp100", make_mlp100)):
        model, x = make()
        result["models"][name] = r = bench_model(name, model, x, args.repeats, args.warmup)
        m = r["mix"]
        print(f"{name}: {r['n_tensors']} tensors; train step wall {r['train_step']['wall']['median_us'] / 1e3:.1f} ms, "
              f"cpu {r['train_step']['cpu_all_threads']['median_us'] / 1e3:.1f} ms")
        for kind, kr in [("mix", m)] + list(r["kinds"].items()):
            print(f"  {kind:9s} cpu: ours {kr['ours']['cpu']['median_us']:7.0f} us (IQR {kr['ours']['cpu']['iqr_us']:5.0f}) "
                  f"direct {kr['direct']['cpu']['median_us']:6.0f} us naive {kr['naive']['cpu']['median_us']:7.0f} us "
                  f"-> {kr['speedup_cpu']:5.2f}x / direct {kr['direct_speedup_cpu']:5.2f}x | wall: "
                  f"{kr['speedup_wall']:5.2f}x / direct {kr['direct_speedup_wall']:5.2f}x")
        print(f"  mix penalty / train step: cpu {100 * m['fraction_of_step_cpu']:.2f}% (direct "
              f"{100 * m['direct_fraction_of_step_cpu']:.2f}%), wall {100 * m['fraction_of_step_wall']:.2f}% "
              f"(direct {100 * m['direct_fraction_of_step_wall']:.2f}%) "
              f"(naive: cpu {100 * m['naive_fraction_of_step_cpu']:.2f}%)")
    result["machine"]["loadavg_end"] = os.getloadavg()
    save_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
