"""Per-epoch trackers of PSNR and empirical error, summarised over training stages."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from landprobe.common.io import load_json, save_json
from landprobe.common.results import require_matplotlib
from landprobe.metrics._psnr import psnr

__all__ = ["PSNRTracker", "EmpiricalErrorTracker", "DEFAULT_STAGES"]

#: The study's three reading stages (Xu & Zhang): epochs 1-15, 16-30 and 31-45, inclusive.
DEFAULT_STAGES: tuple[tuple[int, int], ...] = ((1, 15), (16, 30), (31, 45))


def _check_stages(stages) -> tuple[tuple[int, int], ...]:
    try:
        out = tuple((int(a), int(b)) for a, b in stages)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"`stages` must be a sequence of (first_epoch, last_epoch) pairs such as ((1, 15), (16, 30)), got {stages!r}."
        ) from exc
    for a, b in out:
        if a < 1 or b < a:
            raise ValueError(
                f"`stages` entry ({a}, {b}) is not a valid inclusive epoch range; epochs count from 1 and first <= last."
            )
    return out


class _EpochTracker:
    _higher_is_better = True
    _label = "value"

    def __init__(self, stages: Sequence[Sequence[int]] = DEFAULT_STAGES) -> None:
        self.stages = _check_stages(stages)
        self.history: list[float] = []
        self._sum = 0.0
        self._count = 0

    # -- accumulation -------------------------------------------------------------------
    def _add(self, total: float, count: int) -> float:
        self._sum += float(total)
        self._count += int(count)
        return float(total) / count

    def reset(self) -> None:
        """Forget the batches of the current epoch (the history stays).

        Example:
            >>> from landprobe.metrics import EmpiricalErrorTracker
            >>> tr = EmpiricalErrorTracker(); _ = tr.update(3.0, n=4); tr.reset()
            >>> tr.count, tr.history
            (0, [])
        """
        self._sum, self._count = 0.0, 0

    @property
    def count(self) -> int:
        """Samples accumulated in the current epoch.

        Example:
            >>> from landprobe.metrics import EmpiricalErrorTracker
            >>> tr = EmpiricalErrorTracker(); _ = tr.update(1.0, n=5); _ = tr.update(1.0, n=3)
            >>> tr.count
            8
        """
        return self._count

    def compute(self) -> float:
        """Sample-weighted mean over the batches of the current epoch so far.

        Raises:
            ValueError: If nothing was added since the last epoch ended.

        Example:
            >>> from landprobe.metrics import EmpiricalErrorTracker
            >>> tr = EmpiricalErrorTracker(); _ = tr.update(1.0, n=3); _ = tr.update(5.0, n=1)
            >>> tr.compute()                  # (3 * 1 + 5) / 4; the epoch stays open
            2.0
        """
        if self._count == 0:
            raise ValueError(
                f"{type(self).__name__}: no samples in the current epoch; call update(...) before compute()/end_epoch()."
            )
        return self._sum / self._count

    def end_epoch(self) -> float:
        """Close the epoch: append its mean to :attr:`history`, reset, and return the mean.

        Raises:
            ValueError: If nothing was added since the last epoch ended.

        Example:
            >>> from landprobe.metrics import EmpiricalErrorTracker
            >>> tr = EmpiricalErrorTracker()
            >>> for epoch_loss in (0.9, 0.5):
            ...     _ = tr.update(epoch_loss, n=64)
            ...     _ = tr.end_epoch()
            >>> tr.history
            [0.9, 0.5]
        """
        value = self.compute()
        self.history.append(value)
        self.reset()
        return value

    # -- summaries ----------------------------------------------------------------------
    def summary(self) -> dict[str, dict[str, Any]]:
        """Per stage (label ``"epochs a-b"``): epochs seen, mean, min, max and last value.

        Stages with no finished epoch yet report ``n = 0`` and None values.

        Example:
            >>> from landprobe.metrics import PSNRTracker
            >>> tr = PSNRTracker(stages=[(1, 2), (3, 4)]); tr.history = [30.0, 31.0, 33.0]
            >>> s = tr.summary()
            >>> s["epochs 1-2"]["mean"], s["epochs 3-4"]["n"], s["epochs 3-4"]["last"]
            (30.5, 1, 33.0)
        """
        out: dict[str, dict[str, Any]] = {}
        for a, b in self.stages:
            vals = self.history[a - 1 : b]
            entry: dict[str, Any] = {"first": a, "last_epoch": b, "n": len(vals)}
            if vals:
                entry.update(mean=float(np.mean(vals)), min=min(vals), max=max(vals), last=vals[-1])
            else:
                entry.update(mean=None, min=None, max=None, last=None)
            out[f"epochs {a}-{b}"] = entry
        return out

    # -- persistence --------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON state: kind, settings, stages, history and the open epoch's sums.

        Example:
            >>> from landprobe.metrics import PSNRTracker
            >>> d = PSNRTracker(shave=2).to_dict()
            >>> d["kind"], d["settings"], d["stages"][0]
            ('PSNRTracker', {'shave': 2, 'data_range': 1.0}, [1, 15])
        """
        return {
            "kind": type(self).__name__,
            "settings": self._settings(),
            "stages": [list(s) for s in self.stages],
            "history": list(self.history),
            "open_sum": self._sum,
            "open_count": self._count,
            "summary": self.summary(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON, atomically (readers never see half a file).

        Example:
            >>> import tempfile, pathlib
            >>> from landprobe.metrics import EmpiricalErrorTracker
            >>> tr = EmpiricalErrorTracker(); _ = tr.update(0.5, n=2); _ = tr.end_epoch()
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "err.json"
            >>> EmpiricalErrorTracker.load(tr.save(path)).history
            [0.5]
        """
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Rebuild a tracker written by :meth:`save`."""
        data = load_json(path)
        if not isinstance(data, dict) or data.get("kind") != cls.__name__:
            kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"{str(path)!r} holds kind {kind!r}, not {cls.__name__}; load it with the class that saved it."
            )
        obj = cls(stages=data["stages"], **data.get("settings", {}))
        obj.history = [float(v) for v in data["history"]]
        obj._sum, obj._count = float(data.get("open_sum", 0.0)), int(data.get("open_count", 0))
        return obj

    def plot(self, ax=None):
        """Plot the per-epoch history, stages shaded alternately. Needs matplotlib.

        Returns:
            The matplotlib Axes.

        Example:
            >>> import pytest; _ = pytest.importorskip("matplotlib")
            >>> from landprobe.metrics import PSNRTracker
            >>> tr = PSNRTracker(); tr.history = [30.0, 31.5, 32.0]
            >>> tr.plot().get_xlabel()
            'epoch'
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3))
        epochs = np.arange(1, len(self.history) + 1)
        ax.plot(epochs, self.history, marker="o", ms=3)
        for i, (a, b) in enumerate(self.stages):
            if i % 2 == 0:
                ax.axvspan(a - 0.5, b + 0.5, color="0.92", zorder=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(self._label)
        return ax

    def __repr__(self) -> str:
        last = f"{self.history[-1]:.4g}" if self.history else "none"
        return f"{type(self).__name__}(epochs={len(self.history)}, last={last})"


class PSNRTracker(_EpochTracker):
    """Mean per-image PSNR (dB) of each epoch, weighted by images, as SR tables report it.

    Two lines in a training or validation loop: ``tracker.update(sr, hr)`` per batch and
    ``value = tracker.end_epoch()`` per epoch. Each image counts once however the batches
    are cut; PSNR is :func:`landprobe.metrics.psnr` (Y in [0, 255], ``shave`` border).

    Args:
        shave: Border pixels ignored (the scale factor).
        data_range: White level of the images (1.0 for [0, 1]).
        stages: Inclusive epoch ranges summarised by :meth:`summary`; default the study's
            epochs 1-15, 16-30, 31-45.

    Raises:
        ValueError: If ``stages``, ``shave`` or ``data_range`` is malformed, or on
            ``end_epoch()`` with no update.

    Example:
        >>> import torch
        >>> from landprobe.metrics import PSNRTracker
        >>> tr = PSNRTracker(stages=[(1, 1), (2, 3)])
        >>> hr = torch.zeros(3, 1, 4, 4)
        >>> _ = tr.update(hr + 1 / 255, hr)          # two batches: 48.13 dB and 42.11 dB
        >>> _ = tr.update(hr[:1] + 2 / 255, hr[:1])  # sample-weighted: (3 * 48.13 + 42.11) / 4
        >>> round(tr.end_epoch(), 3)
        46.625
        >>> tr.summary()["epochs 1-1"]["mean"] == tr.history[0]
        True
    """

    _label = "PSNR (dB)"

    def __init__(self, shave: int = 0, data_range: float = 1.0, stages: Sequence[Sequence[int]] = DEFAULT_STAGES) -> None:
        super().__init__(stages)
        if isinstance(shave, bool) or not isinstance(shave, (int, np.integer)) or shave < 0:
            raise ValueError(f"PSNRTracker: `shave` must be a non-negative integer (the scale factor), got {shave!r}.")
        if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not 0 < data_range < math.inf:
            raise ValueError(f"PSNRTracker: `data_range` must be a positive number (1.0 for [0, 1] images, 255 for "
                             f"[0, 255]), got {data_range!r}.")
        self.shave, self.data_range = int(shave), float(data_range)

    def _settings(self) -> dict[str, Any]:
        return {"shave": self.shave, "data_range": self.data_range}

    def update(self, sr: torch.Tensor, hr: torch.Tensor) -> float:
        """Add a batch ``(N, C, H, W)`` (or one ``(C, H, W)`` image); return its mean PSNR.

        Example:
            >>> import torch
            >>> from landprobe.metrics import PSNRTracker
            >>> hr = torch.zeros(2, 1, 4, 4)
            >>> round(PSNRTracker().update(hr + 1 / 255, hr), 2)    # MSE 1 on [0, 255]
            48.13
        """
        vals = psnr(hr, sr, shave=self.shave, data_range=self.data_range)
        vals = torch.as_tensor(vals).reshape(-1)
        return self._add(float(vals.sum()), vals.numel())


class EmpiricalErrorTracker(_EpochTracker):
    """Sample-weighted mean of a (mean-reduced) loss over each epoch: the empirical error.

    ``tracker.update(loss, n)`` per batch of ``n`` samples, ``tracker.end_epoch()`` per
    epoch. Exact for losses that average over the batch: ``sum(loss_b * n_b) / sum(n_b)``.

    Args:
        stages: Inclusive epoch ranges for :meth:`summary` (default 1-15, 16-30, 31-45).

    Raises:
        ValueError: If ``stages`` is malformed, ``n`` is not positive, or on
            ``end_epoch()`` with no update.

    Example:
        >>> import torch
        >>> from landprobe.metrics import EmpiricalErrorTracker
        >>> tr = EmpiricalErrorTracker()
        >>> tr.update(torch.tensor(1.0), n=64)
        1.0
        >>> tr.update(4.0, n=16)          # a short last batch weighs less
        4.0
        >>> tr.end_epoch()                # (64 * 1 + 16 * 4) / 80
        1.6
    """

    _higher_is_better = False
    _label = "empirical error"

    def update(self, loss, n: int = 1) -> float:
        """Add a batch's mean loss (float or 0-d tensor) over ``n`` samples; return it.

        Raises:
            ValueError: If ``n`` is not a positive integer or ``loss`` holds more than one number.
            TypeError: If ``loss`` is not a number.

        Example:
            >>> import torch
            >>> from landprobe.metrics import EmpiricalErrorTracker
            >>> EmpiricalErrorTracker().update(torch.tensor(0.25), n=64)
            0.25
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"EmpiricalErrorTracker.update: `n` must be the batch size, a positive integer; got {n!r}.")
        if isinstance(loss, torch.Tensor) and loss.numel() != 1:
            raise ValueError(f"EmpiricalErrorTracker.update: `loss` has shape {tuple(loss.shape)}; pass the batch's "
                             f"mean loss, one number (e.g. loss_fn(out, y) with reduction='mean').")
        try:
            value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"EmpiricalErrorTracker.update: `loss`={loss!r} is not a number; pass the batch's mean "
                            f"loss as a float or a 0-d tensor.") from exc
        return self._add(value * n, n)
