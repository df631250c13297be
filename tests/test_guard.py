"""The restore promise, one skeleton over every probe family (BackPACK-style: problems as data).

Each probe family runs on a subset of :data:`problems.PROBLEMS`, on a plain list of batches and
on a shuffling DataLoader (which draws from the global torch RNG on each pass), and is stopped
midway by an exception or a KeyboardInterrupt raised from inside the loss function. Afterwards
the model must be exactly as it was: parameters and buffers bitwise, ``requires_grad``,
``.grad`` (object and values), every module's train/eval mode, and the global RNGs (torch,
numpy, Python ``random``) drawing what they would have drawn without the probe. The loss
function itself draws from each RNG at every call, so those checks can fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import landprobe as lp
from landprobe.engine import ModelChangedError
from problems import (Boom, Interrupting, Problem, assert_restored, dress, draw_from_every_rng, point, problems,
                      shuffling_loader, snapshot)


# ----------------------------------------------------------------------------- the families
def _endpoints(model, loss_fn, batches) -> dict[str, Any]:
    return {"a": point(model, 1), "b": point(model, 2)}


def _permuted(model) -> dict[str, torch.Tensor]:
    """The MLP with its hidden units permuted: the same function, another point."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    perm = torch.roll(torch.arange(sd["fc1.bias"].numel()), 1)
    sd["fc1.weight"], sd["fc1.bias"] = sd["fc1.weight"][perm], sd["fc1.bias"][perm]
    sd["fc2.weight"] = sd["fc2.weight"][:, perm]
    return sd


def _level_set_setup(model, loss_fn, batches) -> dict[str, Any]:
    """Endpoints of equal, low loss (the MLP near its teacher and a permutation of it) and a
    threshold halfway up to the midpoint's loss: the search must descend from the midpoint."""
    a, b = {k: v.detach().clone() for k, v in model.state_dict().items()}, _permuted(model)
    probe = lp.LandscapeProbe(model, loss_fn, batches)
    la, lb = probe.loss(a), probe.loss(b)
    mid = probe.loss({k: (a[k] + b[k]) / 2 for k in a})
    assert mid > 4 * max(la, lb), (la, lb, mid)           # the segment rises well above the ends
    return {"a": a, "b": b, "threshold": (max(la, lb) + mid) / 2}


@dataclass(frozen=True)
class Family:
    name: str
    run: Callable[[torch.nn.Module, Callable, Any, dict], Any]
    problems: list[Problem]
    setup: Callable[[torch.nn.Module, Callable, Any], dict] = field(default=_endpoints)

    def __repr__(self) -> str:
        return self.name


def _probe(model, loss_fn, data):
    return lp.LandscapeProbe(model, loss_fn, data, progress=False)


FAMILIES = [
    Family("loss", lambda m, l, d, c: _probe(m, l, d).loss(c["a"]), problems()),
    Family("interpolate", lambda m, l, d, c: _probe(m, l, d).interpolate(c["a"], c["b"], points=4), problems()),
    Family("plane", lambda m, l, d, c: _probe(m, l, d).plane(c["a"], span=0.5, points=3),
           problems("mlp", "conv_bn", "tied")),
    Family("connect", lambda m, l, d, c: _probe(m, l, d).connect(c["a"], c["b"], method="bezier", steps=4, lr=0.01,
                                                                 points=5),
           problems("mlp", "dropout", "eval_child")),
    Family("auto_neb", lambda m, l, d, c: _probe(m, l, d).auto_neb(
        c["a"], c["b"], schedule=[dict(steps=2, lr=0.01, insert=1), dict(steps=2, lr=0.01)], sub_points=3,
        points=5), problems("mlp")),
    Family("level_set", lambda m, l, d, c: _probe(m, l, d).level_set(
        c["a"], c["b"], c["threshold"], steps=4, lr=0.05, check_points=3, check_every=2, max_beads=4),
        problems("mlp"), _level_set_setup),
    Family("perturb", lambda m, l, d, c: _probe(m, l, d).perturb(lambda p: torch.optim.SGD(p, lr=0.01), scale=0.1,
                                                                 steps=3, repeats=2),
           problems("mlp", "frozen", "conv_bn")),
    Family("top_eigenvalues", lambda m, l, d, c: _probe(m, l, d).hessian(graph="streamed").top_eigenvalues(
        tol=1e-3, max_iter=6), problems("mlp", "conv_bn", "warship", "tied", "buffer")),
    Family("trace", lambda m, l, d, c: _probe(m, l, d).hessian(graph="streamed").trace(matvecs=6),
           problems("mlp", "conv_bn", "warship")),
    Family("capacity_report", lambda m, l, d, c: lp.capacity.report(m, d, loss_fn=l, sharpness_steps=2,
                                                                     pac_bayes_samples=2),
           problems("mlp", "conv_bn")),
    Family("monitor", lambda m, l, d, c: lp.LandscapeMonitor(m, l, d, hessian=True, trace_matvecs=4,
                                                             interpolate_points=3)(1),
           problems("mlp", "conv_bn")),
]

CASES = [pytest.param(f, p, id=f"{f.name}-{p.name}") for f in FAMILIES for p in f.problems]
KINDS = ["list", "loader"]


def _data(batches, kind: str):
    return batches if kind == "list" else shuffling_loader(batches)


_CALLS: dict[tuple[str, str, str], int] = {}


def loss_calls(family: Family, problem: Problem, kind: str) -> int:
    """Loss calls of the uninterrupted probe on a fresh copy of the problem (cached)."""
    key = (family.name, problem.name, kind)
    if key not in _CALLS:
        model, loss_fn, batches = problem.build()
        ctx = family.setup(model, loss_fn, batches)
        counting = Interrupting(loss_fn)
        family.run(model, counting, _data(batches, kind), ctx)
        _CALLS[key] = counting.calls
    return _CALLS[key]


