"""The AutoNEB band's vector algebra (probes/curves/band.py) against a float64 reference written
from the formulas: the nudged step (upwind tangent, climbing image, springs, momentum) and the
re-spacing, for bands swept in one block and in many, small and large images, and stacks laid
out in another memory order."""

import math

import numpy as np
import pytest
import torch

from landprobe.probes.curves import band


def reference_step(theta, grads, energies, climb_at, spring, lr):
    """theta (n, d), grads (n-2, d) float64 numpy: the interior images after one plain step."""
    out = theta.copy()
    for i in range(1, len(theta) - 1):
        ep, ei, en = energies[i - 1], energies[i], energies[i + 1]
        nxt, prv = theta[i + 1] - theta[i], theta[i] - theta[i - 1]
        if en > ei > ep:
            tau = nxt
        elif en < ei < ep:
            tau = prv
        else:
            dmax, dmin = max(abs(en - ei), abs(ep - ei)), min(abs(en - ei), abs(ep - ei))
            tau = dmax * nxt + dmin * prv if en > ep else dmin * nxt + dmax * prv
        tau = tau / np.linalg.norm(tau)
        g = grads[i - 1]
        if i == climb_at:
            u = g - 2 * (g @ tau) * tau
        else:
            u = g - (g @ tau) * tau
            if math.isfinite(spring):
                u = u - spring * (np.linalg.norm(nxt) - np.linalg.norm(prv)) * tau
        out[i] = theta[i] - lr * u
    return out


def reference_respace(theta, fixed):
    """Free interior images moved to even arc length between the anchors, on the chain."""
    n = len(theta)
    d = np.linalg.norm(np.diff(theta, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(d)])
    out = theta.copy()
    anchors = sorted({0, n - 1} | set(fixed))
    for lo, hi in zip(anchors[:-1], anchors[1:]):
        for i in range(lo + 1, hi):
            pos = cum[lo] + (cum[hi] - cum[lo]) * (i - lo) / (hi - lo)
            j = min(max(np.searchsorted(cum, pos, side="right") - 1, 0), n - 2)
            s = (pos - cum[j]) / d[j]
            out[i] = theta[j] + s * (theta[j + 1] - theta[j])
    return out


def problem(n, d, seed=0):
    g = np.random.default_rng(seed)
    theta = np.cumsum(g.normal(size=(n, d)), axis=0)              # a wandering chain
    grads = g.normal(size=(n - 2, d))
    energies = list(g.normal(size=n))
    return theta, grads, energies


