"""The import structure of landprobe, read from the source with ``ast`` (nothing is imported).

Layers, lowest first: a module may import from its own package or from a lower rank, never
from a higher rank or from another package of the same rank. No module imports a private
name (``_x``, or a module path with a ``_x`` segment) of another package. The module import
graph, function-level imports included, has no cycles.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "landprobe"
ROOT_PACKAGE = "<root>"          # landprobe/__init__.py itself

RANKS = {
    "common": 0,
    "params": 1,
    "models": 2, "losses": 2, "metrics": 2, "penalties": 2, "darc1": 2, "optim": 2,
    "data": 3,
    "engine": 4,
    "curvature": 5, "capacity": 5, "symmetry": 5,
    "probes": 6, "generalization": 6,
    "monitor": 7,
    "recipes": 8, "integrations": 8,
    "cli": 9,
    ROOT_PACKAGE: 10,
}


@dataclass(frozen=True)
class Import:
    source: str          # importing module, dotted
    target: str          # imported landprobe module, dotted (resolved to a module file)
    names: tuple         # names taken from it ("" for a plain ``import a.b``)
    path: str            # the dotted path as written (resolved when relative)
    file: str            # the importing file, relative to the repository
    line: int
    text: str            # the statement as written
    in_function: bool
    type_checking: bool  # under ``if TYPE_CHECKING:`` (no runtime effect)

    def where(self) -> str:
        return f"{self.file}:{self.line}: `{self.text}`"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module under src/landprobe."""
    out = {}
    for f in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = module_files()


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def package_of(module: str) -> str:
    """The top-level package of a module: ``landprobe.probes.curves.neb`` -> ``probes``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_PACKAGE


def owning_module(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a landprobe module."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        cand = ".".join(parts[:k])
        if cand in MODULES:
            return cand
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> list[Import]:
    file = MODULES[module]
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    lines = file.read_text(encoding="utf-8").splitlines()
    rel_file = str(file.relative_to(SRC.parent))
    here = module if is_package(module) else module.rpartition(".")[0]
    out: list[Import] = []

    def text_of(node: ast.stmt) -> str:
        seg = lines[node.lineno - 1: (node.end_lineno or node.lineno)]
        return " ".join(s.strip() for s in seg)

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            tc = type_checking or (isinstance(child, ast.If) and _is_type_checking(child.test))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                        target = owning_module(alias.name)
                        out.append(Import(module, target, ("",), alias.name, rel_file, child.lineno,
                                          text_of(child), in_function, type_checking))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = here.split(".")
                    if child.level > 1:
                        base = base[: len(base) - (child.level - 1)]
                    path = ".".join(base + ([child.module] if child.module else []))
                else:
                    path = child.module or ""
                if path == ROOT or path.startswith(ROOT + "."):
                    for alias in child.names:
                        sub = f"{path}.{alias.name}"
                        # ``from pkg import submodule`` imports the submodule; else a name of ``path``
                        target = sub if sub in MODULES else owning_module(path)
                        out.append(Import(module, target, (alias.name,), path, rel_file, child.lineno,
                                          text_of(child), in_function, type_checking))
            visit(child, fn, tc)

    visit(tree, False, False)
    return out


ALL_IMPORTS = [imp for m in MODULES for imp in imports_of(m)]


# ---------------------------------------------------------------------------- the reader itself
def test_the_reader_sees_every_module_and_resolves_every_import():
    assert f"{ROOT}.engine.contract" in MODULES and ROOT in MODULES
    assert len(MODULES) > 40 and len(ALL_IMPORTS) > 100
    unresolved = [imp.where() for imp in ALL_IMPORTS if imp.target is None]
    assert not unresolved, "imports of landprobe modules that do not exist:\n" + "\n".join(unresolved)
    # relative imports and ``from pkg import submodule`` resolve to the module itself
    root_imports = {imp.target for imp in ALL_IMPORTS if imp.source == ROOT}
    assert {f"{ROOT}.engine", f"{ROOT}.capacity", f"{ROOT}.data"} <= root_imports


def test_every_package_has_a_rank():
    packages = {package_of(m) for m in MODULES}
    missing = sorted(packages - set(RANKS))
    assert not missing, (f"packages without a layer rank in tests/test_architecture.py: {missing}; give each "
                         f"a rank in RANKS (lower layers are imported by higher ones)")


# ---------------------------------------------------------------------------- (a) layers
def layer_violations() -> list[str]:
    bad = []
    for imp in ALL_IMPORTS:
        src, dst = package_of(imp.source), package_of(imp.target)
        if src == dst or src not in RANKS or dst not in RANKS:
            continue
        if RANKS[dst] >= RANKS[src]:
            kind = "a higher layer" if RANKS[dst] > RANKS[src] else "another package of the same layer"
            bad.append(f"{imp.where()}: {src} (rank {RANKS[src]}) imports {imp.target} from {kind}, "
                       f"{dst} (rank {RANKS[dst]})" + (" [inside a function]" if imp.in_function else ""))
    return bad


def test_imports_go_down_the_layers():
    bad = layer_violations()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------- (b) private names
def private_violations() -> list[str]:
    bad = []
    for imp in ALL_IMPORTS:
        if package_of(imp.source) == package_of(imp.target):
            continue
        segments = imp.path.split(".")[1:]
        private_path = [s for s in segments if s.startswith("_") and not (s.startswith("__") and s.endswith("__"))]
        private_names = [n for n in imp.names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
        if private_path or private_names:
            what = ", ".join([f"module segment {s!r}" for s in private_path] + [f"name {n!r}" for n in private_names])
            bad.append(f"{imp.where()}: {package_of(imp.source)} takes the private {what} of "
                       f"{package_of(imp.target)}")
    return bad


def test_no_private_imports_across_packages():
    bad = private_violations()
    assert not bad, "private names imported from another package:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------- (c) cycles
def graph() -> dict[str, list[Import]]:
    """Module -> its runtime imports of other landprobe modules (TYPE_CHECKING blocks left out)."""
    g: dict[str, list[Import]] = defaultdict(list)
    for imp in ALL_IMPORTS:
        if imp.type_checking or imp.target == imp.source:
            continue
        g[imp.source].append(imp)
    return g


def strongly_connected(g: dict[str, list[Import]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(MODULES):
        if root in index:
            continue
        work = [(root, iter(sorted({i.target for i in g.get(root, [])})))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted({i.target for i in g.get(nxt, [])}))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def one_cycle(g: dict[str, list[Import]], comp: list[str]) -> list[Import]:
    """A shortest cycle through the component's first module, as its import statements."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, Import] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for imp in sorted(g.get(node, []), key=lambda i: (i.target, i.line)):
                if imp.target not in members:
                    continue
                if imp.target == start:
                    chain = [imp]
                    cur = node
                    while cur != start:
                        chain.append(prev[cur])
                        cur = prev[cur].source
                    return chain[::-1]
                if imp.target not in seen:
                    seen.add(imp.target)
                    prev[imp.target] = imp
                    nxt_frontier.append(imp.target)
        frontier = nxt_frontier
    return []


