"""``landprobe align`` and ``landprobe probe interpolate --align`` on saved checkpoints."""

import json

import pytest
import torch

import landprobe as lp
from landprobe import symmetry as S
from landprobe.cli import main


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    a = lp.models.WarshipXZNetBeta(width=0.05)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.05 * torch.randn_like(p))            # break the identity init's ties
    spec = S.permutation_spec(a, torch.zeros(1, 1, 8, 8))
    shuffle = S.random_permutation(spec, seed=3)
    torch.save(a.state_dict(), d / "a.pt")
    torch.save(S.permute(a.state_dict(), shuffle, spec), d / "b.pt")
    return str(d / "a.pt"), str(d / "b.pt"), shuffle


DATA = ["--patches", "16", "--batch-size", "8", "--data", str(lp.data.sample_dir("train"))]


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_align_writes_b_aligned_and_the_permutation(checkpoints, tmp_path, capsys, method):
    a, b, shuffle = checkpoints
    out = tmp_path / "b_aligned.pt"
    assert main(["align", a, b, "-o", str(out), "--method", method, *DATA]) == 0
    printed = capsys.readouterr().out
    assert f"{method} matching" in printed and str(out) in printed
    aligned = torch.load(out, weights_only=True)
    ref = torch.load(a, weights_only=True)
    assert all(torch.equal(aligned[k], ref[k]) for k in ref)
    perm = S.Permutation.load(tmp_path / "b_aligned.json")
    assert perm.perms == shuffle.inverse().perms
    assert perm.settings["command"][:2] == ["landprobe", "align"]


def test_probe_interpolate_align_records_both_barriers(checkpoints, tmp_path, capsys):
    a, b, _ = checkpoints
    assert main(["probe", "interpolate", a, b, "--align", "weights", "--points", "3", "--width", "0.05",
                 "--out", str(tmp_path), "--no-progress", *DATA]) == 0
    assert "naive barrier" in capsys.readouterr().out
    data = json.loads((tmp_path / "interpolate.json").read_text())
    info = data["settings"]["align"]
    curve = lp.Curve.load(tmp_path / "interpolate.json")
    assert info["method"] == "weights" and "naive_barrier" in info
    # B is A permuted: aligned, every point is A itself; the naive segment leaves it
    assert abs(curve.barrier) <= 1e-9 and max(curve.losses) - min(curve.losses) <= 1e-9 * abs(curve.losses[0])
    assert abs(info["naive_losses"][1] - curve.losses[1]) > 1e-3 * abs(curve.losses[1])


def test_align_bad_input_is_one_line_and_exit_2(checkpoints, tmp_path, capsys):
    a, b, _ = checkpoints
    cases = [
        (["align", a, str(tmp_path / "missing.pt"), "-o", str(tmp_path / "o.pt")], "does not exist"),
        (["align", a, b, "-o", str(tmp_path)], "is a folder"),
        (["align", a, b, "-o", str(tmp_path / "o.pt"), "--method", "both"], "invalid choice"),
        (["align", a, b, "-o", str(tmp_path / "o.pt"), "--model", "nomodule"], "expected warship, drcn"),
        (["align", a], "the following arguments are required"),
        (["probe", "interpolate", a, b, "--align", "bogus"], "invalid choice: 'bogus'"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as err:
            main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert err.value.code == 2 and len(lines) == 1 and message in lines[0], (argv, lines)


def test_align_refuses_a_model_it_cannot_trace(tmp_path, capsys, monkeypatch):
    mod = tmp_path / "sortnet.py"
    mod.write_text("import torch\n"
                   "class SortNet(torch.nn.Module):\n"
                   "    def __init__(self):\n"
                   "        super().__init__()\n"
                   "        self.a = torch.nn.Conv2d(1, 4, 3, padding=1)\n"
                   "        self.b = torch.nn.Conv2d(4, 1, 3, padding=1)\n"
                   "    def forward(self, x):\n"
                   "        return self.b(torch.sort(self.a(x), dim=1).values)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    import sortnet
    for name in ("a.pt", "b.pt"):
        torch.save(sortnet.SortNet().state_dict(), tmp_path / name)
    with pytest.raises(SystemExit) as err:
        main(["align", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "-o", str(tmp_path / "o.pt"),
              "--model", "sortnet:SortNet", *DATA])
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1 and "fx node 'sort'" in lines[0]
    assert not (tmp_path / "o.pt").exists()
