"""Corrupted views of a map-style dataset, after Zhang et al. (2017), "Understanding deep
learning requires rethinking generalization", §2: partially corrupted labels, shuffled
pixels, random pixels, Gaussian inputs, and, for regression and super-resolution, targets
shuffled across samples.

Every wrapper reads items ``(x, y)`` of the wrapped dataset on demand and never writes to it.
Every random draw of item ``i`` is a function of ``(seed, i)`` alone (a counter-based hash,
splitmix64), never of a global or per-worker generator: an item is the same in every epoch,
in every ``DataLoader`` worker and in any order of access.
"""

from __future__ import annotations

import math
from collections.abc import Sized
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from landprobe.common.checks import check_int

__all__ = ["CorruptLabels", "ShuffledPixels", "RandomPixels", "GaussianInputs", "ShuffledTargets", "corrupt",
           "materialize", "CORRUPTION_KINDS"]

#: What :func:`corrupt` makes: labels replaced with probability ``p``, the three input
#: variants of Zhang et al. and targets shuffled across samples.
CORRUPTION_KINDS = ("labels", "shuffled_pixels", "random_pixels", "gaussian", "shuffled_targets")

_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1
# One stream per kind of draw, so that two wrappers with one seed draw independent numbers.
_FLIP, _LABEL, _SHUFFLED, _RANDOM, _GAUSS, _TARGETS = range(1, 7)


# ----------------------------------------------------------------------------- counter-based draws
def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al. 2014) on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _mix_int(z: int) -> int:
    """:func:`_mix` on one Python int (the same bits, without numpy's per-call overhead)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _key(seed: int, stream: int) -> int:
    return _mix_int((seed * _GOLDEN + stream) & _MASK)


def _hash_int(seed: int, stream: int, index: int) -> int:
    """64 random bits, a function of (seed, stream, index) alone."""
    return _mix_int((_mix_int((_key(seed, stream) + index * _GOLDEN) & _MASK) + _GOLDEN) & _MASK)


def _hash(seed: int, stream: int, index: Any) -> np.ndarray:
    """:func:`_hash_int` for each of ``index`` (an int or an int array), as a uint64 array."""
    idx = np.atleast_1d(np.asarray(index, dtype=np.int64)).astype(np.uint64)
    key = np.full(idx.shape, _key(seed, stream), dtype=np.uint64)
    return _mix(_mix(key + idx * np.uint64(_GOLDEN)) + np.uint64(_GOLDEN))


def _uniform(seed: int, stream: int, index: Any) -> np.ndarray:
    """Uniform floats in [0, 1) (53 bits) for each of ``index``."""
    return (_hash(seed, stream, index) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _uniform_int(seed: int, stream: int, index: int) -> float:
    """:func:`_uniform` for one index."""
    return (_hash_int(seed, stream, index) >> 11) * 2.0 ** -53


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A torch generator seeded from (seed, stream, index) alone."""
    return torch.Generator().manual_seed(_hash_int(seed, stream, index) >> 1)


# ----------------------------------------------------------------------------- checks shared by the wrappers
def _check_dataset(dataset: Any, who: str) -> int:
    if isinstance(dataset, type):
        raise TypeError(f"{who}: `dataset` is the class {dataset.__name__}; pass an instance of it")
    if not hasattr(dataset, "__getitem__") or not isinstance(dataset, Sized):
        raise TypeError(
            f"{who}: `dataset` ({type(dataset).__name__}) must be a map-style dataset with __getitem__ and __len__ "
            f"(a torch Dataset, a TensorDataset, a list of (x, y) pairs); an iterable-style dataset has no "
            f"fixed items to corrupt: materialise it first (list(dataset))")
    return len(dataset)


def _check_seed(seed: Any, who: str) -> int:
    return check_int(f"{who} `seed`", seed, 0, "the seed of the corruption's draws")


def _pair(item: Any, index: int, who: str) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    kind = type(item).__name__ + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
    raise ValueError(f"{who}: item {index} of the dataset is a {kind}; expected a pair (x, y). Wrap datasets "
                     f"whose items are pairs (inputs, targets).")


