"""The shared training loop of the recipes: one process or DDP, checkpointed, bitwise resumable.

Everything the study's recipe does per step and per epoch lives here, so that ``reproduce``,
``demo``, the benchmark and the tests run the same code:

- data: a *continuous* stream of patch indices. Each "pool" is a fresh seeded permutation of
  the training patches (all of them, or its first ``patches_per_epoch`` for a reduced preset);
  pools are concatenated and cut into global batches of ``batch_size``, so every batch is
  full and the epoch ``e`` ends after step ``ceil(e * P / B)``. With P = 9,362 T91 patches and
  B = 64 that is 147, 293, ... and 6,583 steps after 45 epochs (the DESIGN's count);
- step: forward (+ loss) under optional bf16 autocast, penalty in fp32, backward, global
  gradient-norm clipping, SGD;
- epoch end: validation (fp32, Y PSNR with ``scale`` pixels shaved, MSE, activation sparsity),
  ``ReduceLROnPlateau`` on the validation MSE, norms and sparsity of each subnet, a history
  record and an atomic checkpoint;
- DDP: each of ``world`` ranks takes a contiguous shard of every global batch (the same
  indices as the 1-process run); DDP averages the gradients, which equals the 1-process
  gradient of a loss that averages over the batch (both the literal 1/(2N) and the
  per-pixel-mean scaling do);
- checkpoints hold only tensors, numbers, strings, lists and dicts (``weights_only=True``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from landprobe.capacity import SparsenessAccumulator, fraction_near_zero, hoyer
from landprobe.common.distributed import rank_and_world
from landprobe.common.io import atomic_torch_save, atomic_write
from landprobe.engine import Progress, rng_state, set_rng_state

# hoyer: landprobe.capacity.hoyer, what the history's "hoyer" records
__all__ = ["TrainSpec", "Trainer", "steps_for_epochs", "hoyer", "population_sparseness_sums", "build_model"]

SUBNETS = ("enet", "inet", "rnet")


# ----------------------------------------------------------------------------- config
@dataclass
class TrainSpec:
    """Every number that defines a training run (stored in checkpoints and summaries)."""

    setting: str = "mix"
    width: float = 1.0
    recursions: int = 4
    scale: int = 2
    batch_size: int = 64
    patches_per_epoch: int | None = None  # None: all patches every epoch
    epochs: int = 45
    max_steps: int | None = None
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    penalty_weight: float = 2e-4
    alpha: float | None = None  # None: DRCN's decay 1 -> 0 over the epochs (AlphaSchedule); a float: fixed
    loss_scaling: str = "sum_over_pixels"  # the study's 1/(2N) sums, or "mean" (per-pixel mean)
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    amp: str = "off"  # "off" | "bf16"
    seed: int = 0
    checkpoint_every: int | None = None  # also checkpoint every K steps inside an epoch
    sparsity_threshold: float = 1e-3
    val_crop: int | None = None  # per-epoch validation on centre crops of this side (None: whole images)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_for_epochs(epochs: float, patches: int, batch_size: int) -> int:
    """Steps after ``epochs`` epochs with the continuous sampler: ``ceil(epochs * P / B)``.

    Example:
        >>> steps_for_epochs(1, 9362, 64), steps_for_epochs(45, 9362, 64)  # 146.28 per epoch
        (147, 6583)
    """
    return int(math.ceil(epochs * patches / batch_size - 1e-9))


# ----------------------------------------------------------------------------- model, loss
def build_model(width: float, recursions: int = 4, seed: int = 0) -> nn.Module:
    """The study's WARSHIP-XZNet β at ``width`` (1.0: the paper's 945,318 parameters),
    initialised from ``seed`` without touching the global RNG."""
    from landprobe.models import WarshipXZNetBeta

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WarshipXZNetBeta(width=width, recursions=recursions)


def split_output(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(final, [intermediate, ...])`` from the model's output."""
    if isinstance(out, torch.Tensor):
        return out, []
    if hasattr(out, "final") and hasattr(out, "intermediates"):
        return out.final, list(out.intermediates)
    if isinstance(out, (tuple, list)):
        if len(out) == 2 and isinstance(out[1], (tuple, list)):
            return out[0], list(out[1])
        return out[0], list(out[1:])
    raise TypeError(f"cannot read the model's output of type {type(out).__name__}; expected a tensor "
                    f"or (final, intermediates).")


