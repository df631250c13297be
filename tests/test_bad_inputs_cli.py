"""``landprobe probe`` given bad inputs: exit status 2, one line on stderr naming the flag or the
file, no traceback, and nothing written to the output folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import landprobe as lp
from landprobe.cli import main

MODULE = "lp_bad_inputs_user"

USER_CODE = textwrap.dedent('''
    import torch

    class TinyNet(torch.nn.Module):
        def __init__(self, hidden=4):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

        def forward(self, x):
            return self.net(x)

    class NotAModule:
        pass

    NOT_AN_OBJECT_OF_USE = 3

    def gives_number():
        return 3

    def no_batches():
        return []

    def triples():
        return [(torch.zeros(2, 3), torch.zeros(2, 1), torch.zeros(2))]

    def needs_args(n):
        return n
''')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints, broken files and a module of the user's, by placeholder name."""
    d = tmp_path_factory.mktemp("bad")
    (d / f"{MODULE}.py").write_text(USER_CODE)
    f = {"DIR": str(d / "somefolder"), "MISSING": str(d / "missing.pt"), "MISSING_DIR": str(d / "no_images"),
         "FILE": str(d / "plain.txt"), "M": MODULE}
    os.mkdir(f["DIR"])
    open(f["FILE"], "w").write("text\n")
    for seed, name in enumerate("ABC"):
        torch.manual_seed(seed)
        f[name] = str(d / f"m{seed}.pt")
        torch.save(lp.models.WarshipXZNetBeta(width=0.05).state_dict(), f[name])
    f["W125"] = str(d / "w0125.pt")
    torch.save(lp.models.WarshipXZNetBeta(width=0.125).state_dict(), f["W125"])
    f["DRCN"] = str(d / "drcn.pt")
    torch.save(lp.models.DRCN(width=0.05).state_dict(), f["DRCN"])
    f["GARBAGE"] = str(d / "garbage.pt")
    open(f["GARBAGE"], "wb").write(b"\x00not a torch file" * 10)
    f["TRUNC"] = str(d / "truncated.pt")
    open(f["TRUNC"], "wb").write(open(f["A"], "rb").read()[:200])
    f["LIST"] = str(d / "list.pt")
    torch.save({"x": [1, 2]}, f["LIST"])
    f["root"] = str(d)
    return f


