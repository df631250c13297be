"""Optimizers of the field's experiments: :class:`SGLD` (stochastic gradient Langevin dynamics).

Example:
    >>> import torch, landprobe as lp
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> opt = lp.optim.SGLD([w], lr=0.1, beta=float("inf"))     # beta = inf: plain SGD
    >>> (w ** 2).sum().backward(); opt.step()
    >>> w.detach().tolist()
    [0.8, 0.8]
"""

from landprobe.optim.sgld import SGLD

__all__ = ["SGLD"]
