"""Training trajectories: record snapshots in the user's loop, then PCA (Li et al.) or MDS (Liao & Poggio).

A :class:`TrajectoryRecorder` keeps snapshots of the parameters every ``every`` optimizer
steps with bounded memory (thinning, or spilling to disk). :meth:`TrajectoryRecorder.pca`
finds the two directions that explain most of the path relative to its final point
(Li et al. 2018, §7), usable as ``probe.plane(pca.center, directions=pca.directions)``;
:meth:`TrajectoryRecorder.mds` embeds the snapshots in 2-D from their pairwise distances
(classical MDS, as Liao & Poggio 2017 draw training paths).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landprobe.common.io import atomic_torch_save, load_torch
from landprobe.common.results import Result, require_matplotlib
from landprobe.params import ParamVector, Selector, as_param_vector, select

__all__ = ["TrajectoryRecorder", "TrajectoryPCA", "TrajectoryMDS", "classical_mds"]

_FILE = re.compile(r"^snapshot_(\d+)\.pt$")


# --------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class TrajectoryPCA(Result):
    """A training path seen in the plane of its two (or ``k``) principal directions.

    Attributes:
        steps: Training step of each snapshot (float64 array, increasing).
        coords: ``(n, k)`` coordinates of θ_i − θ_final along the directions (least-squares
            projection, as Li et al.'s ``project_2D``); the final point is the origin.
        explained_variance_ratio: Share of the variance (of the centered snapshot matrix, or
            of the uncentered one with ``centered=False``) each direction explains.
        singular_values: The corresponding singular values of that matrix.
        settings: k, centered, subnet, number of snapshots, parameter count, ...
        directions: The ``k`` orthonormal directions as :class:`ParamVector` over the model's
            parameters (zero outside the recorded subnet), in memory only (not in the JSON).
        center: The final point θ_final over all parameters, in memory only.

    Example:
        >>> import numpy as np
        >>> from landprobe.probes.trajectory import TrajectoryPCA
        >>> p = TrajectoryPCA(np.arange(3.0), np.array([[2.0, 1.0], [1.0, -1.0], [0.0, 0.0]]),
        ...                   np.array([0.8, 0.2]), np.array([2.0, 1.0]))
        >>> p.span(margin=0.5)                      # the path's box plus 0.5 on every side
        ((-0.5, 2.5), (-1.5, 1.5))
    """

    # checked by Result.from_dict when loading
    _same_length = (("steps", "coords"), ("explained_variance_ratio", "singular_values"))
    steps: np.ndarray
    coords: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    directions: list | None = field(default=None, repr=False)
    center: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("directions", None)
        out.pop("center", None)
        return out

    def span(self, margin: float = 0.2) -> tuple[tuple[float, float], tuple[float, float]]:
        """Ranges ``((xmin, xmax), (ymin, ymax))`` covering the path plus ``margin`` (absolute),
        to pass as ``plane(..., span=...)``."""
        lo, hi = self.coords[:, :2].min(axis=0), self.coords[:, :2].max(axis=0)
        lo, hi = np.minimum(lo, 0.0) - margin, np.maximum(hi, 0.0) + margin
        return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))

    def plot_path(self, ax, *, color: str = "r", label: str | None = "trajectory", **kwargs):
        """Draw the projected path (first two coordinates) onto ``ax``, e.g. over a plane's contour
        (``ax = surface.plot(); pca.plot_path(ax)``); returns the axes."""
        ax.plot(self.coords[:, 0], self.coords[:, 1], "-o", color=color, ms=3, lw=1, label=label, **kwargs)
        ax.plot([self.coords[0, 0]], [self.coords[0, 1]], "s", color=color, ms=6)
        ax.plot([0.0], [0.0], "*", color=color, ms=10)
        return ax

    def plot(self, ax=None, **kwargs):
        """The path in the plane of the first two directions (matplotlib); returns the axes.

        Example:
            >>> import numpy as np
            >>> p = TrajectoryPCA(np.arange(3.0), np.array([[2.0, 1.0], [1.0, -1.0], [0.0, 0.0]]),
            ...                   np.array([0.8, 0.2]), np.array([2.0, 1.0]))
            >>> p.plot().get_xlabel()
            '1st PCA component: 80.00 %'
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 4.5))
        self.plot_path(ax, **kwargs)
        r = self.explained_variance_ratio
        ax.set_xlabel(f"1st PCA component: {100 * r[0]:.2f} %")
        if len(r) > 1:
            ax.set_ylabel(f"2nd PCA component: {100 * r[1]:.2f} %")
        return ax


