"""The generalization experiments that sit beside the landscape: Langevin sampling and its
bound quantities, memorization of corrupted data, and two-phase training.

- :mod:`~landprobe.generalization.langevin`: run :class:`landprobe.optim.SGLD` from a probe's
  model and keep its samples or their running moments, with diagnostics;
- :mod:`~landprobe.generalization.bounds`: the stability and PAC-Bayes terms along training
  (:class:`BoundTracker`) and the two-phase training bound (:func:`two_phase_bound`);
- :mod:`~landprobe.generalization.memorization`: training to a loss threshold on corrupted
  data (labels, pixels; targets for super-resolution), steps to fit and test error;
- :mod:`~landprobe.generalization.two_phase`: Kawaguchi et al.'s two-phase training, gates
  frozen from the phase-1 network.
"""

from landprobe.generalization.bounds import BoundTrace, BoundTracker, TwoPhaseBound, grad_norm_sq, two_phase_bound
from landprobe.generalization.langevin import KEEP_MODES, LangevinSamples, effective_sample_size, langevin_sample
from landprobe.generalization.memorization import (INPUT_VARIANTS, MemorizationOptions, MemorizationResult,
                                                   classification_error, memorization)
from landprobe.generalization.two_phase import (GATE_TYPES, GatedNetwork, TwoPhaseResult, TwoPhaseRun, check_gates,
                                                frozen_copy, frozen_gates, gate_modules, two_phase_experiment,
                                                two_phase_train)

__all__ = [
    # Langevin sampling
    "langevin_sample",
    "LangevinSamples",
    "effective_sample_size",
    "KEEP_MODES",
    # bounds
    "BoundTracker",
    "BoundTrace",
    "grad_norm_sq",
    "two_phase_bound",
    "TwoPhaseBound",
    # memorization of corrupted data
    "memorization",
    "MemorizationOptions",
    "MemorizationResult",
    "classification_error",
    "INPUT_VARIANTS",
    # two-phase training
    "two_phase_train",
    "two_phase_experiment",
    "TwoPhaseRun",
    "TwoPhaseResult",
    "frozen_gates",
    "frozen_copy",
    "GatedNetwork",
    "check_gates",
    "gate_modules",
    "GATE_TYPES",
]
