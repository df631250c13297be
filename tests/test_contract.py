"""The data contract end to end: a Hugging Face-style model on dict batches, through every probe.

The model is a small transformer built from torch's own layers whose ``forward(input_ids,
attention_mask=None, labels=None)`` takes keyword inputs and returns an object with
``.logits`` and ``.loss`` (mean cross-entropy over the labelled tokens), in float64. The data
is a ``DataLoader`` over a map-style dataset of dicts with the default collate (dicts of
stacked tensors) and an uneven last batch. Every probe family is driven through
``lp.BatchLoss(lambda model, batch: model(**batch).loss)`` and its values are checked against
numbers computed here by hand (or against the same measurement in the pair form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset

import landprobe as lp
from helpers import assert_same_snapshot, snapshot

SEQ = 6


# ---------------------------------------------------------------------------- the model and the data
@dataclass
class LMOutput:
    logits: Tensor
    loss: Tensor | None = None


class TinyLM(nn.Module):
    """Embedding + one TransformerEncoderLayer + a linear head; HF-style keyword forward."""

    def __init__(self, vocab: int = 7, d_model: int = 8, nhead: int = 2, ff: int = 16, seed: int = 0):
        super().__init__()
        self.vocab = vocab
        with torch.random.fork_rng(devices=[]):          # seeded weights; the global RNG untouched
            torch.manual_seed(seed)
            self.embed = nn.Embedding(vocab, d_model)
            self.encoder = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=ff, dropout=0.0,
                                                      batch_first=True)
            self.head = nn.Linear(d_model, vocab)
        self.double()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> LMOutput:
        h = self.embed(input_ids)
        pad = None if attention_mask is None else attention_mask == 0
        h = self.encoder(h, src_key_padding_mask=pad)
        logits = self.head(h)
        loss = None
        if labels is not None:           # mean over the labelled tokens (-100: padding), as HF models
            loss = F.cross_entropy(logits.reshape(-1, self.vocab), labels.reshape(-1), ignore_index=-100)
        return LMOutput(logits=logits, loss=loss)


class TokenDataset(Dataset):
    """Padded token sequences of lengths 2..SEQ; the label of a token is a function of it."""

    def __init__(self, n: int = 11, vocab: int = 7, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(2, SEQ + 1, (1,), generator=g))
            mask = (torch.arange(SEQ) < length).long()
            ids = torch.randint(1, vocab, (SEQ,), generator=g) * mask            # pad id 0
            labels = ((2 * ids + 1) % vocab).masked_fill(mask == 0, -100)
            self.items.append({"input_ids": ids, "attention_mask": mask, "labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]


def hf_loss(model, batch):
    return model(**batch).loss


BATCH_LOSS = lp.BatchLoss(hf_loss)


def loader(n: int = 11, batch_size: int = 4, vocab: int = 7, seed: int = 0) -> DataLoader:
    return DataLoader(TokenDataset(n, vocab, seed), batch_size=batch_size, shuffle=False)


def state_of(seed: int, **kw) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in TinyLM(seed=seed, **kw).state_dict().items()}


def mix(*terms: tuple[float, dict[str, Tensor]]) -> dict[str, Tensor]:
    """Σ c_i · state_i, name by name."""
    out = {}
    for c, sd in terms:
        for k, v in sd.items():
            out[k] = out[k] + c * v if k in out else c * v
    return out


def batches_of(data) -> list:
    """The batches of one pass, the global RNG untouched (a DataLoader's iterator draws a seed)."""
    with torch.random.fork_rng(devices=[]):
        return list(data)


def loss_at(state: dict[str, Tensor], data, **kw) -> tuple[float, list[float], list[int]]:
    """The sample-weighted mean of the batch losses, computed here: (mean, per-batch, sizes)."""
    model = TinyLM(**kw)
    model.load_state_dict(state)
    model.eval()
    losses, sizes = [], []
    with torch.no_grad():
        for batch in batches_of(data):
            losses.append(float(model(**batch).loss))
            sizes.append(int(batch["input_ids"].shape[0]))
    return math.fsum(n * l for n, l in zip(sizes, losses)) / sum(sizes), losses, sizes


@pytest.fixture
def setup():
    model = TinyLM(seed=0)
    data = loader()
    probe = lp.LandscapeProbe(model, BATCH_LOSS, data)
    return model, data, probe, state_of(0), state_of(1)


def rel(x: float, y: float) -> float:
    return abs(x - y) / max(abs(y), 1e-300)


# ---------------------------------------------------------------------------- single points
def test_the_loader_yields_collated_dicts_with_an_uneven_last_batch():
    batches = list(loader())
    assert all(isinstance(b, dict) and set(b) == {"input_ids", "attention_mask", "labels"} for b in batches)
    assert [b["input_ids"].shape for b in batches] == [(4, SEQ), (4, SEQ), (3, SEQ)]
    # token counts differ between batches: a token mean is not a sample mean
    tokens = [int((b["labels"] != -100).sum()) for b in batches]
    assert len(set(t / len(b["labels"]) for t, b in zip(tokens, batches))) > 1


def test_loss_is_the_sample_weighted_mean_of_the_batch_losses(setup):
    model, data, probe, a, b = setup
    before = snapshot(model)
    for theta, state in ((None, a), (a, a), (b, b)):
        ref, _, sizes = loss_at(state, data)
        assert sizes == [4, 4, 3]
        assert rel(probe.loss(theta), ref) <= 1e-12
    assert probe.loss(b) != probe.loss(a)
    assert_same_snapshot(before, snapshot(model))


def test_evaluate_reports_each_batch_and_the_cluster_standard_error(setup):
    model, data, probe, a, b = setup
    ev = probe.evaluate(b)
    ref, losses, sizes = loss_at(b, data)
    assert ev.batch_sizes.tolist() == [4, 4, 3]
    np.testing.assert_allclose(ev.batch_losses, losses, rtol=1e-12, atol=0)
    assert rel(ev.loss, ref) <= 1e-12
    w = np.array(sizes) / sum(sizes)
    se = math.sqrt(3 / 2 * np.sum(w**2 * (np.array(losses) - ref) ** 2))
    assert ev.stderr == pytest.approx(se, rel=1e-10)


def test_the_pair_form_of_the_same_loss_gives_the_same_numbers(setup):
    model, data, probe, a, b = setup

    def ce(out, labels):
        return F.cross_entropy(out.logits.reshape(-1, model.vocab), labels.reshape(-1), ignore_index=-100)

    pairs = [({"input_ids": bt["input_ids"], "attention_mask": bt["attention_mask"]}, bt["labels"])
             for bt in batches_of(data)]
    pair_probe = lp.LandscapeProbe(model, ce, pairs)
    assert pair_probe.loss(b) == probe.loss(b)
    np.testing.assert_array_equal(pair_probe.evaluate(a).batch_losses, probe.evaluate(a).batch_losses)
    curve, pair_curve = probe.interpolate(a, b, points=3), pair_probe.interpolate(a, b, points=3)
    np.testing.assert_array_equal(curve.losses, pair_curve.losses)


# ---------------------------------------------------------------------------- many points
def test_interpolate_ends_at_the_endpoint_losses_and_reports_the_chord_barrier(setup):
    model, data, probe, a, b = setup
    before = snapshot(model)
    curve = probe.interpolate(a, b, points=5)
    assert curve.alphas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.losses[0] == probe.loss(a) and curve.loss_a == probe.loss(a)
    assert curve.losses[-1] == probe.loss(b) and curve.loss_b == probe.loss(b)
    for i, al in enumerate(curve.alphas):
        ref, _, _ = loss_at(mix((1 - al, a), (al, b)), data)
        assert rel(curve.losses[i], ref) <= 1e-10
    excess = curve.losses - ((1 - curve.alphas) * curve.loss_a + curve.alphas * curve.loss_b)
    assert math.isfinite(curve.barrier)
    assert curve.barrier == pytest.approx(max(0.0, excess.max()), abs=1e-15)
    assert curve.argmax_alpha == curve.alphas[int(np.argmax(excess))]
    assert np.all(np.isfinite(curve.stderr)) and np.all(curve.stderr > 0)
    assert_same_snapshot(before, snapshot(model))


def test_interpolate_with_batch_points_asks_for_pairs(setup):
    _, _, probe, a, b = setup
    with pytest.raises(ValueError, match="BatchLoss"):
        probe.interpolate(a, b, points=3, batch_points=2)


def test_plane_along_given_directions(setup):
    model, data, probe, a, b = setup
    g = torch.Generator().manual_seed(3)
    d1 = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in a.items()}
    d2 = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in a.items()}
    s = probe.plane(a, directions=(d1, d2), span=0.5, points=3)
    assert s.losses.shape == (3, 3) and s.xs.tolist() == [-0.5, 0.0, 0.5] and s.ys.tolist() == [-0.5, 0.0, 0.5]
    assert s.center_loss == probe.loss(a) and s.losses[1, 1] == s.center_loss
    for i, y in enumerate(s.ys):
        for j, x in enumerate(s.xs):
            ref, _, _ = loss_at(mix((1.0, a), (x, d1), (y, d2)), data)
            assert rel(s.losses[i, j], ref) <= 1e-10, (i, j)
    # a random filter-normalised plane: seeded, and centred on the model's own loss
    r1 = probe.plane(None, span=0.2, points=3, seed=5)
    r2 = probe.plane(None, span=0.2, points=3, seed=5)
    np.testing.assert_array_equal(r1.losses, r2.losses)
    assert r1.losses[1, 1] == probe.loss() and np.all(np.isfinite(r1.losses))
    assert len(np.unique(r1.losses)) > 1