@dataclass(frozen=True, eq=False)
class TrajectoryMDS(Result):
    """A 2-D (or ``k``-D) embedding of snapshots that preserves their pairwise distances.

    Attributes:
        steps: Training step of each snapshot.
        coords: ``(n, k)`` classical-MDS coordinates (centered at their mean).
        distances: ``(n, n)`` Euclidean distances between the snapshots' parameters.
        eigenvalues: The top ``k`` eigenvalues of the double-centered squared distances.
        settings: k, subnet, number of snapshots, ...

    ``stress`` is Kruskal's stress-1 of the embedding, √(Σ(d_ij − ‖x_i − x_j‖)² / Σd_ij²):
    0 when the snapshots lie in a ``k``-dimensional plane.

    Example:
        >>> import numpy as np
        >>> from landprobe.probes.trajectory import TrajectoryMDS, classical_mds
        >>> pts = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
        >>> D = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
        >>> x, ev = classical_mds(D, 2)
        >>> m = TrajectoryMDS(np.arange(3.0), x, D, ev)
        >>> round(m.stress, 12), round(float(np.linalg.norm(x[1] - x[2])), 12)   # |(3,0)-(0,4)| = 5
        (0.0, 5.0)
    """

    # checked by Result.from_dict when loading
    _same_length = (("steps", "coords", "distances"),)
    steps: np.ndarray
    coords: np.ndarray
    distances: np.ndarray
    eigenvalues: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def stress(self) -> float:
        emb = np.linalg.norm(self.coords[:, None, :] - self.coords[None, :, :], axis=-1)
        den = float(np.sum(self.distances**2))
        return float(math.sqrt(np.sum((self.distances - emb) ** 2) / den)) if den > 0 else 0.0

    def plot(self, ax=None, *, color: str = "r", **kwargs):
        """The embedded path, first point a square, last a star (matplotlib); returns the axes.

        Example:
            >>> import numpy as np
            >>> m = TrajectoryMDS(np.arange(2.0), np.array([[0.0, 0.0], [1.0, 0.0]]),
            ...                   np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0.5, 0.0]))
            >>> m.plot().get_xlabel()
            'MDS 1'
        """
        plt = require_matplotlib()
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 4.5))
        ax.plot(self.coords[:, 0], self.coords[:, 1], "-o", color=color, ms=3, lw=1, **kwargs)
        ax.plot([self.coords[0, 0]], [self.coords[0, 1]], "s", color=color, ms=6)
        ax.plot([self.coords[-1, 0]], [self.coords[-1, 1]], "*", color=color, ms=10)
        ax.set_xlabel("MDS 1")
        ax.set_ylabel("MDS 2")
        ax.set_title(f"stress {self.stress:.3g}")
        return ax