class RecipeLoss(nn.Module):
    """The study's loss without the penalty: :class:`landprobe.losses.RecursiveSupervisionLoss`
    ``(1 − α)·L1 + α·L2`` with α either fixed or following DRCN's decay
    (:class:`landprobe.losses.AlphaSchedule`, 1 → 0 linearly over the run's epochs), set by
    :meth:`set_epoch`. ``components`` returns ``(total, L1, L2)``; ``loss(out, y)`` is the scalar
    total, so a :class:`~landprobe.LandscapeProbe` can use it as its ``loss_fn``."""

    def __init__(self, alpha: float | None, scaling: str, epochs: int):
        super().__init__()
        from landprobe.losses import AlphaSchedule, RecursiveSupervisionLoss

        self.schedule = AlphaSchedule(1.0, 0.0, max(int(epochs), 1)) if alpha is None else None
        self.inner = RecursiveSupervisionLoss(alpha=self.schedule(0) if self.schedule else alpha, reduction=scaling)

    @property
    def alpha(self) -> float:
        return float(self.inner.alpha)

    def set_epoch(self, epoch: int) -> None:
        """α for the 0-based ``epoch`` (no change when α is fixed)."""
        if self.schedule is not None:
            self.inner.alpha = self.schedule(epoch)

    def components(self, out: Any, y: torch.Tensor):
        return self.inner.components(out, y)

    def forward(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        return self.inner.components(out, y).total


# ----------------------------------------------------------------------------- sparsity
def population_sparseness_sums(out: torch.Tensor) -> tuple[float, int]:
    """Σ and count of the Treves–Rolls population sparseness over the stimuli of one output.

    Convention of ``landprobe.capacity`` (Treves & Rolls 1991, as Vinje & Gallant 2000): a
    feature map ``(B, C, H, W)`` is ``B·H·W`` stimuli of ``C`` units; for each stimulus,
    ``S = (1 − (mean r)² / mean(r²)) / (1 − 1/C)`` (0: all units equal; 1: one unit active);
    all-zero stimuli are left out. Dividing the summed Σ by the count over all calls of a
    module (a recurred block contributes each call) gives the mean population sparseness; the
    sums are those of :class:`landprobe.capacity.SparsenessAccumulator`, which
    :meth:`Trainer.validate` hooks on each subnet.

    Example:
        >>> import torch
        >>> r = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 3, 1)
        >>> population_sparseness_sums(r)       # stimuli (1, 0): S = 1; (0, 0): skipped; (1, 1): 0
        (1.0, 2)
    """
    acc = SparsenessAccumulator()
    acc.add(out)
    return acc.population_sum, acc.population_count


# ----------------------------------------------------------------------------- helpers
def _checkpoint_rng() -> dict[str, Any]:
    """:func:`landprobe.engine.rng_state` (torch, numpy, Python) as tensors, numbers, strings and
    lists, which ``torch.load(..., weights_only=True)`` reads back. The CUDA states are left out:
    training draws no CUDA random numbers, and a checkpoint resumes on any number of GPUs."""
    state = rng_state()
    name, keys, pos, has_gauss, cached = state["numpy"]
    version, internal, gauss = state["python"]
    return {
        "torch": state["torch"],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }


def _restore_rng(s: dict[str, Any]) -> None:
    """Put back the states :func:`_checkpoint_rng` stored, through :func:`landprobe.engine.set_rng_state`."""
    n, p = s["numpy"], s["python"]
    set_rng_state({"torch": s["torch"],
                   "numpy": (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]),
                   "python": (p["version"], tuple(p["state"]), p["gauss"])})


def _subnet_params(model: nn.Module, name: str) -> list[torch.Tensor]:
    sub = getattr(model, name, None)
    return [p.detach() for p in sub.parameters()] if isinstance(sub, nn.Module) else []


def activation_modules(model: nn.Module, name: str) -> dict[str, nn.Module]:
    """The module whose output gives subnet ``name``'s activations: ``{"out": subnet}``, or, when
    the subnet's last conv makes a single channel (an image, as WARSHIP's ``rnet``: no population
    to be sparse over), ``{"hidden": its last nn.ReLU}`` (``rnet.relu2``, the K images)."""
    sub = getattr(model, name, None)
    if not isinstance(sub, nn.Module):
        return {}
    convs = [m for m in sub.modules() if isinstance(m, nn.Conv2d)]
    relus = [m for m in sub.modules() if isinstance(m, nn.ReLU)]
    if convs and convs[-1].out_channels < 2 and relus:
        return {"hidden": relus[-1]}
    return {"out": sub}


