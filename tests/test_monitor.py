"""LandscapeMonitor on a tiny training loop: records, barrier, model untouched, save/load, resume."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from landprobe.monitor import LandscapeMonitor, MonitorHistory

D = torch.float64


def setup(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).to(D)
    x = torch.randn(24, 2, dtype=D)
    y = torch.sin(x.sum(1, keepdim=True))
    data = [(x[:12], y[:12]), (x[12:], y[12:])]
    return net, data


def snapshot(net):
    return ({k: v.clone() for k, v in net.state_dict().items()},
            [p.requires_grad for p in net.parameters()], [m.training for m in net.modules()], torch.get_rng_state())


def assert_same(net, snap):
    sd, flags, modes, rng = snap
    now = net.state_dict()
    assert all(torch.equal(sd[k], now[k]) for k in sd)
    assert flags == [p.requires_grad for p in net.parameters()]
    assert modes == [m.training for m in net.modules()]
    assert torch.equal(rng, torch.get_rng_state())


def train_epoch(net, data, opt):
    net.train()
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()


def finite_numbers(obj):
    if isinstance(obj, dict):
        return all(finite_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(finite_numbers(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


@pytest.mark.parametrize("hessian", [False, True])
def test_three_epochs_records_and_model_untouched(tmp_path, hessian):
    net, data = setup()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    monitor = LandscapeMonitor(net, nn.MSELoss(), data, hessian=hessian, trace_matvecs=30,
                               subnets={"first": "0", "last": "2"}, interpolate_points=5, directory=tmp_path)
    for epoch in range(1, 4):
        train_epoch(net, data, opt)
        snap = snapshot(net)
        rec = monitor.epoch_end(epoch)
        assert_same(net, snap)                                   # bitwise: the monitor changes nothing
        assert rec["loss"] == pytest.approx(lp.LandscapeProbe(net, nn.MSELoss(), data).loss(), rel=1e-12)
    hist = monitor.history
    assert len(hist) == 3 and hist.epochs.tolist() == [1.0, 2.0, 3.0]
    assert all(finite_numbers({k: v for k, v in r.items()}) for r in hist.records)
    assert "barrier" not in hist.records[0]
    assert [r["previous_epoch"] for r in hist.records[1:]] == [1, 2]
    assert all(r["barrier"] >= 0 and r["distance"] > 0 for r in hist.records[1:])
    assert set(hist.records[0]["capacity"]) == {"model", "first", "last"}
    assert ("lambda_max" in hist.records[0]) == hessian
    loaded = LandscapeMonitor.load(tmp_path)                    # written atomically after each record
    assert loaded.records == hist.records and loaded.settings == hist.settings
    assert MonitorHistory.load(tmp_path / "monitor.json").series("l2", "first").tolist() == hist.series("l2", "first").tolist()


def test_hessian_values_match_dense_blocks():
    net, data = setup(1)
    monitor = LandscapeMonitor(net, nn.MSELoss(), data, capacity=False, trace_matvecs=45, eig_tol=1e-10,
                               subnets={"last": "2"})
    rec = monitor(0)
    params = dict(net.named_parameters())
    names = list(params)

    def loss_of(flat, which):
        vals, i = {}, 0
        for n in names:
            if n in which:
                vals[n] = flat[i:i + params[n].numel()].view_as(params[n])
                i += params[n].numel()
            else:
                vals[n] = params[n].detach()
        total = sum(nn.functional.mse_loss(torch.func.functional_call(net, vals, (x,)), y) * len(x) for x, y in data)
        return total / sum(len(x) for x, _ in data)

    for scope, which in (("model", names), ("last", ["2.weight", "2.bias"])):
        flat = torch.cat([params[n].detach().reshape(-1) for n in which])
        H = torch.autograd.functional.hessian(lambda f: loss_of(f, which), flat)
        ev = torch.linalg.eigvalsh(H)
        # Hutch++ with 45 products sketches 15 >= n = 13 directions: the trace is exact
        assert rec["hessian"][scope]["trace"] == pytest.approx(float(H.trace()), rel=1e-9)
        assert rec["hessian"][scope]["lambda_max"] == pytest.approx(float(ev[-1]), rel=1e-8)
    assert rec["lambda_max"] == rec["hessian"]["model"]["lambda_max"]
    only = LandscapeMonitor(net, nn.MSELoss(), data, hessian="model", capacity=False, trace_matvecs=45,
                            eig_tol=1e-10, subnets={"last": "2"})(0)
    assert list(only["hessian"]) == ["model"] and only["trace"] == rec["trace"]


def test_barrier_between_identical_checkpoints_is_zero_and_matches_probe():
    net, data = setup(2)
    monitor = LandscapeMonitor(net, nn.MSELoss(), data, hessian=False, capacity=False, interpolate_points=7)
    monitor(0)
    same = monitor(1)
    assert same["barrier"] == 0.0 and same["distance"] == 0.0
    assert np.ptp(same["interpolation"]["losses"]) == 0.0
    prev = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.mul_(-1.5)
    moved = monitor(2)
    curve = lp.LandscapeProbe(net, nn.MSELoss(), data).interpolate(prev, net, points=7)
    assert moved["barrier"] == curve.barrier and moved["barrier_alpha"] == curve.argmax_alpha


def test_every_resume_plot_and_messages(tmp_path, capsys, caplog):
    net, data = setup(3)
    probe = lp.LandscapeProbe(net, nn.MSELoss(), data)
    monitor = LandscapeMonitor(probe, every=2, hessian=False, directory=tmp_path, verbose=True)
    assert monitor(1) is None and monitor.epoch_end(2) is not None
    assert "LandscapeMonitor: epoch 2" in capsys.readouterr().out
    with torch.no_grad():
        net[2].bias.add_(1.0)
    again = LandscapeMonitor(probe, every=2, hessian=False, directory=tmp_path, resume=True,
                             logger=logging.getLogger("lp-test"))
    with caplog.at_level(logging.INFO, logger="lp-test"):
        rec = again(4)
    assert "epoch 4" in caplog.text and "barrier" in caplog.text
    assert rec["previous_epoch"] == 2 and rec["distance"] == pytest.approx(1.0, rel=1e-12)
    assert [r["epoch"] for r in again.history.records] == [2, 4]
    axes = again.plot()
    assert [ax.get_ylabel() for ax in axes][-1] == "barrier to previous"
    out = again.save(tmp_path / "copy.json")
    assert MonitorHistory.load(out).records == again.history.records


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"every": 0}, ValueError, "every=0"),
    ({"interpolate_points": 1}, ValueError, "interpolate_points=1"),
    ({"trace_matvecs": 3}, ValueError, "trace_matvecs=3"),
    ({"eig_tol": 0}, ValueError, "eig_tol=0"),
    ({"hessian": "blocks"}, ValueError, "hessian='blocks'"),
    ({"capacity": "some"}, ValueError, "capacity='some'"),
    ({"capacity": ["norms", "hessian"]}, ValueError, "capacity="),
    ({"subnets": {"model": "0"}}, ValueError, "reserved for the whole model"),
    ({"subnets": {"x": "nothere"}}, ValueError, "matched no parameter"),
    ({"resume": True}, ValueError, "resume=True needs directory"),
])
def test_argument_errors(kwargs, exc, match):
    net, data = setup()
    with pytest.raises(exc, match=match):
        LandscapeMonitor(net, nn.MSELoss(), data, **kwargs)


def test_construction_and_call_errors():
    net, data = setup()
    probe = lp.LandscapeProbe(net, nn.MSELoss(), data)
    with pytest.raises(TypeError, match="already holds them"):
        LandscapeMonitor(probe, nn.MSELoss(), data)
    with pytest.raises(TypeError, match="needs loss_fn and data"):
        LandscapeMonitor(net)
    with pytest.raises(TypeError, match="received the class Linear"):
        LandscapeMonitor(nn.Linear)
    with pytest.raises(TypeError, match="expected a LandscapeProbe"):
        LandscapeMonitor("model")
    monitor = LandscapeMonitor(probe, hessian=False, capacity=False)
    with pytest.raises(TypeError, match="expected an integer epoch"):
        monitor(1.5)
    with pytest.raises(ValueError, match="give a path"):
        monitor.save()


def test_curvature_goes_through_the_probes_hessian_method():
    calls = []

    class Counting(lp.LandscapeProbe):
        def hessian(self, theta=None, subnet=None, **kw):
            calls.append(subnet)
            return super().hessian(theta, subnet, **kw)

    net, data = setup(4)
    rec = LandscapeMonitor(Counting(net, nn.MSELoss(), data), capacity=False, trace_matvecs=45,
                           subnets={"last": "2"})(0)
    assert calls == [None, "2"]
    ref = LandscapeMonitor(net, nn.MSELoss(), data, capacity=False, trace_matvecs=45, subnets={"last": "2"})(0)
    assert rec["hessian"] == ref["hessian"]


def test_batchnorm_conv_model_untouched_and_skips_path_norm():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 1, 1)).to(D)
    data = [(torch.randn(4, 1, 5, 5, dtype=D), torch.randn(4, 1, 5, 5, dtype=D))]
    net.train()
    net(data[0][0])                                           # non-trivial running statistics
    monitor = LandscapeMonitor(net, nn.MSELoss(), data, trace_matvecs=6, subnets={"bn": "1"})
    first = monitor(0)
    with torch.no_grad():
        net[1].running_mean.add_(0.5)                         # only a buffer moves
    snap = snapshot(net)
    second = monitor(1)
    assert_same(net, snap)
    assert "BatchNorm" in first["capacity_skipped"]["path_norm"]
    assert second["distance"] == 0.0 and second["barrier"] >= 0.0
    assert second["loss"] != first["loss"]                    # the buffers are part of the checkpoint
    assert finite_numbers(second)
