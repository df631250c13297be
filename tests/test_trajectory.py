"""TrajectoryRecorder: PCA and MDS on synthetic paths with known geometry, thinning, disk spill, errors."""

import os

import numpy as np
import pytest
import torch
from torch import nn

import landprobe as lp
from helpers import MLP
from landprobe.probes.plane import plane
from landprobe.probes.trajectory import TrajectoryMDS, TrajectoryPCA, TrajectoryRecorder, classical_mds


def flat(model_or_vec, names=None):
    if isinstance(model_or_vec, nn.Module):
        return torch.cat([p.detach().reshape(-1).double() for _, p in model_or_vec.named_parameters()])
    return torch.cat([model_or_vec[n].reshape(-1).double() for n in (names or model_or_vec.names)])


def set_flat(model, vec):
    off = 0
    with torch.no_grad():
        for p in model.parameters():
            k = p.numel()
            p.copy_(vec[off:off + k].view_as(p))
            off += k


def synthetic(record_kwargs=None, ts=None, ss=None, seed=0):
    """theta_i = final + t_i u + s_i v with orthogonal u, v (float64 MLP); returns recorder and geometry."""
    torch.manual_seed(seed)
    model = MLP().double()
    final = flat(model).clone()
    g = torch.Generator().manual_seed(seed + 1)
    u = torch.randn(final.numel(), generator=g, dtype=torch.float64)
    v = torch.randn(final.numel(), generator=g, dtype=torch.float64)
    v -= (v @ u) / (u @ u) * u
    u, v = 3 * u / u.norm(), v / v.norm()
    ts = np.linspace(2.0, 0.0, 9) if ts is None else ts
    ss = np.sin(np.linspace(0, np.pi, 9)) if ss is None else ss
    set_flat(model, final + float(ts[0]) * u + float(ss[0]) * v)
    rec = TrajectoryRecorder(model, **(record_kwargs or {}))
    for t, s in zip(ts[1:], ss[1:]):
        set_flat(model, final + float(t) * u + float(s) * v)
        rec.step()
    return model, rec, final, u, v, np.asarray(ts), np.asarray(ss)


@pytest.mark.parametrize("centered", [True, False])
def test_pca_recovers_the_plane_and_variance_ratios(centered):
    model, rec, final, u, v, ts, ss = synthetic()
    pca = rec.pca(k=3, centered=centered)
    D = torch.stack([flat(d) for d in pca.directions])
    np.testing.assert_allclose((D @ D.T).numpy(), np.diag([1.0, 1.0, 0.0]), atol=1e-10)   # 2-D path: 3rd is zero
    basis = torch.stack([u / u.norm(), v])
    resid = D[:2] - (D[:2] @ basis.T) @ basis
    assert float(resid.abs().max()) < 1e-10                       # the directions span {u, v}
    # reference: float64 SVD of the flat snapshot matrix
    M = np.stack([(final + t * u + s * v - final).numpy() for t, s in zip(ts, ss)])
    if centered:
        M = M - M.mean(axis=0)
    sv = np.linalg.svd(M, compute_uv=False)
    np.testing.assert_allclose(pca.singular_values[:2], sv[:2], rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_ratio, (sv**2 / np.sum(sv**2))[:3], atol=1e-12)
    # hand formula in the (u/|u|, v) basis: the 2x2 scatter matrix of the coordinates
    X = np.stack([ts * 3.0, ss], axis=1)
    if centered:
        X = X - X.mean(axis=0)
    ev = np.sort(np.linalg.eigvalsh(X.T @ X))[::-1]
    np.testing.assert_allclose(pca.explained_variance_ratio[:2], ev / ev.sum(), rtol=1e-10)
    # projected coordinates reconstruct every snapshot: theta_i = final + sum_j c_ij d_j
    for i, (t, s) in enumerate(zip(ts, ss)):
        recon = final + torch.from_numpy(pca.coords[i, :2]) @ D[:2]
        torch.testing.assert_close(recon, final + t * u + s * v, rtol=0, atol=1e-10)
    np.testing.assert_allclose(pca.coords[-1], 0.0, atol=1e-12)
    assert pca.steps.tolist() == list(range(9))
    assert torch.equal(flat(pca.center), flat(model))