def test_connect_bezier_fits_the_bend_through_the_batch_loss(setup):
    model, data, probe, a, b = setup
    before = snapshot(model)
    path = probe.connect(a, b, method="bezier", bends=1, steps=6, lr=0.05, points=5)
    assert path.ts.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert path.losses[0] == probe.loss(a) and path.losses[-1] == probe.loss(b)
    assert len(path.settings["train_losses"]) == 6 and np.all(np.isfinite(path.settings["train_losses"]))
    pa, bend, pb = (p.state_dict() for p in path.points)
    for k in a:
        assert torch.equal(pa[k], a[k]) and torch.equal(pb[k], b[k])
    # the bend was trained: it left the midpoint of the segment
    assert max(float((bend[k] - (a[k] + b[k]) / 2).abs().max()) for k in a) > 1e-6
    for i, t in enumerate(path.ts):
        ref, _, _ = loss_at(mix(((1 - t) ** 2, pa), (2 * t * (1 - t), bend), (t**2, pb)), data)
        assert rel(path.losses[i], ref) <= 1e-10, t
    assert path.max_loss == path.losses.max()
    assert path.barrier == pytest.approx(
        max(0.0, float(np.max(path.losses - ((1 - path.ts) * path.loss_a + path.ts * path.loss_b)))), abs=1e-15)
    assert_same_snapshot(before, snapshot(model))


