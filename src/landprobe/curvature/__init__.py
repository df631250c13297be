"""Curvature of the empirical error: the Hessian as an operator and its spectra.

``probe.hessian(theta)`` (:func:`hessian`) gives a :class:`HessianOperator`; from it
``top_eigenvalues`` (Lanczos), ``trace`` (Hutchinson, Hutch++) and ``density`` (stochastic
Lanczos quadrature) give :class:`Eigenpairs`, :class:`TraceEstimate` and :class:`Spectrum`.
Under data sharding (``landprobe.Sharding(data=True)``) each rank computes its share of every
product over its own batches and the shares are summed: every rank gets the one-process results.
"""

from landprobe.curvature.density import density
from landprobe.curvature.hessian import HVP_METHODS, HessianOperator, hessian
from landprobe.curvature.lanczos import LanczosRun, lanczos, top_eigenvalues
from landprobe.curvature.results import Eigenpairs, Spectrum, TraceEstimate
from landprobe.curvature.trace import hutchinson, hutchpp, trace

__all__ = [
    # the operator
    "hessian",
    "HessianOperator",
    "HVP_METHODS",
    # spectra
    "top_eigenvalues",
    "trace",
    "hutchinson",
    "hutchpp",
    "density",
    "lanczos",
    "LanczosRun",
    # results
    "Eigenpairs",
    "TraceEstimate",
    "Spectrum",
]
