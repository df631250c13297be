"""Permutation symmetry of hidden units: align two networks, barriers modulo symmetry, merging.

Permuting the hidden units of a layer (with the next layer's inputs) leaves the network's
function unchanged, so two independently trained networks may be far apart in weight space
only because their units come in different orders. :func:`permutation_spec` finds which axes
of which tensors move together, from the model's traced graph; :func:`weight_matching` and
:func:`activation_matching` find the permutation that brings ``b`` closest to ``a``;
:func:`permute` applies it and :func:`merge` interpolates the aligned networks. See
``docs/symmetry.md``.
"""

from landprobe.symmetry.activations import activation_matching
from landprobe.symmetry.apply import Permutation, permute, random_permutation, state_of
from landprobe.symmetry.matching import solve_assignment, weight_matching
from landprobe.symmetry.merge import ALIGN_METHODS, align, align_endpoint, merge
from landprobe.symmetry.spec import AxisRef, PermutationSpec, SpecError, permutation_spec

__all__ = [
    "ALIGN_METHODS",
    "AxisRef",
    "Permutation",
    "PermutationSpec",
    "SpecError",
    "activation_matching",
    "align",
    "align_endpoint",
    "merge",
    "permutation_spec",
    "permute",
    "random_permutation",
    "solve_assignment",
    "state_of",
    "weight_matching",
]