def test_auto_neb_with_a_tiny_schedule(setup):
    model, data, probe, a, b = setup
    before = snapshot(model)
    path = probe.auto_neb(a, b, schedule=[dict(steps=3, lr=0.01, insert=1)], sub_points=1, points=3)
    assert path.method == "neb" and len(path.points) == 3
    assert path.knots[0] == 0.0 and path.knots[-1] == 1.0
    assert path.loss_a == probe.loss(a) and path.loss_b == probe.loss(b)
    for point, loss in zip(path.points, path.knot_losses):        # the images' energies are the probe's
        assert rel(loss, probe.loss(point)) <= 1e-10
    middle = path.points[1].state_dict()
    ref, _, _ = loss_at(middle, data)
    assert rel(path.knot_losses[1], ref) <= 1e-10
    # the image relaxed: it is no longer the midpoint of the segment
    assert max(float((middle[k] - (a[k] + b[k]) / 2).abs().max()) for k in a) > 1e-8
    assert path.max_loss == path.losses.max() and math.isfinite(path.barrier)
    assert_same_snapshot(before, snapshot(model))


def test_level_set_above_both_endpoints_is_connected(setup):
    model, data, probe, a, b = setup
    before = snapshot(model)
    line = probe.interpolate(a, b, points=9)
    threshold = float(line.losses.max()) + 0.05
    r = probe.level_set(a, b, threshold=threshold, steps=5, lr=0.05)
    assert r.connected and r.reason == ""
    assert r.threshold == threshold
    assert r.loss_a == probe.loss(a) and r.loss_b == probe.loss(b)
    assert r.max_loss <= threshold
    assert r.bead_ts[0] == 0.0 and r.bead_ts[-1] == 1.0
    for bead, loss in zip(r.beads, r.bead_losses):
        assert rel(loss, probe.loss(bead)) <= 1e-10
    assert_same_snapshot(before, snapshot(model))