def test_pca_directions_draw_a_plane_under_the_path():
    torch.manual_seed(0)
    model = MLP()
    data = [(torch.randn(16, 4), torch.randn(16, 2))]
    loss_fn = nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = TrajectoryRecorder(model, every=2, subnet="fc2")
    for _ in range(10):
        opt.zero_grad()
        loss_fn(model(data[0][0]), data[0][1]).backward()
        opt.step()
        rec.step()
    pca = rec.pca()
    assert pca.directions[0].names == [n for n, _ in model.named_parameters()]
    assert float(pca.directions[0]["fc1.weight"].abs().sum()) == 0.0      # zero outside the subnet
    probe = lp.LandscapeProbe(model, loss_fn, data)
    s = plane(probe, pca.center, directions=pca.directions, span=pca.span(), points=3)
    assert s.settings["normalization"] is None and s.center_loss == probe.loss()
    (x0, x1), (y0, y1) = pca.span()
    assert x0 <= pca.coords[:, 0].min() and x1 >= pca.coords[:, 0].max()
    ax = s.plot()
    pca.plot_path(ax)
    assert len(ax.lines) >= 3
    assert pca.plot().get_xlabel().startswith("1st PCA component")


def test_pca_save_load_drops_in_memory_vectors(tmp_path):
    _, rec, *_ = synthetic()
    pca = rec.pca()
    back = TrajectoryPCA.load(pca.save(tmp_path / "p.json"))
    np.testing.assert_array_equal(back.coords, pca.coords)
    np.testing.assert_array_equal(back.explained_variance_ratio, pca.explained_variance_ratio)
    assert back.directions is None and back.center is None and back.settings == pca.settings


def test_pca_with_explicit_final():
    model, rec, final, u, v, ts, ss = synthetic()
    other = {n: p.detach() + 1.0 for n, p in model.named_parameters()}
    pca = rec.pca(final=other)
    assert torch.equal(flat(pca.center), flat(lp.ParamVector(other)))
    assert np.abs(pca.coords[-1]).max() > 0.5                     # the last snapshot is no longer the origin


def test_mds_recovers_distances_of_points_in_a_plane(tmp_path):
    model, rec, final, u, v, ts, ss = synthetic()
    m = rec.mds()
    pts = np.stack([ts * 3.0, ss], axis=1)                         # |u| = 3, |v| = 1, u ⟂ v
    D = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    np.testing.assert_allclose(m.distances, D, atol=1e-10)
    emb = np.linalg.norm(m.coords[:, None] - m.coords[None], axis=-1)
    np.testing.assert_allclose(emb, D, atol=1e-9)
    assert m.stress < 1e-10
    assert m.plot().get_xlabel() == "MDS 1"
    back = TrajectoryMDS.load(m.save(tmp_path / "m.json"))
    np.testing.assert_array_equal(back.coords, m.coords)
    np.testing.assert_array_equal(back.distances, m.distances)
    assert back.stress == m.stress and back.settings == m.settings