# ----------------------------------------------------------------------------- the skeleton
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt], ids=["exception", "keyboard"])
@pytest.mark.parametrize("family, problem", CASES)
def test_interrupted_probe_leaves_the_model_as_it_found_it(family, problem, exc, kind):
    total = loss_calls(family, problem, kind)
    assert total >= 2, f"{family.name} called the loss {total} time(s): nothing to interrupt midway"
    at = total // 2 + 1                                # past the first call, not beyond the last
    model, loss_fn, batches = problem.build()
    ctx = family.setup(model, loss_fn, batches)
    data = _data(batches, kind)
    dress(model)
    draw_from_every_rng()
    snap = snapshot(model)
    interrupting = Interrupting(loss_fn, at, exc)
    with pytest.raises(exc, match=f"interrupted at loss call {at}$"):
        family.run(model, interrupting, data, ctx)
    assert interrupting.calls == at
    assert_restored(model, snap)
    # the model is no longer marked as probed: a new probe runs, on the untouched model
    assert _probe(model, loss_fn, batches).loss() == _probe(problem.build()[0], loss_fn, batches).loss()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_uninterrupted_probe_with_a_shuffling_loader_leaves_the_rngs(family):
    problem = family.problems[0]
    model, loss_fn, batches = problem.build()
    ctx = family.setup(model, loss_fn, batches)
    loader = shuffling_loader(batches)
    dress(model)
    draw_from_every_rng()
    snap = snapshot(model)
    counting = Interrupting(loss_fn)
    result = family.run(model, counting, loader, ctx)
    assert result is not None and counting.calls >= 2
    assert_restored(model, snap)


def test_a_shuffling_loader_draws_from_the_global_torch_rng():
    """What the loader cases rely on: without the guard, iterating it moves the torch RNG."""
    _, _, batches = problems("mlp")[0].build()
    before = torch.get_rng_state()
    orders = [torch.cat([x for x, _ in shuffling_loader(batches)]) for _ in range(2)]
    assert not torch.equal(before, torch.get_rng_state())
    assert not torch.equal(orders[0], orders[1])


def test_level_set_case_descends():
    """The level-set case forces a descent (a bead is inserted between the endpoints)."""
    family = next(f for f in FAMILIES if f.name == "level_set")
    model, loss_fn, batches = family.problems[0].build()
    ctx = family.setup(model, loss_fn, batches)
    result = family.run(model, loss_fn, batches, ctx)
    assert len(result.bead_ts) > 2 or "descent" in result.reason


# ----------------------------------------------------------------------------- tensors replaced, not written
def _replacing(model, loss_fn, what: str, at: int):
    """A loss that, at call ``at``, replaces a parameter or a buffer of the model by a new tensor
    (as ``module.weight = nn.Parameter(...)`` or ``load_state_dict(..., assign=True)`` would)."""
    calls = []

    def loss(out, y):
        calls.append(1)
        if len(calls) == at:
            if what == "parameter":
                model.conv.weight = torch.nn.Parameter(torch.zeros_like(model.conv.weight.detach()))
            else:
                model.bn.running_mean = torch.zeros_like(model.bn.running_mean)
        return loss_fn(out, y)

    return loss


@pytest.mark.parametrize("what", ["parameter", "buffer"])
def test_a_tensor_replaced_during_a_pass_is_put_back(what):
    """A parameter replaced during an evaluation pass is a changed model (ModelChangedError; the
    new one, made under inference_mode, has no version counter); a replaced buffer is not checked
    (BatchNorm writes its own under bn="train"). Either way the model gets its own objects back."""
    model, loss_fn, batches = problems("conv_bn")[0].build()
    dress(model)
    snap = snapshot(model)
    probe = _probe(model, _replacing(model, loss_fn, what, at=2), batches)
    if what == "parameter":
        with pytest.raises(ModelChangedError, match="changed during a pass"):
            probe.interpolate(point(model, 1), point(model, 2), points=3)
    else:
        probe.interpolate(point(model, 1), point(model, 2), points=3)
    assert_restored(model, snap)
    assert not any(t.is_inference() for t in list(model.parameters()) + list(model.buffers()))
    x, y = batches[0]
    model.train()
    loss_fn(model(x), y).backward()                     # the user can still train it
    assert model.conv.weight.grad is not None


def test_a_parameter_replaced_during_a_fit_is_refused_and_put_back():
    # the fit's own steps never read the model's parameters, but the measurement after it would
    model, loss_fn, batches = problems("conv_bn")[0].build()
    snap = snapshot(model)
    with pytest.raises(ModelChangedError, match="must not be trained while it is probed"):
        _probe(model, _replacing(model, loss_fn, "parameter", at=1), batches).connect(
            point(model, 1), point(model, 2), steps=2, points=3)
    assert_restored(model, snap)


def test_a_single_evaluation_shows_a_bar_over_the_batches(capsys):
    model = torch.nn.Linear(2, 1)
    data = [(torch.randn(3, 2), torch.randn(3, 1)) for _ in range(5)]
    lp.LandscapeProbe(model, torch.nn.MSELoss(), data, progress=True).loss()
    err = capsys.readouterr().err
    assert "LandscapeProbe.loss" in err and "/5 " in err          # a bar over the 5 batches
    lp.LandscapeProbe(model, torch.nn.MSELoss(), data, progress=False).loss()
    assert capsys.readouterr().err == ""
