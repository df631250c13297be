"""``landprobe probe ...`` on saved checkpoints."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import landprobe as lp
from landprobe.cli import main
from landprobe.cli.probe import load_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = lp.models.WarshipXZNetBeta(width=0.05)
        p = d / f"m{seed}.pt"
        torch.save(m.state_dict(), p)
        paths.append(str(p))
    return paths


def _args(out, *extra):
    return ["--width", "0.05", "--patches", "32", "--batch-size", "16", "--data", str(lp.data.sample_dir("train")),
            "--out", str(out), "--no-progress", *extra]


def test_probe_interpolate_matches_the_library(checkpoints, tmp_path, capsys):
    assert main(["probe", "interpolate", *checkpoints[:2], "--points", "3", *_args(tmp_path)]) == 0
    assert "barrier" in capsys.readouterr().out
    got = lp.Curve.load(tmp_path / "interpolate.json")
    assert (tmp_path / "interpolate.png").stat().st_size > 1000
    # the same numbers through the library
    patches = lp.data.T91Patches(lp.data.sample_dir("train"), scale=2)
    idx = torch.linspace(0, len(patches) - 1, 32).round().long()
    x, y = map(torch.stack, zip(*(patches[int(i)] for i in idx)))
    model = lp.models.WarshipXZNetBeta(width=0.05)
    data = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 32, 16)]
    probe = lp.LandscapeProbe(model, lp.losses.RecursiveSupervisionLoss(alpha=0.5), data)
    a, b = (load_checkpoint(p)[0] for p in checkpoints[:2])
    np.testing.assert_allclose(got.losses, probe.interpolate(a, b, points=3).losses, rtol=1e-6)


def test_probe_plane_through_three(checkpoints, tmp_path):
    assert main(["probe", "plane", *checkpoints, "--points", "3", *_args(tmp_path)]) == 0
    data = json.loads((tmp_path / "plane.json").read_text())
    assert data["kind"] == "Surface" and np.asarray(data["losses"]).shape == (3, 3)


def test_probe_cli_errors(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["probe", "interpolate", checkpoints[0], *_args(tmp_path)])
    assert e.value.code == 2 and "takes 2 checkpoint(s), got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe", "interpolate", checkpoints[0], str(tmp_path / "missing.pt"), *_args(tmp_path)])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe", "level-set", *checkpoints[:2], *_args(tmp_path)])
    assert "required: --threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe", "interpolate", *checkpoints[:2], "--model", "nomodule", *_args(tmp_path)])
    assert "expected warship, drcn or an import path" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    torch.save({"x": [1, 2]}, bad)
    with pytest.raises(ValueError, match="neither a landprobe recipe checkpoint nor a state_dict"):
        load_checkpoint(bad)


def test_probe_connect_writes_a_resumable_checkpoint(checkpoints, tmp_path):
    ck = tmp_path / "fit.pt"
    args = ["probe", "connect", *checkpoints[:2], "--method", "bezier", "--bends", "1", "--steps", "3",
            "--points", "3", "--resume-file", str(ck), *_args(tmp_path)]
    assert main(args) == 0
    first = lp.probes.Path.load(tmp_path / "connect.json")
    assert torch.load(ck, weights_only=True)["step"] == 3
    assert main(args) == 0                      # the finished checkpoint resumes at its end
    again = lp.probes.Path.load(tmp_path / "connect.json")
    assert again.settings["resumed_at_step"] == 3
    np.testing.assert_allclose(again.losses, first.losses, rtol=1e-6)


@pytest.mark.parametrize("extra, fix", [
    (["--width", "0.05"], "likely fix: --width 0.125"),               # another width
    (["--model", "drcn", "--width", "0.125"], "likely fix: --model warship --width 0.125"),  # another model
])
def test_checkpoint_that_does_not_fit_is_one_line(tmp_path, capsys, extra, fix):
    ck = tmp_path / "warship_w0125.pt"
    torch.save(lp.models.WarshipXZNetBeta(width=0.125).state_dict(), ck)
    with pytest.raises(SystemExit) as e:
        main(["probe", "interpolate", str(ck), str(ck), "--out", str(tmp_path), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("landprobe probe interpolate: error: checkpoint") and "warship_w0125.pt" in err
    assert "enet.conv1.weight 24x1x3x3" in err and fix in err


def test_second_checkpoint_that_does_not_fit_is_named(checkpoints, tmp_path, capsys):
    other = tmp_path / "drcn.pt"
    torch.save(lp.models.DRCN(width=0.05).state_dict(), other)
    with pytest.raises(SystemExit) as e:
        main(["probe", "interpolate", checkpoints[0], str(other), *_args(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "drcn.pt" in err and "likely fix: --model drcn --width 0.05" in err


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


@pytest.mark.parametrize("width", [0.125, 0.25])
def test_width_is_read_from_a_plain_state_dict(tmp_path, capsys, width):
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"w{seed}.pt")
        torch.save(lp.models.WarshipXZNetBeta(width=width).state_dict(), paths[-1])
    args = ["--patches", "8", "--batch-size", "8", "--data", str(lp.data.sample_dir("train")), "--no-progress"]
    _run(["probe", "interpolate", *map(str, paths), "--points", "2", "--out", str(tmp_path / "o"), *args], capsys)
    model = json.loads((tmp_path / "o" / "interpolate.json").read_text())["inputs"]["model"]
    assert (model["name"], model["width"], model["width_from"]) == ("warship", width, "checkpoint shapes")
    assert model["parameters"] == sum(p.numel() for p in lp.models.WarshipXZNetBeta(width=width).parameters())


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_state_dict_of_a_wrapped_model_loads(checkpoints, tmp_path, capsys, prefix):
    wrapped = []
    for i, path in enumerate(checkpoints[:2]):
        sd = torch.load(path, weights_only=True)
        wrapped.append(str(tmp_path / f"wrapped{i}.pt"))
        torch.save({prefix + k: v for k, v in sd.items()}, wrapped[-1])
    err = _run(["probe", "interpolate", *wrapped, "--points", "3", *_args(tmp_path / "w")], capsys).err
    assert err.count("\n") == 2 and err.count("warning:") == 2 and prefix in err and "wrapped1.pt" in err, err
    _run(["probe", "interpolate", *checkpoints[:2], "--points", "3", *_args(tmp_path / "plain")], capsys)
    a = lp.Curve.load(tmp_path / "w" / "interpolate.json")
    b = lp.Curve.load(tmp_path / "plain" / "interpolate.json")
    np.testing.assert_array_equal(a.losses, b.losses)


def test_json_records_the_inputs_and_the_files_written(checkpoints, tmp_path, capsys):
    import hashlib

    argv = ["probe", "interpolate", *checkpoints[:2], "--points", "3", *_args(tmp_path)]
    out = _run(argv, capsys).out
    saved = json.loads((tmp_path / "interpolate.json").read_text())
    inputs = saved["inputs"]
    assert [c["path"] for c in inputs["checkpoints"]] == [str(Path(p).resolve()) for p in checkpoints[:2]]
    assert [c["sha256"] for c in inputs["checkpoints"]] == [hashlib.sha256(Path(p).read_bytes()).hexdigest()
                                                            for p in checkpoints[:2]]
    assert inputs["command"] == ["landprobe", *argv]
    assert inputs["model"]["name"] == "warship" and inputs["model"]["width"] == 0.05
    assert inputs["model"]["width_from"] == "--width"
    assert inputs["data"]["patches"] == 32 and inputs["data"]["batch_size"] == 16
    assert inputs["loss"] == {"name": "study", "alpha": 0.5, "reduction": "sum_over_pixels"}
    assert out.splitlines()[-1] == f"wrote {tmp_path / 'interpolate.json'}, {tmp_path / 'interpolate.png'}"
    assert lp.Curve.load(tmp_path / "interpolate.json").losses.shape == (3,)   # still a Curve file


USER_CODE = '''
import torch

class TinyNet(torch.nn.Module):
    def __init__(self, hidden=4):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)

def tensors():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, generator=g)
    return x, torch.sin(x.sum(1, keepdim=True))

def batches():
    x, y = tensors()
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]

def dataset():
    return torch.utils.data.TensorDataset(*tensors())

def make_loss():
    return torch.nn.MSELoss()

def l1(output, target):
    return (output - target).abs().mean()

mse = torch.nn.MSELoss()
'''


@pytest.mark.parametrize("data, loss, make_loss", [
    ("batches", "make_loss", lambda: torch.nn.MSELoss()),              # a factory
    ("dataset", "l1", lambda: (lambda o, t: (o - t).abs().mean())),    # a Dataset, a loss function
    ("batches", "mse", lambda: torch.nn.MSELoss()),                     # a loss instance
])
def test_users_model_loss_and_data_from_the_current_folder(tmp_path, monkeypatch, capsys, data, loss, make_loss):
    import importlib
    import sys

    name = f"lp_user_{data}_{loss}"
    (tmp_path / f"{name}.py").write_text(USER_CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        paths.append(str(tmp_path / f"tiny{seed}.pt"))
    spec_module = importlib.util.spec_from_file_location("user_code_copy", tmp_path / f"{name}.py")
    user = importlib.util.module_from_spec(spec_module)
    spec_module.loader.exec_module(user)
    for seed, path in enumerate(paths):
        torch.manual_seed(seed)
        torch.save(user.TinyNet(hidden=5).state_dict(), path)
    argv = ["probe", "interpolate", *paths, "--points", "5", "--model", f"{name}:TinyNet", "--model-kwargs",
            '{"hidden": 5}', "--data", f"{name}:{data}", "--loss", f"{name}:{loss}", "--batch-size", "8",
            "--out", "o", "--no-progress"]
    _run(argv, capsys)
    assert str(tmp_path) not in sys.path and "" not in sys.path
    saved = json.loads((tmp_path / "o" / "interpolate.json").read_text())
    inputs = saved["inputs"]
    assert inputs["model"] == {"name": f"{name}:TinyNet", "class": "TinyNet", "kwargs": {"hidden": 5},
                               "parameters": 26}
    assert inputs["data"]["import"] == f"{name}:{data}" and inputs["loss"]["name"] == f"{name}:{loss}"
    probe = lp.LandscapeProbe(user.TinyNet(hidden=5), make_loss(), user.batches())
    a, b = (torch.load(p, weights_only=True) for p in paths)
    np.testing.assert_allclose(saved["losses"], probe.interpolate(a, b, points=5).losses, rtol=1e-6)


def test_old_flag_names_still_work_with_a_line_on_stderr(checkpoints, tmp_path, capsys):
    captured = _run(["probe", "interpolate", *checkpoints[:2], "--steps", "3", *_args(tmp_path / "i")], capsys)
    assert captured.err == ("landprobe probe interpolate: warning: --steps is deprecated, use --points (the old "
                            "name will be removed in the next release)\n")
    assert len(lp.Curve.load(tmp_path / "i" / "interpolate.json").losses) == 3
    ck = tmp_path / "fit.pt"
    captured = _run(["probe", "connect", *checkpoints[:2], "--method", "bezier", "--bends", "1", "--train-steps", "2",
                     "--points", "3", "--resume-file", str(ck), *_args(tmp_path / "c")], capsys)
    assert "warning: --train-steps is deprecated, use --steps" in captured.err and captured.err.count("\n") == 1
    assert torch.load(ck, weights_only=True)["step"] == 2


def test_level_set_takes_its_steps(checkpoints, tmp_path, capsys):
    out = _run(["probe", "level-set", *checkpoints[:2], "--threshold", "1e9", "--steps", "2",
                *_args(tmp_path)], capsys).out
    assert "connected: True" in out   # every loss lies below 1e9
    saved = json.loads((tmp_path / "level_set.json").read_text())
    assert saved["kind"] == "LevelSet" and saved["inputs"]["command"][2] == "level-set"
