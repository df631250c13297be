"""The AutoNEB band's vector algebra per step, side by side with the same step through Gram matrices
and with a plain SGD step of the same images.

    python benchmarks/bench_band_algebra.py [--images 8] [--repeats 21] [--out FILE]

``landprobe``: ``probes/curves/band.nudged_step`` with ``measure=True`` (as AutoNEB's
re-spacing asks): the segments and the four row-wise inner products the step needs in one sweep
of column blocks, the nudged momentum step and the new segments' squared lengths in a second.
``gram``: the same two sweeps over the same blocks, but each block's inner products as Gram
matrices ([segments; gradients] times segmentsᵀ, and the new segments' own Gram matrix), of
which the step reads the same entries. ``sgd``: ``torch.optim.SGD`` (momentum 0.9, foreach)
stepping the K interior images as K models' parameters: what any optimizer-stepped band must at
least do. ``landprobe_as_laid_out``: the library's step on the band as AutoNEB lays it out, the
parameters of at most 2^14 numbers per image side by side in one matrix (their gradients gathered
into it each step, included). Two bands of K + 2 images (float32): the parameters of the MLP 1000-1000-10 of
``bench_fits.py`` (1,011,010 numbers in 4 tensors) and of ``bench_interpolate.py``'s
``ManySmall`` (131,473 numbers in 206 tensors). Interleaved rounds after warm-up, one thread;
per-round (paired) ratios, median. The two algebras' results are compared (largest difference
relative to the step). Last, the MLP band's step at column blocks of 2^16 ... 2^20 numbers per
operand (``band._BLOCK``), interleaved.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, cpu_tag, environment, paired_ratio, timeit  # noqa: E402
from bench_interpolate import ManySmall  # noqa: E402

from landprobe.common.io import save_json  # noqa: E402
from landprobe.probes.curves import band  # noqa: E402
from landprobe.probes.curves import neb  # noqa: E402


def gram_step(rows, grads, energies, *, climb_at, spring, lr, momentum, bufs, space):
    """:func:`band.nudged_step` (``measure=True``) with each block's products as Gram matrices."""
    m = rows[0].shape[0] - 1
    ss, gs, segs = torch.zeros(m, m, dtype=torch.float64), torch.zeros(m - 1, m, dtype=torch.float64), []
    for p, (f, g) in enumerate(zip(rows, grads)):
        seg = space.setdefault(("seg", p), torch.empty_like(f[1:]))
        gram = torch.zeros(2 * m - 1, m, dtype=f.dtype)
        for c in band._blocks(f):
            sb = torch.sub(f[1:, c], f[:-1, c], out=seg[:, c])
            gram[:m].addmm_(sb, sb.T)
            gram[m:].addmm_(g[:, c], sb.T)
        gram = gram.double()
        ss += gram[:m]
        gs += gram[m:]
        segs.append(seg)
    c_next, c_prev = band._coefficients(ss.diagonal().tolist(), ss.diagonal(-1).tolist(), gs.diagonal(1).tolist(),
                                        gs.diagonal().tolist(), energies, climb_at, spring)
    first = bufs is None
    bufs = [torch.empty_like(g) for g in grads] if first else bufs
    sq = torch.zeros(m, dtype=torch.float64)
    for p, (f, g, sg) in enumerate(zip(rows, grads, segs)):
        cn = torch.tensor(c_next, dtype=g.dtype).reshape(-1, 1)
        cp = torch.tensor(c_prev, dtype=g.dtype).reshape(-1, 1)
        gram = torch.zeros(m, m, dtype=f.dtype)
        for c in band._blocks(f):
            u = g[:, c].addcmul_(sg[1:, c], cn).addcmul_(sg[:-1, c], cp)
            b = bufs[p][:, c]
            u = b.copy_(u) if first else b.mul_(momentum).add_(u)
            f[1:-1, c].add_(u, alpha=-lr)
            sb = torch.sub(f[1:, c], f[:-1, c], out=sg[:, c])
            gram.addmm_(sb, sb.T)
        sq += gram.diagonal().double()
    return bufs, (segs, [math.sqrt(max(v, 0.0)) for v in sq.tolist()])


