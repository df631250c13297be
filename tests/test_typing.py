"""mypy on a user's script against landprobe's annotations (tests/typing/user_script.py).

mypy runs with ``--ignore-missing-imports --follow-imports=silent``: the script is checked
against landprobe's (and torch's, numpy's) annotations without reporting errors inside them.
A second, generated script asks mypy to reveal the type of each public call, so that a method
whose result is ``Any`` (no return annotation) or a union where one type is meant shows up.
The mypy cache lives in the system temp folder (a cold run reads torch's stubs: ~40 s; warm: ~3 s).
"""

from __future__ import annotations

import os
import re
import runpy
import tempfile
import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the test extra: pip install -e .[test]")

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SCRIPT = HERE / "typing" / "user_script.py"
CACHE = Path(tempfile.gettempdir()) / "landprobe-mypy-cache"

# expression -> the type mypy should reveal, with module paths dropped (landprobe.probes.results.Curve -> Curve)
REVEAL_SETUP = """\
import torch
from torch import nn
import landprobe as lp

probe = lp.LandscapeProbe(nn.Linear(2, 1), nn.MSELoss(), [(torch.ones(2, 2), torch.zeros(2, 1))])
a = dict(probe.model.state_dict())
op = probe.hessian()
"""
EXPECTED = {
    "probe.loss(a)": "float",
    "probe.evaluate(a)": "Evaluation",
    "probe.interpolate(a, a)": "Curve",
    "probe.plane(a)": "Surface",
    "probe.connect(a, a)": "Path",
    "probe.auto_neb(a, a)": "Path",
    "probe.level_set(a, a, 1.0)": "LevelSet",
    "probe.perturb(lambda ps: torch.optim.SGD(ps, lr=0.1))": "PerturbationResult",
    "probe.hessian()": "HessianOperator",
    "op.dense()": "Tensor",
    "op.shape": "tuple[int, int]",
    "op.top_eigenvalues()": "Eigenpairs",
    "op.trace()": "TraceEstimate",
    "op.density()": "Spectrum",
    "op.matvec(torch.ones(op.n))": "Tensor",
    "op.matvec(lp.ParamVector.from_module(probe.model))": "ParamVector",
    "lp.LandscapeMonitor(probe)(1)": "dict[str, Any] | None",
    "lp.LandscapeMonitor(probe).history": "MonitorHistory",
    "lp.capacity.report(probe.model)": "CapacityReport",
    "lp.Curve.load('curve.json')": "Curve",
    "lp.Path.from_dict({})": "Path",
    "lp.BatchLoss(lambda m, b: m(b).sum())(probe.model, torch.ones(1, 2))": "Tensor",
}
# expressions whose precise type is a known gap, each with an xfail(strict=True) marker
KNOWN: dict[str, pytest.MarkDecorator] = {}


def run_mypy(*files: Path) -> tuple[str, str, int]:
    """mypy on ``files`` against this checkout's src (MYPYPATH), as a user would run it."""
    old = os.environ.get("MYPYPATH")
    os.environ["MYPYPATH"] = str(SRC)
    try:
        return mypy_api.run(["--ignore-missing-imports", "--follow-imports=silent", "--show-error-codes",
                             "--no-error-summary", "--cache-dir", str(CACHE), *map(str, files)])
    finally:
        if old is None:
            os.environ.pop("MYPYPATH", None)
        else:
            os.environ["MYPYPATH"] = old


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory) -> tuple[str, str, int, dict[int, str]]:
    """One mypy run over the user script and the reveal script; line -> expression of the latter."""
    reveal = tmp_path_factory.mktemp("typing") / "reveal_types.py"
    lines = REVEAL_SETUP.splitlines()
    where = {}
    for expr in EXPECTED:
        lines.append(f"reveal_type({expr})")
        where[len(lines)] = expr
    reveal.write_text("\n".join(lines) + "\n")
    stdout, stderr, status = run_mypy(SCRIPT, reveal)
    return stdout, stderr, status, where


def revealed(stdout: str, where: dict[int, str]) -> dict[str, str]:
    out = {}
    for m in re.finditer(r'reveal_types\.py:(\d+): note: Revealed type is "(.*)"', stdout):
        # drop module paths: landprobe.probes.results.Curve -> Curve, builtins.float -> float
        out[where[int(m.group(1))]] = re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", m.group(2))
    return out


def test_the_user_script_type_checks(mypy_run):
    stdout, stderr, status, _ = mypy_run
    errors = [line for line in stdout.splitlines() if " error: " in line]
    assert status == 0 and not errors, f"mypy exit status {status}:\n{stdout}\n{stderr}"


def test_the_user_script_runs():
    runpy.run_path(str(SCRIPT), run_name="__main__")


@pytest.mark.parametrize("expr", [pytest.param(e, marks=KNOWN[e]) if e in KNOWN else e for e in EXPECTED])
def test_public_calls_have_precise_types(mypy_run, expr):
    stdout, stderr, _, where = mypy_run
    types = revealed(stdout, where)
    assert expr in types, f"mypy revealed nothing for {expr}:\n{stdout}\n{stderr}"
    assert types[expr] == EXPECTED[expr], f"reveal_type({expr}) is {types[expr]!r}, expected {EXPECTED[expr]!r}"


def test_mypy_catches_a_wrong_use(tmp_path):
    # the setup is live: a misuse of the annotations is reported
    bad = tmp_path / "misuse.py"
    bad.write_text(textwrap.dedent("""\
        import torch
        import landprobe as lp
        probe = lp.LandscapeProbe(torch.nn.Linear(1, 1), torch.nn.MSELoss(), [])
        barrier: str = probe.interpolate({}, {}).barrier
        probe.interpolate({}, {}, points="five")
    """))
    stdout, _, status = run_mypy(bad)
    assert status == 1
    assert 'misuse.py:4: error: Incompatible types in assignment (expression has type "float"' in stdout
    assert "misuse.py:5: error: Argument \"points\"" in stdout
