"""connect(checkpoint=...): an interrupted curve fit resumes to the uninterrupted result."""

import numpy as np
import pytest
import torch

import landprobe as lp
from helpers import CASES, assert_same_snapshot, perturbed, snapshot


class Interrupting:
    """The case's loss, raising KeyboardInterrupt on its ``at``-th call (never if None)."""

    def __init__(self, loss_fn, at=None):
        self.loss_fn, self.at, self.calls = loss_fn, at, 0

    def __call__(self, out, y):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return self.loss_fn(out, y)


def fit(loss, checkpoint=None, **kw):
    model, data = CASES[0].build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, loss, data)
    args = dict(method="bezier", bends=2, steps=12, lr=0.01, optimizer="adam", t_samples=2, eval_points=5, seed=3,
                checkpoint_every=4)
    args.update(kw)
    return model, probe.connect(perturbed(model, 1), perturbed(model, 2), checkpoint=checkpoint, **args)


def test_interrupted_fit_resumes_to_the_uninterrupted_result(tmp_path):
    _, plain = fit(Interrupting(CASES[0].loss_fn))
    ck = tmp_path / "connect.pt"
    loss = Interrupting(CASES[0].loss_fn, at=2 * 9 + 1)      # 2 t-samples per step: stops in step 10
    model, data = CASES[0].build(dtype=torch.float64)
    before = snapshot(model)
    probe = lp.LandscapeProbe(model, loss, data)
    with pytest.raises(KeyboardInterrupt):
        probe.connect(perturbed(model, 1), perturbed(model, 2), method="bezier", bends=2, steps=12, lr=0.01,
                      optimizer="adam", t_samples=2, eval_points=5, seed=3, checkpoint=ck, checkpoint_every=4)
    assert_same_snapshot(before, snapshot(model))
    state = torch.load(ck, weights_only=True)
    assert state["step"] == 8 and len(state["train_losses"]) == 8
    _, resumed = fit(Interrupting(CASES[0].loss_fn), checkpoint=ck)
    assert resumed.settings["resumed_at_step"] == 8
    assert resumed.settings["train_losses"] == plain.settings["train_losses"]   # bitwise, all 12 steps
    np.testing.assert_array_equal(resumed.losses, plain.losses)
    assert torch.load(ck, weights_only=True)["step"] == 12                   # kept, at the end


def test_checkpointing_does_not_change_the_result(tmp_path):
    _, plain = fit(Interrupting(CASES[0].loss_fn))
    _, with_ck = fit(Interrupting(CASES[0].loss_fn), checkpoint=tmp_path / "c.pt")
    np.testing.assert_array_equal(with_ck.losses, plain.losses)
    assert "resumed_at_step" not in with_ck.settings


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    ck = tmp_path / "c.pt"
    fit(Interrupting(CASES[0].loss_fn), checkpoint=ck)
    with pytest.raises(ValueError, match=r"belongs to another connect\(\) run \(lr: file 0.01, this call 0.02"):
        fit(Interrupting(CASES[0].loss_fn), checkpoint=ck, lr=0.02)
    model, data = CASES[0].build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    with pytest.raises(ValueError, match="norm_b"):                          # other endpoints
        probe.connect(perturbed(model, 1), perturbed(model, 5), method="bezier", bends=2, steps=12, lr=0.01,
                      optimizer="adam", t_samples=2, eval_points=5, seed=3, checkpoint=ck, checkpoint_every=4)
    with pytest.raises(ValueError, match="checkpoint_every"):
        fit(Interrupting(CASES[0].loss_fn), checkpoint=ck, checkpoint_every=0)


# ---------------------------------------------------------------- AutoNEB: checkpoints per cycle
from landprobe.probes import toys  # noqa: E402

SCHEDULE = [dict(steps=15, lr=0.05, insert=2, climbing=False), dict(steps=15, lr=0.05, insert=1, climbing=True),
            dict(steps=15, lr=0.02, insert=1, climbing=True)]


def neb(loss, checkpoint=None, **kw):
    valley = toys.CurvyValley()
    data = [(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))]
    probe = lp.LandscapeProbe(valley, loss, data)
    a, b = valley.minima()
    return valley, probe.connect(a, b, method="neb", schedule=[dict(c) for c in SCHEDULE], sub_points=3,
                                 eval_points=9, checkpoint=checkpoint, **kw)


def test_auto_neb_resumes_after_the_last_finished_cycle(tmp_path):
    _, plain = neb(Interrupting(toys.energy))
    ck = tmp_path / "neb.pt"
    loss = Interrupting(toys.energy, at=None)
    with pytest.raises(KeyboardInterrupt):
        # the first cycle makes 15 steps x 4 images = 60 calls, then insertion measures the band:
        # call 100 falls in the second cycle's relaxation
        neb(Interrupting(toys.energy, at=100), checkpoint=ck)
    state = torch.load(ck, weights_only=True)
    assert state["cycle"] == 1 and state["consumed"] == 15
    _, resumed = neb(loss, checkpoint=ck)
    assert resumed.settings["resumed_at_cycle"] == 1
    assert resumed.settings["schedule"] == plain.settings["schedule"]
    np.testing.assert_array_equal(resumed.losses, plain.losses)
    np.testing.assert_array_equal(resumed.knots, plain.knots)
    with pytest.raises(ValueError, match="belongs to another auto_neb"):
        neb(Interrupting(toys.energy), checkpoint=ck, momentum=0.5)
