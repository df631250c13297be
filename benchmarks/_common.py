"""Timing helpers shared by the benchmarks: warm-up, interleaved repeats, median and IQR."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from landprobe.common.hardware import cpu_has_native_bf16 as _native_bf16
from landprobe.common.hardware import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_tag() -> str:
    """The suffix of this CPU's result files (docs/performance.md): ``xeon``, ``epyc512`` (an AMD
    EPYC with bf16 arithmetic), ``epyc`` (AVX2 only), else ``cpu``."""
    model = cpu_model().lower()
    if "xeon" in model:
        return "xeon"
    if "epyc" in model:
        return "epyc512" if _native_bf16() else "epyc"
    return "cpu"


def timeit(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, dict]:
    """Run each function ``warmup`` times, then ``repeats`` rounds interleaved; seconds per call.

    Per function: median and IQR of wall time, and the per-round ``runs`` (wall) and
    ``cpu_runs`` (process CPU time, all threads), so that callers can form paired ratios.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    out = {}
    for k, ts in times.items():
        a = np.asarray(ts)
        out[k] = {"median_s": float(np.median(a)), "iqr_s": float(np.percentile(a, 75) - np.percentile(a, 25)),
                  "cpu_median_s": float(np.median(cpu[k])),
                  "runs": [float(t) for t in a], "cpu_runs": [float(t) for t in cpu[k]]}
    return out


def paired_ratio(t: dict[str, dict], num: str, den: str, clock: str = "runs") -> float:
    """Median over rounds of ``num``'s time / ``den``'s time in the same round (``clock``:
    ``"runs"`` wall, ``"cpu_runs"`` CPU): robust to load that drifts between rounds."""
    return float(np.median(np.asarray(t[num][clock]) / np.asarray(t[den][clock])))




def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "unknown"
    return {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, no GPU" if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "cpu": cpu_model(),
        # AVX2 / AVX512; bf16 arithmetic (AVX512-BF16 or AMX) decides whether bf16 autocast pays
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": _native_bf16(),
        "threads": torch.get_num_threads(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
