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
    args = dict(method="bezier", bends=2, steps=12, lr=0.01, optimizer="adam", t_samples=2, points=5, seed=3,
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
                      optimizer="adam", t_samples=2, points=5, seed=3, checkpoint=ck, checkpoint_every=4)
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
                      optimizer="adam", t_samples=2, points=5, seed=3, checkpoint=ck, checkpoint_every=4)
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
                                 points=9, checkpoint=checkpoint, **kw)


def test_auto_neb_resumes_after_the_last_finished_cycle(tmp_path):
    _, plain = neb(Interrupting(toys.energy))
    ck = tmp_path / "neb.pt"
    loss = Interrupting(toys.energy, at=None)
    with pytest.raises(KeyboardInterrupt):
        # the first cycle makes 15 steps of one call each (the band's images share one batched
        # call), the second measures the band for insertion (13 calls) and relaxes in calls 29-43:
        # call 36 falls in its relaxation
        neb(Interrupting(toys.energy, at=36), checkpoint=ck)
    state = torch.load(ck, weights_only=True)
    assert state["cycle"] == 1 and state["consumed"] == 15
    _, resumed = neb(loss, checkpoint=ck)
    assert resumed.settings["resumed_at_cycle"] == 1
    assert resumed.settings["schedule"] == plain.settings["schedule"]
    np.testing.assert_array_equal(resumed.losses, plain.losses)
    np.testing.assert_array_equal(resumed.knots, plain.knots)
    with pytest.raises(ValueError, match="belongs to another auto_neb"):
        neb(Interrupting(toys.energy), checkpoint=ck, momentum=0.5)


# ---------------------------------------------------------------- level sets: checkpoints per bead
def level(loss, checkpoint=None):
    p = toys.deep_linear(seed=0)
    probe = lp.LandscapeProbe(p["model"], loss, p["data"])
    line = probe.interpolate(p["a"], p["b"], points=21)
    threshold = p["minimum"] + 0.1 * (line.losses.max() - p["minimum"])
    return p["model"], probe.level_set(p["a"], p["b"], threshold=threshold, steps=300, lr=0.2,
                                       checkpoint=checkpoint)


def test_level_set_resumes_after_the_last_accepted_bead(tmp_path, monkeypatch):
    import landprobe.probes.curves.levelset as ls_mod

    counter = Interrupting(toys.deep_linear(seed=0)["loss_fn"])
    saves = []
    real_save = ls_mod.atomic_torch_save
    monkeypatch.setattr(ls_mod, "atomic_torch_save",
                        lambda obj, path: (saves.append(counter.calls), real_save(obj, path))[1])
    _, plain = level(counter, checkpoint=tmp_path / "first.pt")
    assert plain.connected and plain.settings["descents"] >= 2 and len(saves) == plain.settings["descents"]
    ck = tmp_path / "ls.pt"
    stop = Interrupting(toys.deep_linear(seed=0)["loss_fn"], at=saves[0] + 3)   # inside the second descent
    with pytest.raises(KeyboardInterrupt):
        level(stop, checkpoint=ck)
    assert torch.load(ck, weights_only=True)["descents"] == 1
    _, resumed = level(Interrupting(toys.deep_linear(seed=0)["loss_fn"]), checkpoint=ck)
    assert resumed.settings["resumed_after_descents"] == 1
    assert resumed.connected == plain.connected and len(resumed.beads) == len(plain.beads)
    # to float rounding: reloaded beads may sit at other memory alignments, and vectorised
    # lerp kernels round the head and tail of an array differently (last-digit differences)
    np.testing.assert_allclose(resumed.losses, plain.losses, rtol=1e-12)
    np.testing.assert_allclose(resumed.bead_losses, plain.bead_losses, rtol=1e-12)
    assert resumed.length == pytest.approx(plain.length, rel=1e-12)
