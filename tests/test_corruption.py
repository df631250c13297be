"""Corrupted views of a dataset (Zhang et al. 2017): labels, pixels, Gaussian inputs, targets.

Statistical checks use fixed seeds, so each is deterministic; their thresholds are stated
(a significance level of 1e-3 for the chi-square tests, 4 standard errors for proportions
and moments), so that a correct implementation fails them with probability about 1e-3 or
less over the choice of seed.
"""

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from landprobe.data import (
    CORRUPTION_KINDS,
    CorruptLabels,
    GaussianInputs,
    RandomPixels,
    ShuffledPixels,
    ShuffledTargets,
    corrupt,
)

ALPHA = 1e-3          # significance of the chi-square tests
C = 10                # classes


def labelled(n=5000, classes=C):
    """Inputs carry their index (to map DataLoader batches back to samples); labels i mod C."""
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return TensorDataset(x, torch.arange(n) % classes)


def labels_of(ds):
    return np.array([int(ds[i][1]) for i in range(len(ds))])


# ----------------------------------------------------------------------------- labels
def test_p0_is_the_identity():
    base = labelled(500)
    noisy = CorruptLabels(base, 0.0, C, seed=3)
    for i in range(len(base)):
        x, y = noisy[i]
        assert torch.equal(x, base[i][0]) and torch.equal(y, base[i][1]) and y.dtype == base[i][1].dtype
    assert not noisy.replaced(range(500)).any()


