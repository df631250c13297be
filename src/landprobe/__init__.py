"""landprobe: landscape probes for PyTorch.

Attach a :class:`SubnetNormPenalty` to any model, call ``probe.interpolate(theta_a, theta_b)``
and go on from there to planes, curves between minima, level sets, Hessian spectra and
capacity measures.
"""

__version__ = "0.1.0"
