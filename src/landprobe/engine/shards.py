"""How a probe spreads over the ranks of ``torch.distributed``: its points, its data, or both.

:class:`Sharding` is what the user asks for; :class:`Ranks` is what it means at the moment
of a call (this rank's place in the data group and among the teams that split the points),
and carries every collective the engine issues. Each collective is preceded by a status
exchange, so an exception on one rank (in the user's loss, say) is raised on every rank,
naming the rank and the error, instead of leaving the others waiting; and each waits at
most ``Sharding.timeout`` seconds.

Data sharding keeps the one-process numbers: a pass over the data gives each batch to one
rank (batch i to data rank i mod W) or, with ``split="given"``, takes each rank's data as its
own shard; the per-batch losses and sample counts are summed into place across the ranks,
so every rank holds the one-process :class:`~landprobe.engine.Evaluation`. A fit step splits
its batch's samples across the ranks and sums the sample-weighted gradients.

Example:
    >>> from landprobe.engine.shards import Sharding
    >>> ranks = Sharding(data=True).resolve([])             # no process group: one process
    >>> ranks.data_world, ranks.teams, ranks.points(5)
    (1, 1, [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import datetime
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from landprobe.common.distributed import rank_and_world

__all__ = ["Sharding", "Ranks", "Part", "RankFailedError", "SPLITS"]

SPLITS = ("auto", "engine", "given")


class RankFailedError(RuntimeError):
    """Another rank raised during a probe (or did not answer within the timeout).

    Example:
        >>> from landprobe.engine.shards import RankFailedError
        >>> issubclass(RankFailedError, RuntimeError)
        True
    """


class Sharding:
    """How a probe uses the ranks of ``torch.distributed`` (without a process group: one process).

    Args:
        data: ``False`` (default): every rank passes over all the data and the *points* of a
            sweep (``interpolate``, ``plane``, ``perturb``'s repeats) are split across ranks.
            ``True``: the ranks share every pass over the *data* (each takes part of it, the
            sums are reduced), so one probe runs at the speed of all ranks; points are not
            split. A ``ProcessGroup``: data shared within that group, points split across the
            groups (e.g. ``torch.distributed.new_subgroups(2)``'s own group: 4 ranks = 2 teams
            of 2).
        split: where a rank's share of the data comes from. ``"engine"``: every rank passes
            the same data and the engine splits it (batch i to data rank i mod W; a fit step's
            batch split by samples). ``"given"``: each rank's data is already its own shard
            (e.g. a DataLoader with a ``DistributedSampler``). ``"auto"`` (default): ``"given"``
            for a DataLoader with a ``DistributedSampler``, ``"engine"`` otherwise.
        timeout: seconds a rank waits for the others at one collective before raising
            :class:`RankFailedError`.

    Example:
        >>> import torch, landprobe as lp
        >>> probe = lp.LandscapeProbe(torch.nn.Linear(1, 1), torch.nn.MSELoss(),
        ...                           [(torch.ones(4, 1), torch.zeros(4, 1))], sharding=lp.Sharding(data=True))
        >>> probe.engine.sharding
        Sharding(data=True, split='auto', timeout=1800.0)
    """

    def __init__(self, data: bool | Any = False, *, split: str = "auto", timeout: float = 1800.0):
        if not isinstance(data, bool) and not _is_group(data):
            raise TypeError(f"Sharding(data=...): expected True, False or a torch.distributed ProcessGroup, "
                            f"got {type(data).__name__}")
        if split not in SPLITS:
            raise ValueError(f"Sharding(split={split!r}); expected one of {SPLITS}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"Sharding(timeout={timeout!r}); expected a positive number of seconds")
        self.data, self.split, self.timeout = data, split, float(timeout)
        self._teams: dict[int, tuple[int, int]] = {}

    def __repr__(self) -> str:
        data = self.data if isinstance(self.data, bool) else "<ProcessGroup>"
        return f"Sharding(data={data}, split={self.split!r}, timeout={self.timeout})"

    def resolve(self, data: Any) -> Ranks:
        """This rank's place for one call over ``data`` (checked against the split)."""
        rank, world = rank_and_world()
        sampler = _distributed_sampler(data)
        if world == 1:
            return Ranks(None, 0, 1, 0, 1, False, self.timeout)
        if self.data is False:
            if sampler is not None:
                raise ValueError(
                    "data is a DataLoader with a DistributedSampler, so each rank holds only its shard, but the "
                    "probe treats each rank's data as the whole data set (Sharding(data=False), the default); pass "
                    "sharding=landprobe.Sharding(data=True) to share the passes, or an unsharded DataLoader")
            return Ranks(None, 0, 1, rank, world, False, self.timeout)
        group = None if self.data is True else self.data
        d = torch.distributed
        data_rank = d.get_rank(group) if group is not None else rank
        if data_rank < 0:
            raise ValueError(f"Sharding(data=<ProcessGroup>): rank {rank} is not a member of the group; pass "
                             f"each rank its own group (e.g. the first value of torch.distributed.new_subgroups())")
        data_world = d.get_world_size(group) if group is not None else world
        team, teams = (0, 1) if group is None else self._team(group, data_rank, rank)
        given = self.split == "given" or (self.split == "auto" and sampler is not None)
        ranks = Ranks(group, data_rank, data_world, team, teams, given, self.timeout)
        _check_split(data, sampler, ranks)
        return ranks

    def _team(self, group: Any, data_rank: int, rank: int) -> tuple[int, int]:
        key = id(group)
        if key not in self._teams:
            leader = torch.distributed.get_global_rank(group, 0)
            world = Ranks(None, rank, rank_and_world()[1], 0, 1, False, self.timeout)
            leaders = sorted(set(world.gather(lambda: leader, "sharding teams")))
            self._teams[key] = (leaders.index(leader), len(leaders))
        return self._teams[key]


def _is_group(obj: Any) -> bool:
    d = torch.distributed
    return d.is_available() and isinstance(obj, d.ProcessGroup)


def _distributed_sampler(data: Any) -> Any:
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    if not isinstance(data, DataLoader):
        return None
    for s in (data.sampler, getattr(data.batch_sampler, "sampler", None)):
        if isinstance(s, DistributedSampler):
            return s
    return None


def _check_split(data: Any, sampler: Any, ranks: Ranks) -> None:
    from torch.utils.data import DataLoader, RandomSampler

    if ranks.given:
        if sampler is None:
            return
        if sampler.num_replicas != ranks.data_world or sampler.rank != ranks.data_rank:
            raise ValueError(
                f"the DataLoader's DistributedSampler splits the data for rank {sampler.rank} of "
                f"{sampler.num_replicas}, but this rank is {ranks.data_rank} of {ranks.data_world} in the data group; "
                f"build it with num_replicas and rank of the group the Sharding shares the data in")
        if not sampler.drop_last and sampler.total_size > len(sampler.dataset):
            raise ValueError(
                f"the DataLoader's DistributedSampler repeats {sampler.total_size - len(sampler.dataset)} sample(s) "
                f"to even out {len(sampler.dataset)} samples over {sampler.num_replicas} ranks, which would count "
                f"them twice; pass every rank the same unsharded DataLoader (the engine splits it without repeats)")
        return
    if isinstance(data, DataLoader) and isinstance(data.sampler, RandomSampler):
        raise ValueError(
            "a shuffling DataLoader (shuffle=True) draws its own order on each rank, but Sharding splits the "
            "batches by position; pass shuffle=False, or give each rank its shard with a DistributedSampler")


@dataclass
class Part:
    """This rank's part of one fit step's batch: the prepared batch (``None`` when this rank has
    no samples of it), its sample count, and its weight (its samples / the batch's samples).

    Example:
        >>> import torch
        >>> from landprobe.engine.shards import Ranks
        >>> batch = (torch.arange(5.0).reshape(5, 1), torch.zeros(5, 1))
        >>> part = Ranks(None, 1, 2, 0, 1, False, 60.0).part(batch, 5, step=0, sliceable=True)
        >>> part.batch[0].flatten().tolist(), part.samples, part.weight     # data rank 1 of 2: rows 2..4
        ([2.0, 3.0, 4.0], 3, 0.6)
    """

    batch: Any
    samples: int
    weight: float


@dataclass
class Ranks:
    """One call's layout: the data group (``None``: the world), this rank's place in it, the
    team of ranks that takes a share of the points, and the collectives, each with the
    status exchange and the timeout.

    Example:
        >>> from landprobe.engine.shards import Ranks
        >>> one = Ranks(None, 0, 1, 0, 1, False, 60.0)
        >>> one.all_sum(lambda: [torch.ones(2)])[0].tolist(), one.owns(3), one.slot(3)
        ([1.0, 1.0], True, 3)
    """

    group: Any
    data_rank: int
    data_world: int
    team: int
    teams: int
    given: bool
    timeout: float

    @property
    def sharded(self) -> bool:
        """Whether passes over the data are shared with other ranks."""
        return self.data_world > 1

    # ------------------------------------------------------------------ who does what
    def points(self, n: int) -> list[int]:
        """The indices of ``n`` points this rank's team evaluates (point i on team i mod teams)."""
        return list(range(self.team, n, self.teams))

    def owns(self, i: int) -> bool:
        """Whether batch ``i`` of a pass is this rank's (always with ``split="given"``)."""
        return self.given or i % self.data_world == self.data_rank

    def slot(self, i: int) -> int:
        """The place of this rank's batch ``i`` among all the ranks' batches of a pass (its
        position in the data with the engine's split; rank-interleaved with a given one)."""
        return i * self.data_world + self.data_rank if self.given else i

    def part(self, batch: Any, n: int, step: int, sliceable: bool) -> Part:
        """This rank's part of a fit step's prepared batch of ``n`` samples (engine split): a
        contiguous slice of the samples when ``sliceable``, else the whole batch on data rank
        ``step mod W``."""
        w = self.data_world
        if w == 1:
            return Part(batch, n, 1.0)
        if not sliceable:
            mine = step % w == self.data_rank
            return Part(batch if mine else None, n if mine else 0, 1.0 if mine else 0.0)
        lo, hi = self.data_rank * n // w, (self.data_rank + 1) * n // w
        if hi == lo:
            return Part(None, 0, 0.0)
        return Part(slice_batch(batch, lo, hi), hi - lo, (hi - lo) / n)

    # ------------------------------------------------------------------ collectives
    def all_sum(self, compute: Callable[[], Sequence[Tensor]], what: str = "a probe") -> list[Tensor]:
        """``compute()``'s tensors summed over the data group (same shapes on every rank).

        An exception in ``compute`` on any rank is raised on every rank. ``compute`` must not
        issue collectives itself (nor call another ``all_sum``): a rank failing inside it would
        leave the others waiting at that inner collective until the timeout. Without data
        sharding it returns ``compute()`` as it is."""
        if not self.sharded:
            return list(compute())
        tensors = self._guarded(compute, what)
        flat = self._flat(tensors)
        self._header(flat.numel(), what, expect_equal=True)
        self._wait(torch.distributed.all_reduce(flat, group=self.group, async_op=True), what)
        return self._unflat(flat, tensors)

    def all_sum_rows(self, compute: Callable[[], Tensor], what: str = "a probe") -> Tensor:
        """``compute()``'s ``(rows, m)`` float64 table summed over the data group, the shorter
        tables padded with zero rows: per-batch sums whose batches sit in different ranks."""
        if not self.sharded:
            return compute()
        table = self._guarded(lambda: [compute()], what)[0]
        m = table.shape[1]
        rows = self._header(table.shape[0], what, expect_equal=False)
        full = torch.zeros(rows, m, dtype=torch.float64, device=self._device())
        full[: table.shape[0]] = table.to(full.device, torch.float64)
        self._wait(torch.distributed.all_reduce(full, group=self.group, async_op=True), what)
        return full.cpu()

    def gather(self, compute: Callable[[], Any], what: str = "a probe", world: bool = True) -> list[Any]:
        """Every rank's picklable ``compute()`` (over the world, or over the data group)."""
        d = torch.distributed
        if not (d.is_available() and d.is_initialized()) or (not world and not self.sharded):
            return [compute()]
        group = None if world else self.group
        try:
            payload, failed = pickle.dumps(compute()), None
        except Exception as exc:        # noqa: BLE001 - reported to every rank below
            payload, failed = pickle.dumps(_failure(exc)), exc
        size = torch.tensor([len(payload)], dtype=torch.int64, device=self._device(group))
        n = d.get_world_size(group)
        sizes = [torch.zeros_like(size) for _ in range(n)]
        self._wait(d.all_gather(sizes, size, group=group, async_op=True), what)
        longest = int(max(int(s) for s in sizes))
        buf = torch.zeros(longest, dtype=torch.uint8, device=size.device)
        buf[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(size.device)
        bufs = [torch.zeros_like(buf) for _ in range(n)]
        self._wait(d.all_gather(bufs, buf, group=group, async_op=True), what)
        items = [pickle.loads(b[: int(s)].cpu().numpy().tobytes()) for b, s in zip(bufs, sizes)]
        if failed is not None:
            raise failed
        for r, item in enumerate(items):
            if isinstance(item, _Failure):
                raise RankFailedError(f"rank {r} raised during {what}: {item.message}")
        return items

    def merge(self, compute: Callable[[], dict[Any, Any]], what: str = "a sweep") -> dict[Any, Any]:
        """The teams' ``{point: result}`` dicts (``compute()`` on every rank) merged on every rank."""
        if self.teams == 1:
            return compute()

        def mine() -> dict[Any, Any]:
            out = compute()
            return out if self.data_rank == 0 else {}
        merged: dict[Any, Any] = {}
        for part in self.gather(mine, what):
            merged.update(part)
        return merged

    # ------------------------------------------------------------------ internals
    def _device(self, group: Any = "data") -> torch.device:
        d = torch.distributed
        backend = d.get_backend(self.group if group == "data" else group)
        if str(backend) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _guarded(self, compute: Callable[[], Sequence[Tensor]], what: str) -> list[Tensor]:
        try:
            return list(compute())
        except Exception as exc:
            self._header(0, what, failure=exc)
            raise

    def _header(self, size: int, what: str, failure: BaseException | None = None, expect_equal: bool = False) -> int:
        """Exchange (failed, size): raise on every rank if one failed; the largest size."""
        d = torch.distributed
        h = torch.tensor([0 if failure is None else 1, size, -size], dtype=torch.int64, device=self._device())
        self._wait(d.all_reduce(h, op=d.ReduceOp.MAX, group=self.group, async_op=True), what)
        if int(h[0]):
            messages = self.gather(lambda: None if failure is None else _failure(failure).message, what, world=False)
            if failure is not None:
                return 0
            bad = [(r, m) for r, m in enumerate(messages) if m is not None]
            raise RankFailedError("; ".join(f"data rank {r} raised during {what}: {m}" for r, m in bad))
        if expect_equal and int(h[1]) != -int(h[2]):
            raise RankFailedError(f"ranks disagree on the size of a reduction during {what} ({-int(h[2])} to "
                                  f"{int(h[1])} values): do all ranks run the same probe on the same model?")
        return int(h[1])

    def _wait(self, work: Any, what: str) -> None:
        try:
            work.wait(timeout=datetime.timedelta(seconds=self.timeout))
        except RuntimeError as exc:
            raise RankFailedError(
                f"no answer from the other ranks within {self.timeout:g} s during {what} ({exc}): a rank failed "
                f"outside a probe, or the ranks run different probes or different data") from exc

    def _flat(self, tensors: list[Tensor]) -> Tensor:
        dev = self._device()
        if not tensors:
            return torch.zeros(0, dtype=torch.float64, device=dev)
        return torch.cat([t.detach().reshape(-1).to(dev, torch.float64) for t in tensors])

    @staticmethod
    def _unflat(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
        out, i = [], 0
        for t in like:
            out.append(flat[i:i + t.numel()].reshape(t.shape).to(t.device, t.dtype))
            i += t.numel()
        return out


@dataclass
class _Failure:
    message: str


def _failure(exc: BaseException) -> _Failure:
    return _Failure(f"{type(exc).__name__}: {exc}")


def slice_batch(batch: Any, lo: int, hi: int) -> Any:
    """Samples ``lo:hi`` of a prepared batch: every tensor sliced along its first dimension."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t[lo:hi] if isinstance(t, Tensor) else t, batch)


def sliceable(batch: Any, n: int) -> bool:
    """Whether every tensor of a batch has ``n`` rows (so a slice of rows is a slice of samples)."""
    from torch.utils._pytree import tree_leaves

    leaves = [t for t in tree_leaves(batch) if isinstance(t, Tensor)]
    return bool(leaves) and all(t.dim() >= 1 and t.shape[0] == n for t in leaves)


def owned_rounds(items: Iterable[Any], width: int) -> Iterable[list[Any]]:
    """``items`` in consecutive rounds of ``width`` (the last one shorter)."""
    buf: list[Any] = []
    for it in items:
        buf.append(it)
        if len(buf) == width:
            yield buf
            buf = []
    if buf:
        yield buf