def _tensor_input(x: Any, index: int, who: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() == 0:
        raise TypeError(f"{who}: the input of item {index} is {type(x).__name__}"
                        f"{'' if not isinstance(x, Tensor) else f' of dtype {x.dtype}, shape {tuple(x.shape)}'}; "
                        f"expected a non-empty floating-point tensor (convert with torch.as_tensor(x).float())")
    return x


class _Wrapper(Dataset):
    """A read-only view of ``dataset``: length, index normalisation, the pair of each item."""

    _who = "corruption"

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        self._n = _check_dataset(dataset, self._who)
        self.dataset = dataset
        self.seed = _check_seed(seed, self._who)

    def __len__(self) -> int:
        return self._n

    def _index(self, index: Any) -> int:
        if isinstance(index, Tensor) and index.numel() == 1:
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self._who}: index {index!r} ({type(index).__name__}); expected an int")
        n = self._n
        if not -n <= index < n:
            raise IndexError(f"{self._who}: index {index} out of range for {n} items")
        return int(index) % n

    def _item(self, index: int) -> tuple[Any, Any]:
        return _pair(self.dataset[index], index, self._who)


# ----------------------------------------------------------------------------- labels
def _label_value(y: Any, index: int, num_classes: int) -> int:
    """The class of label ``y`` (an int, a numpy integer or a one-element integer tensor)."""
    integer_tensor = isinstance(y, Tensor) and y.numel() == 1 and not y.is_floating_point() and y.dtype != torch.bool
    if integer_tensor or (isinstance(y, (int, np.integer)) and not isinstance(y, bool)):
        v = int(y)
    else:
        raise TypeError(f"CorruptLabels: the label of item {index} is {y!r} ({type(y).__name__}); expected a class "
                        f"index (an int or a one-element integer tensor). For real-valued targets use "
                        f"ShuffledTargets")
    if not 0 <= v < num_classes:
        raise ValueError(f"CorruptLabels: the label of item {index} is {v}, outside [0, num_classes={num_classes}); "
                         f"pass num_classes > {v} (the number of classes of the dataset)")
    return v


def _like(y: Any, value: int) -> Any:
    """``value`` as a label of the same kind as ``y``."""
    if isinstance(y, Tensor):
        return torch.full_like(y, value)
    return type(y)(value) if isinstance(y, np.integer) else value