def describe(g: dict[str, list[Import]], comp: list[str]) -> str:
    lines = [f"cycle among {len(comp)} modules {comp}, e.g.:"]
    for imp in one_cycle(g, comp):
        lines.append(f"    {imp.where()} -> {imp.target}" + (" [inside a function]" if imp.in_function else ""))
    return "\n".join(lines)


def cycles(across_packages: bool) -> list[str]:
    g = graph()
    found = []
    for comp in strongly_connected(g):
        spans = len({package_of(m) for m in comp}) > 1
        if spans == across_packages:
            found.append(describe(g, comp))
    return found


def test_no_import_cycles_between_packages():
    found = cycles(across_packages=True)
    assert not found, "import cycles across packages (function-level imports included):\n" + "\n".join(found)


def test_no_import_cycles_within_a_package():
    found = cycles(across_packages=False)
    assert not found, "import cycles inside a package (function-level imports included):\n" + "\n".join(found)


# ---------------------------------------------------------------------------- the checks catch what they claim
@pytest.mark.parametrize("case", ["layer", "private", "cycle"])
def test_the_checks_flag_planted_violations(case, monkeypatch):
    planted = {
        "layer": Import(f"{ROOT}.engine.core", f"{ROOT}.probes.landscape", ("LandscapeProbe",),
                        f"{ROOT}.probes.landscape", "src/landprobe/engine/core.py", 1,
                        "from landprobe.probes.landscape import LandscapeProbe", True, False),
        "private": Import(f"{ROOT}.probes.plane", f"{ROOT}.capacity._common", ("check_model",),
                          f"{ROOT}.capacity._common", "src/landprobe/probes/plane.py", 1,
                          "from landprobe.capacity._common import check_model", False, False),
        "cycle": Import(f"{ROOT}.common.checks", f"{ROOT}.engine.core", ("Engine",), f"{ROOT}.engine.core",
                        "src/landprobe/common/checks.py", 1, "from landprobe.engine.core import Engine", True, False),
    }[case]
    monkeypatch.setattr(sys.modules[__name__], "ALL_IMPORTS", ALL_IMPORTS + [planted])
    found = {"layer": layer_violations, "private": private_violations,
             "cycle": lambda: cycles(across_packages=True)}[case]()
    assert any(planted.text in f for f in found), found
