"""Axis variables: which axes of a traced graph's tensors must be permuted together.

Every axis of every tensor in the graph is a variable of a known length. Operations unify
variables (a linear layer's input features with its weight's columns), fix them (the axes of
the network's inputs and outputs, spatial axes, an axis that is indexed), or refine them: a
concatenation's axis is the sequence of its operands' axes, a flattened ``(C, H, W)`` axis is
``C`` with every unit repeated ``H*W`` times. A refinement only ever restricts the permutations
a variable may take (block-diagonal, or one permutation of ``C`` expanded to blocks), so the
permutations left free always preserve the network's function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Leaf:
    """A stretch of an axis: ``n`` units of the variable ``var``, each ``inner`` entries long."""

    var: int
    n: int
    inner: int

    @property
    def length(self) -> int:
        return self.n * self.inner


class AxisVars:
    """Union-find over axis variables, with fixing (never permuted) and refinement."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.active: list[bool] = []      # touches an activation (not only parameters)
        self.block: list[int] = []        # permutations only within blocks of this many (0: free)
        self.refined: dict[int, list[tuple[int, int]]] = {}   # root -> [(child var, inner)]

    def new(self, n: int, *, fixed: bool = False, active: bool = True) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(n))
        self.fixed.append(fixed or n <= 1)
        self.active.append(active)
        self.block.append(0)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def leaves(self, v: int, inner: int = 1) -> list[Leaf]:
        """The unrefined variables ``v`` consists of, in order."""
        r = self.find(v)
        if r not in self.refined:
            return [Leaf(r, self.size[r], inner)]
        out: list[Leaf] = []
        for child, k in self.refined[r]:
            out.extend(self.leaves(child, inner * k))
        return out

    def fix(self, v: int) -> None:
        for leaf in self.leaves(v):
            self.fixed[leaf.var] = True

    def is_fixed(self, v: int) -> bool:
        return all(self.fixed[leaf.var] for leaf in self.leaves(v))

    def constrain_blocks(self, v: int, block: int) -> None:
        """Permute ``v`` only within consecutive blocks of ``block`` units (GroupNorm's groups)."""
        leaves = self.leaves(v)
        if len(leaves) != 1 or leaves[0].inner != 1:
            self.fix(v)
            return
        r = leaves[0].var
        self.block[r] = block if not self.block[r] else math.gcd(self.block[r], block)

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
        self.active[ra] = self.active[ra] or self.active[rb]
        blocks = [x for x in (self.block[ra], self.block[rb]) if x]
        self.block[ra] = math.gcd(*blocks) if blocks else 0

    def _refine(self, r: int, parts: list[tuple[int, int]]) -> list[int]:
        """Replace the leaf ``r`` by new variables of the given ``(units, inner)``."""
        children = []
        for n, inner in parts:
            c = self.new(n, fixed=self.fixed[r] or bool(self.block[r]), active=self.active[r])
            children.append((c, inner))
        self.refined[r] = children
        return [c for c, _ in children]

    def unify(self, a: int, b: int) -> None:
        """Make the axes ``a`` and ``b`` (same length) take one permutation."""
        la, lb = self.leaves(a), self.leaves(b)
        if sum(x.length for x in la) != sum(x.length for x in lb):
            raise AssertionError(f"axis lengths differ: {la} vs {lb}")
        while la and lb:
            xs, ys = self._fresh(la[0]), self._fresh(lb[0])
            if len(xs) > 1 or len(ys) > 1:   # refined meanwhile: expand the head
                la[:1], lb[:1] = xs, ys
                continue
            x, y = xs[0], ys[0]
            if x.length == y.length:
                self._unify_equal(x, y)
                la.pop(0)
                lb.pop(0)
            elif not self._split_longer(x, y):
                for leaf in la + lb:
                    self.fixed[self.find(leaf.var)] = True
                return

    def _fresh(self, leaf: Leaf) -> list[Leaf]:
        return self.leaves(leaf.var, leaf.inner)

    def _unify_equal(self, x: Leaf, y: Leaf) -> None:
        if x.inner == y.inner:
            self._union(x.var, y.var)
        elif x.var == y.var:
            self.fixed[x.var] = True
        else:
            small, big = (x, y) if x.inner < y.inner else (y, x)
            if big.inner % small.inner:
                self.fixed[x.var] = self.fixed[y.var] = True
                return
            (c,) = self._refine(small.var, [(big.n, big.inner // small.inner)])
            self._union(c, big.var)

    def _split_longer(self, x: Leaf, y: Leaf) -> bool:
        long, short = (x, y) if x.length > y.length else (y, x)
        if short.length % long.inner:
            return False
        k = short.length // long.inner
        self._refine(long.var, [(k, 1), (long.n - k, 1)])
        return True
