"""Norm-based capacity measures of any ``nn.Module``, per subnet.

Norms (L1, L2, Frobenius, spectral), ℓ1/ℓ2 path norms (Neyshabur et al. 2015), spectral
complexity (Bartlett et al. 2017), the Fisher–Rao norm (Liang et al. 2019), ε-sharpness
(Keskar et al. 2017), PAC-Bayes flatness (Jiang et al. 2019), weight and activation sparsity
(Hoyer 2004; Treves & Rolls 1991), and :func:`report`, which gathers them all in a
:class:`CapacityReport`; :func:`register_measure` adds a group of one's own to it. See
``docs/capacity.md``. Under ``torch.distributed`` the measures that pass over data take
``sharding=landprobe.Sharding(data=True)``: the ranks share each pass and every rank gets the
one-process values.
"""

from landprobe.capacity._common import MODEL
from landprobe.capacity.fisher_rao import fisher_rao_norm, radial_derivative
from landprobe.capacity.norms import NORM_MEASURES, conv_operator_norm, spectral_norm, subnet_norms
from landprobe.capacity.pathnorm import path_norm
from landprobe.capacity.registry import (CHEAP_MEASURES, MEASURE_REGISTRY, MEASURES, Measure, MeasureContext,
                                         register_measure, unregister_measure)
from landprobe.capacity.report import CapacityReport, report
from landprobe.capacity.sharpness import epsilon_sharpness, gaussian_noise, pac_bayes_sigma
from landprobe.capacity.sparsity import (SparsenessAccumulator, activation_sparseness, fraction_near_zero, hoyer,
                                         treves_rolls)
from landprobe.capacity.spectral import spectral_complexity

__all__ = [
    # everything at once
    "report",
    "CapacityReport",
    "MEASURES",
    "CHEAP_MEASURES",
    "MODEL",
    # adding a measure group to report
    "Measure",
    "MeasureContext",
    "MEASURE_REGISTRY",
    "register_measure",
    "unregister_measure",
    # norms
    "subnet_norms",
    "spectral_norm",
    "conv_operator_norm",
    "NORM_MEASURES",
    "path_norm",
    "spectral_complexity",
    "fisher_rao_norm",
    "radial_derivative",
    # sharpness and flatness
    "epsilon_sharpness",
    "pac_bayes_sigma",
    "gaussian_noise",
    # sparsity
    "fraction_near_zero",
    "hoyer",
    "treves_rolls",
    "activation_sparseness",
    "SparsenessAccumulator",
]