def test_perturb_retrains_with_the_batch_loss(setup):
    model, data, probe, a, b = setup
    before = snapshot(model)
    lr = 0.1
    # no noise, one step: the step is plain SGD on the first batch, checkable by hand
    r = probe.perturb(lambda p: torch.optim.SGD(p, lr=lr), scale=0.0, steps=1, repeats=1)
    base = probe.loss()
    assert r.base_loss == base and r.losses[0, 0] == base and r.eval_steps.tolist() == [0.0, 1.0]
    first = batches_of(data)[0]
    ref = TinyLM()
    ref.load_state_dict(a)
    ref.train()
    loss = ref(**first).loss
    assert rel(r.train_losses[0, 0], float(loss.detach())) <= 1e-10
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    stepped = {k: v for k, v in a.items()}
    for (name, p), g in zip(ref.named_parameters(), grads):
        stepped[name] = p.detach() - lr * g
    after, _, _ = loss_at(stepped, data)
    assert rel(r.losses[0, 1], after) <= 1e-9
    assert_same_snapshot(before, snapshot(model))
    # with noise: every repeat is perturbed by about `scale` of each tensor's norm
    r = probe.perturb(lambda p: torch.optim.SGD(p, lr=lr), scale=0.3, steps=2, repeats=2, seed=1)
    assert r.losses.shape == (2, 2) and r.train_losses.shape == (2, 2)
    assert np.all(r.perturbed_losses != base) and np.all(np.isfinite(r.losses))
    assert np.all((r.noise_norms > 0.15) & (r.noise_norms < 0.45))
    assert_same_snapshot(before, snapshot(model))


# ---------------------------------------------------------------------------- curvature
TINY = dict(vocab=4, d_model=4, nhead=2, ff=4)

# torch's CPU flash-attention kernel (what nn.MultiheadAttention's scaled_dot_product_attention
# picks) has no second derivative, neither by double backward nor forward-over-reverse, so a
# Hessian of a model built on nn.TransformerEncoderLayer needs the math backend, which is made
# of differentiable ops. See test_hessian_through_the_default_attention_kernel below.
@pytest.fixture
def math_attention():
    with sdpa_kernel(SDPBackend.MATH):
        yield