class CorruptLabels(_Wrapper):
    """Partially corrupted labels (Zhang et al. 2017, §2): with probability ``p`` the label of
    each sample is replaced by a class drawn uniformly from all ``num_classes`` classes.

    Convention:
        Item ``i`` draws ``u_i ~ U[0, 1)`` and ``c_i ~ U{0, ..., C − 1}`` from ``(seed, i)``
        alone (a counter-based hash, so the same in every epoch and every ``DataLoader``
        worker); its label becomes ``c_i`` when ``u_i < p`` and stays otherwise. The drawn
        class may equal the true one, so the expected fraction of labels that change is
        ``p · (1 − 1/C)``; at ``p = 1`` the labels are independent of the inputs and uniform.
        ``p = 0`` returns the wrapped items unchanged. The label keeps its type (an int, a
        numpy integer, or a tensor of the same dtype and shape).

    Args:
        dataset: Map-style dataset of pairs ``(x, y)`` with integer class labels ``y``.
        p: Probability of replacing a label, in [0, 1].
        num_classes: Number of classes ``C`` >= 2; every label must lie in ``[0, C)``.
        seed: Seed of the draws (an int >= 0).

    Raises:
        ValueError: If ``p`` is outside [0, 1], ``num_classes < 2``, ``seed < 0``, or a label
            read lies outside ``[0, num_classes)`` (names the item).
        TypeError: If ``dataset`` has no ``__len__`` or a label is not a class index.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from landprobe.data import CorruptLabels
        >>> ds = TensorDataset(torch.zeros(1000, 2), torch.zeros(1000, dtype=torch.long))
        >>> noisy = CorruptLabels(ds, p=0.5, num_classes=4, seed=0)
        >>> changed = sum(int(noisy[i][1]) != 0 for i in range(1000))
        >>> abs(changed / 1000 - 0.5 * (1 - 1 / 4)) < 0.05       # p (1 - 1/C) change
        True
        >>> int(noisy[7][1]) == int(noisy[7][1])                  # fixed per sample
        True
        >>> all(int(CorruptLabels(ds, 0.0, 4)[i][1]) == 0 for i in range(1000))   # p = 0: the identity
        True
    """

    _who = "CorruptLabels"

    def __init__(self, dataset: Any, p: float, num_classes: int, seed: int = 0) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 <= float(p) <= 1.0):
            raise ValueError(f"CorruptLabels: p={p!r}; expected a probability in [0, 1] (the fraction of labels "
                             f"replaced by a uniformly random class)")
        check_int("CorruptLabels `num_classes`", num_classes, 2, "the number of classes of the labels")
        super().__init__(dataset, seed)
        self.p, self.num_classes = float(p), int(num_classes)

    def replaced(self, indices: Any) -> np.ndarray:
        """Whether the label of each of ``indices`` is redrawn (``u_i < p``), as a bool array.

        Example:
            >>> import torch
            >>> from torch.utils.data import TensorDataset
            >>> from landprobe.data import CorruptLabels
            >>> ds = TensorDataset(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
            >>> CorruptLabels(ds, 1.0, 3).replaced(range(4)).tolist()
            [True, True, True, True]
        """
        return _uniform(self.seed, _FLIP, np.asarray(indices, dtype=np.int64)) < self.p

    def random_labels(self, indices: Any) -> np.ndarray:
        """The uniformly drawn class ``c_i`` of each of ``indices`` (used where :meth:`replaced`).

        Example:
            >>> import torch
            >>> from torch.utils.data import TensorDataset
            >>> from landprobe.data import CorruptLabels
            >>> ds = TensorDataset(torch.zeros(9, 1), torch.zeros(9, dtype=torch.long))
            >>> noisy = CorruptLabels(ds, 1.0, 3, seed=2)
            >>> noisy.random_labels(range(9)).tolist() == [int(noisy[i][1]) for i in range(9)]
            True
        """
        idx = np.asarray(indices, dtype=np.int64)
        return np.minimum((_uniform(self.seed, _LABEL, idx) * self.num_classes).astype(np.int64),
                          self.num_classes - 1)

    def __getitem__(self, index: Any) -> tuple[Any, Any]:
        i = self._index(index)
        x, y = self._item(i)
        true = _label_value(y, i, self.num_classes)
        if not _uniform_int(self.seed, _FLIP, i) < self.p:
            return x, y
        new = min(int(_uniform_int(self.seed, _LABEL, i) * self.num_classes), self.num_classes - 1)
        return x, (y if new == true else _like(y, new))


# ----------------------------------------------------------------------------- inputs
def _pixel_layout(shape: torch.Size) -> tuple[int, int]:
    """(groups, positions) of an input: a (C, H, W) image permutes its H·W pixel positions with
    the channels of a pixel kept together; any other shape permutes all its elements."""
    if len(shape) == 3:
        return shape[0], shape[1] * shape[2]
    return 1, math.prod(shape)


def _permute(x: Tensor, perm: Tensor) -> Tensor:
    groups, positions = _pixel_layout(x.shape)
    return x.reshape(groups, positions)[:, perm].reshape(x.shape)


class ShuffledPixels(_Wrapper):
    """Shuffled pixels (Zhang et al. 2017, §2): one random permutation of the pixel positions,
    drawn once from ``seed``, applied to every input; targets unchanged.

    Convention:
        A ``(C, H, W)`` input has its ``H·W`` positions permuted, the ``C`` channels of a
        pixel moving together; an input of any other shape (``(D,)``, ``(H, W)``, ...) has
        all its elements permuted. ``out.flatten(-2)[..., j] = x.flatten(-2)[..., permutation[j]]``
        for images (``out.flatten()[j] = x.flatten()[permutation[j]]`` otherwise). Every input
        must have the shape of the first item's.

    Args:
        dataset: Map-style dataset of pairs ``(x, y)`` with floating-point tensor inputs.
        seed: Seed of the permutation (an int >= 0).

    Attributes:
        permutation: int64 tensor, the source position of each output position.

    Raises:
        TypeError: If ``dataset`` has no ``__len__`` or an input is not a floating tensor.
        ValueError: If the dataset is empty or an input's shape differs from the first.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from landprobe.data import ShuffledPixels
        >>> ds = TensorDataset(torch.arange(8.0).reshape(2, 1, 2, 2), torch.tensor([0, 1]))
        >>> sp = ShuffledPixels(ds, seed=0)
        >>> x, y = sp[1]
        >>> torch.equal(x.flatten(), ds[1][0].flatten()[sp.permutation]), int(y)
        (True, 1)
    """

    _who = "ShuffledPixels"

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        super().__init__(dataset, seed)
        if self._n == 0:
            raise ValueError("ShuffledPixels: `dataset` is empty; the permutation takes its size from the first input")
        self.shape = _tensor_input(self._item(0)[0], 0, self._who).shape
        positions = _pixel_layout(self.shape)[1]
        self.permutation = torch.randperm(positions, generator=_generator(self.seed, _SHUFFLED, 0))

    def __getitem__(self, index: Any) -> tuple[Tensor, Any]:
        i = self._index(index)
        x, y = self._item(i)
        x = _tensor_input(x, i, self._who)
        if x.shape != self.shape:
            raise ValueError(f"ShuffledPixels: the input of item {i} has shape {tuple(x.shape)}, the first "
                             f"{tuple(self.shape)}; one permutation needs inputs of one shape (crop or resize them)")
        return _permute(x, self.permutation), y