def classical_mds(distances: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Classical (Torgerson) MDS: coordinates whose Euclidean distances best match ``distances``.

    B = −½·J·D²·J (J the centering matrix); the coordinates are the top ``k`` eigenvectors of
    B scaled by the square roots of their eigenvalues (negative ones, from non-Euclidean
    input, are clipped to 0). Each axis' sign is fixed so that its largest-magnitude entry is
    positive.

    Returns:
        ``(coords, eigenvalues)``: an ``(n, k)`` array and the ``k`` top eigenvalues.

    Raises:
        ValueError: If ``distances`` is not a square, symmetric, finite array or ``k`` < 1.

    Example:
        >>> import numpy as np
        >>> D = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])   # 0, 1, 2 on a line
        >>> x, ev = classical_mds(D, 2)
        >>> np.round(x[:, 0], 12).tolist(), np.round(ev, 12).tolist()
        ([1.0, 0.0, -1.0], [2.0, 0.0])
    """
    D = np.asarray(distances, dtype=np.float64)
    if D.ndim != 2 or D.shape[0] != D.shape[1] or not np.all(np.isfinite(D)) or not np.allclose(D, D.T):
        raise ValueError(f"distances must be a finite symmetric (n, n) array; got shape {D.shape}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}; expected an integer >= 1 (embedding dimensions)")
    n = D.shape[0]
    J = np.eye(n) - 1.0 / n
    B = -0.5 * J @ (D**2) @ J
    vals, vecs = np.linalg.eigh((B + B.T) / 2)
    order = np.argsort(vals)[::-1][:k]
    vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
    if k > n:
        vals = np.concatenate([vals, np.zeros(k - n)])
        vecs = np.concatenate([vecs, np.zeros((n, k - n))], axis=1)
    coords = vecs * np.sqrt(vals)
    for j in range(coords.shape[1]):
        i = int(np.argmax(np.abs(coords[:, j])))
        if coords[i, j] < 0:
            coords[:, j] *= -1
    return coords, vals


# --------------------------------------------------------------------------- recorder
class TrajectoryRecorder:
    """Record snapshots of a model's parameters during training, with bounded memory.

    Call :meth:`step` after each ``optimizer.step()``; every ``every`` calls a snapshot of
    the recorded parameters (all, or a ``subnet``) is copied to the CPU. The starting point
    is recorded at construction (step 0) unless ``record_initial=False``.

    Bounded memory: when more than ``max_snapshots`` are held in memory,

    * without ``directory``, the trajectory is *thinned*: every other snapshot is dropped
      (the first and the newest are kept) and ``every`` doubles, so the kept snapshots stay
      evenly spaced and memory stays below ``max_snapshots + 1`` snapshots;
    * with ``directory``, the oldest in-memory snapshots are *spilled* to
      ``directory/snapshot_<step>.pt`` (atomic ``torch.save`` of ``{"step": int, "tensors":
      {name: tensor}}``, loadable with ``torch.load(..., weights_only=True)``) and read back
      when needed. :meth:`flush` writes all of them; :meth:`from_directory` reloads a run.

    Args:
        model: The model being trained (its parameters are read, never written).
        every: Snapshot every this many :meth:`step` calls.
        subnet: Selector of the parameters to record (default all).
        max_snapshots: Most snapshots kept in memory (at least 2).
        directory: Folder to spill snapshots to (created if needed), or None to thin.
        record_initial: Take a snapshot of the starting point at construction.

    Example:
        >>> import torch
        >>> from landprobe.probes.trajectory import TrajectoryRecorder
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> rec = TrajectoryRecorder(model, every=2)
        >>> for _ in range(6):
        ...     with torch.no_grad():
        ...         model.weight += 1.0                # stands for optimizer.step()
        ...     _ = rec.step()
        >>> rec.steps                                   # the start, then every 2 steps
        [0, 2, 4, 6]
    """

    def __init__(self, model: nn.Module, every: int = 1, subnet: Selector | None = None,
                 max_snapshots: int = 256, directory: str | os.PathLike | None = None,
                 record_initial: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every={every!r}; expected an integer >= 1 (optimizer steps between snapshots)")
        if not isinstance(max_snapshots, int) or max_snapshots < 2:
            raise ValueError(f"max_snapshots={max_snapshots!r}; expected an integer >= 2 (snapshots held in memory)")
        self.model = model
        self.every = every
        self.subnet = subnet
        self.names = select(model, subnet)
        self.max_snapshots = max_snapshots
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._count = 0
        self._since = 0
        self._mem: list[tuple[int, list[Tensor]]] = []
        self._disk: list[tuple[int, Path]] = []
        if record_initial:
            self.snapshot()

    # ---- recording
    def _params(self) -> list[Tensor]:
        params = dict(self.model.named_parameters())
        return [params[n] for n in self.names]

    def step(self) -> bool:
        """Count one optimizer step; take a snapshot if ``every`` steps have passed. Returns whether it did."""
        self._count += 1
        self._since += 1
        if self._since >= self.every:
            self.snapshot()
            return True
        return False

    def snapshot(self) -> None:
        """Take a snapshot now (at the current step count)."""
        with torch.no_grad():
            tensors = [p.detach().to("cpu", copy=True) for p in self._params()]
        self._since = 0
        if self._mem and self._mem[-1][0] == self._count:
            self._mem[-1] = (self._count, tensors)
        else:
            self._mem.append((self._count, tensors))
        if len(self._mem) > self.max_snapshots:
            if self.directory is None:
                self._thin()
            else:
                self._spill(len(self._mem) - self.max_snapshots)

    def _thin(self) -> None:
        keep = self._mem[::2]
        if keep[-1] is not self._mem[-1]:
            keep.append(self._mem[-1])
        self._mem = keep
        self.every *= 2

    def _path(self, step: int) -> Path:
        return self.directory / f"snapshot_{step:09d}.pt"

    def _spill(self, n: int) -> None:
        for step, tensors in self._mem[:n]:
            path = self._path(step)
            atomic_torch_save({"step": step, "tensors": dict(zip(self.names, tensors))}, path)
            self._disk.append((step, path))
        self._mem = self._mem[n:]

    def flush(self) -> None:
        """Write every in-memory snapshot to ``directory`` (they stay readable from there).

        Raises:
            ValueError: If the recorder has no ``directory``.
        """
        if self.directory is None:
            raise ValueError("flush() needs a directory: TrajectoryRecorder(model, directory='runs/traj')")
        self._spill(len(self._mem))

    @classmethod
    def from_directory(cls, model: nn.Module, directory: str | os.PathLike, subnet: Selector | None = None,
                       max_snapshots: int = 256) -> TrajectoryRecorder:
        """A recorder over the snapshots a previous run spilled to ``directory`` (nothing new recorded).

        Raises:
            ValueError: If the folder has no ``snapshot_*.pt`` file, or the files' tensors do not
                match the model's (sub)net.
        """
        rec = cls(model, every=1, subnet=subnet, max_snapshots=max_snapshots, directory=directory,
                  record_initial=False)
        files = sorted((int(m.group(1)), rec.directory / f) for f in os.listdir(rec.directory)
                       if (m := _FILE.match(f)))
        if not files:
            raise ValueError(f"no snapshot_*.pt file in {str(directory)!r}; record with "
                             f"TrajectoryRecorder(model, directory=...) and call flush() at the end")
        first = rec._load(files[0][1])
        if list(first) != rec.names:
            raise ValueError(f"snapshots in {str(directory)!r} hold {list(first)[:4]}..., the model's "
                             f"{'subnet ' + repr(subnet) if subnet is not None else 'parameters'} are "
                             f"{rec.names[:4]}...: pass the same model and subnet as when recording")
        rec._disk = files
        rec._count = files[-1][0]
        return rec

    # ---- reading
    @property
    def steps(self) -> list[int]:
        """The step of each recorded snapshot, in order."""
        return [s for s, _ in self._disk] + [s for s, _ in self._mem]

    def __len__(self) -> int:
        return len(self._disk) + len(self._mem)

    def _load(self, path: Path) -> dict[str, Tensor]:
        obj = load_torch(path, map_location="cpu")
        return obj["tensors"]

    def _get(self, i: int) -> list[Tensor]:
        if i < len(self._disk):
            d = self._load(self._disk[i][1])
            return [d[n] for n in self.names]
        return self._mem[i - len(self._disk)][1]

    def snapshots(self):
        """Iterate over ``(step, ParamVector)`` pairs (CPU tensors), oldest first."""
        for i, step in enumerate(self.steps):
            yield step, ParamVector(dict(zip(self.names, self._get(i))))

    def _final(self, final: Any) -> tuple[list[Tensor], ParamVector]:
        """θ_final over the recorded names (CPU float64) and over all parameters (model's dtype/device)."""
        all_names = select(self.model, None)
        full = as_param_vector(self.model if final is None else final, self.model, names=all_names, what="final")
        full = full.clone()
        return [full[n].detach().to("cpu", torch.float64) for n in self.names], full

    def _gram(self, ref: list[Tensor]) -> np.ndarray:
        """G_ij = <θ_i − ref, θ_j − ref> in float64.

        Works tensor by tensor (one float64 ``(block, numel)`` matrix at a time) over blocks of
        ``max_snapshots`` snapshots, so a spilled trajectory is read two blocks at a time.
        """
        n = len(self)
        B = self.max_snapshots
        G = np.zeros((n, n))
        blocks = [list(range(s, min(s + B, n))) for s in range(0, n, B)]

        def mat(snaps, p):
            return torch.stack([t[p].reshape(-1) for t in snaps]).double() - ref[p].reshape(1, -1)

        for bi, rows in enumerate(blocks):
            A = [self._get(i) for i in rows]
            for bj in range(bi, len(blocks)):
                cols = blocks[bj]
                C = A if bj == bi else [self._get(i) for i in cols]
                for p in range(len(ref)):
                    X = mat(A, p)
                    Y = X if bj == bi else mat(C, p)
                    G[np.ix_(rows, cols)] += (X @ Y.T).numpy()
        iu = np.triu_indices(n, 1)
        G[(iu[1], iu[0])] = G[iu]
        return G

    def _check(self, k: int, need: int = 2) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k={k!r}; expected an integer >= 1 (number of directions)")
        if len(self) < need:
            raise ValueError(f"the trajectory has {len(self)} snapshot(s); at least {need} are needed: call "
                             f"rec.step() after each optimizer.step() (every={self.every})")

    def pca(self, final: Any = None, k: int = 2, *, centered: bool = True) -> TrajectoryPCA:
        """Principal directions of the path relative to its final point (Li et al. 2018, §7).

        Builds M with rows θ_i − θ_final (one per snapshot), optionally centers its columns
        (PCA proper, as Li et al.'s code does with scikit-learn; ``centered=False`` takes the
        SVD of M itself), and takes the top ``k`` right singular vectors as directions. The
        SVD comes from the n×n Gram matrix (float64, eigh), built one parameter tensor at a
        time, so no n×P matrix is formed beyond the snapshots the recorder holds. Each
        snapshot's coordinates are the least-squares projection of θ_i − θ_final onto the
        directions.

        Args:
            final: θ_final: a state_dict, module or ParamVector; ``None`` takes the model's
                current parameters (the end of training).
            k: Number of directions.
            centered: Center the columns of M before the SVD (PCA).

        Returns:
            A :class:`TrajectoryPCA`. ``directions`` are ParamVectors over all parameters of
            the model (zero outside the recorded subnet) and ``center`` is θ_final, so
            ``probe.plane(pca.center, directions=pca.directions[:2], span=pca.span())``
            draws the landscape under the path. Each direction's sign makes its
            largest-magnitude coordinate positive; directions beyond the path's rank (explained
            variance below 1e-10 of the first) are zero vectors.

        Raises:
            ValueError: With fewer than 2 snapshots, ``k`` < 1, or a path of zero extent.

        Example:
            >>> import torch
            >>> from landprobe.probes.trajectory import TrajectoryRecorder
            >>> model = torch.nn.Linear(2, 1, bias=False)
            >>> _ = torch.nn.init.zeros_(model.weight)
            >>> rec = TrajectoryRecorder(model, every=1)
            >>> for _ in range(3):
            ...     with torch.no_grad():
            ...         model.weight += torch.tensor([[3.0, 4.0]])     # a straight path
            ...     _ = rec.step()
            >>> pca = rec.pca(k=1)
            >>> pca.coords[:, 0].round(9).tolist(), pca.explained_variance_ratio.round(9).tolist()   # 5 per step
            ([15.0, 10.0, 5.0, 0.0], [1.0])
            >>> pca.directions[0]["weight"]                  # unit length; points back to the start
            tensor([[-0.6000, -0.8000]])
        """
        self._check(k)
        ref, full = self._final(final)
        n = len(self)
        G = self._gram(ref)
        if centered:
            J = np.eye(n) - 1.0 / n
            Gc = J @ G @ J
        else:
            J, Gc = np.eye(n), G
        vals, vecs = np.linalg.eigh((Gc + Gc.T) / 2)
        order = np.argsort(vals)[::-1]
        vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
        total = float(vals.sum())
        if not total > 0:
            raise ValueError("the trajectory has zero extent (every snapshot is the same point" +
                             (")" if centered else " as final)") + "; nothing to find directions of")
        kk = min(k, n)
        sv = np.sqrt(vals[:kk])
        keep = vals[:kk] > vals[0] * 1e-10                # numerically null directions are left at zero
        # direction j = (J M)^T u_j / s_j = M^T (J u_j) / s_j: accumulate over the snapshots
        W = np.zeros((n, kk))
        W[:, keep] = (J @ vecs[:, :kk][:, keep]) / sv[keep]
        P = G @ W                                          # <θ_i − θ_final, d_j>
        for j in range(kk):                                # sign: largest-magnitude coordinate positive
            if P[int(np.argmax(np.abs(P[:, j]))), j] < 0:
                W[:, j] *= -1
        dirs = [[torch.zeros(r.shape, dtype=torch.float64) for r in ref] for _ in range(kk)]
        for i in range(n):
            diff = [t.double() - r for t, r in zip(self._get(i), ref)]
            for j in range(kk):
                if W[i, j] != 0.0:
                    torch._foreach_add_(dirs[j], diff, alpha=float(W[i, j]))
        # least-squares projection of θ_i − θ_final onto the directions, (DᵀD)⁻¹ Dᵀ(θ_i − θ_final), via G
        P = G @ W
        DtD = W.T @ G @ W
        coords = np.zeros((n, k))
        if keep.any():
            ks = np.flatnonzero(keep)
            coords[:, ks] = np.linalg.lstsq(DtD[np.ix_(ks, ks)], P[:, ks].T, rcond=None)[0].T
        ratio = np.zeros(k)
        ratio[:kk] = vals[:kk] / total
        svals = np.zeros(k)
        svals[:kk] = sv
        params = dict(self.model.named_parameters())
        directions = []
        for j in range(k):
            d = {}
            for n_ in full.names:
                t = params[n_]
                if j < kk and n_ in self.names:
                    d[n_] = dirs[j][self.names.index(n_)].to(device=t.device, dtype=t.dtype)
                else:
                    d[n_] = torch.zeros_like(t, memory_format=torch.contiguous_format).detach()
            directions.append(ParamVector(d))
        steps = np.asarray(self.steps, dtype=np.float64)
        settings = {"probe": "trajectory_pca", "k": k, "centered": centered, "snapshots": n,
                    "subnet": self.subnet if isinstance(self.subnet, (str, type(None))) else self.names,
                    "parameters": int(sum(r.numel() for r in ref)), "model": type(self.model).__name__}
        return TrajectoryPCA(steps=steps, coords=coords, explained_variance_ratio=ratio, singular_values=svals,
                             settings=settings, directions=directions, center=full)

    def distances(self) -> np.ndarray:
        """``(n, n)`` Euclidean distances between the snapshots (float64)."""
        self._check(1, need=1)
        G = self._gram([t.double() for t in self._get(len(self) - 1)])
        d = np.diag(G)
        return np.sqrt(np.maximum(d[:, None] + d[None, :] - 2 * G, 0.0))

    def mds(self, k: int = 2) -> TrajectoryMDS:
        """Classical MDS of the snapshots from their pairwise distances (Liao & Poggio 2017).

        Args:
            k: Embedding dimensions.

        Returns:
            A :class:`TrajectoryMDS` whose ``coords`` preserve the distances between snapshots
            as well as ``k`` dimensions allow (exactly when the path lies in a ``k``-plane).

        Raises:
            ValueError: With fewer than 2 snapshots or ``k`` < 1.

        Example:
            >>> import torch
            >>> from landprobe.probes.trajectory import TrajectoryRecorder
            >>> model = torch.nn.Linear(2, 1, bias=False)
            >>> rec = TrajectoryRecorder(model)
            >>> with torch.no_grad():
            ...     model.weight += torch.tensor([[3.0, 4.0]])
            >>> _ = rec.step()
            >>> m = rec.mds(k=1)
            >>> float(m.distances[0, 1]), m.coords[:, 0].tolist()          # |(3, 4)| = 5
            (5.0, [2.5, -2.5])
        """
        self._check(k)
        D = self.distances()
        coords, ev = classical_mds(D, k)
        settings = {"probe": "trajectory_mds", "k": k, "snapshots": len(self),
                    "subnet": self.subnet if isinstance(self.subnet, (str, type(None))) else self.names,
                    "model": type(self.model).__name__}
        return TrajectoryMDS(steps=np.asarray(self.steps, dtype=np.float64), coords=coords, distances=D,
                             eigenvalues=ev, settings=settings)
