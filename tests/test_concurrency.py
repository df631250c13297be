"""One probe at a time per model: a second probe (another thread, or one started inside the
first one's loss or data) raises ProbeInProgressError; a model written during a pass raises
ModelChangedError; the model is restored and released afterwards; different models are
probed concurrently."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data._utils.collate import default_collate

import landprobe as lp
from landprobe.engine import ModelChangedError, ProbeInProgressError
from problems import assert_restored, dress, point, problems, shuffling_loader, snapshot

WAIT = 30.0     # seconds a test waits for the other thread before failing


class Holding:
    """``loss_fn`` that, at call ``at``, signals ``started`` and blocks until ``release``."""

    def __init__(self, loss_fn, at: int):
        self.loss_fn, self.at, self.calls = loss_fn, at, 0
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, out, y):
        self.calls += 1
        if self.calls == self.at:
            self.started.set()
            if not self.release.wait(WAIT):
                raise TimeoutError("the test never released the held probe")
        return self.loss_fn(out, y)


class Background:
    """``fn()`` in a thread; ``join()`` returns its result or raises what it raised."""

    def __init__(self, fn):
        self.result, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except BaseException as exc:      # noqa: BLE001 - handed to the test thread
            self.error = exc

    def join(self):
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the background probe did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def mlp():
    return problems("mlp")[0].build()


# ----------------------------------------------------------------------------- (a) two threads, one model
def test_a_second_thread_is_refused_and_the_first_probe_finishes_correctly():
    model, loss_fn, batches = mlp()
    a, b = point(model, 1), point(model, 2)
    expected = lp.LandscapeProbe(copy.deepcopy(model), loss_fn, batches).interpolate(a, b, points=5)
    dress(model)
    snap = snapshot(model)
    held = Holding(loss_fn, at=7)                         # the third of five points, mid-sweep
    first = Background(lambda: lp.LandscapeProbe(model, held, batches).interpolate(a, b, points=5))
    try:
        assert held.started.wait(WAIT)
        # the model now holds an interpolation point; a second probe must not touch it
        with pytest.raises(ProbeInProgressError, match="^MLP is being probed by interpolate in another thread"):
            lp.LandscapeProbe(model, loss_fn, batches).loss()
        other = Background(lambda: lp.LandscapeProbe(model, loss_fn, batches).hessian().trace(matvecs=4))
        with pytest.raises(ProbeInProgressError, match="being probed by interpolate in another thread"):
            other.join()
    finally:
        held.release.set()
    curve = first.join()
    np.testing.assert_array_equal(curve.losses, expected.losses)
    assert curve.loss_a == expected.loss_a and curve.loss_b == expected.loss_b
    assert_restored(model, snap, rng=False)       # the global RNG is shared by both threads
    assert lp.LandscapeProbe(model, loss_fn, batches).interpolate(a, b, points=5).losses.tolist() == \
        expected.losses.tolist()                  # released: probed again, same answer


def test_a_second_thread_is_refused_while_a_fit_runs():
    """A long probe (connect) holds the model through its fit, not only its evaluations."""
    model, loss_fn, batches = mlp()
    a, b = point(model, 1), point(model, 2)
    held = Holding(loss_fn, at=3)                         # inside the fit's steps
    first = Background(lambda: lp.LandscapeProbe(model, held, batches).connect(a, b, steps=4, points=5))
    try:
        assert held.started.wait(WAIT)
        with pytest.raises(ProbeInProgressError, match=r"being probed by connect \(bezier\) in another thread"):
            lp.LandscapeProbe(model, loss_fn, batches).interpolate(a, b, points=3)
    finally:
        held.release.set()
    assert first.join().losses.shape == (5,)


# ----------------------------------------------------------------------------- (b) a probe inside a probe
OUTER = {
    "loss": lambda probe, a, b: probe.loss(a),
    "interpolate": lambda probe, a, b: probe.interpolate(a, b, points=3),
    "connect": lambda probe, a, b: probe.connect(a, b, steps=2, points=3),
    "perturb": lambda probe, a, b: probe.perturb(lambda p: torch.optim.SGD(p, lr=0.01), steps=2, repeats=1),
    "hessian": lambda probe, a, b: probe.hessian().top_eigenvalues(max_iter=4, tol=1e-3),
}
#: the loss call that starts the inner probe: inside the fit for connect and perturb (after
#: perturb's 3-batch base evaluation), inside a Hessian product for hessian
AT = {"loss": 2, "interpolate": 2, "connect": 2, "perturb": 5, "hessian": 2}
LABEL = {"loss": "LandscapeProbe.loss", "interpolate": "interpolate", "connect": "connect (bezier)",
         "perturb": "perturb", "hessian": "hessian"}


@pytest.mark.parametrize("inner", ["new probe", "same probe"])
@pytest.mark.parametrize("outer", list(OUTER))
def test_a_probe_started_inside_the_loss_is_refused(outer, inner):
    model, loss_fn, batches = mlp()
    a, b = point(model, 1), point(model, 2)
    reference = lp.LandscapeProbe(copy.deepcopy(model), loss_fn, batches).loss()
    dress(model)
    snap = snapshot(model)
    box = {}
    calls = []

    def nested(out, y):
        calls.append(1)
        if len(calls) == AT[outer]:
            again = box["probe"] if inner == "same probe" else lp.LandscapeProbe(model, loss_fn, batches)
            again.loss()
        return loss_fn(out, y)

    box["probe"] = lp.LandscapeProbe(model, nested, batches)
    with pytest.raises(ProbeInProgressError, match="inside its loss or data") as err:
        OUTER[outer](box["probe"], a, b)
    assert f"being probed by {LABEL[outer]}" in str(err.value)
    assert len(calls) == AT[outer]
    assert_restored(model, snap)
    assert lp.LandscapeProbe(model, loss_fn, batches).loss() == reference     # the mark is released


def test_a_probe_started_from_the_data_is_refused():
    """A DataLoader whose collate_fn starts a probe of the same model (user code in the data)."""
    model, loss_fn, batches = mlp()
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    def collate(items):
        lp.LandscapeProbe(model, loss_fn, batches).loss()
        return default_collate(items)

    loader = DataLoader(TensorDataset(x, y), batch_size=5, collate_fn=collate)
    snap = snapshot(model)
    with pytest.raises(ProbeInProgressError, match="being probed by interpolate in this thread"):
        lp.LandscapeProbe(model, loss_fn, loader).interpolate(point(model, 1), point(model, 2), points=3)
    assert_restored(model, snap)


# ----------------------------------------------------------------------------- (c) the model written during a pass
def _meddling(model, loss_fn, at):
    calls = []

    def loss(out, y):
        calls.append(1)
        if len(calls) == at:            # stands in for a training thread's optimizer.step()
            with torch.no_grad():
                next(model.parameters()).add_(1.0)
        return loss_fn(out, y)

    return loss


@pytest.mark.parametrize("kind", ["list", "loader"])
@pytest.mark.parametrize("probe_call", ["loss", "evaluate", "interpolate", "plane"])
def test_parameters_written_during_a_pass_raise_model_changed(probe_call, kind):
    model, loss_fn, batches = mlp()
    reference = lp.LandscapeProbe(copy.deepcopy(model), loss_fn, batches).loss()
    a, b = point(model, 1), point(model, 2)
    data = batches if kind == "list" else shuffling_loader(batches)
    dress(model)
    snap = snapshot(model)
    probe = lp.LandscapeProbe(model, _meddling(model, loss_fn, at=5), data)
    call = {"loss": lambda: probe.loss(a), "evaluate": lambda: probe.evaluate(),
            "interpolate": lambda: probe.interpolate(a, b, points=4),
            "plane": lambda: probe.plane(a, span=0.5, points=3)}[probe_call]
    with pytest.raises(ModelChangedError, match="changed during a pass over the data"):
        call()
        call()                          # "loss"/"evaluate" make 3 loss calls each: the 5th is in the second
    assert_restored(model, snap)        # the write is undone with everything else
    assert lp.LandscapeProbe(model, loss_fn, batches).loss() == reference     # released, model intact


def test_an_optimizer_step_from_another_thread_raises_model_changed():
    """A training thread steps the optimizer while a probe holds the model mid-pass."""
    model, loss_fn, batches = mlp()
    reference = lp.LandscapeProbe(copy.deepcopy(model), loss_fn, batches).loss()
    a, b = point(model, 1), point(model, 2)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    snap = snapshot(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    held = Holding(loss_fn, at=5)                         # mid-pass of the second point
    first = Background(lambda: lp.LandscapeProbe(model, held, batches).interpolate(a, b, points=4))
    try:
        assert held.started.wait(WAIT)
        opt.step()                                        # the "training thread"
    finally:
        held.release.set()
    with pytest.raises(ModelChangedError, match="trained"):
        first.join()
    assert_restored(model, snap, rng=False)
    assert lp.LandscapeProbe(model, loss_fn, batches).loss() == reference


# ----------------------------------------------------------------------------- (d) released, and different models
def test_after_errors_the_model_is_released():
    model, loss_fn, batches = mlp()
    reference = lp.LandscapeProbe(copy.deepcopy(model), loss_fn, batches).loss()

    def fails(out, y):
        raise RuntimeError("boom")

    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):
            lp.LandscapeProbe(model, fails, batches).interpolate(point(model, 1), point(model, 2), points=3)
        with pytest.raises(ModelChangedError):
            lp.LandscapeProbe(model, _meddling(model, loss_fn, at=1), batches).loss()
        with pytest.raises(KeyboardInterrupt):
            lp.LandscapeProbe(model, _interrupt, batches).hessian().trace(matvecs=4)
    assert lp.LandscapeProbe(model, loss_fn, batches).loss() == reference
    # and from another thread too: no mark left behind, whichever thread set it
    assert Background(lambda: lp.LandscapeProbe(model, loss_fn, batches).loss()).join() == reference


def _interrupt(out, y):
    raise KeyboardInterrupt


def test_two_different_models_are_probed_concurrently():
    model_a, loss_fn, batches = mlp()
    model_b, loss_b, batches_b = problems("conv_bn")[0].build()
    pa1, pa2 = point(model_a, 1), point(model_a, 2)
    pb1, pb2 = point(model_b, 1), point(model_b, 2)
    want_a = lp.LandscapeProbe(copy.deepcopy(model_a), loss_fn, batches).interpolate(pa1, pa2, points=5)
    want_b = lp.LandscapeProbe(copy.deepcopy(model_b), loss_b, batches_b).interpolate(pb1, pb2, points=5)
    snap_a, snap_b = snapshot(model_a), snapshot(model_b)
    held = Holding(loss_fn, at=7)
    first = Background(lambda: lp.LandscapeProbe(model_a, held, batches).interpolate(pa1, pa2, points=5))
    try:
        assert held.started.wait(WAIT)
        # model A is held mid-sweep in the other thread; model B is free
        second = Background(lambda: lp.LandscapeProbe(model_b, loss_b, batches_b).interpolate(pb1, pb2, points=5))
        curve_b = second.join()
    finally:
        held.release.set()
    curve_a = first.join()
    np.testing.assert_array_equal(curve_a.losses, want_a.losses)
    np.testing.assert_array_equal(curve_b.losses, want_b.losses)
    assert_restored(model_a, snap_a, rng=False)
    assert_restored(model_b, snap_b, rng=False)


def test_a_parameter_written_between_two_points_of_a_sweep_is_refused(monkeypatch):
    # stands in for a training thread whose optimizer.step() lands between two points
    import landprobe.engine.core as core

    model = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real_progress = core.progress

    def stepping_progress(items, *args, **kwargs):
        for k, item in enumerate(real_progress(items, *args, **kwargs)):
            if k == 1:
                with torch.no_grad():
                    model.bias.add_(1.0)
            yield item

    monkeypatch.setattr(core, "progress", stepping_progress)
    probe = lp.LandscapeProbe(model, torch.nn.MSELoss(), [(torch.randn(4, 2), torch.randn(4, 1))])
    a = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelChangedError, match="must not be trained while it is probed"):
        probe.interpolate(a, a, points=3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_submodule_or_a_model_sharing_a_parameter_is_refused_while_its_parent_is_probed():
    parent = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    other = torch.nn.Linear(2, 3)
    other.weight = parent[0].weight                            # tied across two models
    x, y = torch.randn(4, 2), torch.randn(4, 1)
    calls = []

    def nested(out, target):                                   # runs inside the parent's probe
        for model, data in ((parent[0], [(x, torch.randn(4, 3))]), (other, [(x, torch.randn(4, 3))])):
            with pytest.raises(ProbeInProgressError, match="shares parameters with Sequential, which is being probed"):
                lp.LandscapeProbe(model, torch.nn.MSELoss(), data).loss()
            calls.append(model)
        return torch.nn.functional.mse_loss(out, target)
    nested.reduction = "mean"    # stated, so the engine's reduction check does not call it again

    lp.LandscapeProbe(parent, nested, [(x, y)]).loss()
    assert calls == [parent[0], other]
    # released: each can be probed now, and a model sharing nothing is never refused
    lp.LandscapeProbe(parent[0], torch.nn.MSELoss(), [(x, torch.randn(4, 3))]).loss()
    lp.LandscapeProbe(other, torch.nn.MSELoss(), [(x, torch.randn(4, 3))]).loss()


@pytest.mark.parametrize("family", ["connect", "auto_neb", "level_set"])
def test_a_parameter_written_during_a_fit_is_refused(family):
    # stands in for a training thread stepping while a curve, a band or a descent is fitted
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):                                      # near a minimum, so the midpoint rises
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = {k: v.clone() for k, v in model.state_dict().items()}
    perm = torch.tensor([2, 0, 1])                           # the same function, hidden units permuted
    b = {"0.weight": a["0.weight"][perm], "0.bias": a["0.bias"][perm], "2.weight": a["2.weight"][:, perm],
         "2.bias": a["2.bias"].clone()}
    fitting = []

    def meddling(out, target):
        if torch.is_grad_enabled():                           # a fit step, not a measurement
            fitting.append(1)
            if len(fitting) > 2:
                with torch.no_grad():
                    model[0].bias.add_(1.0)
        return torch.nn.functional.mse_loss(out, target)

    probe = lp.LandscapeProbe(model, meddling, [(x, y)])
    with pytest.raises(ModelChangedError, match="must not be trained while it is probed"):
        if family == "connect":
            probe.connect(a, b, method="polychain", steps=5, points=3)
        elif family == "auto_neb":
            probe.auto_neb(a, b, schedule=[dict(steps=5, lr=0.01, insert=1)], points=3)
        else:
            ends, mid = probe.loss(a), probe.interpolate(a, b, points=3).losses[1]
            assert mid > ends                                 # the segment rises: a descent is needed
            probe.level_set(a, b, threshold=ends + 0.5 * (mid - ends), steps=20, check_every=5)
    assert fitting, "the probe ran no fit step"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