class RandomPixels(_Wrapper):
    """Random pixels (Zhang et al. 2017, §2): each input's pixel positions permuted by a
    permutation of its own, drawn from ``(seed, index)`` (fixed across epochs and workers).

    Convention: as :class:`ShuffledPixels` (channels of a ``(C, H, W)`` pixel move together),
    with :meth:`permutation` of the item's index in place of one shared permutation.

    Args:
        dataset: Map-style dataset of pairs ``(x, y)`` with floating-point tensor inputs.
        seed: Seed of the permutations (an int >= 0).

    Raises:
        TypeError: If ``dataset`` has no ``__len__`` or an input is not a floating tensor.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from landprobe.data import RandomPixels
        >>> ds = TensorDataset(torch.arange(18.0).reshape(2, 9), torch.tensor([0, 1]))
        >>> rp = RandomPixels(ds, seed=0)
        >>> sorted(rp[0][0].tolist()) == ds[0][0].tolist()         # the same values, moved
        True
        >>> torch.equal(rp[0][0], rp[0][0]), torch.equal(rp.permutation(0, 9), rp.permutation(1, 9))
        (True, False)
    """

    _who = "RandomPixels"

    def permutation(self, index: int, positions: int) -> Tensor:
        """The permutation of item ``index`` over ``positions`` pixel positions (int64).

        Example:
            >>> import torch
            >>> from torch.utils.data import TensorDataset
            >>> from landprobe.data import RandomPixels
            >>> rp = RandomPixels(TensorDataset(torch.zeros(3, 4), torch.zeros(3)), seed=1)
            >>> sorted(rp.permutation(2, 4).tolist())
            [0, 1, 2, 3]
        """
        return torch.randperm(positions, generator=_generator(self.seed, _RANDOM, self._index(index)))

    def __getitem__(self, index: Any) -> tuple[Tensor, Any]:
        i = self._index(index)
        x, y = self._item(i)
        x = _tensor_input(x, i, self._who)
        return _permute(x, self.permutation(i, _pixel_layout(x.shape)[1])), y


def _moments(dataset: Any, n: int, who: str) -> tuple[float, float]:
    """Mean and standard deviation of every input element of the dataset (float64 sums)."""
    total = total_sq = 0.0
    count = 0
    for i in range(n):
        x = _tensor_input(_pair(dataset[i], i, who)[0], i, who).detach().double()
        total += float(x.sum())
        total_sq += float(x.square().sum())
        count += x.numel()
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))