def _first_tensor(o: Any) -> torch.Tensor | None:
    if isinstance(o, torch.Tensor):
        return o
    if isinstance(o, (tuple, list)):
        for v in o:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(o, dict):
        for v in o.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Trains one setting of the study; see the module docstring for what each step does.

    Args:
        spec: The run's :class:`TrainSpec`.
        inputs, targets: Training patches, float32 ``(N, 1, p, p)`` (e.g. ``T91Patches``).
        val: Validation pairs ``[(x, y), ...]`` of ``(1, 1, H, W)`` or ``(1, H, W)`` tensors, or None.
        out_dir: Folder for ``history.jsonl``, ``checkpoint.pt`` and ``final.json`` (rank 0), or None.
        device: Where to train.
        progress: A bar with ETA over the training steps (:class:`landprobe.engine.Progress`):
            ``False`` (default) none, ``True`` always, ``None`` on a terminal only; rank 0 only.
        callback: ``callback(trainer)`` after every optimizer step (logging, tests).
        model: Use this model instead of building one from ``spec`` (same init contract).
        optimizer: ``optimizer(parameters)`` builds the optimizer instead of the spec's SGD
            (``lr``, ``momentum``, ``weight_decay``), e.g.
            ``lambda ps: torch.optim.Adam(ps, lr=1e-3)``; the plateau schedule acts on it.
    """

    def __init__(self, spec: TrainSpec, inputs: torch.Tensor, targets: torch.Tensor, val=None,
                 out_dir: str | os.PathLike | None = None, device: torch.device | str | None = None,
                 progress: bool | None = False, callback: Callable[["Trainer"], None] | None = None,
                 model: nn.Module | None = None,
                 optimizer: Callable[[Any], torch.optim.Optimizer] | None = None):
        from landprobe.penalties import SubnetNormPenalty

        self.spec = spec
        self.rank, self.world = rank_and_world()
        if spec.batch_size % self.world:
            raise ValueError(f"batch_size={spec.batch_size} does not split over {self.world} ranks; "
                             f"use a multiple of the world size.")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.inputs, self.targets = inputs, targets
        self.n_patches = int(inputs.shape[0])
        self.pool_size = self.n_patches if spec.patches_per_epoch is None else min(int(spec.patches_per_epoch), self.n_patches)
        self.val = val
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.progress = progress
        self.callback = callback

        self.model = (model if model is not None else build_model(spec.width, spec.recursions, spec.seed)).to(self.device)
        self.penalty = SubnetNormPenalty.preset(self.model, spec.setting, weight=spec.penalty_weight)
        self.loss = RecipeLoss(spec.alpha, spec.loss_scaling, spec.epochs)
        self.optimizer = (optimizer(self.model.parameters()) if optimizer is not None else
                          torch.optim.SGD(self.model.parameters(), lr=spec.lr, momentum=spec.momentum,
                                          weight_decay=spec.weight_decay))
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=spec.plateau_factor, patience=spec.plateau_patience)
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.gen = torch.Generator().manual_seed(spec.seed + 1)
        self.pool = torch.empty(0, dtype=torch.int64)
        self.pool_pos = 0
        self.step = 0
        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []
        self._acc = torch.zeros(3, dtype=torch.float64)  # Σ n·L1, Σ n·L2, Σ n over the epoch
        self._epoch_seconds = 0.0
        if spec.amp == "bf16":
            from landprobe.common.hardware import warn_if_slow_autocast

            warn_if_slow_autocast(self.device, torch.bfloat16, "amp='bf16'")
        self.total_steps = steps_for_epochs(spec.epochs, self.pool_size, spec.batch_size)
        if spec.max_steps is not None:
            self.total_steps = min(self.total_steps, int(spec.max_steps))

    # ---- data stream
    def _next_indices(self, n: int) -> torch.Tensor:
        out = []
        while n > 0:
            if self.pool_pos >= self.pool.numel():
                self.pool = torch.randperm(self.n_patches, generator=self.gen)[: self.pool_size]
                self.pool_pos = 0
            take = min(n, self.pool.numel() - self.pool_pos)
            out.append(self.pool[self.pool_pos:self.pool_pos + take])
            self.pool_pos += take
            n -= take
        return torch.cat(out)

    def epoch_end_step(self, epoch: int) -> int:
        """Global step after which epoch ``epoch`` (1-based) ends."""
        return steps_for_epochs(epoch, self.pool_size, self.spec.batch_size)

    # ---- one step
    def _autocast(self):
        if self.spec.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)

    def train_step(self) -> dict[str, float]:
        """One optimizer step on the next global batch; returns this rank's loss components."""
        spec = self.spec
        idx = self._next_indices(spec.batch_size)
        local = spec.batch_size // self.world
        idx = idx[self.rank * local:(self.rank + 1) * local]
        x = self.inputs[idx].to(self.device, non_blocking=True)
        y = self.targets[idx].to(self.device, non_blocking=True)
        net = self.ddp if self.ddp is not None else self.model
        net.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = net(x)
            total, l1, l2 = self.loss.components(out, y)
        pen = self.penalty()  # fp32, outside autocast
        (total.float() + pen).backward()
        if spec.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), spec.clip_norm)
        self.optimizer.step()
        self.step += 1
        n = x.shape[0]
        self._acc += torch.tensor([float(l1.detach()) * n, float(l2.detach()) * n, float(n)], dtype=torch.float64)
        return {"loss": float(total.detach()), "loss_final": float(l1.detach()), "loss_intermediate": float(l2.detach()),
                "penalty": float(pen.detach())}

    # ---- validation and measurements
    @torch.no_grad()
    def validate(self, pairs=None) -> dict[str, Any]:
        """fp32 validation: mean Y PSNR of the output clipped to [0, 1] (shave ``scale``), mean MSE over images, and the mean
        Treves–Rolls population sparseness of the outputs of ``enet``, ``inet``, ``rnet``."""
        from landprobe.metrics import psnr

        pairs = self.val if pairs is None else pairs
        if not pairs:
            return {}
        model = self.model
        was = model.training
        model.eval()
        # the subnet's output; for a subnet whose output is one image (rnet), its last ReLU
        acts = {(n, k): SparsenessAccumulator() for n in SUBNETS for k in ("out", "hidden")}
        hooks = []
        for name in SUBNETS:
            for kind, mod in activation_modules(model, name).items():
                def hook(_m, _i, o, acc=acts[(name, kind)]):
                    t = _first_tensor(o)
                    if t is not None:
                        acc.add(t)
                hooks.append(mod.register_forward_hook(hook))
        ps, mses = [], []
        try:
            for x, y in pairs:
                x = (x if x.dim() == 4 else x[None]).to(self.device)
                y = (y if y.dim() == 4 else y[None]).to(self.device)
                sr, _ = split_output(model(x))
                sr = sr.float()
                # PSNR of the image the model would deliver: clipped to the valid range, as a
                # saved image is (a diverging run's overshoot is then a low PSNR, not an error)
                ps.append(float(psnr(y, sr.clamp(0.0, 1.0), shave=self.spec.scale, reduction="mean")))
                mses.append(float((sr - y).double().pow(2).mean()))
        finally:
            for h in hooks:
                h.remove()
            model.train(was)
        return {
            "psnr": float(np.mean(ps)), "val_mse": float(np.mean(mses)),
            "treves_rolls": {n: next((acts[(n, k)].result()["population_sparseness"] for k in ("out", "hidden")
                                      if acts[(n, k)].population_count), None) for n in SUBNETS},
        }

    def measure_weights(self) -> dict[str, Any]:
        """Per-subnet L1 and squared L2 norms, and the fraction of |w| < threshold and Hoyer sparsity
        of :func:`landprobe.capacity.fraction_near_zero` and :func:`landprobe.capacity.hoyer`."""
        norms, sparsity = {}, {}
        for name in SUBNETS:
            ps = _subnet_params(self.model, name)
            if not ps:
                continue
            flat = torch.cat([p.reshape(-1) for p in ps]).double()
            norms[name] = {"l1": float(flat.abs().sum()), "l2sq": float((flat * flat).sum())}
            sparsity[name] = {"frac_small": fraction_near_zero(flat, self.spec.sparsity_threshold),
                              "hoyer": hoyer(flat)}
        return {"norms": norms, "sparsity": sparsity}

    # ---- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "landprobe-recipe-checkpoint-1",
            "spec": self.spec.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": _checkpoint_rng(),
            "data": {"generator": self.gen.get_state(), "pool": self.pool.clone(), "pool_pos": self.pool_pos},
            "acc": self._acc.clone(),
            "epoch_seconds": self._epoch_seconds,
            "history": json.loads(json.dumps(self.history)),
        }

    def load_state_dict(self, ck: dict[str, Any]) -> None:
        if ck.get("format") != "landprobe-recipe-checkpoint-1":
            raise ValueError("this file is not a landprobe recipe checkpoint (format key missing).")
        mine, theirs = self.spec.to_dict(), dict(ck["spec"])
        for k in ("max_steps", "epochs", "checkpoint_every"):  # may change on resume
            mine.pop(k, None)
            theirs.pop(k, None)
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise ValueError(f"the checkpoint was written with other settings {diff} (checkpoint, now); "
                             f"resume with the same options or start a new --out folder.")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        _restore_rng(ck["rng"])
        self.gen.set_state(ck["data"]["generator"])
        self.pool, self.pool_pos = ck["data"]["pool"].clone(), int(ck["data"]["pool_pos"])
        self._acc = ck["acc"].clone()
        self._epoch_seconds = float(ck["epoch_seconds"])
        self.history = list(ck["history"])
        self.loss.set_epoch(self.epoch)

    def save_checkpoint(self) -> None:
        if self.out_dir is not None and self.rank == 0:
            atomic_torch_save(self.state_dict(), self.out_dir / "checkpoint.pt")

    def _write_history(self) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write(self.out_dir / "history.jsonl", lambda fh: fh.write(text))

    # ---- the loop
    def _allreduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            t = t.to(self.device)
            torch.distributed.all_reduce(t)
            t = t.cpu()
        return t

    def end_epoch(self) -> dict[str, Any]:
        """Validate, step the LR schedule, measure, append to history, checkpoint."""
        acc = self._allreduce(self._acc.clone())
        self.epoch += 1
        rec: dict[str, Any] = {"epoch": self.epoch, "step": self.step,
                               "lr": float(self.optimizer.param_groups[0]["lr"]),
                               "alpha": float(self.loss.alpha)}
        rec["loss_final"] = float(acc[0] / acc[2]) if acc[2] > 0 else float("nan")
        rec["loss_intermediate"] = float(acc[1] / acc[2]) if acc[2] > 0 else float("nan")
        with torch.no_grad():
            rec["penalty"] = float(self.penalty())
        rec["penalty_breakdown"] = {str(k): v for k, v in self.penalty.breakdown().items()}
        t1 = time.perf_counter()
        v = self.validate()
        rec["seconds_validation"] = time.perf_counter() - t1
        rec.update({k: v[k] for k in ("psnr", "val_mse") if k in v})
        rec.update(self.measure_weights())
        if "treves_rolls" in v:
            for name, val in v["treves_rolls"].items():
                rec["sparsity"].setdefault(name, {})["treves_rolls"] = val
        if "val_mse" in v:
            self.scheduler.step(v["val_mse"])
        self.loss.set_epoch(self.epoch)
        rec["seconds"] = self._epoch_seconds
        self.history.append(rec)
        self._acc.zero_()
        self._epoch_seconds = 0.0
        self._write_history()
        self.save_checkpoint()
        return rec

    def run(self) -> list[dict[str, Any]]:
        """Train until ``spec.epochs`` epochs or ``spec.max_steps`` steps; returns the history."""
        spec = self.spec
        desc = spec.setting if self.step == 0 else f"{spec.setting} (from step {self.step})"
        with Progress(desc, self.total_steps - self.step, enabled=self.progress, unit="step") as bar:
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                logs = self.train_step()
                self._epoch_seconds += time.perf_counter() - t0
                if not math.isfinite(logs["loss"]):
                    raise FloatingPointError(
                        f"training loss became {logs['loss']} at step {self.step} ({spec.setting}); "
                        f"lower lr or keep clip_norm (default 1.0).")
                last = self.history[-1] if self.history else {}
                bar.set(epoch=self.epoch + 1, loss=f"{logs['loss']:.4g}",
                        psnr=f"{last['psnr']:.2f}" if "psnr" in last else "-")
                bar.update()
                if self.callback is not None:
                    self.callback(self)
                if self.step == self.epoch_end_step(self.epoch + 1):
                    rec = self.end_epoch()
                    if "psnr" in rec:
                        bar.set(epoch=self.epoch, psnr=f"{rec['psnr']:.2f}")
                elif spec.checkpoint_every and self.step % spec.checkpoint_every == 0:
                    self.save_checkpoint()
        if self.step != self.epoch_end_step(self.epoch):  # stopped inside an epoch (max_steps)
            self.save_checkpoint()
        return self.history