def tiny_reference_hessian(state, data):
    """The dense Hessian of Σ_b (n_b / N) L_b over the flattened parameters, outside landprobe:
    torch.autograd.functional.hessian (one double backward per row, not vectorised), checked
    against central differences of the gradient (first-order AD only) on a few columns.

    Not torch.func.hessian (jacfwd(jacrev): vmap over jvps of the gradient): in torch 2.13 (CPU,
    float64) its vmapped second derivative through nn.LayerNorm after a parametrised layer is
    wrong (Linear(4, 4) + LayerNorm(4) alone: entries off by ~5; jacrev(jacrev) too), while
    unbatched jvp(grad) columns and double backward agree with the differences to 1e-11.
    """
    from torch.func import functional_call, grad

    model = TinyLM(**TINY)
    model.load_state_dict(state)
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat0 = torch.cat([state[n].reshape(-1) for n in names])
    batches = batches_of(data)
    total = sum(len(bt["input_ids"]) for bt in batches)

    def f(flat):
        params = {n: c.view(s) for n, c, s in zip(names, torch.split(flat, sizes), shapes)}
        out = 0.0
        for bt in batches:
            out = out + len(bt["input_ids"]) / total * functional_call(model, params, (), bt).loss
        return out

    eye = torch.eye(len(flat0), dtype=torch.float64)
    with sdpa_kernel(SDPBackend.MATH):
        H = torch.autograd.functional.hessian(f, flat0)
        # central differences of the gradient (first-order AD only) for a few columns
        g = grad(f)
        for j in (0, len(flat0) // 2, len(flat0) - 1, 137):
            h = 1e-5
            fd = (g(flat0 + h * eye[j]) - g(flat0 - h * eye[j])) / (2 * h)
            assert float((fd - H[:, j]).abs().max()) <= 1e-8 * float(H.abs().max()), j
    return H, flat0


@pytest.fixture(scope="module")
def tiny():
    state = state_of(2, **TINY)
    data = loader(n=7, batch_size=3, vocab=TINY["vocab"], seed=4)
    H, flat = tiny_reference_hessian(state, data)
    return state, data, H


@pytest.mark.parametrize("hvp", ["double-backward", "forward-over-reverse"])
def test_hessian_through_the_default_attention_kernel(tiny, hvp):
    state, data, H = tiny
    model = TinyLM(**TINY)
    model.load_state_dict(state)
    op = lp.LandscapeProbe(model, BATCH_LOSS, data).hessian(hvp=hvp)
    torch.testing.assert_close(op.dense(), H, rtol=1e-9, atol=1e-10 * float(H.abs().max()))


@pytest.mark.parametrize("hvp", ["double-backward", "forward-over-reverse"])
def test_hessian_matches_a_dense_reference(tiny, hvp, math_attention):
    state, data, H = tiny
    model = TinyLM(**TINY)
    model.load_state_dict(state)
    probe = lp.LandscapeProbe(model, BATCH_LOSS, data)
    op = probe.hessian(hvp=hvp)
    n = op.n
    assert n == H.shape[0] and 100 < n < 300
    assert op.dtype == torch.float64
    scale = float(H.abs().max())
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(n, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-9 * scale * math.sqrt(n))
    if hvp == "double-backward":                  # n products; the other method's are slower
        torch.testing.assert_close(op.dense(), H, rtol=1e-9, atol=1e-10 * scale)
    if hvp == "double-backward":
        # a token-mean loss over batches with other token counts cannot be merged exactly
        assert op.graph_used == "per-batch"


def test_hessian_spectra_agree_with_eigvalsh(tiny, math_attention):
    state, data, H = tiny
    model = TinyLM(**TINY)
    model.load_state_dict(state)
    op = lp.LandscapeProbe(model, BATCH_LOSS, data).hessian()
    ref = torch.linalg.eigvalsh(H).numpy()
    scale = float(np.abs(ref).max())
    top = op.top_eigenvalues(k=3, tol=1e-10)
    assert top.all_converged
    np.testing.assert_allclose(top.values, ref[::-1][:3], rtol=0, atol=1e-8 * scale)
    bottom = op.top_eigenvalues(k=1, which="SA", tol=1e-10)
    assert bottom.values[0] == pytest.approx(ref[0], abs=1e-8 * scale)
    tr = op.trace(matvecs=30)
    assert abs(tr.value - float(np.trace(H.numpy()))) <= 5 * tr.stderr + 1e-8 * scale
    spec = op.density(steps=20, probes=1)
    assert spec.n == op.n
    assert float(np.trapezoid(spec.density, spec.grid)) == pytest.approx(1.0, abs=0.02)


def test_monitor_records_with_a_batch_loss(tiny, math_attention):
    state, data, H = tiny
    model = TinyLM(**TINY)
    model.load_state_dict(state)
    probe = lp.LandscapeProbe(model, BATCH_LOSS, data)
    monitor = lp.LandscapeMonitor(probe, hessian="model", trace_matvecs=4, capacity=["norms"], interpolate_points=3)
    r1 = monitor(1)
    assert r1["loss"] == probe.loss()
    lam = float(torch.linalg.eigvalsh(H)[-1])
    assert r1["lambda_max"] == pytest.approx(lam, rel=1e-4)
    assert r1["capacity"]["model"]["l2"] == pytest.approx(
        math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters())), rel=1e-12)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)             # one step of training between epochs
    for batch in batches_of(data):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    second = {k: v.clone() for k, v in model.state_dict().items()}
    r2 = monitor(2)
    assert r2["loss"] == probe.loss() and r2["loss"] != r1["loss"]
    curve = probe.interpolate(first, second, points=3)
    assert r2["barrier"] == curve.barrier
    assert r2["interpolation"]["losses"] == curve.losses.tolist()
    dist = math.sqrt(sum(float((second[k] - first[k]).pow(2).sum()) for k in first))
    assert r2["distance"] == pytest.approx(dist, rel=1e-12)
    assert len(monitor.history) == 2