M = MODULE
# (id, arguments after "probe", what the message must name)
CASES = [
    ("one-checkpoint", ["interpolate", "{A}"], "CHECKPOINT"),
    ("three-checkpoints-to-interpolate", ["interpolate", "{A}", "{B}", "{C}"], "CHECKPOINT"),
    ("two-checkpoints-to-plane", ["plane", "{A}", "{B}"], "CHECKPOINT"),
    ("missing-checkpoint", ["interpolate", "{A}", "{MISSING}"], "missing.pt"),
    ("checkpoint-is-a-folder", ["interpolate", "{A}", "{DIR}"], "somefolder"),
    ("garbage-checkpoint", ["interpolate", "{GARBAGE}", "{A}"], "garbage.pt"),
    ("truncated-checkpoint", ["interpolate", "{A}", "{TRUNC}"], "truncated.pt"),
    ("checkpoint-not-a-state-dict", ["interpolate", "{LIST}", "{A}"], "list.pt"),
    ("width-mismatch", ["interpolate", "{W125}", "{W125}", "--width", "0.25"], "w0125.pt"),
    ("drcn-given-warship-checkpoint", ["interpolate", "{W125}", "{W125}", "--model", "drcn"], "w0125.pt"),
    ("second-checkpoint-other-architecture", ["interpolate", "{A}", "{DRCN}"], "drcn.pt"),
    ("user-model-given-warship-checkpoint", ["interpolate", "{A}", "{B}", "--model", f"{M}:TinyNet"], "m0.pt"),
    ("model-not-an-import-path", ["interpolate", "{A}", "{B}", "--model", "nomodule"], "--model"),
    ("model-missing-module", ["interpolate", "{A}", "{B}", "--model", "no_such_module_xyz:Net"], "--model"),
    ("model-missing-attribute", ["interpolate", "{A}", "{B}", "--model", f"{M}:NoSuchNet"], "--model"),
    ("model-wrong-kind", ["interpolate", "{A}", "{B}", "--model", f"{M}:NOT_AN_OBJECT_OF_USE"], "--model"),
    ("model-class-not-a-module", ["interpolate", "{A}", "{B}", "--model", f"{M}:NotAModule"], "--model"),
    ("model-kwargs-not-json", ["interpolate", "{A}", "{B}", "--model", f"{M}:TinyNet", "--model-kwargs", "{hidden: 4}"],
     "--model-kwargs"),
    ("model-kwargs-not-an-object", ["interpolate", "{A}", "{B}", "--model", f"{M}:TinyNet", "--model-kwargs", "[4]"],
     "--model-kwargs"),
    ("model-kwargs-unknown-keyword", ["interpolate", "{A}", "{B}", "--model", f"{M}:TinyNet",
                                      "--model-kwargs", '{"depth": 2}'], "--model-kwargs"),
    ("model-kwargs-with-builtin-model", ["interpolate", "{A}", "{B}", "--model-kwargs", "{}"], "--model-kwargs"),
    ("width-with-user-model", ["interpolate", "{A}", "{B}", "--model", f"{M}:TinyNet", "--width", "0.5"], "--width"),
    ("loss-not-a-name", ["interpolate", "{A}", "{B}", "--loss", "l2"], "--loss"),
    ("loss-missing-module", ["interpolate", "{A}", "{B}", "--loss", "no_such_loss_mod:l1"], "--loss"),
    ("loss-missing-attribute", ["interpolate", "{A}", "{B}", "--loss", f"{M}:no_such_loss"], "--loss"),
    ("loss-wrong-kind", ["interpolate", "{A}", "{B}", "--loss", f"{M}:NOT_AN_OBJECT_OF_USE"], "--loss"),
    ("loss-factory-gives-a-number", ["interpolate", "{A}", "{B}", "--loss", f"{M}:gives_number"], "--loss"),
    ("alpha-with-user-loss", ["interpolate", "{A}", "{B}", "--loss", "torch.nn:MSELoss", "--alpha", "0.3"],
     "--alpha"),
    ("data-missing-folder", ["interpolate", "{A}", "{B}", "--data", "{MISSING_DIR}"], "--data"),
    ("data-missing-attribute", ["interpolate", "{A}", "{B}", "--data", f"{M}:no_such_data"], "--data"),
    ("data-not-iterable", ["interpolate", "{A}", "{B}", "--data", f"{M}:NOT_AN_OBJECT_OF_USE"], "--data"),
    ("data-without-batches", ["interpolate", "{A}", "{B}", "--data", f"{M}:no_batches"], "--data"),
    ("data-batches-not-pairs", ["interpolate", "{A}", "{B}", "--data", f"{M}:triples"], "--data"),
    ("data-function-needs-arguments", ["interpolate", "{A}", "{B}", "--data", f"{M}:needs_args"], "--data"),
    ("patches-with-user-data", ["interpolate", "{A}", "{B}", "--data", f"{M}:triples", "--patches", "8"],
     "--patches"),
    ("points-too-few", ["interpolate", "{A}", "{B}", "--points", "1"], "--points"),
    ("points-not-a-number", ["plane", "{A}", "--points", "many"], "--points"),
    ("connect-zero-steps", ["connect", "{A}", "{B}", "--steps", "0"], "--steps"),
    ("level-set-without-threshold", ["level-set", "{A}", "{B}"], "--threshold"),
    ("level-set-nan-threshold", ["level-set", "{A}", "{B}", "--threshold", "nan"], "--threshold"),
    ("bad-device", ["interpolate", "{A}", "{B}", "--device", "bogus"], "--device"),
    ("zero-timeout", ["interpolate", "{A}", "{B}", "--timeout", "0"], "--timeout"),
    ("out-is-a-file", ["interpolate", "{A}", "{B}", "--out", "{FILE}"], "--out"),
    ("resume-file-is-a-folder", ["connect", "{A}", "{B}", "--resume-file", "{DIR}"], "--resume-file"),
    ("train-steps-and-steps", ["connect", "{A}", "{B}", "--train-steps", "5", "--steps", "5"], "--train-steps"),
    ("unknown-method", ["connect", "{A}", "{B}", "--method", "spline"], "--method"),
    ("option-of-another-kind", ["interpolate", "{A}", "{B}", "--threshold", "1"], "--threshold"),
    ("negative-extend", ["interpolate", "{A}", "{B}", "--extend", "-1"], "--extend"),
    ("negative-lr", ["level-set", "{A}", "{B}", "--threshold", "1", "--lr", "-0.1"], "--lr"),
    ("zero-batch-size", ["interpolate", "{A}", "{B}", "--batch-size", "0"], "--batch-size"),
    ("unknown-kind", ["sideways", "{A}"], "sideways"),
]


def _fill(arg: str, files: dict[str, str]) -> str:
    """``{NAME}`` replaced by the file of that name; anything else as it is."""
    return files[arg[1:-1]] if arg.startswith("{") and arg.endswith("}") and arg[1:-1] in files else arg


def _argv(template: list[str], files: dict[str, str], out: str) -> list[str]:
    argv = ["probe", *(_fill(a, files) for a in template), "--no-progress"]
    if "--out" not in argv:
        argv += ["--out", out]
    if "--data" not in argv and "--patches" not in argv:
        argv += ["--patches", "8"]                     # a small job where the input is good
    return argv


def _check_failure(code, err: str, names: str, out) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err          # one line
    assert "error:" in err and names in err, err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("template, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(files, tmp_path, monkeypatch, capsys, template, names):
    monkeypatch.chdir(files["root"])                   # the user's module is in the current folder
    out = tmp_path / "out"
    argv = _argv(template, files, str(out))
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    _check_failure(exc.value.code, captured.err, _fill(names, files), out)
    assert files["root"] not in sys.path               # the current folder was importable only while importing


SUBPROCESS_CASES = [c for c in CASES if c[0] in ("model-missing-module", "points-too-few", "width-mismatch")]


@pytest.mark.parametrize("template, names", [c[1:] for c in SUBPROCESS_CASES], ids=[c[0] for c in SUBPROCESS_CASES])
def test_bad_input_through_the_console_script(files, tmp_path, template, names):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "landprobe.cli", *_argv(template, files, str(out))],
                          cwd=files["root"], capture_output=True, text=True, timeout=120, env=env)
    _check_failure(proc.returncode, proc.stderr, _fill(names, files), out)
    assert proc.stdout == ""


def test_there_are_many_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)