class GaussianInputs(_Wrapper):
    """Gaussian inputs (Zhang et al. 2017, §2): every input replaced by i.i.d. Gaussian noise
    whose mean and variance match those of the dataset's inputs; targets unchanged.

    Convention:
        ``mean`` and ``std`` are the mean and the population standard deviation of all
        input elements of ``dataset`` (one pass over it at construction, in float64),
        unless given. Item ``i``'s noise, of its input's shape and dtype, is drawn from a
        generator seeded by ``(seed, i)``: the same in every epoch and every worker.

    Args:
        dataset: Map-style dataset of pairs ``(x, y)`` with floating-point tensor inputs.
        seed: Seed of the noise (an int >= 0).
        mean, std: The noise's mean and standard deviation (default: the dataset's).

    Attributes:
        mean, std: The moments used.

    Raises:
        TypeError: If ``dataset`` has no ``__len__`` or an input is not a floating tensor.
        ValueError: If the dataset is empty (and no moments are given) or ``std < 0``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from landprobe.data import GaussianInputs
        >>> ds = TensorDataset(torch.tensor([[1.0, 3.0], [1.0, 3.0]]), torch.tensor([0, 1]))
        >>> g = GaussianInputs(ds, seed=0)
        >>> g.mean, g.std                                    # of the values 1, 3, 1, 3
        (2.0, 1.0)
        >>> g[0][0].shape, torch.equal(g[0][0], g[0][0]), int(g[1][1])
        (torch.Size([2]), True, 1)
    """

    _who = "GaussianInputs"

    def __init__(self, dataset: Any, seed: int = 0, *, mean: float | None = None, std: float | None = None) -> None:
        super().__init__(dataset, seed)
        if mean is None or std is None:
            if self._n == 0:
                raise ValueError("GaussianInputs: `dataset` is empty; its moments are undefined (pass mean= and std=)")
            m, s = _moments(dataset, self._n, self._who)
            mean = m if mean is None else mean
            std = s if std is None else std
        if not (math.isfinite(float(mean)) and math.isfinite(float(std)) and float(std) >= 0):
            raise ValueError(f"GaussianInputs: mean={mean!r}, std={std!r}; expected finite numbers with std >= 0")
        self.mean, self.std = float(mean), float(std)

    def __getitem__(self, index: Any) -> tuple[Tensor, Any]:
        i = self._index(index)
        x, y = self._item(i)
        x = _tensor_input(x, i, self._who)
        noise = torch.randn(x.shape, generator=_generator(self.seed, _GAUSS, i), dtype=torch.float64)
        return (noise * self.std + self.mean).to(x.dtype), y


# ----------------------------------------------------------------------------- targets
class ShuffledTargets(_Wrapper):
    """Targets shuffled across samples, the regression and super-resolution analogue of random
    labels: sample ``i`` keeps its input and takes the target of sample ``permutation[i]``.

    Convention:
        ``permutation`` is one random cycle through all ``n`` samples drawn from ``seed``
        (``order = randperm(n)``, ``permutation[order[k]] = order[(k + 1) % n]``): every target
        is used exactly once and no sample keeps its own target. Works for any target (an
        image, a vector, a label).

    Args:
        dataset: Map-style dataset of pairs ``(x, y)``, at least 2 items.
        seed: Seed of the permutation (an int >= 0).

    Attributes:
        permutation: int64 tensor ``(n,)``, whose target each sample takes.

    Raises:
        TypeError: If ``dataset`` has no ``__len__``.
        ValueError: If the dataset has fewer than 2 items.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from landprobe.data import ShuffledTargets
        >>> ds = TensorDataset(torch.arange(4.0), 10 * torch.arange(4.0))
        >>> st = ShuffledTargets(ds, seed=0)
        >>> sorted(st.permutation.tolist()), any(st.permutation[i] == i for i in range(4))
        ([0, 1, 2, 3], False)
        >>> x, y = st[2]
        >>> float(x), float(y) == 10 * int(st.permutation[2])
        (2.0, True)
    """

    _who = "ShuffledTargets"

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        super().__init__(dataset, seed)
        if self._n < 2:
            raise ValueError(f"ShuffledTargets: `dataset` has {self._n} item(s); shuffling targets needs at least 2")
        order = torch.randperm(self._n, generator=_generator(self.seed, _TARGETS, 0))
        perm = torch.empty_like(order)
        perm[order] = order.roll(-1)
        self.permutation = perm

    def __getitem__(self, index: Any) -> tuple[Any, Any]:
        i = self._index(index)
        x, _ = self._item(i)
        j = int(self.permutation[i])
        return x, _pair(self.dataset[j], j, self._who)[1]