# ---------------------------------------------------------------------------- capacity with a BatchLoss
def test_capacity_measures_that_need_pairs_are_refused_or_skipped(setup):
    # fisher_rao takes per-sample losses loss_fn(output_i, y_i): refused by the function,
    # skipped with its reason by the report (and so by the monitor's default groups)
    model, data, probe, a, b = setup
    before = snapshot(model)
    with pytest.raises(ValueError, match="cannot be used with a BatchLoss"):
        lp.capacity.fisher_rao_norm(model, BATCH_LOSS, data)
    rep = lp.capacity.report(model, data, loss_fn=BATCH_LOSS, measures=["fisher_rao", "norms"])
    assert "BatchLoss" in rep.skipped["fisher_rao"] and "fisher_rao" not in rep["model"]
    rec = lp.LandscapeMonitor(probe, hessian=False)(1)
    assert "BatchLoss" in rec["capacity_skipped"]["fisher_rao"] and "l2" in rec["capacity"]["model"]
    # without a BatchLoss, dict batches are not pairs: the error says what to pass
    with pytest.raises(ValueError, match="pair"):
        lp.capacity.activation_sparseness(model, data, {"encoder": "encoder"})
    with pytest.raises(TypeError, match="BatchLoss"):
        lp.capacity.activation_sparseness(model, data, {"encoder": "encoder"}, loss_fn=torch.nn.MSELoss())
    assert_same_snapshot(before, snapshot(model))


def test_activation_sparsity_reads_dict_batches_through_a_batch_loss(setup):
    # the same activations as the pair form fed the keyword inputs (the labels change no activation)
    model, data, probe, a, b = setup
    pairs = [({k: v for k, v in batch.items() if k != "labels"}, None) for batch in data]
    subnets = {"encoder": "encoder"}
    ref = lp.capacity.activation_sparseness(model, pairs, subnets)
    got = lp.capacity.activation_sparseness(model, data, subnets, loss_fn=BATCH_LOSS)
    assert got["encoder"] == ref["encoder"] and 0 < ref["encoder"]["population_sparseness"] < 1
    assert got.keys() == ref.keys()
    rep = lp.capacity.report(model, data, subnets, loss_fn=BATCH_LOSS, measures=["activation_sparsity"])
    assert rep["encoder"]["population_sparseness"] == ref["encoder"]["population_sparseness"]


def test_capacity_measures_that_only_evaluate_agree_with_the_pair_form(setup):
    model, data, probe, a, b = setup

    def ce(out, labels):
        return F.cross_entropy(out.logits.reshape(-1, model.vocab), labels.reshape(-1), ignore_index=-100)

    pairs = [({"input_ids": bt["input_ids"], "attention_mask": bt["attention_mask"]}, bt["labels"])
             for bt in batches_of(data)]
    before = snapshot(model)
    s_whole = lp.capacity.epsilon_sharpness(model, BATCH_LOSS, data, epsilon=1e-2, steps=2)
    s_pairs = lp.capacity.epsilon_sharpness(model, ce, pairs, epsilon=1e-2, steps=2)
    assert s_whole == s_pairs and s_whole > 0
    sigma_whole = lp.capacity.pac_bayes_sigma(model, BATCH_LOSS, data, 0.1, samples=2)
    sigma_pairs = lp.capacity.pac_bayes_sigma(model, ce, pairs, 0.1, samples=2)
    assert sigma_whole == sigma_pairs and sigma_whole > 0
    rep = lp.capacity.report(model, data, {"encoder": "encoder"}, loss_fn=BATCH_LOSS,
                             measures=["norms", "spectral_complexity", "weight_sparsity", "sharpness", "pac_bayes"],
                             epsilon=1e-2, sharpness_steps=2, pac_bayes_samples=2)
    assert not rep.skipped
    assert rep["model"]["sharpness"] == s_whole and rep["model"]["pac_bayes_sigma"] == sigma_whole
    l2 = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.encoder.parameters()))
    assert rep["encoder"]["l2"] == pytest.approx(l2, rel=1e-12)
    assert_same_snapshot(before, snapshot(model))


