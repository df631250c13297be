"""Speed of ``landprobe.data.imresize`` beside PIL and the plain per-pixel numpy reference.

A 512x512 RGB image (Set5 ``baby_GT``) is resized down by 2 and back up by 2, in one
process: landprobe on a float32 tensor (default torch threads, and one thread as PIL uses)
and on a uint8 numpy array, PIL's bicubic
``Image.resize`` on uint8, and the float64 per-pixel numpy reference of the tests
(``tests/helpers_sr.py``). Warm-up runs first; median and interquartile range of the
repeats, timed round-robin so that all share the machine's busy moments (the CI machine
is a shared 2-core box), plus minima. Targets: at most 2x PIL's time, at least 10x faster than the reference. Also times
building the T91 x2 patch set (9,362 patches) from the PNG files, memory cache cleared.

Usage::

    python benchmarks/bench_imresize.py [--repeats 30] [--ref-repeats 3] [--out benchmarks/results/imresize.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import landprobe
from landprobe.common.io import save_json
from landprobe.data import T91Patches, imresize
from landprobe.data import _datasets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers_sr import reference_imresize  # noqa: E402


def _stats(times):
    t = np.asarray(times)
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"median_s": float(med), "iqr_s": float(q3 - q1), "min_s": float(t.min()), "n": len(t)}


def _interleaved(fns: dict, repeats: int, warmup: int, threads: dict):
    """Time the functions round-robin so that they share the machine's (busy) moments."""
    times = {k: [] for k in fns}
    for rep in range(warmup + repeats):
        for k, fn in fns.items():
            if torch.get_num_threads() != threads[k]:
                torch.set_num_threads(threads[k])
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if rep >= warmup:
                times[k].append(dt)
    return {k: _stats(v) for k, v in times.items()}


def _bench(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _stats(times)


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--ref-repeats", type=int, default=3)
    ap.add_argument("--t91-repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "imresize.json")
    args = ap.parse_args(argv)

    u8 = np.array(Image.open(ROOT / "data" / "Set5" / "baby_GT.png").convert("RGB"))
    assert u8.shape == (512, 512, 3)
    f32 = torch.from_numpy(u8).permute(2, 0, 1).float().div(255).contiguous()
    f64 = u8.astype(np.float64) / 255
    pil = Image.fromarray(u8)

    def ours_torch():
        return imresize(imresize(f32, 0.5), 2)

    def ours_numpy_u8():
        return imresize(imresize(u8, 0.5), 2)

    def pil_bicubic():
        return pil.resize((256, 256), Image.BICUBIC).resize((512, 512), Image.BICUBIC)

    def reference():
        return np.stack(
            [reference_imresize(reference_imresize(f64[..., c], 0.5), 2) for c in range(3)], axis=-1
        )

    default_threads = torch.get_num_threads()
    many = f"landprobe_torch_float32_{default_threads}threads"
    fns = {
        "landprobe_torch_float32_1thread": ours_torch,  # like for like with PIL, one thread
        "landprobe_numpy_uint8_1thread": ours_numpy_u8,
        "pil_bicubic_uint8": pil_bicubic,
    }
    res = _interleaved(fns, args.repeats, 3, {k: 1 for k in fns})
    torch.set_num_threads(default_threads)  # separately: switching thread pools costs time
    res[many] = _bench(ours_torch, args.repeats, 3)
    torch.set_num_threads(1)
    res["numpy_reference_float64"] = _bench(reference, args.ref_repeats, 0)
    torch.set_num_threads(default_threads)
    ours = res["landprobe_torch_float32_1thread"]
    pil_t = res["pil_bicubic_uint8"]
    ratios = {
        "landprobe_torch_1thread_over_pil": ours["median_s"] / pil_t["median_s"],
        "landprobe_torch_1thread_over_pil_minima": ours["min_s"] / pil_t["min_s"],
        f"landprobe_torch_{default_threads}threads_over_pil": res[many]["median_s"] / pil_t["median_s"],
        "landprobe_numpy_uint8_1thread_over_pil": res["landprobe_numpy_uint8_1thread"]["median_s"] / pil_t["median_s"],
        "reference_over_landprobe_torch_1thread": res["numpy_reference_float64"]["median_s"] / ours["median_s"],
    }
    ref_out = reference()
    ours64 = imresize(imresize(torch.from_numpy(f64).permute(2, 0, 1), 0.5), 2).permute(1, 2, 0).numpy()
    agreement = {
        "max_abs_diff_float64_vs_reference": float(np.abs(ours64 - ref_out).max()),
        "mean_abs_diff_uint8_vs_pil_levels": float(np.abs(ours_numpy_u8().astype(int) - np.asarray(pil_bicubic()).astype(int)).mean()),
    }

    def build_t91():
        _datasets._MEMORY_CACHE.clear()
        return T91Patches(ROOT / "data" / "T91", scale=2)

    n_patches = len(build_t91())
    t91 = _bench(build_t91, args.t91_repeats, 0)
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    out = {
        "command": " ".join(["python benchmarks/bench_imresize.py", *(argv if argv is not None else sys.argv[1:])]),
        "task": "512x512x3 image: down by 2 then up by 2 (bicubic)",
        "timings": res,
        "ratios": ratios,
        "targets": {"landprobe_torch_1thread_over_pil_at_most": 2.0, "reference_over_landprobe_torch_1thread_at_least": 10.0},
        "targets_met": {
            "vs_pil": ratios["landprobe_torch_1thread_over_pil"] <= 2.0,
            "vs_reference": ratios["reference_over_landprobe_torch_1thread"] >= 10.0,
        },
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "agreement": agreement,
        "t91_x2_build": {"patches": n_patches, **t91},
        "versions": {"landprobe": landprobe.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "pillow": Image.__version__, "python": platform.python_version()},
        "machine": {"cpu": _cpu_model(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "git_commit": commit,
    }
    for k, v in res.items():
        print(f"{k:32s} median {v['median_s'] * 1e3:9.2f} ms  IQR {v['iqr_s'] * 1e3:7.2f} ms  "
              f"min {v['min_s'] * 1e3:9.2f} ms  (n={v['n']})")
    for k, v in ratios.items():
        print(f"{k:34s} {v:8.2f}")
    print(f"agreement: {agreement}")
    print(f"T91 x2 build ({n_patches} patches): median {t91['median_s']:.3f} s, IQR {t91['iqr_s']:.3f} s")
    save_json(args.out, out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
