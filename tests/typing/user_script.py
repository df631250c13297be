"""A user's script: tests/test_typing.py type-checks it with mypy against landprobe's
annotations, and runs it.

It builds a LandscapeProbe, calls every public method and uses its results' attributes as a
user would, with the types the annotations promise (``assert_type`` pins the result classes;
annotated assignments pin the attribute types).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch import Tensor, nn

import landprobe as lp
from landprobe.engine import Evaluation

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # pragma: no cover
    from typing_extensions import assert_type


def pairs_probe() -> tuple[lp.LandscapeProbe, dict[str, Tensor], dict[str, Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(16, 3)
    y = x.sum(1, keepdim=True)
    data = [(x[:10], y[:10]), (x[10:], y[10:])]
    probe = lp.LandscapeProbe(model, nn.MSELoss(), data, progress=False)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.1 for k, v in a.items()}
    return probe, a, b


def single_points(probe: lp.LandscapeProbe, a: dict[str, Tensor]) -> None:
    loss: float = probe.loss(a)
    ev = probe.evaluate(a)
    assert_type(ev, Evaluation)
    mean: float = ev.loss
    stderr: float = ev.stderr
    per_batch: np.ndarray = ev.batch_losses
    sizes: np.ndarray = ev.batch_sizes
    assert mean == loss and math.isfinite(stderr) and len(per_batch) == len(sizes) == 2


def many_points(probe: lp.LandscapeProbe, a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    curve = probe.interpolate(a, b, points=5)
    assert_type(curve, lp.Curve)
    barrier: float = curve.barrier
    where: float = curve.argmax_alpha
    alphas: np.ndarray = curve.alphas
    losses: np.ndarray = curve.losses
    assert barrier >= 0.0 and 0.0 <= where <= 1.0 and len(alphas) == len(losses) == 5

    surface = probe.plane(a, span=0.5, points=3, seed=1)
    assert_type(surface, lp.Surface)
    grid: np.ndarray = surface.losses
    lowest, x, y = surface.min()
    centre: float = surface.at(0.0, 0.0)
    assert grid.shape == (3, 3) and centre == surface.center_loss and lowest <= centre and abs(x) <= 0.5

    path = probe.connect(a, b, method="bezier", bends=1, steps=3, lr=0.01, points=5)
    assert_type(path, lp.Path)
    top: float = path.max_loss
    path_barrier: float = path.barrier
    ts: np.ndarray = path.ts
    length: float = path.length
    assert top >= path_barrier >= 0.0 and ts[0] == 0.0 and length > 0

    neb = probe.auto_neb(a, b, schedule=[{"steps": 2, "lr": 0.01, "insert": 1}], points=3)
    assert_type(neb, lp.Path)
    knots: np.ndarray = neb.knots
    energies: np.ndarray = neb.knot_losses
    assert len(knots) == len(energies) == 3 and neb.method == "neb"

    threshold = float(curve.losses.max()) + 1.0
    level = probe.level_set(a, b, threshold, steps=3)
    assert_type(level, lp.LevelSet)
    connected: bool = level.connected
    reason: str = level.reason
    highest: float = level.max_loss
    assert connected and reason == "" and highest <= threshold

    result = probe.perturb(lambda params: torch.optim.SGD(params, lr=0.01), scale=0.1, steps=2, repeats=2)
    assert_type(result, lp.PerturbationResult)
    base: float = result.base_loss
    before: np.ndarray = result.perturbed_losses
    after: np.ndarray = result.retrained_losses
    recovered: float = result.recovered
    assert before.shape == after.shape == (2,) and base == probe.loss() and not math.isinf(recovered)


def curvature(probe: lp.LandscapeProbe) -> None:
    op = probe.hessian(dtype=torch.float64)
    assert_type(op, lp.HessianOperator)
    n: int = op.n
    shape: tuple[int, int] = op.shape
    eig = op.top_eigenvalues(k=2, tol=1e-8)
    values: np.ndarray = eig.values
    residuals: np.ndarray = eig.residuals
    converged: bool = eig.all_converged
    trace = op.trace(matvecs=12)
    estimate: float = trace.value
    low, high = trace.interval()
    spectrum = op.density(steps=5)
    density: np.ndarray = spectrum.density
    spectrum_trace: float = spectrum.trace
    dense: Tensor = op.dense()
    assert shape == (n, n) and converged and values[0] >= values[1] and len(residuals) == 2
    assert low <= estimate <= high and len(density) == len(spectrum.grid) and math.isfinite(spectrum_trace)
    assert abs(float(torch.linalg.eigvalsh(dense)[-1]) - float(values[0])) < 1e-6


def batch_loss() -> None:
    model = nn.Linear(2, 1)

    def fn(m: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return nn.functional.mse_loss(m(batch["x"]), batch["y"])

    data = [{"x": torch.ones(4, 2), "y": torch.zeros(4, 1)}, {"x": torch.zeros(2, 2), "y": torch.ones(2, 1)}]
    loss = lp.BatchLoss(fn, samples=lambda batch: len(batch["y"]))
    probe = lp.LandscapeProbe(model, loss, data)
    value: float = probe.loss()
    assert math.isfinite(value)


def monitor_and_capacity(probe: lp.LandscapeProbe) -> None:
    monitor = lp.LandscapeMonitor(probe, hessian=False, capacity=["norms"], interpolate_points=3)
    record = monitor(1)
    if record is not None:
        first_loss: float = record["loss"]
        assert math.isfinite(first_loss)
    monitor.epoch_end(2)
    history = monitor.history
    assert_type(history, lp.MonitorHistory)
    epochs: np.ndarray = history.epochs
    barriers: np.ndarray = history.series("barrier")
    assert len(epochs) == 2 and barriers[1] == 0.0

    report = lp.capacity.report(probe.model, probe.data, loss_fn=probe.loss_fn, measures=["norms", "fisher_rao"])
    assert_type(report, lp.CapacityReport)
    l2: float = report["model"]["l2"]
    skipped: dict[str, str] = report.skipped
    assert l2 > 0 and "fisher_rao" in report["model"] and not skipped


def main() -> None:
    probe, a, b = pairs_probe()
    single_points(probe, a)
    many_points(probe, a, b)
    curvature(probe)
    batch_loss()
    monitor_and_capacity(probe)


if __name__ == "__main__":
    main()