# ---------------------------------------------------------------------------- the contract's edges
def time_major(data):
    """Batches whose first tensor is (tokens, samples): its leading dim is not the sample count."""
    return [{"ids_t": bt["input_ids"].T.contiguous(), "attention_mask": bt["attention_mask"], "labels": bt["labels"]}
            for bt in batches_of(data)]


def time_major_loss(model, batch):
    return model(input_ids=batch["ids_t"].T, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def test_samples_override_weighs_batches_by_their_real_sample_count(setup):
    model, data, _, a, b = setup
    batches = time_major(data)
    ref, losses, sizes = loss_at(b, data)
    right = lp.LandscapeProbe(model, lp.BatchLoss(time_major_loss, samples=lambda bt: len(bt["labels"])), batches)
    ev = right.evaluate(b)
    assert ev.batch_sizes.tolist() == [4, 4, 3] and rel(ev.loss, ref) <= 1e-12
    # a one-element tensor is accepted as the count
    as_tensor = lp.LandscapeProbe(model, lp.BatchLoss(time_major_loss, samples=lambda bt: torch.tensor(len(bt["labels"]))),
                                  batches)
    assert as_tensor.loss(b) == ev.loss
    # without it the first tensor's leading dimension (SEQ tokens) is taken: equal weights here
    default = lp.LandscapeProbe(model, lp.BatchLoss(time_major_loss), batches).evaluate(b)
    assert default.batch_sizes.tolist() == [SEQ] * 3
    assert rel(default.loss, sum(losses) / 3) <= 1e-12 and rel(default.loss, ref) > 1e-6
    for bad in (-1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="samples"):
            lp.LandscapeProbe(model, lp.BatchLoss(time_major_loss, samples=lambda bt, bad=bad: bad), batches).loss()
    with pytest.raises(TypeError, match="samples"):
        lp.BatchLoss(time_major_loss, samples=3)


def test_a_pair_loss_on_dict_batches_names_batch_loss(setup):
    model, data, _, a, b = setup
    before = snapshot(model)
    probe = lp.LandscapeProbe(model, lambda out, y: out.loss, data)
    with pytest.raises(ValueError, match="BatchLoss") as info:
        probe.loss()
    assert "dict" in str(info.value)
    with pytest.raises(ValueError, match="BatchLoss"):
        probe.interpolate(a, b, points=3)
    with pytest.raises(ValueError, match="BatchLoss"):
        probe.hessian()
    assert_same_snapshot(before, snapshot(model))


def test_a_batch_loss_must_return_one_number(setup):
    model, data, _, a, b = setup
    probe = lp.LandscapeProbe(model, lp.BatchLoss(lambda m, bt: m(**bt).logits.mean((1, 2))), data)
    with pytest.raises(ValueError, match="scalar"):
        probe.loss()
    with pytest.raises(TypeError, match="callable"):
        lp.BatchLoss(TinyLM)


def many_batches(seed: int = 7):
    """A list of 12 dict batches of 1 to 4 samples."""
    g = torch.Generator().manual_seed(seed)
    ds = TokenDataset(30, seed=seed)
    out, i = [], 0
    while len(out) < 12:
        k = int(torch.randint(1, 5, (1,), generator=g))
        out.append({key: torch.stack([ds[j][key] for j in range(i, i + k)]) for key in ds[0]})
        i = (i + k) % 26
    return out


def test_precision_with_a_batch_loss_on_a_list_of_batches(setup):
    model, _, _, a, b = setup
    batches = many_batches()
    sizes_all = [len(bt["input_ids"]) for bt in batches]
    population = sum(sizes_all)
    ref_all, losses_all, _ = loss_at(b, batches)
    probe = lp.LandscapeProbe(model, BATCH_LOSS, batches, precision=0.3, min_batches=2, seed=3)
    ev = probe.evaluate(b)
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(3)).tolist()
    k = len(ev.batch_losses)
    assert 2 <= k < len(batches)                      # stopped early
    used = order[:k]
    np.testing.assert_allclose(ev.batch_losses, [losses_all[i] for i in used], rtol=1e-12, atol=0)
    assert ev.batch_sizes.tolist() == [sizes_all[i] for i in used]
    n_used = [sizes_all[i] for i in used]
    mean = math.fsum(n * losses_all[i] for n, i in zip(n_used, used)) / sum(n_used)
    assert rel(ev.loss, mean) <= 1e-12
    w = np.array(n_used) / sum(n_used)
    var = k / (k - 1) * np.sum(w**2 * (np.array([losses_all[i] for i in used]) - mean) ** 2)
    var *= 1 - sum(n_used) / population
    assert ev.stderr == pytest.approx(math.sqrt(var), rel=1e-10)
    assert 2 * ev.stderr <= 0.3 * abs(ev.loss)
    # the same random order at every point (common random numbers)
    assert probe.evaluate(a).batch_sizes.tolist()[:2] == ev.batch_sizes.tolist()[:2]
    # a precision no subset reaches: every batch is used and the loss is exact
    exact = lp.LandscapeProbe(model, BATCH_LOSS, batches, precision=1e-9, min_batches=2).evaluate(b)
    assert len(exact.batch_losses) == len(batches) and rel(exact.loss, ref_all) <= 1e-12
    assert exact.stderr == 0.0


