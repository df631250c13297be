"""The one layer that passes over the user's data.

Everything above it (probes, curvature, capacity, the monitor, the recipes) asks the
:class:`Engine` for what it needs and never iterates over the data or calls the user's loss
itself. The engine owns:

- the model guard (:class:`ModelGuard`): parameters, buffers, ``requires_grad``, ``.grad``,
  modes and the global RNGs restored exactly, with the data iteration inside it; one probe
  at a time per model (:class:`ProbeInProgressError`), and a model trained while probed is
  detected (:class:`ModelChangedError`);
- the loss/data contract (:class:`BatchLoss`, :func:`batch_size`): ``(inputs, targets)``
  pairs with ``loss_fn(model(inputs), targets)``, or any batch with ``fn(model, batch)``;
- the BatchNorm policy, device and dtype, sample weighting and per-batch statistics
  (:class:`Evaluation`), the precision sampler, progress (:class:`Progress`);
- the ranks of ``torch.distributed`` (:class:`Sharding`, :class:`Ranks`): points split across
  ranks, passes over the data shared by them, every collective with a status exchange and a
  timeout (:class:`RankFailedError`).
"""

from landprobe.engine.contract import BatchLoss, FunctionalModel, batch_size, call_model, is_batchnorm, to_device
from landprobe.engine.core import BN_MODES, Engine, HasEngine, as_array, as_engine
from landprobe.engine.guard import (ModelChangedError, ModelGuard, ProbeInProgressError, rng_state,
                                    set_rng_state)
from landprobe.engine.progress import Progress, progress, wants_progress
from landprobe.engine.shards import Part, RankFailedError, Ranks, Sharding
from landprobe.engine.statistics import Evaluation

__all__ = [
    "Engine",
    "Evaluation",
    "BN_MODES",
    "as_array",
    "as_engine",
    "HasEngine",
    # the data contract
    "BatchLoss",
    "FunctionalModel",
    "batch_size",
    "call_model",
    "to_device",
    "is_batchnorm",
    # the guard
    "ModelGuard",
    "ProbeInProgressError",
    "ModelChangedError",
    "rng_state",
    "set_rng_state",
    # ranks
    "Sharding",
    "Ranks",
    "Part",
    "RankFailedError",
    # progress
    "Progress",
    "progress",
    "wants_progress",
]
