"""The memorization experiment (Zhang et al. 2017) on tiny synthetic problems."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from landprobe.data import ShuffledPixels
from landprobe.generalization.memorization import (
    INPUT_VARIANTS,
    MemorizationOptions,
    MemorizationResult,
    classification_error,
    memorization,
)


def blobs(n=64, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def mlp(seed=0):
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))


def adam(ps):
    return torch.optim.Adam(ps, lr=0.01)


FAST = MemorizationOptions(threshold=0.3, max_steps=400, batch_size=16, optimizer=adam)


@pytest.fixture(scope="module")
def result():
    train, test = blobs(), blobs(seed=1)
    return memorization(mlp, train, test, nn.CrossEntropyLoss(), [0.0, 0.5, "random_labels", "gaussian"],
                        num_classes=2, seeds=(0, 1), options=FAST, progress=False)


def test_clean_fits_in_fewer_steps_than_random_labels(result):
    assert result.names == ["clean", "labels 0.5", "labels 1", "gaussian"]
    assert result.levels == [0.0, 0.5, 1.0, None]
    assert result.status[0] == ["fit", "fit"]
    clean = result.steps_to_fit[0]
    random = np.where(result.reached[2], result.steps_to_fit[2], result.steps_run[2])
    assert (clean < random).all(), (clean, random)
    assert (result.relative_time[0] == 1.0).all()
    assert result.test_error[0].mean() < 0.2 and result.test_error[2].mean() > 0.25   # chance is 0.5


def test_records_follow_the_grid_and_stop_at_the_fit(result):
    every = math.ceil(64 / 16)
    assert result.steps.tolist() == list(range(0, 400, every)) + [400]
    for s in range(len(result.names)):
        for k in range(2):
            loss = result.train_loss[s, k]
            last = int(np.flatnonzero(np.isfinite(loss))[-1])
            assert result.steps_run[s, k] == result.steps[last]
            assert np.isnan(loss[last + 1:]).all() and np.isfinite(loss[: last + 1]).all()
            if result.reached[s, k]:
                assert result.steps_to_fit[s, k] == result.steps[last] and loss[last] <= 0.3 < loss[last - 1]
                assert result.final_loss[s, k] == loss[last]


def test_save_load_round_trip(result, tmp_path):
    path = result.save(tmp_path / "m.json")
    back = MemorizationResult.load(path)
    for name in ("steps", "train_loss", "batch_loss", "steps_to_fit", "steps_run", "final_loss", "train_error",
                 "test_error", "test_loss", "seconds"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name), err_msg=name)
    assert back.names == result.names and back.levels == result.levels and back.status == result.status
    assert back.seeds == result.seeds and back.threshold == result.threshold and back.settings == result.settings
    assert back.markdown() == result.markdown()


def test_plot_writes_a_png(result, tmp_path):
    fig = result.plot()
    fig.savefig(tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 10_000
    assert [ax.get_title() for ax in fig.axes[:3]] == ["(a) training loss", "(b) relative convergence time",
                                                       "(c) test error"]


def test_budget_is_reported_as_not_reached(tmp_path):
    opts = MemorizationOptions(threshold=1e-6, max_steps=10, batch_size=16, record_every=4, optimizer=adam)
    res = memorization(mlp, blobs(), blobs(seed=1), nn.CrossEntropyLoss(), ["clean", "shuffled_targets"],
                       options=opts, progress=False)
    assert res.steps.tolist() == [0, 4, 8, 10]
    assert res.status == [["budget"], ["budget"]] and not res.reached.any()
    assert np.isnan(res.steps_to_fit).all() and (res.steps_run == 10).all()
    assert np.isnan(res.relative_time).all()
    row = res.summary()[0]
    assert row["steps_to_fit"] is None and row["fitted"] == "0/1" and row["status"] == ["budget"]
    assert "| clean | 0 | 0/1 | > 10 | n/a |" in res.markdown()
    res.settings["reference"] = {"value": 0.5, "label": "bicubic"}
    fig = res.plot()                                             # fewer than two label levels: bars
    fig.savefig(tmp_path / "bars.png")
    assert [t.get_text() for t in fig.axes[2].get_legend().get_texts()] == ["bicubic"]


def test_regression_with_shuffled_targets_and_an_error_function():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, generator=g)
    data = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]))
    opts = MemorizationOptions(threshold=0.05, max_steps=600, batch_size=16, optimizer=adam, check="running")
    res = memorization(lambda s: nn.Sequential(nn.Linear(3, 64), nn.Tanh(), nn.Linear(64, 1)), data, data,
                       nn.MSELoss(), ["shuffled_targets"], error_fn=nn.MSELoss(), error_name="test MSE",
                       progress=False, options=opts)
    assert res.names == ["clean", "shuffled_targets"] and res.error_name == "test MSE"
    clean, shuffled = res.steps_to_fit[0, 0], res.steps_run[1, 0]
    assert res.reached[0, 0] and clean < shuffled
    np.testing.assert_allclose(res.test_error, res.test_loss)          # error_fn is the loss here
    assert res.test_error[1, 0] > 5 * res.test_error[0, 0]
    assert np.isnan(res.batch_loss[:, :, 0]).all()
    reached = res.reached[0, 0]
    last = int(np.flatnonzero(np.isfinite(res.train_loss[0, 0]))[-1])
    assert reached and res.train_loss[0, 0, last] == res.batch_loss[0, 0, last]   # check="running"


def test_user_data_and_global_rng_are_untouched():
    train = blobs()
    before = [t.clone() for t in train.tensors]
    state = torch.get_rng_state()
    memorization(mlp, train, train, nn.CrossEntropyLoss(), [1.0, "random_pixels"], num_classes=2, progress=False,
                 options=MemorizationOptions(threshold=0.3, max_steps=8, batch_size=16, optimizer=adam))
    assert all(torch.equal(a, b) for a, b in zip(before, train.tensors))
    assert torch.equal(torch.get_rng_state(), state)


def test_runs_are_reproducible_and_seeded():
    kw = {"num_classes": 2, "progress": False, "options": MemorizationOptions(threshold=1e-3, max_steps=12,
                                                                           batch_size=16, record_every=4)}
    a = memorization(mlp, blobs(), blobs(), nn.CrossEntropyLoss(), [1.0], seeds=(0, 1), **kw)
    b = memorization(mlp, blobs(), blobs(), nn.CrossEntropyLoss(), [1.0], seeds=(0, 1), **kw)
    np.testing.assert_array_equal(a.train_loss, b.train_loss)
    assert not np.array_equal(a.train_loss[:, 0], a.train_loss[:, 1])


def test_divergence_is_reported():
    data = TensorDataset(torch.randn(32, 2), torch.randn(32, 1))
    opts = MemorizationOptions(threshold=1e-3, max_steps=200, batch_size=8,
                               optimizer=lambda ps: torch.optim.SGD(ps, lr=1e4))
    res = memorization(lambda s: nn.Linear(2, 1), data, data, nn.MSELoss(), ["clean"], error_fn=nn.MSELoss(),
                       options=opts, progress=False)
    assert res.status == [["diverged"]] and res.steps_run[0, 0] < 200 and not res.reached.any()


def test_a_model_that_starts_at_nan_is_reported_as_diverged():
    def broken(seed):
        model = nn.Linear(2, 1)
        with torch.no_grad():
            model.weight.fill_(float("nan"))
        return model
    data = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    res = memorization(broken, data, data, nn.MSELoss(), ["clean"], error_fn=nn.MSELoss(), progress=False,
                       options=MemorizationOptions(max_steps=5, batch_size=4))
    assert res.status == [["diverged"]] and res.steps_run[0, 0] == 0 and np.isnan(res.final_loss[0, 0])


def test_clip_norm_limits_the_steps():
    data = TensorDataset(torch.randn(32, 2), torch.randn(32, 1))
    res = memorization(lambda s: nn.Linear(2, 1), data, data, nn.MSELoss(), ["clean"], error_fn=nn.MSELoss(),
                       progress=False, options=MemorizationOptions(
                           threshold=1e-6, max_steps=8, batch_size=8, clip_norm=1e-9, record_every=8,
                           optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1)))
    loss = res.train_loss[0, 0]
    assert abs(loss[1] - loss[0]) < 1e-6 * loss[0]


def test_shuffled_pixels_scores_on_identically_permuted_test_inputs():
    from landprobe.generalization.memorization import _Setting, _views

    imgs = TensorDataset(torch.randn(10, 1, 3, 3), torch.zeros(10, dtype=torch.long))
    train, test = _views(_Setting("shuffled_pixels", "shuffled_pixels", None), imgs, imgs, 3, None)
    assert isinstance(test, ShuffledPixels) and torch.equal(test.permutation, train.permutation)
    for kind in ("random_pixels", "gaussian", "shuffled_targets"):
        assert _views(_Setting(kind, kind, None), imgs, imgs, 3, None)[1] is imgs
    assert _views(_Setting("labels 0.5", "labels", 0.5), imgs, imgs, 3, 2)[1] is imgs


def test_classification_error():
    out = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert float(classification_error(out, torch.tensor([0, 1, 1, 1]))) == 0.25
    with pytest.raises(ValueError, match="needs scores \\(B, C\\) and integer class indices.*pass error_fn="):
        classification_error(torch.zeros(4, 1), torch.zeros(4, 1))


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"corruptions": ["pixels"]}, ValueError, "corruption 'pixels'; expected a label-corruption level"),
    ({"corruptions": [1.5]}, ValueError, "corruption 1.5; a label-corruption level must be a number in"),
    ({"corruptions": [0.5], "num_classes": None}, ValueError, "needs num_classes="),
    ({"corruptions": [0.0, "clean"]}, ValueError, "name 'clean' twice"),
    ({"corruptions": ["gaussian", "gaussian"]}, ValueError, "name 'gaussian' twice"),
    ({"corruptions": []}, ValueError, "expected a non-empty list"),
    ({"seeds": (0, 0)}, ValueError, "repeat a seed"),
    ({"seeds": (-1,)}, ValueError, "seed=-1; expected an integer >= 0"),
    ({"num_classes": 1}, ValueError, "num_classes=1; expected an integer >= 2"),
    ({"options": {"threshold": 0.1}}, TypeError, "expected a MemorizationOptions"),
    ({"model_factory": mlp()}, TypeError, "model_factory is a Sequential; pass a function"),
    ({"train": DataLoader(blobs())}, TypeError, "`train` is a DataLoader; pass its dataset"),
    ({"test": iter([])}, TypeError, "`test` \\(list_iterator\\) must be a map-style dataset"),
    ({"loss_fn": nn.MSELoss}, TypeError, "received the class MSELoss"),
])
def test_argument_errors(kwargs, exc, match):
    args = {"model_factory": mlp, "train": blobs(), "test": blobs(), "loss_fn": nn.CrossEntropyLoss(),
            "corruptions": [0.5], "num_classes": 2, "options": MemorizationOptions(max_steps=1), "progress": False}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        memorization(**args)


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 0.0}, "threshold=0.0; expected a finite number > 0"),
    ({"max_steps": 0}, "max_steps=0; expected an integer >= 1"),
    ({"record_every": 0}, "record_every=0; expected an integer >= 1"),
    ({"clip_norm": -1.0}, "clip_norm=-1.0; expected a finite number > 0"),
    ({"check": "exact"}, "check='exact'; expected one of"),
])
def test_option_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemorizationOptions(**kwargs)
    with pytest.raises(TypeError, match="expected None or a callable params"):
        MemorizationOptions(optimizer="sgd")


def test_optimizer_factory_must_return_an_optimizer():
    with pytest.raises(TypeError, match="optimizer returned a list, not a torch.optim.Optimizer"):
        memorization(mlp, blobs(), blobs(), nn.CrossEntropyLoss(), ["clean"], progress=False,
                     options=MemorizationOptions(max_steps=1, optimizer=lambda ps: list(ps)))


def test_input_variant_names_are_the_corruption_kinds():
    from landprobe.data import CORRUPTION_KINDS

    assert set(INPUT_VARIANTS) == set(CORRUPTION_KINDS) - {"labels"}


@pytest.mark.slow
@pytest.mark.parametrize("script", ["memorization_digits", "memorization_sr"])
def test_examples_quick_runs_write_json_png_and_table(script, tmp_path):
    import importlib
    import sys
    from pathlib import Path

    pytest.importorskip("sklearn")
    folder = str(Path(__file__).resolve().parents[1] / "examples" / "generalization")
    sys.path.insert(0, folder)
    try:
        module = importlib.import_module(script)
        threads = torch.get_num_threads()
        try:
            result = module.main(["--out", str(tmp_path), "--quick", "--threads", "1"])
        finally:
            torch.set_num_threads(threads)
    finally:
        sys.path.remove(folder)
    back = MemorizationResult.load(tmp_path / "memorization.json")
    assert back.names == result.names and back.names[0] == "clean"
    assert {"command", "torch", "cpu", "date"} <= set(back.settings["run"])
    assert (tmp_path / "memorization.png").stat().st_size > 10_000
    assert (tmp_path / "table.md").read_text().startswith("| setting |")