@pytest.mark.parametrize("d", [7, 20_000])                         # small: NumPy or gathers; large: walks
@pytest.mark.parametrize("split", [False, True])                  # one parameter / two
@pytest.mark.parametrize("block", [None, 512])                     # one block / many
@pytest.mark.parametrize("spring", [math.inf, 0.3])
def test_nudged_step_and_respace_match_the_formulas(monkeypatch, d, split, block, spring):
    if block is not None:
        monkeypatch.setattr(band, "_BLOCK", block)
    theta, grads, energies = problem(7, d)
    climb_at = int(np.argmax(energies[1:-1])) + 1
    cut = [0, d // 3, d] if split else [0, d]
    rows = [torch.tensor(theta[:, a:b]) for a, b in zip(cut[:-1], cut[1:])]
    g = [torch.tensor(grads[:, a:b]) for a, b in zip(cut[:-1], cut[1:])]
    bufs, segments = band.nudged_step(rows, g, energies, climb_at=climb_at, spring=spring, lr=0.05, momentum=0.9,
                                      bufs=None, space={}, measure=math.isinf(spring))
    want = reference_step(theta, grads, energies, climb_at, spring, 0.05)
    np.testing.assert_allclose(torch.cat(rows, 1).numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(torch.cat(bufs, 1).numpy(), (theta[1:-1] - want[1:-1]) / 0.05, rtol=1e-9, atol=1e-9)
    if not math.isinf(spring):
        assert segments is None
        return
    segs, lengths = segments
    np.testing.assert_allclose(lengths, np.linalg.norm(np.diff(want, axis=0), axis=1), rtol=1e-12)
    band.respace(rows, {climb_at}, segments)
    np.testing.assert_allclose(torch.cat(rows, 1).numpy(), reference_respace(want, {climb_at}), rtol=1e-11,
                               atol=1e-11)


@pytest.mark.parametrize("block", [None, 256])
def test_momentum_continues_from_the_buffers(monkeypatch, block):
    if block is not None:
        monkeypatch.setattr(band, "_BLOCK", block)
    theta, grads, energies = problem(5, 3000, seed=1)
    rows = [torch.tensor(theta)]
    bufs, _ = band.nudged_step(rows, [torch.tensor(grads)], energies, climb_at=None, spring=math.inf, lr=0.1,
                               momentum=0.5, bufs=None, space={})
    first = bufs[0].clone()
    after_first = rows[0].numpy().copy()
    bufs, _ = band.nudged_step(rows, [torch.tensor(grads)], energies, climb_at=None, spring=math.inf, lr=0.1,
                               momentum=0.5, bufs=bufs, space={})
    u = (after_first[1:-1] - reference_step(after_first, grads, energies, None, math.inf, 1.0)[1:-1])
    np.testing.assert_allclose(bufs[0].numpy(), 0.5 * first.numpy() + u, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(rows[0].numpy()[1:-1], after_first[1:-1] - 0.1 * bufs[0].numpy(), rtol=1e-12)


def test_parameters_add_up_and_layouts_do_not_matter(monkeypatch):
    """Two parameters (one stored transposed) step as their concatenation would."""
    monkeypatch.setattr(band, "_BLOCK", 300)
    theta, grads, energies = problem(6, 60 * 50 + 40, seed=2)
    w = torch.tensor(theta[:, :3000]).reshape(6, 60, 50)
    w_t = w.transpose(1, 2).contiguous().transpose(1, 2)             # same values, columns first in memory
    b = torch.tensor(theta[:, 3000:])
    gw = torch.tensor(grads[:, :3000]).reshape(4, 60, 50)
    rows = [band.rows_of(w_t), band.rows_of(b)]
    assert rows[0].data_ptr() == w_t.data_ptr() and rows[0].shape == (6, 3000)      # a view, no copy
    g = [band.rows_of(gw, like=w_t), band.rows_of(torch.tensor(grads[:, 3000:]))]
    band.nudged_step(rows, g, energies, climb_at=2, spring=math.inf, lr=0.05, momentum=0.0, bufs=None,
                     space={})
    want = reference_step(theta, grads, energies, 2, math.inf, 0.05)
    np.testing.assert_allclose(w_t.reshape(6, -1).numpy(), want[:, :3000], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.numpy(), want[:, 3000:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [7, 20_000])
def test_float32_bands_stay_float32(d):
    theta, grads, energies = problem(6, d, seed=3)
    rows = [torch.tensor(theta, dtype=torch.float32)]
    bufs, segments = band.nudged_step(rows, [torch.tensor(grads, dtype=torch.float32)], energies, climb_at=None,
                                      spring=math.inf, lr=0.05, momentum=0.9, bufs=None, space={}, measure=True)
    band.respace(rows, set(), segments)
    assert rows[0].dtype == bufs[0].dtype == segments[0][0].dtype == torch.float32
    want = reference_respace(reference_step(theta, grads, energies, None, math.inf, 0.05), set())
    np.testing.assert_allclose(rows[0].numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [None, 512])
def test_parameters_of_different_dtypes_add_up(monkeypatch, block):
    """A float64 and a float32 parameter (each block's products kept in its own dtype, summed in
    float64): the step and the lengths of their concatenation, to float32 rounding."""
    if block is not None:
        monkeypatch.setattr(band, "_BLOCK", block)
    theta, grads, energies = problem(6, 6000, seed=4)
    rows = [torch.tensor(theta[:, :2000]), torch.tensor(theta[:, 2000:], dtype=torch.float32)]
    g = [torch.tensor(grads[:, :2000]), torch.tensor(grads[:, 2000:], dtype=torch.float32)]
    _, segments = band.nudged_step(rows, g, energies, climb_at=3, spring=math.inf, lr=0.05, momentum=0.9, bufs=None,
                                   space={}, measure=True)
    want = reference_step(theta, grads, energies, 3, math.inf, 0.05)
    assert rows[0].dtype == torch.float64 and rows[1].dtype == torch.float32
    np.testing.assert_allclose(rows[0].numpy(), want[:, :2000], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows[1].numpy(), want[:, 2000:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(segments[1], np.linalg.norm(np.diff(want, axis=0), axis=1), rtol=1e-5)
