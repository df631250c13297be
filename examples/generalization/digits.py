"""The scikit-learn digits (1,797 8x8 images, 10 classes; shipped inside scikit-learn, no
download) as float32 tensors, split into a seeded train and test set.

    from digits import load_digits_split
    (x_train, y_train), (x_test, y_test) = load_digits_split(test=0.3, seed=0)

Pixels are scaled from [0, 16] to [0, 1]; images are (1, 8, 8). Needs ``pip install scikit-learn``
(the ``experiments`` extra).
"""

from __future__ import annotations

import torch


def load_digits_split(test: float = 0.3, seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                                   tuple[torch.Tensor, torch.Tensor]]:
    """``((x_train, y_train), (x_test, y_test))``: images (n, 1, 8, 8) in [0, 1], labels int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SystemExit("these experiments read the scikit-learn digits: pip install 'landprobe[experiments]' "
                         "(or pip install scikit-learn)") from exc
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test * len(y)))
    te, tr = order[:n_test], order[n_test:]
    return (x[tr], y[tr]), (x[te], y[te])
