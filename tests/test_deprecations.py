"""Old spellings keep working for one release, with a DeprecationWarning naming the new one;
giving both spellings is an error."""

import pytest
import torch
from torch import nn

import landprobe as lp
from landprobe.probes import toys


def _probe():
    model = nn.Linear(2, 1, bias=False)
    probe = lp.LandscapeProbe(model, nn.MSELoss(), [(torch.eye(2), torch.zeros(2, 1))])
    return probe, {"weight": torch.tensor([[-1.0, 0.0]])}, {"weight": torch.tensor([[1.0, 0.5]])}


def test_interpolate_steps_is_points():
    probe, a, b = _probe()
    with pytest.warns(DeprecationWarning, match=r"LandscapeProbe.interpolate\(steps=...\) is renamed "
                                                r"LandscapeProbe.interpolate\(points=...\)"):
        old = probe.interpolate(a, b, steps=5)
    assert old.losses.tolist() == probe.interpolate(a, b, points=5).losses.tolist() and len(old.alphas) == 5
    with pytest.raises(TypeError, match="got both steps= and points="):
        probe.interpolate(a, b, steps=5, points=5)
    from landprobe.probes.interpolate import interpolate
    with pytest.warns(DeprecationWarning, match=r"interpolate\(steps=...\) is renamed"):
        assert interpolate(probe, a, b, steps=3).losses.tolist() == probe.interpolate(a, b, 3).losses.tolist()


def test_plane_steps_is_points():
    probe, a, b = _probe()
    with pytest.warns(DeprecationWarning, match=r"LandscapeProbe.plane\(steps=...\) is renamed"):
        old = probe.plane(a, directions=(a, b), span=1.0, steps=3)
    assert old.losses.tolist() == probe.plane(a, directions=(a, b), span=1.0, points=3).losses.tolist()


def test_connect_and_auto_neb_eval_points_is_points():
    valley = toys.CurvyValley()
    probe = toys.toy_probe(valley)
    a, b = valley.minima()
    with pytest.warns(DeprecationWarning, match=r"LandscapeProbe.connect\(eval_points=...\) is renamed"):
        old = probe.connect(a, b, method="polychain", bends=2, steps=5, eval_points=7)
    new = probe.connect(a, b, method="polychain", bends=2, steps=5, points=7)
    assert old.losses.tolist() == new.losses.tolist()
    quick = [dict(steps=3, lr=0.01, insert=1)]
    with pytest.warns(DeprecationWarning, match=r"LandscapeProbe.auto_neb\(eval_points=...\) is renamed"):
        old = probe.auto_neb(a, b, schedule=quick, eval_points=5)
    assert old.losses.tolist() == probe.auto_neb(a, b, schedule=quick, points=5).losses.tolist()


def test_monitor_interpolate_steps_is_interpolate_points():
    probe, _, _ = _probe()
    with pytest.warns(DeprecationWarning, match=r"LandscapeMonitor\(interpolate_steps=...\) is renamed "
                                                r"LandscapeMonitor\(interpolate_points=...\)"):
        monitor = lp.LandscapeMonitor(probe, hessian=False, capacity=False, interpolate_steps=5)
    assert monitor.interpolate_points == 5


def test_penalty_kind_l2_is_l2_squared():
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(2.0)
        net.bias.fill_(1.0)
    with pytest.warns(DeprecationWarning, match=r"kind 'l2' \(subnet 'weight'\) is renamed 'l2_squared'"):
        old = lp.SubnetNormPenalty(net, {"weight": "l2"})
    assert old.kinds == {"weight": "l2_squared"}
    assert old().item() == lp.SubnetNormPenalty(net, {"weight": "l2_squared"})().item() == 8.0
    # one meaning of "l2" across the API: the capacity measure is the norm, its square is l2_squared
    norms = lp.capacity.subnet_norms(net, {"w": "weight"})["w"]
    assert norms["l2_squared"] == 8.0 and norms["l2"] == pytest.approx(8.0 ** 0.5)
    assert lp.SubnetNormPenalty(net, {"weight": "l2norm"})().item() == pytest.approx(norms["l2"])