# ----------------------------------------------------------------------------- factory
def corrupt(dataset: Any, kind: str, *, p: float | None = None, num_classes: int | None = None,
            seed: int = 0) -> Dataset:
    """The corrupted view of ``dataset`` named by ``kind`` (one of :data:`CORRUPTION_KINDS`).

    Args:
        dataset: Map-style dataset of pairs ``(x, y)``.
        kind: ``"labels"`` (:class:`CorruptLabels`, needs ``p`` and ``num_classes``),
            ``"shuffled_pixels"``, ``"random_pixels"``, ``"gaussian"`` or ``"shuffled_targets"``.
        p: Label-corruption probability (``kind="labels"`` only).
        num_classes: Number of classes (``kind="labels"`` only).
        seed: Seed of the corruption's draws.

    Returns:
        The wrapper; ``dataset`` itself is not changed.

    Raises:
        ValueError: On an unknown ``kind``, a missing ``p``/``num_classes`` for labels, or
            ``p``/``num_classes`` given for another kind; and the wrapper's own errors.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from landprobe.data import corrupt
        >>> ds = TensorDataset(torch.zeros(3, 4), torch.tensor([0, 1, 2]))
        >>> type(corrupt(ds, "labels", p=1.0, num_classes=3)).__name__, type(corrupt(ds, "gaussian")).__name__
        ('CorruptLabels', 'GaussianInputs')
    """
    if kind not in CORRUPTION_KINDS:
        raise ValueError(f"corrupt: kind={kind!r}; expected one of {CORRUPTION_KINDS}")
    if kind == "labels":
        if p is None or num_classes is None:
            raise ValueError(f"corrupt: kind='labels' needs p= (the corruption level) and num_classes=; got "
                             f"p={p!r}, num_classes={num_classes!r}")
        return CorruptLabels(dataset, p, num_classes, seed)
    if p is not None or num_classes is not None:
        raise ValueError(f"corrupt: p= and num_classes= belong to kind='labels', not kind={kind!r}; leave them out")
    cls = {"shuffled_pixels": ShuffledPixels, "random_pixels": RandomPixels, "gaussian": GaussianInputs,
           "shuffled_targets": ShuffledTargets}[kind]
    return cls(dataset, seed)


def _as_tensor(v: Any, index: int, what: str) -> Tensor:
    if isinstance(v, Tensor):
        return v.detach()
    if isinstance(v, (bool, int, float, np.integer, np.floating, np.ndarray)):
        return torch.as_tensor(v)
    raise TypeError(f"materialize: the {what} of item {index} is a {type(v).__name__}; expected a tensor, a "
                    f"number or a numpy array")


def materialize(dataset: Any) -> TensorDataset:
    """The items ``(x, y)`` of a map-style dataset, read once and stacked into a ``TensorDataset``.

    A corrupted view computes its draws on every access; training reads each item once per
    epoch. Stacking the items once (in memory) makes every later epoch a plain indexing of two
    tensors, and a ``DataLoader`` can fetch whole batches at a time. Numbers and numpy arrays
    become tensors (int labels become int64).

    Args:
        dataset: Map-style dataset of pairs ``(x, y)`` whose inputs share one shape and whose
            targets share one shape.

    Returns:
        ``TensorDataset(inputs, targets)`` with ``inputs[i], targets[i] == dataset[i]``.

    Raises:
        TypeError: If ``dataset`` has no ``__len__`` or an item holds something else than a
            tensor, number or array.
        ValueError: If the dataset is empty or its items differ in shape (names the item).

    Example:
        >>> import torch
        >>> from landprobe.data import CorruptLabels, materialize
        >>> items = [(torch.full((2,), float(i)), i % 3) for i in range(6)]
        >>> td = materialize(CorruptLabels(items, 1.0, num_classes=3, seed=0))
        >>> td.tensors[0].shape, td.tensors[1].dtype
        (torch.Size([6, 2]), torch.int64)
        >>> [int(td[i][1]) for i in range(6)] == [CorruptLabels(items, 1.0, 3)[i][1] for i in range(6)]
        True
    """
    n = _check_dataset(dataset, "materialize")
    if n == 0:
        raise ValueError("materialize: `dataset` is empty; there is nothing to stack")
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    for i in range(n):
        x, y = _pair(dataset[i], i, "materialize")
        x, y = _as_tensor(x, i, "input"), _as_tensor(y, i, "target")
        if xs and (x.shape != xs[0].shape or y.shape != ys[0].shape):
            raise ValueError(f"materialize: item {i} has shapes {tuple(x.shape)}, {tuple(y.shape)}; item 0 "
                             f"{tuple(xs[0].shape)}, {tuple(ys[0].shape)}. Stack only items of one shape "
                             f"(crop them, or train from the dataset itself)")
        xs.append(x)
        ys.append(y)
    return TensorDataset(torch.stack(xs), torch.stack(ys))