def test_precision_with_a_batch_loss_and_a_samples_override():
    model = TinyLM(seed=0)
    batches = time_major(many_batches())
    right = lp.BatchLoss(time_major_loss, samples=lambda bt: len(bt["labels"]))
    exact = lp.LandscapeProbe(model, right, batches, precision=1e-9, min_batches=2).evaluate()
    plain = lp.LandscapeProbe(model, right, batches).evaluate()
    assert sorted(exact.batch_sizes.tolist()) == sorted(plain.batch_sizes.tolist())
    assert rel(exact.loss, plain.loss) <= 1e-12 and exact.stderr == 0.0


def test_precision_with_a_batch_loss_on_a_dataloader_of_dicts():
    # a DataLoader is re-batched in a seeded random order of the samples (its batch_size and collate)
    model = TinyLM(seed=0)
    data = loader(n=11, batch_size=2)
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0)).tolist()
    redrawn = [data.collate_fn([data.dataset[j] for j in order[i:i + 2]]) for i in range(0, 11, 2)]
    ref, losses, sizes = loss_at(state_of(0), redrawn)
    ev = lp.LandscapeProbe(model, BATCH_LOSS, data, precision=1e-9, min_batches=2).evaluate()
    assert ev.batch_sizes.tolist() == sizes == [2, 2, 2, 2, 2, 1]
    np.testing.assert_allclose(ev.batch_losses, losses, rtol=1e-12, atol=0)
    assert rel(ev.loss, ref) <= 1e-12 and ev.stderr == 0.0


def test_a_one_shot_iterator_is_refused_with_the_fix():
    gen = ((torch.ones(2, 1), torch.zeros(2, 1)) for _ in range(3))
    with pytest.raises(TypeError, match=r"one-shot iterator \(generator\).*list\(data\)"):
        lp.LandscapeProbe(torch.nn.Linear(1, 1), torch.nn.MSELoss(), gen)
    with pytest.raises(TypeError, match="data must be an iterable of batches"):
        lp.LandscapeProbe(torch.nn.Linear(1, 1), torch.nn.MSELoss(), 3)
