"""landprobe.recipes.study: its numbers are the library's own calls made by hand on the same
checkpoints; its statistics are scipy's; its figures come back from the JSON alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import landprobe as lp
from landprobe.cli import main
from landprobe.common.io import LoadError
from landprobe.recipes import reproduce, study, study_figures
from landprobe.recipes._train import RecipeLoss, build_model
from landprobe.recipes.study import PAIRS, paired, summarize_runs

SETTINGS = ("all-l2", "mix", "all-l1")
TINY = dict(data=lp.data.sample_dir("train"), patches=12, curvature_patches=4, batch_size=6, points=3, top_k=2,
            trace_matvecs=6, seed=0, figures=False, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two seeds of a tiny reproduce run on the embedded sample (all three settings each)."""
    root = tmp_path_factory.mktemp("study_runs")
    torch.set_num_threads(1)
    for seed in (0, 1):
        reproduce("all", data=lp.data.sample_dir("train"), val=lp.data.sample_dir("val"), out=root / f"s{seed}",
                  epochs=1, patches_per_epoch=16, batch_size=8, width=0.125, seed=seed, progress=False)
    return [root / "s0", root / "s1"]


def _models(run):
    out = {}
    for s in SETTINGS:
        ck = torch.load(run / s / "checkpoint.pt", weights_only=True)
        m = build_model(ck["spec"]["width"], ck["spec"]["recursions"], ck["spec"]["seed"])
        m.load_state_dict(ck["model"])
        out[s] = m
    return out, ck["spec"]