def test_p1_labels_are_independent_of_the_true_ones_and_uniform():
    base = labelled(5000)
    true, noisy = labels_of(base), labels_of(CorruptLabels(base, 1.0, C, seed=0))
    table = np.zeros((C, C))
    np.add.at(table, (true, noisy), 1)
    _, p_independence, dof, _ = stats.chi2_contingency(table)
    assert dof == (C - 1) ** 2 and p_independence > ALPHA, p_independence
    counts = np.bincount(noisy, minlength=C)
    assert stats.chisquare(counts).pvalue > ALPHA, counts


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_fraction_changed_is_p_times_one_minus_one_over_c(p):
    n = 5000
    base = labelled(n)
    noisy = CorruptLabels(base, p, C, seed=1)
    changed = np.mean(labels_of(noisy) != labels_of(base))
    q = p * (1 - 1 / C)
    assert abs(changed - q) < 4 * np.sqrt(q * (1 - q) / n), (changed, q)
    replaced = noisy.replaced(range(n)).mean()
    assert abs(replaced - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_seed_decides_the_draws():
    base = labelled(1000)
    a, b = labels_of(CorruptLabels(base, 1.0, C, seed=0)), labels_of(CorruptLabels(base, 1.0, C, seed=1))
    assert np.array_equal(a, labels_of(CorruptLabels(base, 1.0, C, seed=0)))
    assert np.mean(a == b) < 0.2


def loader_labels(ds, workers, shuffle, epochs=1):
    """index -> label for each epoch of a DataLoader over ``ds`` (inputs carry the index)."""
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(ds, batch_size=64, shuffle=shuffle, num_workers=workers, generator=g)
    out = []
    for _ in range(epochs):
        seen = {}
        for x, y in loader:
            seen.update(zip(x[:, 0].long().tolist(), y.tolist()))
        out.append(np.array([seen[i] for i in range(len(ds))]))
    return out


def test_labels_are_fixed_across_epochs_and_dataloader_workers():
    noisy = CorruptLabels(labelled(2000), 0.5, C, seed=5)
    direct = labels_of(noisy)
    e1, e2 = loader_labels(noisy, workers=0, shuffle=True, epochs=2)
    (w2,) = loader_labels(noisy, workers=2, shuffle=True)
    assert np.array_equal(e1, direct) and np.array_equal(e2, direct) and np.array_equal(w2, direct)


def test_label_type_is_kept():
    ints = [(torch.zeros(1), 1), (torch.zeros(1), 2)]
    out = [CorruptLabels(ints, 1.0, 3, seed=s)[0][1] for s in range(20)]
    assert all(type(v) is int for v in out) and len(set(out)) > 1
    nump = [(torch.zeros(1), np.int64(1))]
    assert isinstance(CorruptLabels(nump, 1.0, 3)[0][1], (np.integer, int))


def test_wrapped_dataset_is_not_changed():
    base = labelled(300)
    before = [t.clone() for t in base.tensors]
    for ds in (CorruptLabels(base, 1.0, C), ShuffledPixels(base), RandomPixels(base), GaussianInputs(base),
               ShuffledTargets(base)):
        for i in range(len(ds)):
            ds[i]
    assert all(torch.equal(a, b) for a, b in zip(before, base.tensors))


class NoLen(IterableDataset):
    def __iter__(self):
        yield torch.zeros(1), 0


@pytest.mark.parametrize("kwargs, match", [
    ({"p": 1.5}, r"p=1.5; expected a probability in \[0, 1\]"),
    ({"p": -0.1}, r"p=-0.1; expected a probability"),
    ({"p": True}, r"p=True; expected a probability"),
    ({"num_classes": 1}, r"num_classes`=1; expected an integer >= 2"),
    ({"seed": -1}, r"seed`=-1; expected an integer >= 0"),
])
def test_label_argument_errors(kwargs, match):
    args = {"p": 0.5, "num_classes": C, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        CorruptLabels(labelled(10), **args)


def test_dataset_without_len_is_refused():
    with pytest.raises(TypeError, match=r"`dataset` \(NoLen\) must be a map-style dataset"):
        CorruptLabels(NoLen(), 0.5, C)
    with pytest.raises(TypeError, match="is the class TensorDataset; pass an instance"):
        ShuffledTargets(TensorDataset)


@pytest.mark.parametrize("label", [10, -1])
def test_label_outside_range_names_the_item_and_num_classes(label):
    ds = [(torch.zeros(1), 0), (torch.zeros(1), label)]
    noisy = CorruptLabels(ds, 0.3, C)
    noisy[0]
    with pytest.raises(ValueError, match=rf"item 1 is {label}, outside \[0, num_classes=10\)"):
        noisy[1]


def test_non_class_labels_and_items_are_refused():
    with pytest.raises(TypeError, match="expected a class index"):
        CorruptLabels([(torch.zeros(1), torch.tensor(0.5))], 0.3, C)[0]
    with pytest.raises(ValueError, match=r"item 0 of the dataset is a tuple of length 3; expected a pair"):
        CorruptLabels([(torch.zeros(1), 0, 1)], 0.3, C)[0]
    with pytest.raises(IndexError, match="index 5 out of range for 1 items"):
        CorruptLabels([(torch.zeros(1), 0)], 0.3, C)[5]


# ----------------------------------------------------------------------------- pixels
def images(n=40, shape=(3, 4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *shape, generator=g), torch.arange(n) % C)


def recover(x, out):
    """The source position of each output pixel position (all channels must agree)."""
    cx, cout = x.reshape(x.shape[0], -1), out.reshape(out.shape[0], -1)
    match = (cout[0][:, None] == cx[0][None, :]).nonzero()
    assert match.shape[0] == cx.shape[1], "not a permutation of the values"
    perm = match[match[:, 0].argsort(), 1]
    assert torch.equal(cout, cx[:, perm]), "channels of a pixel did not move together"
    return perm


def test_shuffled_pixels_is_one_permutation_for_all_samples():
    base = images()
    sp = ShuffledPixels(base, seed=2)
    perms = [recover(base[i][0], sp[i][0]) for i in range(len(base))]
    assert all(torch.equal(p, sp.permutation) for p in perms)
    assert not torch.equal(sp.permutation, torch.arange(20))
    assert torch.equal(ShuffledPixels(base, seed=2).permutation, sp.permutation)
    assert not torch.equal(ShuffledPixels(base, seed=3).permutation, sp.permutation)
    assert all(int(sp[i][1]) == int(base[i][1]) for i in range(len(base)))


def test_flat_inputs_permute_every_element():
    base = TensorDataset(torch.randn(5, 7), torch.zeros(5))
    sp = ShuffledPixels(base, seed=0)
    assert all(torch.equal(sp[i][0], base[i][0][sp.permutation]) for i in range(5))


def test_random_pixels_differ_per_sample_and_are_fixed():
    base = images(n=30)
    rp = RandomPixels(base, seed=1)
    perms = [recover(base[i][0], rp[i][0]) for i in range(len(base))]
    assert len({tuple(p.tolist()) for p in perms}) == len(base)
    again = [recover(base[i][0], rp[i][0]) for i in range(len(base))]
    assert all(torch.equal(a, b) for a, b in zip(perms, again))
    assert all(torch.equal(p, rp.permutation(i, 20)) for i, p in enumerate(perms))


def index_images(n=64):
    """8x8 one-channel images whose first pixel is the sample's index and the rest noise."""
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("cls", [RandomPixels, GaussianInputs])
def test_inputs_are_fixed_across_epochs_and_workers(cls):
    base = index_images()
    ds = cls(base, seed=4)
    direct = torch.stack([ds[i][0] for i in range(len(ds))])

    def by_index(workers):
        out = torch.empty_like(direct)
        loader = DataLoader(_Indexed(ds), batch_size=16, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(1))
        for (x, _), idx in loader:
            out[idx] = x
        return out
    assert torch.equal(by_index(0), direct) and torch.equal(by_index(0), direct) and torch.equal(by_index(2), direct)


class _Indexed(Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i], i


def test_gaussian_matches_the_mean_and_variance_of_the_dataset():
    n, d = 400, 64
    g = torch.Generator().manual_seed(0)
    base = TensorDataset(0.3 + 0.2 * torch.rand(n, d, generator=g) ** 2, torch.zeros(n))
    values = base.tensors[0].double().numpy()
    gi = GaussianInputs(base, seed=0)
    assert abs(gi.mean - values.mean()) < 1e-12 and abs(gi.std - values.std()) < 1e-12
    noise = torch.stack([gi[i][0] for i in range(n)]).double().numpy().ravel()
    m = noise.size
    assert abs(noise.mean() - gi.mean) < 4 * gi.std / np.sqrt(m)
    var_se = gi.std ** 2 * np.sqrt(2 / (m - 1))                 # of a Gaussian sample's variance
    assert abs(noise.var(ddof=1) - gi.std ** 2) < 4 * var_se
    assert stats.normaltest(noise).pvalue > ALPHA
    assert not torch.equal(gi[0][0], gi[1][0]) and torch.equal(gi[0][0], gi[0][0])
    assert gi[0][0].dtype == torch.float32
    given = GaussianInputs(base, seed=0, mean=0.0, std=2.0)
    assert (given.mean, given.std) == (0.0, 2.0)


def test_pixel_argument_errors():
    with pytest.raises(TypeError, match=r"input of item 0 is list; expected a non-empty floating-point tensor"):
        ShuffledPixels([([1.0, 2.0], 0)])
    with pytest.raises(TypeError, match=r"dtype torch.int64"):
        RandomPixels([(torch.arange(4), 0)])[0]
    mixed = [(torch.zeros(4), 0), (torch.zeros(5), 1)]
    with pytest.raises(ValueError, match=r"item 1 has shape \(5,\), the first \(4,\)"):
        ShuffledPixels(mixed)[1]
    with pytest.raises(ValueError, match="`dataset` is empty"):
        ShuffledPixels([])
    with pytest.raises(ValueError, match="is empty; its moments are undefined"):
        GaussianInputs([])
    with pytest.raises(ValueError, match=r"std=-1.0; expected finite numbers with std >= 0"):
        GaussianInputs([(torch.zeros(2), 0)], mean=0.0, std=-1.0)


# ----------------------------------------------------------------------------- targets
def test_shuffled_targets_use_every_target_once_and_are_fixed():
    n = 200
    x = torch.arange(n, dtype=torch.float32)
    y = torch.randn(n, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    base = TensorDataset(x, y)
    st = ShuffledTargets(base, seed=7)
    perm = st.permutation
    assert sorted(perm.tolist()) == list(range(n))                       # every target used once
    assert not (perm == torch.arange(n)).any()                           # no sample keeps its own
    for i in range(n):
        xi, yi = st[i]
        assert float(xi) == i and torch.equal(yi, y[perm[i]])
    assert torch.equal(ShuffledTargets(base, seed=7).permutation, perm)
    assert not torch.equal(ShuffledTargets(base, seed=8).permutation, perm)
    with pytest.raises(ValueError, match="has 1 item"):
        ShuffledTargets([(torch.zeros(1), torch.zeros(1))])


# ----------------------------------------------------------------------------- factory
def test_corrupt_builds_each_kind_and_checks_its_arguments():
    base = images(n=10)
    kinds = {k: type(corrupt(base, k, **({"p": 0.5, "num_classes": C} if k == "labels" else {})))
             for k in CORRUPTION_KINDS}
    assert kinds == {"labels": CorruptLabels, "shuffled_pixels": ShuffledPixels, "random_pixels": RandomPixels,
                     "gaussian": GaussianInputs, "shuffled_targets": ShuffledTargets}
    with pytest.raises(ValueError, match="kind='pixels'; expected one of"):
        corrupt(base, "pixels")
    with pytest.raises(ValueError, match="kind='labels' needs p="):
        corrupt(base, "labels", p=0.5)
    with pytest.raises(ValueError, match="belong to kind='labels', not kind='gaussian'"):
        corrupt(base, "gaussian", p=0.5)


def test_vectorized_draws_are_the_items_draws():
    base = labelled(3000)
    noisy = CorruptLabels(base, 0.4, C, seed=11)
    idx = np.arange(3000)
    expected = np.where(noisy.replaced(idx), noisy.random_labels(idx), labels_of(base))
    assert np.array_equal(labels_of(noisy), expected)


def test_materialize_stacks_the_items_and_checks_shapes():
    from landprobe.data import materialize

    base = images(n=12)
    view = RandomPixels(base, seed=0)
    td = materialize(view)
    assert all(torch.equal(td[i][0], view[i][0]) and int(td[i][1]) == int(view[i][1]) for i in range(12))
    with pytest.raises(ValueError, match=r"item 1 has shapes \(5,\), \(\); item 0 \(4,\), \(\)"):
        materialize([(torch.zeros(4), 0), (torch.zeros(5), 1)])
    with pytest.raises(ValueError, match="`dataset` is empty"):
        materialize([])
    with pytest.raises(TypeError, match="the target of item 0 is a str"):
        materialize([(torch.zeros(4), "cat")])
