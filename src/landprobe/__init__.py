"""landprobe: landscape probes for PyTorch.

Attach a :class:`SubnetNormPenalty` to any model, call ``probe.interpolate(theta_a, theta_b)``
and go on from there to planes, curves between minima, level sets, Hessian spectra and
capacity measures.
"""

__version__ = "0.1.0"

# the spine
from landprobe.params import ParamVector, select, select_subnets
# probes
from landprobe.probes import Curve, LandscapeProbe

__all__ = [
    "__version__",
    # spine
    "ParamVector",
    "select",
    "select_subnets",
    # probes and results
    "LandscapeProbe",
    "Curve",
]