def _batches(n, size, seed=0):
    """The study's data, rebuilt by hand: a seeded permutation of the sample's patches."""
    p = lp.data.T91Patches(lp.data.sample_dir("train"), scale=2, patch=41, stride=21)
    order = torch.randperm(len(p.inputs), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = p.inputs[order], p.targets[order]
    return [(x[i:i + size], y[i:i + size]) for i in range(0, n, size)]


def test_study_numbers_equal_the_library_calls_by_hand(runs, tmp_path):
    res = study(runs[:1], tmp_path, plane_points=3, align="weights", capacity=("norms", "spectral_complexity"),
                **TINY)
    run = res["runs"][0]
    models, spec = _models(runs[0])
    states = {s: m.state_dict() for s, m in models.items()}
    data, small = _batches(12, 6), _batches(4, 6)
    loss = RecipeLoss(0.0, spec["loss_scaling"], 1)
    probe = lp.LandscapeProbe(build_model(0.125, 4, 0), loss, data, progress=False)
    for s in SETTINGS:
        assert run["losses"][s] == probe.loss(states[s])
    for a, b in PAIRS:
        c = probe.interpolate(states[a], states[b], points=3)
        rec = run["curves"][f"{a}~{b}"]
        np.testing.assert_array_equal(rec["losses"], c.losses)
        assert rec["barrier"] == c.barrier
        al = probe.interpolate(states[a], states[b], points=3, align="weights")
        np.testing.assert_array_equal(run["aligned_curves"][f"{a}~{b}"]["losses"], al.losses)
        assert run["aligned_curves"][f"{a}~{b}"]["identity"] == al.settings["align"]["identity"]
    surf = probe.plane(through=tuple(states[s] for s in SETTINGS), points=3, seed=0)
    np.testing.assert_array_equal(np.asarray(run["plane"]["losses"]), surf.losses)
    curv = lp.LandscapeProbe(build_model(0.125, 4, 0), loss, small, progress=False)
    for scope in ("model", "enet", "inet", "rnet"):
        H = curv.hessian(states["mix"], subnet=None if scope == "model" else scope)
        assert run["hessian"]["mix"][scope]["eigenvalues"] == [float(v) for v in
                                                               H.top_eigenvalues(2, tol=1e-3).values]
        assert run["hessian"]["mix"][scope]["trace"] == float(H.trace(matvecs=6, seed=0).value)
    rep = lp.capacity.report(models["all-l1"], small, {n: n for n in ("enet", "inet", "rnet")}, loss,
                             measures=["norms", "spectral_complexity"], reference=build_model(0.125, 4, 0),
                             progress=False)
    assert run["capacity"]["all-l1"]["values"] == rep.values
    assert run["models"]["mix"]["sha256"] and run["models"]["mix"]["steps"] == 2
    flat = {s: torch.cat([p.flatten() for p in m.parameters()]).double() for s, m in models.items()}
    init = torch.cat([p.flatten() for p in build_model(0.125, 4, 0).parameters()]).double()
    assert run["from_init"]["all-l1"] == pytest.approx(float((flat["all-l1"] - init).norm()), rel=1e-6)
    assert run["distances"]["all-l2~mix"] == pytest.approx(float((flat["all-l2"] - flat["mix"]).norm()), rel=1e-6)


def test_several_runs_summarise_paired_differences_like_scipy(runs, tmp_path):
    res = study(runs, tmp_path, align="weights", capacity=("norms",), subnets=False, **{**TINY, "top_k": 0,
                                                                                      "trace_matvecs": 0})
    s = res["summary"]
    per = [r["losses"] for r in res["runs"]]
    d = [p["all-l1"] - p["mix"] for p in per]
    got = s["loss"]["all-l1_minus_mix"]
    assert got["values"] == d and got["n"] == 2
    if np.std(d) > 0:
        assert got["p"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
        half = stats.t.ppf(0.975, 1) * np.std(d, ddof=1) / math.sqrt(2)
        assert got["ci95"] == pytest.approx([np.mean(d) - half, np.mean(d) + half])
    assert s["l1 model"]["mix"]["values"] == [r["capacity"]["mix"]["values"]["model"]["l1"] for r in res["runs"]]
    # the curve between the two seeds of each setting, plain and aligned
    across = res["across_seeds"]
    assert across["seeds"] == [0, 1] and set(across) == {"seeds", *SETTINGS}
    assert across["mix"]["aligned"]["aligned"] == "weights"
    x, y = torch.cat([b[0] for b in _batches(12, 6)]), torch.cat([b[1] for b in _batches(12, 6)])
    assert res["bicubic_loss"] == pytest.approx(float((x - y).pow(2).sum() / (2 * len(x))), rel=1e-6)
    a, b = (_models(r)[0]["mix"].state_dict() for r in runs)
    probe = lp.LandscapeProbe(build_model(0.125, 4, 0), RecipeLoss(0.0, "sum_over_pixels", 1), _batches(12, 6),
                              progress=False)
    np.testing.assert_array_equal(across["mix"]["aligned"]["losses"],
                                  probe.interpolate(a, b, points=3, align="weights").losses)


def test_runs_measured_before_are_reused_and_summarised(runs, tmp_path):
    opts = dict(align=None, capacity=("norms",), subnets=False, **{**TINY, "top_k": 0, "trace_matvecs": 0})
    one = study(runs[:1], tmp_path / "one", **opts)
    both = study([tmp_path / "one", runs[1]], tmp_path / "both", **opts)
    assert both["runs"][0] == json.loads((tmp_path / "one" / "study.json").read_text())["runs"][0]
    assert both["runs"][0]["losses"] == one["runs"][0]["losses"] and both["runs"][1]["seed"] == 1
    assert both["summary"]["loss"]["mix"]["values"] == [r["losses"]["mix"] for r in both["runs"]]
    with pytest.raises(ValueError, match="other options.*points"):
        study([tmp_path / "one", runs[1]], tmp_path / "x", **{**opts, "points": 5})
    with pytest.raises(LoadError, match="not the study of one run"):
        study([tmp_path / "both"], tmp_path / "y", **opts)


def test_paired_statistics_by_hand():
    r = paired([0.5, 1.5, 1.0, 2.0])
    x = np.array([0.5, 1.5, 1.0, 2.0])
    se = x.std(ddof=1) / 2
    assert r["mean"] == 1.25 and r["stderr"] == pytest.approx(se)
    assert r["ci95"] == pytest.approx([1.25 - 3.182446305 * se, 1.25 + 3.182446305 * se])
    assert r["p"] == pytest.approx(stats.ttest_1samp(x, 0).pvalue) and r["favouring"] == 4
    one = paired([2.0])
    assert math.isnan(one["sd"]) and math.isnan(one["p"])


def test_summary_keeps_only_measures_every_run_has():
    a = {"losses": {"all-l2": 1.0, "mix": 2.0, "all-l1": 3.0}, "curves": {"all-l2~mix": {"barrier": 0.1}}}
    b = {"losses": {"all-l2": 2.0, "mix": 2.0, "all-l1": 1.0}}
    s = summarize_runs([a, b])
    assert list(s) == ["loss"]
    assert s["loss"]["all-l2_minus_mix"]["values"] == [-1.0, 0.0]


def test_figures_regenerate_from_the_json_alone(runs, tmp_path):
    study(runs, tmp_path, plane_points=3, align=None, capacity=None, subnets=False,
          **{**TINY, "figures": True, "top_k": 1, "trace_matvecs": 4})
    first = {p.name: p.stat().st_size for p in tmp_path.glob("*.png")}
    tables = (tmp_path / "tables.md").read_text()
    assert "| loss |" in tables and "| 0 |" in tables and "| 1 |" in tables
    assert set(first) == {"curves.png", "plane.png", "spectra.png", "differences.png"}   # no across: align=None
    for p in tmp_path.glob("*.png"):
        p.unlink()
    assert main(["figures", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.glob("*.png")} == set(first)
    assert all(p.stat().st_size > 1000 for p in tmp_path.glob("*.png"))


def test_seeds_figure_regenerates_from_seeds_summary(tmp_path):
    from landprobe.recipes import summarize_seeds

    for seed, gap in enumerate([1.0, 2.0, 3.0]):
        for s, p in {"all-l2": 30.0, "mix": 30.0, "all-l1": 30.0 + gap}.items():
            (tmp_path / f"seed{seed}" / s).mkdir(parents=True)
            (tmp_path / f"seed{seed}" / s / "history.jsonl").write_text(
                "".join(json.dumps({"epoch": e, "psnr": p + e}) + "\n" for e in range(1, 7)))
    summarize_seeds([tmp_path / f"seed{i}" for i in range(3)], out=tmp_path, figures=False)
    assert not (tmp_path / "psnr_seeds.png").exists()
    assert main(["figures", str(tmp_path)]) == 0
    assert (tmp_path / "psnr_seeds.png").stat().st_size > 1000
    with pytest.raises(SystemExit):
        main(["figures", str(tmp_path / "seed0")])     # neither JSON: one line, exit 2


def test_cli_records_the_command_and_prints_barriers(runs, tmp_path, capsys):
    argv = ["study", str(runs[0]), "--out", str(tmp_path), "--data", str(lp.data.sample_dir("train")),
            "--patches", "12", "--curvature-patches", "6",
            "--batch-size", "6", "--points", "3", "--top-k", "1", "--trace-matvecs", "0", "--no-subnets",
            "--align", "none", "--capacity", "norms", "--no-figures", "--no-progress"]
    assert main(argv) == 0
    res = json.loads((tmp_path / "study.json").read_text())
    assert res["command"].startswith("landprobe study ") and "--patches 12" in res["command"]
    assert res["options"]["align"] is None and res["patches_used"] == 12
    assert "barriers all-l2~mix" in capsys.readouterr().out


def test_bad_inputs_name_what_is_wrong(runs, tmp_path):
    with pytest.raises(ValueError, match="runs="):
        study(str(runs[0]), tmp_path)
    with pytest.raises(ValueError, match="points=2"):
        study(runs[:1], tmp_path, points=2)
    with pytest.raises(ValueError, match="trace_matvecs=3.*at least 4"):
        study(runs[:1], tmp_path, trace_matvecs=3)
    with pytest.raises(ValueError, match="align='nope'"):
        study(runs[:1], tmp_path, align="nope")
    with pytest.raises(ValueError, match="unknown group"):
        study(runs[:1], tmp_path, capacity=("bogus",))
    empty = tmp_path / "empty"
    (empty / "mix").mkdir(parents=True)
    with pytest.raises(ValueError, match="all-l2.*checkpoint.pt.*missing"):
        study([empty], tmp_path)
    with pytest.raises(LoadError, match="study.json"):
        study_figures(tmp_path)
    (tmp_path / "study.json").write_text("{\"x\": 1}")
    with pytest.raises(LoadError, match="not a study"):
        study_figures(tmp_path)