def test_classical_mds_hand_example_and_errors():
    sq = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    D = np.linalg.norm(sq[:, None] - sq[None], axis=-1)
    x, ev = classical_mds(D, 3)
    np.testing.assert_allclose(ev, [0.5 * 2, 0.5 * 2, 0.0], atol=1e-12)   # centered unit square: 4 * 0.25 per axis
    np.testing.assert_allclose(np.linalg.norm(x[:, None] - x[None], axis=-1), D, atol=1e-12)
    with pytest.raises(ValueError, match="symmetric"):
        classical_mds(np.array([[0.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="k=0"):
        classical_mds(D, 0)


def test_thinning_bounds_memory_and_keeps_even_spacing():
    model = nn.Linear(3, 1)
    rec = TrajectoryRecorder(model, every=1, max_snapshots=4)
    seen = []
    for i in range(1, 41):
        with torch.no_grad():
            model.weight += 1.0
        rec.step()
        assert len(rec) <= 5
        seen.append(len(rec))
    steps = rec.steps
    assert steps[0] == 0 and len(set(np.diff(steps))) == 1         # evenly spaced from the start
    assert rec.every == np.diff(steps)[0]
    first = next(rec.snapshots())[1]["weight"]
    for step, vec in rec.snapshots():                             # each kept snapshot is that step's weights
        torch.testing.assert_close(vec["weight"] - first, torch.full((1, 3), float(step)))


def test_disk_spill_reload_and_block_gram_equal_in_memory(tmp_path):
    kw = dict(every=1, max_snapshots=3, directory=tmp_path / "traj")
    model, rec, final, u, v, ts, ss = synthetic(kw)
    _, ref, *_ = synthetic()
    assert len(rec) == 9 and rec.steps == list(range(9)) and len(rec._mem) <= 3
    files = sorted(os.listdir(tmp_path / "traj"))
    assert files[0] == "snapshot_000000000.pt" and len(files) == 6
    obj = torch.load(tmp_path / "traj" / files[1], weights_only=True)
    assert obj["step"] == 1
    torch.testing.assert_close(flat(lp.ParamVector(obj["tensors"])), final + float(ts[1]) * u + float(ss[1]) * v,
                               rtol=0, atol=1e-12)
    a, b = rec.pca(), ref.pca()
    np.testing.assert_allclose(a.coords, b.coords, atol=1e-10)
    np.testing.assert_allclose(a.explained_variance_ratio, b.explained_variance_ratio, atol=1e-12)
    np.testing.assert_allclose(rec.distances(), ref.distances(), atol=1e-10)
    rec.flush()
    again = TrajectoryRecorder.from_directory(model, tmp_path / "traj", max_snapshots=2)
    assert again.steps == list(range(9)) and len(again._mem) == 0
    np.testing.assert_allclose(again.pca().coords, b.coords, atol=1e-10)


def test_recorder_subnet_and_manual_snapshot():
    model = MLP()
    rec = TrajectoryRecorder(model, every=3, subnet="head", record_initial=False)
    assert len(rec) == 0
    assert [rec.step() for _ in range(6)] == [False, False, True, False, False, True]
    rec.snapshot()                                                  # same step: replaces, no duplicate
    assert rec.steps == [3, 6]
    assert list(next(rec.snapshots())[1]) == ["head.weight", "head.bias"]


def test_errors(tmp_path):
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="every=0"):
        TrajectoryRecorder(model, every=0)
    with pytest.raises(ValueError, match="max_snapshots=1"):
        TrajectoryRecorder(model, max_snapshots=1)
    with pytest.raises(TypeError, match="nn.Module"):
        TrajectoryRecorder("model")
    rec = TrajectoryRecorder(model)
    with pytest.raises(ValueError, match="1 snapshot"):
        rec.pca()
    rec.step()
    with pytest.raises(ValueError, match="zero extent"):
        rec.pca()
    with pytest.raises(ValueError, match="k=0"):
        rec.pca(k=0)
    with pytest.raises(ValueError, match="k=0"):
        rec.mds(k=0)
    with pytest.raises(ValueError, match="flush\\(\\) needs a directory"):
        rec.flush()
    with pytest.raises(ValueError, match="no snapshot_"):
        TrajectoryRecorder.from_directory(model, tmp_path / "empty")
    d = tmp_path / "other"
    r2 = TrajectoryRecorder(nn.Linear(3, 3), directory=d)
    r2.flush()
    with pytest.raises(ValueError, match="same model and subnet"):
        TrajectoryRecorder.from_directory(MLP(), d)
    with pytest.raises(ValueError, match="matched no parameter"):
        TrajectoryRecorder(model, subnet="nope")
