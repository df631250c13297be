"""SR datasets: DRCN-style training patches (T91) and whole-image evaluation sets."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from einops import rearrange
import torch
from torch.utils.data import Dataset

from landprobe.common.io import LoadError, atomic_torch_save, load_torch
from landprobe.data._color import modcrop
from landprobe.data._images import list_images, load_y
from landprobe.data._imresize import imresize

__all__ = ["T91Patches", "SREvalSet", "bicubic_pair"]


def _check_scale(scale, name="scale"):
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
        raise ValueError(f"{name} must be an integer >= 2 (e.g. 2, 3 or 4), got {scale!r}.")
    return int(scale)


def bicubic_pair(y: np.ndarray | torch.Tensor, scale: int, *, quantize: bool = True):
    """Bicubic input and target of one mod-cropped Y image, the SR evaluation protocol.

    Convention (``demo_SR.m`` of SRCNN, which reproduces the published bicubic tables):
        ``target = y / 255``; ``input = imresize(imresize(y / 255, 1/s), s)`` computed in
        float64 (no rounding of the low-resolution image), then, if ``quantize``, rounded
        to the uint8 grid (``round(255 * input) / 255``, half away from zero, clipped) as
        ``uint8(im_b * 255)`` does before the PSNR.

    Args:
        y: ``uint8`` Y image ``(H, W)`` whose sides are multiples of ``scale``.
        scale: Integer factor >= 2.
        quantize: Round the upsampled image to 8 bits (True reproduces the tables).

    Returns:
        ``(input, target)``: float64 tensors ``(H, W)`` in [0, 1].

    Raises:
        ValueError: If ``scale`` is not an integer >= 2 or ``y`` is not mod-cropped.
        TypeError: If ``y`` is not a 2-D uint8 array or tensor.

    Example:
        >>> import numpy as np
        >>> from landprobe.data import bicubic_pair
        >>> x, t = bicubic_pair(np.full((6, 6), 51, np.uint8), 2)   # flat stays flat
        >>> float(x.max() * 255), float(t.min() * 255)
        (51.0, 51.0)
    """
    scale = _check_scale(scale)
    t = torch.as_tensor(np.asarray(y)) if isinstance(y, np.ndarray) else y
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 2:
        raise TypeError(f"bicubic_pair: `y` must be a 2-D uint8 array/tensor (H, W), got {getattr(y, 'dtype', type(y))} "
                        f"with shape {tuple(getattr(y, 'shape', ()))}.")
    h, w = t.shape
    if h % scale or w % scale:
        raise ValueError(f"bicubic_pair: image of {h}x{w} is not a multiple of scale {scale}; apply modcrop(y, {scale}) first.")
    target = t.to(torch.float64) / 255.0
    inp = imresize(imresize(target, 1.0 / scale), size=(h, w))
    if quantize:
        inp = (torch.floor(inp * 255.0 + 0.5)).clamp_(0, 255) / 255.0  # values >= 0 after clamp
    return inp, target


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 dihedral transforms of the last two dims: rot90 by k % 4, then a
    horizontal flip when k >= 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


_MEMORY_CACHE: dict[str, dict[str, torch.Tensor]] = {}


@contextlib.contextmanager
def _one_thread():
    """Run many small tensor ops on one intra-op thread, then restore the setting.

    Building patches is thousands of small ops: extra threads buy nothing, and on a busy
    2-core machine OpenMP workers spin-waiting on each other made the T91 build 15x slower.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class T91Patches(Dataset):
    """DRCN/SRCNN-style training pairs: 41x41 patches of the Y channel of a folder of images.

    Protocol (SRCNN's ``generate_train.m``, used by DRCN and VDSR): for each scale ``s`` and
    each image (sorted by file name): Y channel as in :func:`load_y` (uint8), ``modcrop`` to
    ``s``, input = bicubic ``imresize(imresize(Y, 1/s), s)`` in float64 (not rounded unless
    ``quantize``), target = Y / 255; windows of ``patch`` x ``patch`` at top-left corners
    ``0, stride, 2 * stride, ... <= H - patch`` (and the same along the width), row-major.

    Count for T91 at x2 (patch 41, stride 21): an image mod-cropped to ``H x W`` gives
    ``(floor((H - 41) / 21) + 1) * (floor((W - 41) / 21) + 1)`` windows; summed over the 91
    images this is 9,362 (without mod-cropping it would be 9,382; mod-cropping to 3 or 4
    gives 9,297 / 9,295), i.e. 146.3 steps of 64 per epoch.

    Order and randomness: item order is deterministic (scale, then file name, then window
    row-major); shuffle with ``DataLoader(ds, shuffle=True, generator=torch.Generator().manual_seed(s))``.
    With ``augment=True`` the dataset is 8 times longer: item ``8 * i + k`` is patch ``i``
    under the k-th dihedral transform (``rot90`` by ``k % 4`` quarter turns, then a
    horizontal flip if ``k >= 4``), applied to input and target alike (the 8 transforms
    cover VDSR's rotations by 90/180/270 degrees and flips). The study uses no augmentation.

    The patches are built once, as two float32 tensors ``inputs`` and ``targets`` of shape
    ``(N, 1, patch, patch)``, kept in a process-wide memory cache and, if ``cache_dir`` is
    given, in a file there named by a hash of the settings and of the image files' names,
    sizes and modification times (a changed folder rebuilds). The build runs on one torch
    thread (restored afterwards); all 91 T91 images at x2 build in under a second on the
    2-core CI machine (``benchmarks/results/imresize.json``).

    Args:
        root: Folder of training images (PNG/JPEG/BMP), e.g. ``data/T91``.
        scale: Integer factor or a sequence of them for a multi-scale set, e.g. ``(2, 3, 4)``.
        patch: Window side in pixels.
        stride: Step between windows.
        augment: Add the 8 dihedral transforms (see above).
        quantize: Round the bicubic input to 8 bits (off, as ``generate_train.m``).
        cache_dir: Optional folder for an on-disk cache of the built tensors.

    Attributes:
        inputs, targets: float32 tensors ``(N, 1, patch, patch)`` in [0, 1].
        scales: int64 tensor ``(N,)``, the scale of each patch.
        image_index: int64 tensor ``(N,)``, the index into ``files`` of each patch's image.
        files: the image files, sorted by name.

    Raises:
        ValueError: If the folder is missing or empty, a file is unreadable, an image is
            smaller than ``patch`` after mod-cropping (names the file), or an argument is
            out of range.

    Example:
        >>> from landprobe.data import T91Patches, sample_dir
        >>> ds = T91Patches(sample_dir("train"), scale=2)   # five 96x96 crops: 3 * 3 windows each
        >>> len(ds), ds.inputs.shape[1:], ds.inputs.dtype   # and 78x78: 2 * 2
        (49, torch.Size([1, 41, 41]), torch.float32)
        >>> x, y = ds[0]
        >>> x.shape, bool(0 <= y.min() and y.max() <= 1)
        (torch.Size([1, 41, 41]), True)
        >>> len(T91Patches(sample_dir("train"), scale=(2, 3), augment=True)) // 8
        98
    """

    def __init__(
        self,
        root: str | os.PathLike,
        scale: int | Sequence[int] = 2,
        patch: int = 41,
        stride: int = 21,
        *,
        augment: bool = False,
        quantize: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        scales = tuple(scale) if isinstance(scale, (list, tuple, range)) else (scale,)
        if not scales:
            raise ValueError("T91Patches: `scale` must be an integer >= 2 or a non-empty sequence of them, got ().")
        self.scale_list = tuple(_check_scale(s, "T91Patches `scale`") for s in scales)
        for name, v in (("patch", patch), ("stride", stride)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"T91Patches: `{name}` must be a positive integer, got {v!r}.")
        self.patch, self.stride = int(patch), int(stride)
        self.augment, self.quantize = bool(augment), bool(quantize)
        self.root = Path(root)
        self.files = list_images(self.root)
        key = self._key()
        data = _MEMORY_CACHE.get(key)
        cache_file = None if cache_dir is None else Path(cache_dir) / f"t91patches-{key[:20]}.pt"
        if data is None and cache_file is not None and cache_file.is_file():
            try:
                data = load_torch(cache_file)
            except LoadError as err:  # a cache cut short or damaged: build it again and overwrite it
                warnings.warn(f"T91Patches: ignoring the unreadable patch cache ({err}); rebuilding it",
                              RuntimeWarning, stacklevel=2)
                data = None
            if data is not None and not (isinstance(data, dict)
                                         and {"inputs", "targets", "scales", "image_index"} <= set(data)):
                warnings.warn(f"T91Patches: the patch cache {str(cache_file)!r} is not one (keys missing); "
                              f"rebuilding it", RuntimeWarning, stacklevel=2)
                data = None
        if data is None:
            with _one_thread():
                data = self._build()
            if cache_file is not None:
                atomic_torch_save(data, cache_file)
        _MEMORY_CACHE[key] = data
        self.inputs, self.targets = data["inputs"], data["targets"]
        self.scales, self.image_index = data["scales"], data["image_index"]

    def _key(self) -> str:
        stats = []
        for f in self.files:
            st = f.stat()
            stats.append([f.name, st.st_size, st.st_mtime_ns])
        settings = {
            "v": 1, "root": str(self.root.resolve()), "scales": self.scale_list, "patch": self.patch,
            "stride": self.stride, "quantize": self.quantize, "files": stats,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def _build(self) -> dict[str, torch.Tensor]:
        p, st = self.patch, self.stride
        ys = [load_y(f) for f in self.files]
        inputs, targets, scales, index = [], [], [], []
        for s in self.scale_list:
            for i, (f, y) in enumerate(zip(self.files, ys)):
                y = modcrop(y, s)
                if min(y.shape) < p:
                    raise ValueError(
                        f"T91Patches: image {str(f)!r} is {y.shape[0]}x{y.shape[1]} after mod-cropping to "
                        f"scale {s}, smaller than the {p}x{p} patch; remove it or lower `patch`."
                    )
                x, t = bicubic_pair(y, s, quantize=self.quantize)
                # every p x p window at stride st, row by row: (rows, cols, p, p) -> (rows*cols, 1, p, p)
                xw = rearrange(x.unfold(0, p, st).unfold(1, p, st), "r c ph pw -> (r c) 1 ph pw")
                tw = rearrange(t.unfold(0, p, st).unfold(1, p, st), "r c ph pw -> (r c) 1 ph pw")
                inputs.append(xw.to(torch.float32))
                targets.append(tw.to(torch.float32))
                scales.append(torch.full((xw.shape[0],), s, dtype=torch.int64))
                index.append(torch.full((xw.shape[0],), i, dtype=torch.int64))
        return {
            "inputs": torch.cat(inputs).contiguous(),
            "targets": torch.cat(targets).contiguous(),
            "scales": torch.cat(scales),
            "image_index": torch.cat(index),
        }

    def __len__(self) -> int:
        return self.inputs.shape[0] * (8 if self.augment else 1)

    def __getitem__(self, i: int):
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"T91Patches index {i} out of range for {n} items.")
        i %= n
        if not self.augment:
            return self.inputs[i], self.targets[i]
        j, k = divmod(i, 8)
        return _dihedral(self.inputs[j], k), _dihedral(self.targets[j], k)


class SREvalSet(Dataset):
    """Whole-image evaluation pairs (Set5, Set14 or any folder) under the table protocol.

    Item ``i`` is ``(input, target)`` for the i-th image (sorted by file name): target = Y of
    the image mod-cropped to ``scale`` (:func:`load_y`, /255), input = its bicubic
    degradation and upsampling by :func:`bicubic_pair` (quantized to 8 bits by default);
    both float32 ``(1, H, W)`` in [0, 1]. The bicubic baseline of the set, equal to the
    published tables (Set5 33.66 / 30.39 / 28.42 dB, Set14 30.24 / 27.55 / 26.00 dB to
    0.01 dB at x2 / x3 / x4), is the mean over items of
    ``landprobe.metrics.psnr(target, input, shave=scale)`` (``data_range=1.0``: values are
    scaled to [0, 255] inside), which :meth:`bicubic_psnr` returns.

    Pairs are computed on first access and kept in memory.

    Args:
        root: Folder of images (PNG/JPEG/BMP).
        scale: Integer factor >= 2.
        quantize: Round the bicubic input to 8 bits, as the evaluation scripts do.

    Raises:
        ValueError: If the folder is missing or empty, ``scale`` is invalid, or an image is
            unreadable or smaller than ``scale`` (names the file).

    Example:
        >>> from landprobe.data import SREvalSet, sample_dir
        >>> ds = SREvalSet(sample_dir("val"), scale=3)
        >>> x, y = ds[0]
        >>> len(ds), ds.names[0], x.shape            # 128 mod-cropped to 126
        (2, 'baby_crop', torch.Size([1, 126, 126]))
        >>> 30 < ds.bicubic_psnr() < 40
        True
    """

    def __init__(self, root: str | os.PathLike, scale: int, *, quantize: bool = True) -> None:
        self.scale = _check_scale(scale, "SREvalSet `scale`")
        self.quantize = bool(quantize)
        self.root = Path(root)
        self.files = list_images(self.root)
        self.names = [f.stem for f in self.files]
        self._items: list = [None] * len(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        item = self._items[i]
        if item is None:
            f = self.files[i]
            y = modcrop(load_y(f), self.scale)
            if min(y.shape) < self.scale:
                raise ValueError(
                    f"SREvalSet: image {str(f)!r} is smaller than scale {self.scale} in a side; remove it."
                )
            with _one_thread():
                x, t = bicubic_pair(y, self.scale, quantize=self.quantize)
            item = (x.to(torch.float32)[None], t.to(torch.float32)[None])
            self._items[i] = item
        return item

    def bicubic_psnr(self, reduction: str = "mean"):
        """PSNR (dB, Y in [0, 255], ``scale`` pixels shaved) of the bicubic input of each image.

        Args:
            reduction: ``"mean"`` (a float, the table's number) or ``"none"`` (a list, per image).

        Returns:
            The mean PSNR or the per-image list.

        Raises:
            ValueError: If ``reduction`` is not ``"mean"`` or ``"none"``.

        Example:
            >>> from landprobe.data import SREvalSet, sample_dir
            >>> len(SREvalSet(sample_dir("val"), 2).bicubic_psnr("none"))
            2
        """
        from landprobe.metrics import psnr

        if reduction not in ("mean", "none"):
            raise ValueError(f"bicubic_psnr: `reduction` must be 'mean' or 'none', got {reduction!r}.")
        vals = [float(psnr(t, x, shave=self.scale)) for x, t in (self[i] for i in range(len(self)))]
        return float(np.mean(vals)) if reduction == "mean" else vals


def sr_covariates(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-patch covariates of an SR network's loss, for precision-targeted probes.

    Two columns, cheap and independent of the model: the mean squared error of the bicubic
    input against the target, ``mean((x − y)²)``, and the target's energy, ``mean(y²)``.
    A residual SR network's per-patch loss tracks the first once trained and the second near
    initialisation (where its output is far from the target); pass this function as
    ``LandscapeProbe(..., precision=0.01, control=lp.data.sr_covariates)`` to estimate each
    point by regression on both (measured on full-size WARSHIP at study initialisation:
    R² ≈ 0.997 between 192 patches' losses and these two columns, so about 1/300 of the
    samples are needed; ``benchmarks/bench_precision.py``).

    Args:
        x: ``(B, C, H, W)`` bicubic-upsampled inputs, the size of ``y``.
        y: ``(B, C, H, W)`` targets.

    Returns:
        ``(B, 2)`` float64 tensor.

    Raises:
        ValueError: If ``x`` and ``y`` differ in shape.

    Example:
        >>> import torch, landprobe as lp
        >>> x, y = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
        >>> y[1] = 3.0
        >>> lp.data.sr_covariates(x, y).tolist()              # [(0-1)², 1²], [(0-3)², 3²]
        [[1.0, 1.0], [9.0, 9.0]]
    """
    xd, yd = _flat_pair(x, y, "sr_covariates")
    return torch.stack([(xd - yd).pow(2).mean(1), yd.pow(2).mean(1)], dim=1)


def _flat_pair(x: torch.Tensor, y: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` as float64 ``(B, numbers)``, after checking they are tensors of one shape."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape:
        raise ValueError(
            f"{name} needs inputs and targets of one shape (bicubic-upsampled inputs); got "
            f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}"
        )
    return x.detach().double().flatten(1), y.detach().double().flatten(1)


def sr_covariates_with_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`sr_covariates` and a third column, the target's mean intensity ``mean(y)``.

    Away from trained weights an SR network's output carries a part driven by its biases,
    nearly constant over a patch, and the loss then has a term linear in the patch's mean
    intensity that neither of :func:`sr_covariates`' columns follows. On an 11x11 plane between
    two trained WARSHIP-XZNet β of width 0.125, reaching a random direction as long as their
    difference, the plane's points drew 1.7x fewer samples with this column
    (``benchmarks/bench_precision.py --covariates sr-mean``, ``docs/precision.md``). One column
    more raises each point's minimum from ``4(k + 1)`` to ``4(k + 2)`` batches, so where every
    point sits at the minimum (a curve near its trained ends, or near initialisation)
    :func:`sr_covariates` is the cheaper choice.

    Args:
        x: ``(B, C, H, W)`` bicubic-upsampled inputs, the size of ``y``.
        y: ``(B, C, H, W)`` targets.

    Returns:
        ``(B, 3)`` float64 tensor: ``mean((x − y)²)``, ``mean(y²)``, ``mean(y)``.

    Raises:
        ValueError: If ``x`` and ``y`` differ in shape.

    Example:
        >>> import torch, landprobe as lp
        >>> y = torch.tensor([[[[0.0, 2.0], [2.0, 4.0]]]])    # mean 2, energy (0 + 4 + 4 + 16) / 4
        >>> lp.data.sr_covariates_with_mean(y + 1.0, y).tolist()
        [[1.0, 6.0, 2.0]]
    """
    xd, yd = _flat_pair(x, y, "sr_covariates_with_mean")
    return torch.stack([(xd - yd).pow(2).mean(1), yd.pow(2).mean(1), yd.mean(1)], dim=1)
