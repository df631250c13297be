"""``landprobe probe ...`` on saved checkpoints."""

import json

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
    assert main(["probe", "interpolate", *checkpoints[:2], "--steps", "3", *_args(tmp_path)]) == 0
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
    np.testing.assert_allclose(got.losses, probe.interpolate(a, b, steps=3).losses, rtol=1e-6)


def test_probe_plane_through_three(checkpoints, tmp_path):
    assert main(["probe", "plane", *checkpoints, "--steps", "3", *_args(tmp_path)]) == 0
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
    assert "needs --threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe", "interpolate", *checkpoints[:2], "--model", "nomodule", *_args(tmp_path)])
    assert "expected warship, drcn or an import path" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    torch.save({"x": [1, 2]}, bad)
    with pytest.raises(ValueError, match="neither a landprobe recipe checkpoint nor a state_dict"):
        load_checkpoint(bad)


def test_probe_connect_writes_a_resumable_checkpoint(checkpoints, tmp_path):
    ck = tmp_path / "fit.pt"
    args = ["probe", "connect", *checkpoints[:2], "--method", "bezier", "--bends", "1", "--train-steps", "3",
            "--steps", "3", "--resume-file", str(ck), *_args(tmp_path)]
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
    assert err.startswith("landprobe probe: error: checkpoint") and "warship_w0125.pt" in err
    assert "enet.conv1.weight 24x1x3x3" in err and fix in err


def test_second_checkpoint_that_does_not_fit_is_named(checkpoints, tmp_path, capsys):
    other = tmp_path / "drcn.pt"
    torch.save(lp.models.DRCN(width=0.05).state_dict(), other)
    with pytest.raises(SystemExit) as e:
        main(["probe", "interpolate", checkpoints[0], str(other), *_args(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "drcn.pt" in err and "likely fix: --model drcn --width 0.05" in err
