"""landprobe: landscape probes for PyTorch.

Attach a :class:`SubnetNormPenalty` to any model, call ``probe.interpolate(theta_a, theta_b)``
and go on from there to planes, curves between minima, level sets, Hessian spectra and
capacity measures.
"""

__version__ = "0.1.0"

# the spine: parameter vectors and subnet selectors
from landprobe.params import ParamVector, select, select_subnets

# capacity control
from landprobe.penalties import SubnetNormPenalty

# probes and their results
from landprobe.probes import Curve, LandscapeProbe

# the super-resolution study's layers (subpackages)
from landprobe import data, metrics  # noqa: E402  (after the spine: they may use it)

__all__ = [
    "__version__",
    # spine
    "ParamVector",
    "select",
    "select_subnets",
    # capacity control
    "SubnetNormPenalty",
    # probes and results
    "LandscapeProbe",
    "Curve",
    # subpackages
    "data",
    "metrics",
]