def one_band(name: str, shapes: list[tuple[int, ...]], images: int, repeats: int) -> dict:
    torch.manual_seed(0)
    base = [torch.randn(1, *s).reshape(1, -1) for s in shapes]
    rows0 = [b + 0.05 * torch.randn(images + 2, b.shape[1]).cumsum(0) for b in base]
    grads = [torch.randn(images, r.shape[1]) for r in rows0]
    energies = [float(e) for e in torch.rand(images + 2)]
    kw = {"climb_at": images // 2, "spring": math.inf, "lr": 1e-2, "momentum": 0.9}

    def stepper(fn, **extra):
        rows, state = [r.clone() for r in rows0], {"bufs": None, "space": {}}
        gs = [g.clone() for g in grads]

        def step():
            for g, g0 in zip(gs, grads):         # the step overwrites the gradients
                g.copy_(g0)
            state["bufs"], _ = fn(rows, gs, energies, bufs=state["bufs"], space=state["space"], **kw, **extra)
        return rows, step

    ours_rows, ours = stepper(band.nudged_step, measure=True)
    gram_rows, gram = stepper(gram_step)
    groups = neb._groups(rows0)                  # as AutoNEB lays the band out: small tensors share a matrix
    laid_rows = [torch.cat([rows0[i] for i in g], 1) for g in groups]
    laid_state = {"bufs": None, "space": {}}

    def laid_out():                              # the gradients gathered per group, as AutoNEB does each step
        gs = [torch.cat([grads[i] for i in g], 1) for g in groups]
        laid_state["bufs"], _ = band.nudged_step(laid_rows, gs, energies, bufs=laid_state["bufs"],
                                                 space=laid_state["space"], measure=True, **kw)
    for step in (ours, gram):                    # three steps each: the results must agree
        for _ in range(3):
            step()
    diff = max(float((a - b).abs().max() / (a - r0).abs().max()) for a, b, r0 in zip(ours_rows, gram_rows, rows0))
    copies = [r[1:-1].clone().requires_grad_(True) for r in rows0]
    for c, g in zip(copies, grads):
        c.grad = g.clone()
    sgd = torch.optim.SGD(copies, lr=1e-2, momentum=0.9, foreach=True)
    sgd.step()

    def copy_grads():                            # the same gradient refresh as the band steps
        for c, g in zip(copies, grads):
            c.grad.copy_(g)

    def sgd_step():
        copy_grads()
        sgd.step()

    t = timeit({"landprobe": ours, "gram": gram, "landprobe_as_laid_out": laid_out, "sgd": sgd_step,
                "gradient_copy": copy_grads}, repeats=repeats, warmup=2)
    out = {"tensors": len(shapes), "numbers": int(sum(r.shape[1] for r in rows0)), "images": images + 2,
           "timings": t, "max_relative_difference": diff,
           "landprobe_ms": 1e3 * t["landprobe"]["median_s"], "gram_ms": 1e3 * t["gram"]["median_s"],
           "sgd_ms": 1e3 * t["sgd"]["median_s"], "gradient_copy_ms": 1e3 * t["gradient_copy"]["median_s"],
           "autoneb_layout": [len(g) for g in groups],
           "landprobe_as_laid_out_ms": 1e3 * t["landprobe_as_laid_out"]["median_s"],
           "paired_landprobe_over_as_laid_out": paired_ratio(t, "landprobe", "landprobe_as_laid_out"),
           "paired_gram_over_landprobe": paired_ratio(t, "gram", "landprobe"),
           "paired_landprobe_over_sgd": paired_ratio(t, "landprobe", "sgd")}
    print(name, {k: v for k, v in out.items() if k != "timings"}, flush=True)
    return out


def block_sizes(shapes: list[tuple[int, ...]], images: int, repeats: int) -> dict:
    """The library's step at each column-block size, interleaved rounds (median ms)."""
    torch.manual_seed(0)
    rows0 = [torch.randn(images + 2, *s).reshape(images + 2, -1) for s in shapes]
    grads = [torch.randn(images, r.shape[1]) for r in rows0]
    energies = [float(e) for e in torch.rand(images + 2)]
    default = band._BLOCK

    def stepper(block: int):
        rows, gs, state = [r.clone() for r in rows0], [g.clone() for g in grads], {"bufs": None, "space": {}}

        def step():
            band._BLOCK = block
            for g, g0 in zip(gs, grads):
                g.copy_(g0)
            state["bufs"], _ = band.nudged_step(rows, gs, energies, climb_at=images // 2, spring=math.inf, lr=1e-6,
                                                momentum=0.9, bufs=state["bufs"], space=state["space"], measure=True)
        return step

    try:
        t = timeit({f"2^{b}": stepper(1 << b) for b in range(16, 21)}, repeats=repeats, warmup=2)
    finally:
        band._BLOCK = default
    out = {name: 1e3 * v["median_s"] for name, v in t.items()}
    print("block sizes (ms):", {k: round(v, 1) for k, v in out.items()}, flush=True)
    return {"median_ms": out, "timings": t, "default": f"2^{default.bit_length() - 1}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="interior images K")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--out", default=str(RESULTS / f"band_algebra_{cpu_tag()}.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    mlp = [(1000, 1000), (1000,), (10, 1000), (10,)]
    small = [tuple(p.shape) for p in ManySmall().parameters()]
    report = {"env": environment(), "what": __doc__.splitlines()[0], "block": band._BLOCK,
              "bands": {"mlp_1m": one_band("mlp_1m", mlp, args.images, args.repeats),
                        "many_small_206": one_band("many_small_206", small, args.images, args.repeats)},
              "mlp_1m_block_sizes": block_sizes(mlp, args.images, args.repeats)}
    save_json(args.out, report)


if __name__ == "__main__":
    main()
