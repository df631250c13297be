"""AutoNEB: nudged elastic bands with automatic insertion of images (Draxler et al. 2018).

A chain of images θ_0 = a, θ_1, …, θ_{n−1} = b is relaxed towards the minimum-energy path:
each interior image follows the loss gradient with its component along the path removed
(the "nudging" of Henkelman & Jónsson 2000), while the images are kept evenly spaced, either
by re-spacing them along the chain after every step (spring constant ∞, the setting of
Draxler et al.'s code) or by spring forces along the tangent (finite ``spring``). Between
cycles new images are inserted where the loss between two neighbours rises most above
the straight line between their energies; late cycles let the highest image climb (the
climbing image of Henkelman et al. 2000), so that it settles on the saddle.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landprobe.common.deprecation import renamed_keywords
from landprobe.common.checks import check_int, check_positive
from landprobe.common.io import atomic_torch_save
from landprobe.common.tempfiles import remove_stale_temps
from landprobe.engine import Engine, HasEngine, Part, Progress, Ranks, as_engine
from landprobe.params import ParamVector
from landprobe.probes.curves.common import load_checkpoint
from landprobe.probes.curves.common import (all_finite, check_fingerprint, diverged, endpoints, evaluate_path,
                                            polychain_coeffs, read_checkpoint)
from landprobe.probes.curves import band as band_algebra
from landprobe.probes.curves.path import Path

__all__ = ["auto_neb", "paper_schedule", "NebCycle"]

@dataclass(frozen=True)
class NebCycle:
    """One cycle of an AutoNEB schedule: insert images, then relax the band.

    Attributes:
        steps: SGD steps on the interior images, >= 0.
        lr: Their learning rate, > 0.
        insert: Images to insert before the steps (evenly in a bare band's first cycle, else
            where the loss rises most above the line between two neighbours), >= 0.
        climbing: Let the highest image climb (Henkelman et al. 2000) in this cycle.

    A schedule is a list of cycles; a cycle may also be given as a dict with these keys.

    Example:
        >>> from landprobe.probes.curves import NebCycle
        >>> NebCycle.coerce({"steps": 10, "lr": 0.01, "insert": 3})
        NebCycle(steps=10, lr=0.01, insert=3, climbing=False)
    """

    steps: int
    lr: float
    insert: int = 0
    climbing: bool = False

    @classmethod
    def coerce(cls, cycle: NebCycle | dict[str, Any], where: str = "schedule[0]") -> NebCycle:
        """A cycle from a NebCycle or a dict, checked; errors name ``where``."""
        if isinstance(cycle, dict):
            unknown = sorted(set(cycle) - {f.name for f in fields(cls)})
            if unknown or "steps" not in cycle or "lr" not in cycle:
                raise ValueError(f"{where} is {cycle!r}; every cycle needs 'steps' and 'lr' (and may give 'insert', "
                                 f"'climbing')" + (f"; unknown keys {unknown}" if unknown else ""))
            cycle = cls(**cycle)
        elif not isinstance(cycle, cls):
            raise TypeError(f"{where} is a {type(cycle).__name__}; expected a NebCycle or a dict with 'steps' and 'lr'")
        check_int(f"{where}['steps']", cycle.steps, 0, "SGD steps of the cycle")
        check_positive(f"{where}['lr']", cycle.lr, "the cycle's learning rate")
        check_int(f"{where}['insert']", cycle.insert, 0, "images to insert")
        return cycle


def paper_schedule(steps: int = 1000, lr: float = 0.1) -> list[dict[str, Any]]:
    """The cycle schedule of Draxler et al. 2018 (their CIFAR configurations), scaled by ``steps`` and ``lr``.

    14 cycles: 4 of ``steps`` steps at ``lr`` that insert images (the first three evenly,
    the next two each where the loss rises most), 2 of ``2·steps`` at ``lr``, 4 of ``steps``
    at ``lr / 10`` and 4 at ``lr / 100``. The climbing image is switched on after the
    insertion cycles (our choice; their code has no climbing image).

    Example:
        >>> s = paper_schedule(steps=10, lr=0.1)
        >>> len(s), [c["steps"] for c in s][:6], s[0]["insert"], s[4]["insert"], s[-1]["lr"]
        (14, [10, 10, 10, 10, 20, 20], 3, 0, 0.001)
    """
    out = []
    for i in range(14):
        lr_i = lr if i < 6 else (lr / 10 if i < 10 else lr / 100)
        out.append({"steps": 2 * steps if i in (4, 5) else steps, "lr": round(lr_i, 12),
                    "insert": 3 if i == 0 else (2 if i < 4 else 0), "climbing": i >= 4})
    return out


def _save_neb(path, fingerprint: dict, cycle: int, band: list[ParamVector], history: list, consumed: int,
              batched: bool | None) -> None:
    atomic_torch_save({"fingerprint": fingerprint, "cycle": cycle, "consumed": consumed, "history": history,
                       "interior": [[t.detach().clone() for t in im.tensors] for im in band[1:-1]],
                       "batch_images": batched}, path)


def _distances(images: Sequence[ParamVector]) -> list[float]:
    return [(images[i + 1] - images[i]).norm() for i in range(len(images) - 1)]


def _knots(images: Sequence[ParamVector]) -> np.ndarray:
    d = np.array(_distances(images))
    total = d.sum()
    if total == 0.0:
        return np.linspace(0.0, 1.0, len(images))
    k = np.concatenate([[0.0], np.cumsum(d) / total])
    k[-1] = 1.0
    return k


@renamed_keywords(eval_points="points")
def auto_neb(engine: Engine | HasEngine, a: Any, b: Any, *, images: int | None = None,
             schedule: Sequence[NebCycle | dict[str, Any]] | None = None,
             steps: int = 1000, lr: float = 0.1, momentum: float = 0.9, spring: float = math.inf,
             climbing: bool = True, insert_tol: float = 0.0, sub_points: int = 9, points: int = 61,
             seed: int = 0, checkpoint: str | os.PathLike | None = None, batch_images: bool | None = None) -> Path:
    """Minimum-energy path between ``a`` and ``b`` by AutoNEB (Draxler et al. 2018); also ``connect(method="neb")``.

    The band starts as the segment from ``a`` to ``b``; each cycle of the ``schedule`` first
    inserts images, then runs its steps of SGD with momentum (a new optimizer per cycle) on
    the interior images. Per step: one batch of the probe's data (cycled) for every image;
    the loss gradient g_i at each interior image (``torch.func.functional_call``, BatchNorm
    on batch statistics, dropout off), minus its component along the upwind tangent τ_i
    (Henkelman & Jónsson 2000); the climbing image (the highest, when the cycle has
    ``climbing``) instead gets g_i − 2(g_i·τ_i)τ_i and climbs along the path. With
    ``spring=inf`` the images are then re-spaced evenly along the chain (between climbing
    images); with a finite spring constant k each non-climbing image gets the spring force
    k(|θ_{i+1} − θ_i| − |θ_i − θ_{i−1}|)·τ_i instead.

    Insertion: the loss is measured through the engine at ``sub_points`` evenly spaced points
    inside every segment; the residuum of a point is its loss minus the straight line between
    the two images' losses. Up to ``insert`` new images go to the points of highest residuum
    above ``insert_tol``, at most one per segment (the first cycle of the default schedule
    inserts 3 images evenly instead).

    The interior images' losses and gradients come from one model call over all of them
    (``torch.func.vmap``, :meth:`~landprobe.engine.Engine.fit_losses`) or from one call per
    image (``batch_images``). The batched call saves the per-call overhead that dominates small
    models, but vmap runs a convolution with per-image weights as a grouped convolution, which
    CPUs run slower than separate calls once the images carry real work (full-size
    WARSHIP-XZNet β, 8 images: 1.46x the time of 8 separate passes). By default, bands of
    small images (at most ``band.SMALL`` = 4,096 numbers) always share a call, and larger ones
    take whichever way the first step measures faster (each timed twice on that step's batch);
    the two agree to float rounding, and the choice is recorded in ``settings["batch_images"]``
    and in the checkpoint.

    Under data sharding (``landprobe.Sharding(data=True)``) each step's batch is shared by the
    ranks and every energy and gradient is summed over them before it is used, so the
    climbing image, the insertions and the band are the same on every rank and equal to one
    process's (to float rounding).

    Args:
        a, b: Endpoints: state_dicts, modules or ParamVectors of the probed model.
        images: Interior images of the first cycle, inserted evenly; overrides the first
            cycle's ``insert`` (default: the schedule's, 3).
        schedule: A list of cycles: :class:`NebCycle` (``steps``, ``lr``, ``insert``: how many
            images to add, evenly in the band's first cycle, by residuum later, ``climbing``),
            or dicts with those keys.
            Default :func:`paper_schedule` ``(steps, lr)``: 14 cycles as Draxler et al.
        steps, lr: Scale of the default schedule (steps per cycle, first learning rate).
        momentum: SGD momentum.
        spring: Spring constant k; ``math.inf`` (default) re-spaces the images evenly.
        climbing: Allow the climbing image in the cycles that ask for it.
        insert_tol: Least residuum for an insertion.
        sub_points: Points measured inside each segment for insertion and for the result.
        points: Evenly spaced t also measured in the result (the images are added).
        seed: Unused by the deterministic algorithm; recorded (the data order is the probe's).
        checkpoint: A file for long runs: after every cycle the band, the cycle index, the
            history and the number of batches used are written to it atomically; a call that
            finds it resumes after the last finished cycle and returns what an uninterrupted
            call would. Settings and an endpoint fingerprint must match (else ``ValueError``);
            the file is kept and loads with ``torch.load(path, weights_only=True)``. Under
            ``torch.distributed`` rank 0 alone writes it and every rank resumes from it (a
            file system all ranks share).
        batch_images: ``True``: the interior images share one vmapped model call (one call
            each where the model cannot be batched); ``False``: one call per image; ``None``
            (default): small images share a call, larger ones take the faster way measured on
            the first step (pass ``True`` or ``False`` for runs that repeat to the bit).

    Returns:
        A :class:`~landprobe.probes.curves.Path` with ``method="neb"``: the polychain through
        the images, ``knots`` their positions (normalised arc length), ``knot_losses`` their
        energies, ``max_loss`` the saddle estimate (the highest loss measured densely along the
        chain), ``points`` the images; ``settings["schedule"]`` the cycles run.

    Raises:
        ValueError: For an empty schedule, a cycle with bad ``steps``/``lr``/``insert``, a
            spring constant <= 0, ``sub_points`` < 1, or endpoints that do not fit the model.
        FitDivergedError: If an image's loss on a step's batch (summed over the ranks under
            data sharding) is not finite, or a cycle's last step leaves non-finite images; the
            message names the cycle, the step, the learning rate and the last checkpoint kept.

    Example:
        >>> from landprobe.probes import toys
        >>> from landprobe.probes.curves.neb import auto_neb, paper_schedule
        >>> import torch
        >>> egg = toys.Eggcarton()                              # E = cos 2πx + cos 2πy
        >>> probe = toys.toy_probe(egg)
        >>> a = {"location": torch.tensor([0.5, 0.5], dtype=torch.float64)}     # minima, E = −2
        >>> b = {"location": torch.tensor([1.5, 2.5], dtype=torch.float64)}
        >>> round(probe.interpolate(a, b, points=201).barrier, 2)   # the segment crosses two ridges
        3.12
        >>> quick = ([dict(steps=10, lr=0.01, insert=3)] + [dict(steps=10, lr=0.01, insert=2)] * 3
        ...          + [dict(steps=10, lr=0.001, climbing=True)] * 3)
        >>> path = auto_neb(probe, a, b, schedule=quick)
        >>> round(path.barrier, 3)                              # over saddles such as (1, ½): E = 0
        2.0
    """
    engine = as_engine(engine)
    cycles = _check_schedule(paper_schedule(steps, lr) if schedule is None else schedule, images)
    if not (isinstance(spring, (int, float)) and spring > 0):
        raise ValueError(f"spring={spring!r}; expected a spring constant > 0, or math.inf to re-space the images "
                         f"evenly (Draxler et al.'s setting)")
    check_int("sub_points", sub_points, 1, "points measured inside each segment")
    check_int("points", points, 2, "evenly spaced points of the result")
    if batch_images is not None and not isinstance(batch_images, bool):
        raise TypeError(f"batch_images={batch_images!r}; expected True (one vmapped call for all images), False "
                        f"(one call per image) or None (measure on the first step)")

    names, va, vb, pnames, _ = endpoints(engine, a, b)
    band = _Band(engine, names, va, vb, pnames, sub_points, batch_images)
    fingerprint = {"schedule": [asdict(c) for c in cycles], "momentum": float(momentum),
                   "spring": spring if math.isfinite(spring) else "inf", "climbing": bool(climbing),
                   "insert_tol": float(insert_tol), "sub_points": int(sub_points),
                   "n": int(sum(t.numel() for t in band.pa.tensors)), "norm_a": float(band.pa.norm()),
                   "norm_b": float(band.pb.norm()), "dot_ab": float(band.pa.dot(band.pb))}
    with engine.guard("auto_neb"):
        batches = engine.batch_cycle()
        history: list[dict[str, Any]] = []
        first, consumed = 0, 0
        if checkpoint is not None and engine.writes_files:
            remove_stale_temps(checkpoint)          # left by a run killed while writing the checkpoint
        resumed = read_checkpoint(engine, checkpoint, lambda: band.resume(checkpoint, fingerprint),
                                  lambda state: f"cycle {state[0]}, {state[1]} batches")
        if resumed is not None:
            first, consumed, history = resumed
            for _ in range(consumed):               # the batch the interrupted run would take next
                next(batches)
        kept = f"after cycle {first} of {len(cycles)}" if resumed is not None else None
        total_steps = sum(c.steps for c in cycles[first:])
        with Progress("AutoNEB", total_steps, enabled=engine.progress, unit="step") as bar:
            for k in range(first, len(cycles)):
                cyc = cycles[k]
                band.insert(cyc.insert, first_cycle=k == 0, tol=insert_tol)
                def fail(what: str, step: int, cyc: NebCycle = cyc, k: int = k) -> Exception:
                    # ``kept`` is read when called: the last checkpoint written before this cycle
                    return diverged("auto_neb", what, step=step, steps=cyc.steps, lr=cyc.lr, checkpoint=checkpoint,
                                    kept=kept, where=f" of cycle {k + 1} of {len(cycles)}", adam=False)
                climb_at = _relax(engine, band, cyc, batches, bar, momentum=momentum, spring=spring,
                                  climbing=climbing and cyc.climbing, fail=fail)
                consumed += cyc.steps if len(band.images) > 2 else 0
                history.append({**asdict(cyc), "images": len(band.images)} if climb_at == "skipped"
                               else {**asdict(cyc), "images": len(band.images), "climbing_image": climb_at})
                if checkpoint is not None:
                    def save(done: int = k + 1, consumed: int = consumed) -> None:
                        _save_neb(checkpoint, fingerprint, done, band.images, history, consumed, band.batched)
                    engine.write_files(save, "writing the checkpoint")
                    kept = f"after cycle {k + 1} of {len(cycles)}"
        extra = {"resumed_at_cycle": first} if first else {}
        settings = engine.settings(probe="connect", method="neb", schedule=history, **extra, momentum=momentum,
                                   spring=spring if math.isfinite(spring) else "inf", climbing=climbing,
                                   insert_tol=insert_tol, sub_points=sub_points, points=points, seed=seed,
                                   images=len(band.images), batch_images=band.batched)
        return band.result(points, settings)


def _check_schedule(schedule: Sequence[NebCycle | dict[str, Any]], images: int | None) -> list[NebCycle]:
    """The cycles, checked; ``images`` overrides the first insertion."""
    cycles = [NebCycle.coerce(c, f"schedule[{k}]") for k, c in enumerate(schedule)]
    if not cycles:
        raise ValueError("schedule=[]; pass at least one cycle, e.g. paper_schedule(steps=100)")
    if images is not None:
        check_int("images", images, 1, "interior images of the first cycle")
        cycles[0] = replace(cycles[0], insert=images)
    return cycles


class _Band:
    """The chain of images from a to b, measured densely through the engine."""

    def __init__(self, engine: Engine, names: list[str], va: ParamVector, vb: ParamVector, pnames: list[str],
                 sub_points: int, batch_images: bool | None):
        self.engine, self.names, self.va, self.vb, self.pnames = engine, names, va, vb, pnames
        self.pa, self.pb = va.subset(pnames).clone(), vb.subset(pnames).clone()
        self.images: list[ParamVector] = [self.pa, self.pb]
        self.per = sub_points + 1
        self.asked = batch_images
        small = sum(t.numel() for t in self.pa.tensors) <= band_algebra.SMALL
        # True: the images share one model call (Engine.fit_losses); False: one call each;
        # None: not decided yet (the first step measures both)
        self.batched: bool | None = True if small and batch_images is None else batch_images

    def resume(self, path: Any, fingerprint: dict[str, Any]) -> tuple[int, int, list[dict[str, Any]]]:
        state = load_checkpoint(path, "auto_neb()")
        check_fingerprint(path, state["fingerprint"], fingerprint, "auto_neb()")
        self.images = ([self.pa] + [ParamVector._wrap(list(self.pnames), list(ts)) for ts in state["interior"]]
                       + [self.pb])
        if self.asked is None and state.get("batch_images") is not None:
            self.batched = bool(state["batch_images"])         # as the interrupted run chose
        return int(state["cycle"]), int(state["consumed"]), list(state["history"])

    def dense(self) -> np.ndarray:
        """Loss at the images and at ``sub_points`` inside every segment."""
        knots = np.linspace(0.0, 1.0, len(self.images))       # index space: image i at t = i / (n - 1)
        ts = np.linspace(0.0, 1.0, (len(self.images) - 1) * self.per + 1)
        with self.engine.quiet():
            path = evaluate_path(self.engine, names=self.names, va=self.va, vb=self.vb, pnames=self.pnames,
                                 points=self.images, coeffs=lambda t: polychain_coeffs(knots, t), ts=ts,
                                 knots=np.zeros(0), method="neb", settings={})
        return path.losses

    def insert(self, n_ins: int, *, first_cycle: bool, tol: float) -> None:
        """Add ``n_ins`` images: evenly in a bare band's first cycle, else where the loss rises
        most above the line between two neighbours (at most one per segment)."""
        if not n_ins:
            return
        pa, pb, per = self.pa, self.pb, self.per
        if len(self.images) == 2 and first_cycle:
            self.images = [pa.lerp(pb, i / (n_ins + 1)).clone() if 0 < i < n_ins + 1 else (pa if i == 0 else pb)
                           for i in range(n_ins + 2)]
            return
        losses = self.dense()
        cand = []
        for j in range(len(self.images) - 1):
            seg = losses[j * per:(j + 1) * per + 1]
            s = np.linspace(0.0, 1.0, per + 1)
            resid = seg - ((1 - s) * seg[0] + s * seg[-1])
            m = int(np.argmax(resid[1:-1])) + 1
            if resid[m] > tol:
                cand.append((float(resid[m]), j, float(s[m])))
        cand.sort(reverse=True)
        for _, j, s_ in sorted(cand[:n_ins], key=lambda c: c[1], reverse=True):
            self.images.insert(j + 1, self.images[j].lerp(self.images[j + 1], s_).clone())

    def result(self, points: int, settings: dict[str, Any]) -> Path:
        """The polychain through the images, measured at the images, ``sub_points`` inside every
        segment and ``points`` evenly spaced t."""
        knots = _knots(self.images)
        per = self.per
        inner = np.concatenate([np.linspace(knots[j], knots[j + 1], per + 1)[:-1]
                                for j in range(len(self.images) - 1)] + [np.array([1.0])])
        ts = np.union1d(np.union1d(inner, np.linspace(0.0, 1.0, points)), knots)
        ts[0], ts[-1] = 0.0, 1.0
        return evaluate_path(self.engine, names=self.names, va=self.va, vb=self.vb, pnames=self.pnames,
                             points=self.images, coeffs=lambda t: polychain_coeffs(knots, t), ts=ts, knots=knots,
                             method="neb", settings=settings)


def _relax(engine: Engine, band: _Band, cyc: NebCycle, batches: Iterator, bar: Progress, *,
           momentum: float, spring: float, climbing: bool,
           fail: Callable[[str, int], Exception]) -> int | None | str:
    """One cycle's SGD steps on the interior images (nudged gradients, climbing image, springs
    or re-spacing), all images at once: per parameter, the band's images stacked along dim 0
    (the interior images become views of these stacks). Returns the climbing image's index
    (None: none), or ``"skipped"`` when the band has no interior image or the cycle no steps.
    Raises ``fail(what, step)`` when an energy (summed over the ranks) is not finite, or the
    last step leaves non-finite images."""
    images = band.images
    if len(images) <= 2 or cyc.steps == 0:
        bar.update(cyc.steps)
        return "skipped"
    full = [torch.stack(ts) for ts in zip(*(im.tensors for im in images))]
    groups = _groups(full)                        # small parameters share one (images, numbers) matrix
    full, shared = _shared(full, groups)
    _bind(images, band.pnames, full)
    rows: list[Tensor] | None = None              # the stacks as (images, numbers) matrices, from step 0
    bufs: list[Tensor] | None = None
    space: dict[Any, Tensor] = {}                 # the steps' buffers for large images
    gathered: dict[int, Tensor] = {}              # the shared matrices' gradients, gathered each step
    climb_at: int | None = None
    engine.set_fit_modes()
    unchanged = engine.unchanged_check()          # the band's images are ours; the model is never written
    ranks = engine.ranks()
    for step in range(cyc.steps):
        bar.update()
        unchanged()
        energies, grads = _forces(engine, ranks, band, full, next(batches))
        if rows is None:
            full, rows = _band_rows(groups, shared, full, grads)
            _bind(images, band.pnames, full)
        grads = _band_grads(groups, shared, full, grads, gathered)
        bad = [i for i, e in enumerate(energies) if not math.isfinite(e)]
        if bad:
            raise fail(f"the loss of image {bad[0]} (of {len(images)}, ends included) became {energies[bad[0]]}",
                       step + 1)
        climb_at = (int(np.argmax(energies[1:-1])) + 1) if climbing else None
        bufs, segments = band_algebra.nudged_step(rows, grads, energies, climb_at=climb_at, spring=spring,
                                                  lr=cyc.lr, momentum=momentum, bufs=bufs, space=space,
                                                  measure=math.isinf(spring))
        if segments is not None:
            band_algebra.respace(rows, {climb_at} if climb_at is not None else set(), segments)
    unchanged()
    if not all_finite([f[1:-1] for f in full]):   # the last update, which no later energy has seen
        raise fail("the images became non-finite", cyc.steps)
    if not all(f.is_contiguous() for f in full):
        _bind(images, band.pnames, [f.contiguous() for f in full])
    return climb_at


#: in a band of larger images, parameters of at most this many numbers per image still share one
#: (images, numbers) matrix per dtype and device: per tensor, a step of the band's algebra costs
#: about fifteen calls, more than copying so small a gradient into the shared matrix
_SHARED = 1 << 14


def _groups(full: list[Tensor]) -> list[list[int]]:
    """The parameters (indices into the stacks ``full``) that share one matrix in the band's
    algebra, each other parameter alone: all of them when an image is small (at most
    ``band.SMALL`` numbers) and they share dtype and device, else those of at most
    :data:`_SHARED` numbers per image, by dtype and device."""
    if sum(f[0].numel() for f in full) <= band_algebra.SMALL and len({(f.dtype, f.device) for f in full}) == 1:
        return [list(range(len(full)))]
    by_kind: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    alone: list[list[int]] = []
    for i, f in enumerate(full):
        if f[0].numel() <= _SHARED:
            by_kind.setdefault((f.dtype, f.device), []).append(i)
        else:
            alone.append([i])
    return list(by_kind.values()) + alone


def _shared(full: list[Tensor], groups: list[list[int]]) -> tuple[list[Tensor], dict[int, Tensor]]:
    """The stacks with the members of each group of several made views of one new (images,
    numbers) matrix, side by side; those matrices, by group index."""
    full, shared = list(full), {}
    for n, g in enumerate(groups):
        if len(g) > 1:
            shared[n] = torch.cat([full[i].reshape(full[i].shape[0], -1) for i in g], 1)
            for i, view in zip(g, _views(shared[n], [full[i] for i in g])):
                full[i] = view
    return full, shared


def _band_rows(groups: list[list[int]], shared: dict[int, Tensor], full: list[Tensor], grads: list[Tensor]
               ) -> tuple[list[Tensor], list[Tensor]]:
    """The stacks and, per group, the (images, numbers) matrix the band's algebra works on, from
    the first step's gradients: a shared matrix, or a parameter's stack in the memory order of its
    gradient (a copy in that order where it differs, e.g. the transposed weight gradients of a
    batched linear layer), so that updates run over contiguous memory."""
    full = list(full)
    rows = []
    for n, g in enumerate(groups):
        if n in shared:
            rows.append(shared[n])
            continue
        i = g[0]
        if full[i][1:-1].stride() != grads[i].stride():
            full[i] = _laid_out_like(full[i], grads[i])
        row = band_algebra.rows_of(full[i])
        if row.data_ptr() != full[i].data_ptr():  # a copy, not the band
            full[i] = full[i].contiguous()
            row = full[i].reshape(full[i].shape[0], -1)
        rows.append(row)
    return full, rows


def _band_grads(groups: list[list[int]], shared: dict[int, Tensor], full: list[Tensor], grads: list[Tensor],
                gathered: dict[int, Tensor]) -> list[Tensor]:
    """The gradients as the band's algebra takes them, per group: a shared matrix's members
    gathered side by side into a buffer of ``gathered`` (made at the first step, reused), or a
    parameter's gradient as an (images, numbers) matrix in its stack's layout."""
    out = []
    for n, g in enumerate(groups):
        if n in shared:
            if n not in gathered:
                gathered[n] = torch.empty_like(shared[n][1:-1])
            out.append(torch.cat([grads[i].reshape(grads[i].shape[0], -1) for i in g], 1, out=gathered[n]))
        else:
            out.append(band_algebra.rows_of(grads[g[0]], like=full[g[0]]))
    return out


def _views(flat: Tensor, full: list[Tensor]) -> list[Tensor]:
    """Per parameter, the columns of ``flat`` that hold it, shaped as its stack in ``full``."""
    out, at = [], 0
    for f in full:
        k = f[0].numel()
        out.append(flat[:, at:at + k].unflatten(1, f.shape[1:]) if f.dim() > 1 else flat[:, at])
        at += k
    return out


def _bind(images: list[ParamVector], pnames: list[str], full: list[Tensor]) -> None:
    """Make the interior images views of the rows of the stacks ``full``."""
    for i in range(1, len(images) - 1):
        images[i] = ParamVector._wrap(list(pnames), [f[i] for f in full])


def _laid_out_like(f: Tensor, g: Tensor) -> Tensor:
    """A copy of the stack ``f`` with the memory layout of the gradient ``g``, or ``f`` itself
    where ``g`` is contiguous or its images are not its outermost dimension."""
    order = sorted(range(g.dim()), key=lambda k: g.stride(k), reverse=True)
    if g.is_contiguous() or order[0] != 0:
        return f
    inverse = sorted(range(len(order)), key=order.__getitem__)
    like = torch.empty([f.shape[k] for k in order], dtype=f.dtype, device=f.device).permute(inverse)
    return like.copy_(f)


def _forces(engine: Engine, ranks: Ranks, band: _Band, full: list[Tensor], part: Part
            ) -> tuple[list[float], list[Tensor]]:
    """Every image's loss on this step's batch and, per parameter, the interior images'
    gradients stacked (zeros where a parameter is unused), summed over the ranks that share
    the data in one reduction. The losses are summed as float64, so that every rank reads the
    same energies. The interior images go through one batched model call or one call each,
    as ``band.batched`` says (None: measured here, on the first batch this rank holds)."""
    n = full[0].shape[0]

    def local() -> list[Tensor]:
        if part.batch is None:
            return [torch.zeros(n, dtype=torch.float64)] + [torch.zeros_like(f[1:-1]) for f in full]
        if band.batched is None:
            band.batched = _batching_pays(engine, full, part)
        if band.batched:
            out = _forces_batched(engine, full, part)
            if out is not None:
                return out
            band.batched = False                  # the model cannot be batched: one call per image from now on
        return _forces_each(engine, full, part)
    summed, *grads = ranks.all_sum(local, "an AutoNEB step")      # engine.ranks(), once per cycle
    return summed.tolist(), grads


def _batching_pays(engine: Engine, full: list[Tensor], part: Part) -> bool:
    """Whether one batched call for the interior images (:func:`_forces_batched`) is faster
    than one call each on this batch: each way timed twice, alternately, the faster of each
    pair's runs compared (the first batched call also pays vmap's set-up)."""
    sync = torch.cuda.synchronize if full[0].device.type == "cuda" else (lambda: None)
    best = {True: math.inf, False: math.inf}
    for batched in (True, False, True, False):
        sync()
        t0 = time.perf_counter()
        if batched:
            if _forces_batched(engine, full, part) is None:
                return False
        else:
            _forces_each(engine, full, part)
        sync()
        best[batched] = min(best[batched], time.perf_counter() - t0)
    return best[True] < best[False]


def _forces_batched(engine: Engine, full: list[Tensor], part: Part) -> list[Tensor] | None:
    """:func:`_forces`' local part in one batched model call (:meth:`Engine.fit_losses`):
    energies, stacked gradients; None where the model or loss cannot be batched. Small images:
    the ends ride in the same call (a call costs more than their gradients); large ones: the
    ends' losses without a graph, two more calls."""
    n = full[0].shape[0]
    ends_inside = sum(f[0].numel() for f in full) <= band_algebra.SMALL
    leaves = [(f if ends_inside else f[1:-1]).detach().requires_grad_(True) for f in full]
    with torch.enable_grad():
        losses = engine.fit_losses(leaves, part)
        g: Sequence[Tensor | None] = (None,) * len(leaves)
        try:
            if losses is not None and losses.requires_grad:
                g = torch.autograd.grad((losses[1:-1] if ends_inside else losses).sum(), leaves, allow_unused=True)
        except RuntimeError as exc:               # e.g. a fused kernel vmap chose that has no derivative
            if type(exc) is not RuntimeError:
                raise
            return None
    if losses is None:
        return None
    inner = [f[1:-1] for f in full]
    if ends_inside:
        energies = losses.detach().double()
        g = [None if gi is None else gi[1:-1] for gi in g]
    else:
        with torch.no_grad():
            ends = [engine.fit_loss([f[i] for f in full], part).reshape(1) for i in (0, n - 1)]
        energies = torch.cat([ends[0], losses.detach(), ends[1]]).double()
    return [energies] + [torch.zeros_like(p) if gi is None else gi for p, gi in zip(inner, g)]


def _forces_each(engine: Engine, full: list[Tensor], part: Part) -> list[Tensor]:
    """:func:`_forces`' local part, one model call per image: energies, stacked gradients."""
    n = full[0].shape[0]
    energies: list[Tensor] = []
    grads: list[list[Tensor]] = []
    for i in range(n):
        params = [f[i] for f in full]
        if i in (0, n - 1):
            with torch.no_grad():
                energies.append(engine.fit_loss(params, part).detach().double().reshape(1))
            continue
        leaves = [p.detach().requires_grad_(True) for p in params]
        with torch.enable_grad():
            loss = engine.fit_loss(leaves, part)
            g = torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad else (None,) * len(leaves)
        energies.append(loss.detach().double().reshape(1))
        grads.append([torch.zeros_like(p) if gi is None else gi for p, gi in zip(leaves, g)])
    return [torch.cat(energies)] + [torch.stack(gs) for gs in zip(*grads)]
