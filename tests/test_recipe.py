"""The reproduction recipe: training lowers the loss on T91, history records, bitwise resume after
SIGKILL, checkpoint contents, summary and figures, and every error path."""

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import landprobe as lp
from landprobe.recipes import _train
from landprobe.recipes.reproduce import reproduce, summarize

REPO = Path(__file__).resolve().parents[1]
T91 = REPO / "data" / "T91"
SAMPLE_TRAIN, SAMPLE_VAL = lp.data.sample_dir("train"), lp.data.sample_dir("val")
# a tiny WARSHIP and small batches: each run below takes a few seconds on 2 cores
TINY = dict(width=0.05, batch_size=8)  # WARSHIP widths 10/5/12: 2,790 parameters


def tiny_run(out, setting="mix", **kw):
    opts = dict(data=SAMPLE_TRAIN, val=SAMPLE_VAL, out=out, progress=False, **TINY)
    opts.update(kw)
    return reproduce(setting, **opts)


def read_history(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- training works
@pytest.mark.skipif(not T91.is_dir(), reason="needs the repo's data/T91")
def test_short_run_on_t91_lowers_training_loss(tmp_path):
    res = reproduce("all-l2", data=T91, val=SAMPLE_VAL, out=tmp_path, epochs=3, patches_per_epoch=64,
                    width=0.1, batch_size=16, progress=False)
    hist = read_history(tmp_path / "all-l2" / "history.jsonl")
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert res["patches"] == 9362                     # the study's T91 x2 patch count
    first, last = hist[0], hist[-1]
    assert last["loss_final"] < 0.8 * first["loss_final"], [r["loss_final"] for r in hist]
    assert last["loss_intermediate"] < first["loss_intermediate"]


def test_steps_follow_the_continuous_sampler(tmp_path):
    # 49 sample patches, batch 8: epoch e ends after ceil(49 e / 8) steps = 7, 13
    tiny_run(tmp_path, epochs=2)
    hist = read_history(tmp_path / "mix" / "history.jsonl")
    assert [r["step"] for r in hist] == [7, 13]
    assert _train.steps_for_epochs(45, 9362, 64) == 6583 == math.ceil(45 * 9362 / 64)


def test_history_records_and_checkpoint(tmp_path):
    final = tiny_run(tmp_path, epochs=2, patches_per_epoch=16)
    hist = read_history(tmp_path / "mix" / "history.jsonl")
    assert [r["step"] for r in hist] == [2, 4]
    for r in hist:
        for key in ("epoch", "step", "lr", "psnr", "val_mse", "loss_final", "loss_intermediate", "penalty",
                    "norms", "sparsity", "seconds"):
            assert key in r, key
        assert set(r["norms"]) == {"enet", "inet", "rnet"}
        for sub in ("enet", "inet", "rnet"):
            assert set(r["sparsity"][sub]) == {"frac_small", "hoyer", "treves_rolls"}
            assert 0 <= r["sparsity"][sub]["hoyer"] <= 1
            assert 0 <= r["sparsity"][sub]["treves_rolls"] <= 1
        assert r["lr"] == 0.01
    assert final["psnr"] == hist[-1]["psnr"] and final["steps"] == 4
    # the last record's norms and penalty are those of the checkpointed model
    ck = torch.load(tmp_path / "mix" / "checkpoint.pt", weights_only=True)
    model = _train.build_model(TINY["width"], 4, seed=0)
    model.load_state_dict(ck["model"])
    for sub in ("enet", "inet", "rnet"):
        flat = torch.cat([p.detach().reshape(-1) for p in getattr(model, sub).parameters()]).double()
        assert hist[-1]["norms"][sub]["l1"] == pytest.approx(float(flat.abs().sum()), rel=1e-12)
        assert hist[-1]["norms"][sub]["l2sq"] == pytest.approx(float((flat * flat).sum()), rel=1e-12)
        assert hist[-1]["sparsity"][sub]["hoyer"] == pytest.approx(_train.hoyer(flat), rel=1e-12)
    pen = lp.SubnetNormPenalty.preset(model, "mix", weight=2e-4)
    assert hist[-1]["penalty"] == pytest.approx(pen().item(), rel=1e-6)
    # checkpoint contents: plain tensors/containers, every RNG state, the data stream position
    assert {"model", "optimizer", "scheduler", "epoch", "step", "rng", "data", "history"} <= set(ck)
    assert set(ck["rng"]) == {"torch", "numpy", "python"}
    assert ck["epoch"] == 2 and ck["step"] == 4 and len(ck["history"]) == 2
    assert isinstance(ck["data"]["generator"], torch.Tensor)


def test_validation_psnr_matches_a_direct_computation(tmp_path):
    tiny_run(tmp_path, epochs=1, patches_per_epoch=8, val_crop=None)  # whole images
    ck = torch.load(tmp_path / "mix" / "checkpoint.pt", weights_only=True)
    model = _train.build_model(TINY["width"], 4, seed=0)
    model.load_state_dict(ck["model"])
    model.eval()
    val = lp.data.SREvalSet(SAMPLE_VAL, 2)
    with torch.no_grad():
        ps = [float(lp.metrics.psnr(y[None], _train.split_output(model(x[None]))[0], shave=2, reduction="mean"))
              for x, y in (val[i] for i in range(len(val)))]
    assert read_history(tmp_path / "mix" / "history.jsonl")[0]["psnr"] == pytest.approx(np.mean(ps), abs=1e-9)


def test_bf16_run_and_plateau_schedule(tmp_path):
    # patience 0 and factor 0.1: the lr drops after any epoch whose validation MSE does not improve
    tiny_run(tmp_path, epochs=3, patches_per_epoch=8, amp="bf16", lr=0.0, plateau_patience=0)
    hist = read_history(tmp_path / "mix" / "history.jsonl")
    assert hist[0]["lr"] == 0.0 and all(math.isfinite(r["psnr"]) for r in hist)


def test_plateau_divides_lr_by_ten(tmp_path):
    # lr 1e-6 with clipping at 1: the validation error moves by far less than the scheduler's relative
    # threshold 1e-4, so with patience 0 it counts epoch 2 as bad and divides the lr of epoch 3 by 10
    # (each record holds the lr its epoch trained with)
    tiny_run(tmp_path, epochs=3, patches_per_epoch=8, lr=1e-6, plateau_patience=0)
    lrs = [r["lr"] for r in read_history(tmp_path / "mix" / "history.jsonl")]
    assert lrs == [1e-6, 1e-6, pytest.approx(1e-7, rel=1e-12)]


# ----------------------------------------------------------------------------- resume
_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    import landprobe as lp
    from landprobe.recipes import reproduce
    out, resume, delay = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
    cb = (lambda tr: time.sleep(delay)) if delay > 0 else None
    reproduce("mix", data=lp.data.sample_dir("train"), val=lp.data.sample_dir("val"), out=out,
              epochs=2, width=%r, batch_size=8, patches_per_epoch=40, checkpoint_every=2,
              resume=resume, progress=False, callback=cb)
""" % TINY["width"])


def _run_script(script, out, resume, delay):
    return subprocess.Popen([sys.executable, str(script), str(out), "1" if resume else "0", str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_resume_after_sigkill_mid_epoch_is_bitwise_equal(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    full = _run_script(script, tmp_path / "full", False, 0.0)
    killed = _run_script(script, tmp_path / "killed", False, 0.4)
    ckpt = tmp_path / "killed" / "mix" / "checkpoint.pt"
    step = None
    deadline = time.time() + 120
    while time.time() < deadline:  # epoch 1 ends at step 5; kill at a mid-epoch-2 checkpoint
        if ckpt.exists():
            step = torch.load(ckpt, weights_only=True)["step"]
            if step >= 6:
                break
        assert killed.poll() is None, killed.stdout.read().decode()
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    ck = torch.load(ckpt, weights_only=True)
    assert 6 <= ck["step"] < 10 and ck["epoch"] == 1   # killed inside epoch 2
    resumed = _run_script(script, tmp_path / "killed", True, 0.0)
    assert resumed.wait(120) == 0, resumed.stdout.read().decode()
    assert full.wait(120) == 0, full.stdout.read().decode()
    a = torch.load(tmp_path / "full" / "mix" / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["step"] == b["step"] == 10
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for ka, kb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(ka["momentum_buffer"], kb["momentum_buffer"])
    ha, hb = (read_history(p / "mix" / "history.jsonl") for p in (tmp_path / "full", tmp_path / "killed"))
    assert [r["psnr"] for r in ha] == [r["psnr"] for r in hb]
    assert [r["loss_final"] for r in ha] == [r["loss_final"] for r in hb]


def test_max_steps_then_resume_continues(tmp_path):
    first = tiny_run(tmp_path, epochs=2, patches_per_epoch=16, max_steps=3)
    assert first["steps"] == 3 and first["epochs_completed"] == 1
    second = tiny_run(tmp_path, epochs=2, patches_per_epoch=16, resume=True)
    assert second["steps"] == 4 and second["epochs_completed"] == 2 and second["steps_this_call"] == 1


# ----------------------------------------------------------------------------- summary, monitor
def test_all_settings_summary_and_figures(tmp_path):
    summ = reproduce("all", data=SAMPLE_TRAIN, val=SAMPLE_VAL, out=tmp_path, epochs=3, patches_per_epoch=8,
                     progress=False, monitor={"hessian": False, "capacity": ["norms"]}, **TINY)
    for s in ("all-l2", "mix", "all-l1"):
        assert len(read_history(tmp_path / s / "history.jsonl")) == 3
        snaps = sorted((tmp_path / s / "snapshots").glob("snapshot_*.pt"))
        assert [torch.load(p, weights_only=True)["step"] for p in snaps] == [0, 1, 2, 3]
        records = json.loads((tmp_path / s / "monitor" / "monitor.json").read_text())["records"]
        assert [r["epoch"] for r in records] == [1, 2, 3] and "barrier" in records[-1]
    for name in ("summary.json", "psnr_stages.png", "norms.png", "sparsity.png"):
        assert (tmp_path / name).stat().st_size > 0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["stages"] == [[1, 1], [2, 2], [3, 3]]
    c = summ["comparisons"]["inet_l2_beats_l1"]
    hist = {s: read_history(tmp_path / s / "history.jsonl") for s in ("all-l2", "mix")}
    expected = np.mean([r["psnr"] for r in hist["all-l2"][1:]]) - np.mean([r["psnr"] for r in hist["mix"][1:]])
    assert c["difference_db"] == pytest.approx(expected, abs=1e-6)
    assert c["supported"] == (expected > 0)
    assert 30 < summ["bicubic_psnr"] < 40


def test_summarize_stages_of_45_epochs(tmp_path):
    for s, base in {"all-l2": 30.0, "mix": 30.5, "all-l1": 31.0}.items():
        (tmp_path / s).mkdir()
        rows = [{"epoch": e, "psnr": base + (0.1 if e > 15 else 0.0)} for e in range(1, 46)]
        (tmp_path / s / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summ = summarize(tmp_path, figures=False)
    assert summ["stages"] == [[1, 15], [16, 30], [31, 45]]
    assert summ["psnr_by_stage"]["mix"]["epochs 16-30"]["mean"] == pytest.approx(30.6)
    c = summ["comparisons"]
    assert c["enet_rnet_l1_beats_l2"]["difference_db"] == pytest.approx(0.5) and c["enet_rnet_l1_beats_l2"]["supported"]
    assert c["inet_l2_beats_l1"]["difference_db"] == pytest.approx(-0.5) and not c["inet_l2_beats_l1"]["supported"]
    assert c["inet_l2_beats_l1"]["epochs_where_claim_holds"] == 0


def _seed_runs(root, gaps_l1, gaps_l2, epochs=45):
    """Fake runs: per seed, All-L1 and All-L2 sit gaps above Mix from stage 2 on (none before)."""
    outs = []
    for seed, (g1, g2) in enumerate(zip(gaps_l1, gaps_l2)):
        out = root / f"seed{seed}"
        for s, gap in {"all-l2": g2, "mix": 0.0, "all-l1": g1}.items():
            (out / s).mkdir(parents=True)
            rows = [{"epoch": e, "psnr": 30.0 + seed + (gap if e > epochs // 3 else 0.0)} for e in range(1, epochs + 1)]
            (out / s / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        outs.append(out)
    return outs


def test_summarize_seeds_against_a_hand_computed_t_test(tmp_path):
    from scipy import stats

    from landprobe.recipes import summarize_seeds

    outs = _seed_runs(tmp_path, gaps_l1=[0.5, 0.9, 0.4, 0.6], gaps_l2=[0.3, -0.2, 0.1, -0.4])
    res = summarize_seeds(outs)                       # writes into tmp_path, the parent
    c1, c2 = res["comparisons"]["enet_rnet_l1_beats_l2"], res["comparisons"]["inet_l2_beats_l1"]
    d = np.array([0.5, 0.9, 0.4, 0.6])
    assert c1["differences_db"] == pytest.approx(d.tolist())
    assert c1["mean_db"] == pytest.approx(0.6) and c1["sd_db"] == pytest.approx(d.std(ddof=1), abs=1e-6)
    t = d.mean() / (d.std(ddof=1) / 2)                 # by hand; the p-value from the t distribution's CDF
    assert c1["t_statistic"] == pytest.approx(t)
    assert c1["t_test_p_two_sided"] == pytest.approx(2 * stats.t.sf(t, df=3))
    assert c1["seeds_favouring_claim"] == 4 and c1["supported"] and c1["significant"]
    assert c2["mean_db"] == pytest.approx(-0.05) and c2["seeds_favouring_claim"] == 2
    assert not c2["supported"] and not c2["significant"]
    # per-epoch mean over seeds: 30 + mean(seed) + gap after epoch 15
    mix = res["psnr_per_epoch_over_seeds"]["mix"]
    assert mix["mean"][0] == pytest.approx(31.5) and mix["sd"][0] == pytest.approx(np.std([30, 31, 32, 33], ddof=1))
    assert res["psnr_per_epoch_over_seeds"]["all-l1"]["mean"][20] == pytest.approx(32.1)
    assert (tmp_path / "seeds_summary.json").is_file() and (tmp_path / "psnr_seeds.png").is_file()
    assert lp.common.io.load_json(tmp_path / "seeds_summary.json")["comparisons"]["inet_l2_beats_l1"]["seeds"] == 4


def test_summarize_seeds_with_identical_differences_and_errors(tmp_path):
    from landprobe.recipes import summarize_seeds

    outs = _seed_runs(tmp_path, gaps_l1=[0.5, 0.5], gaps_l2=[0.0, 0.0], epochs=6)
    res = summarize_seeds(outs, out=tmp_path / "agg", figures=False)
    c1, c2 = res["comparisons"]["enet_rnet_l1_beats_l2"], res["comparisons"]["inet_l2_beats_l1"]
    assert c1["sd_db"] == 0 and c1["t_test_p_two_sided"] == 0.0 and c1["significant"]
    assert c2["mean_db"] == 0 and c2["t_test_p_two_sided"] == 1.0 and not c2["supported"]
    assert (tmp_path / "agg" / "seeds_summary.json").is_file()
    with pytest.raises(ValueError, match="at least two run folders"):
        summarize_seeds(outs[:1])
    with pytest.raises(ValueError, match="history.jsonl. is missing"):
        summarize_seeds([outs[0], tmp_path / "nothing"])


def test_summarize_command_prints_the_seed_comparison(tmp_path, capsys):
    from landprobe.cli import main

    outs = _seed_runs(tmp_path, gaps_l1=[0.5, 0.9, 0.4], gaps_l2=[0.3, -0.2, 0.1], epochs=6)
    assert main(["summarize", *map(str, outs), "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "L1 beats L2 for Enet/Rnet: All-L1 > Mix: per seed +0.500, +0.900, +0.400 dB; mean +0.600" in text
    assert "3/3 seeds favour it" in text and "2/3 seeds favour it" in text
    assert main(["summarize", str(outs[0]), "--no-figures"]) == 0
    assert "supported" in capsys.readouterr().out


# ----------------------------------------------------------------------------- sparsity helpers
def test_hoyer_and_population_sparseness_closed_forms():
    w = torch.tensor([3.0, 4.0, 0.0, 0.0], dtype=torch.float64)  # l1 7, l2 5, n 4
    assert _train.hoyer(w) == pytest.approx((2 - 7 / 5) / (2 - 1), abs=1e-12)
    assert math.isnan(_train.hoyer(torch.zeros(3)))
    # one stimulus, five units, two of them active at 2: a = (4/5)^2 / (8/5) = 2/5, S = (1 - a) / (1 - 1/5)
    r = torch.tensor([2.0, 2.0, 0.0, 0.0, 0.0], dtype=torch.float64).reshape(1, 5, 1, 1)
    total, count = _train.population_sparseness_sums(r)
    assert count == 1 and total == pytest.approx(0.6 / 0.8, abs=1e-12)


def test_activation_sparseness_matches_lp_capacity(tmp_path):
    capacity = pytest.importorskip("landprobe.capacity")
    tiny_run(tmp_path, epochs=1, patches_per_epoch=8, val_crop=None)  # whole images
    rec = read_history(tmp_path / "mix" / "history.jsonl")[0]
    model = _train.build_model(TINY["width"], 4, seed=0)
    model.load_state_dict(torch.load(tmp_path / "mix" / "checkpoint.pt", weights_only=True)["model"])
    val = lp.data.SREvalSet(SAMPLE_VAL, 2)
    # rnet's output is one image: the recipe reads rnet's last hidden activation (rnet.relu2)
    ref = capacity.activation_sparseness(model, [(x[None], y[None]) for x, y in (val[i] for i in range(len(val)))],
                                         {"enet": "enet", "inet": "inet", "rnet": "rnet.relu2"})
    for s in ("enet", "inet", "rnet"):
        assert rec["sparsity"][s]["treves_rolls"] == pytest.approx(ref[s]["population_sparseness"], rel=1e-9)
        flat = torch.cat([p.detach().reshape(-1) for p in getattr(model, s).parameters()])
        assert rec["sparsity"][s]["frac_small"] == capacity.fraction_near_zero(flat, 1e-3)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kw, match", [
    (dict(setting="l3"), "setting='l3'"),
    (dict(preset="gpu"), "preset='gpu'"),
    (dict(amp="fp16"), "amp='fp16'"),
    (dict(epochs=0), "epochs=0"),
    (dict(max_steps=0), "max_steps=0"),
    (dict(seed=-1), "seed=-1"),
    (dict(data="/no/such/t91"), "/no/such/t91"),
    (dict(val="/no/such/set5"), "/no/such/set5"),
    (dict(learning_rate=0.1), "unknown option"),
])
def test_reproduce_argument_errors(tmp_path, kw, match):
    args = dict(setting="mix", data=SAMPLE_TRAIN, val=SAMPLE_VAL, out=tmp_path, progress=False)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        reproduce(args.pop("setting"), **args)


def test_existing_checkpoint_needs_resume_and_same_settings(tmp_path):
    tiny_run(tmp_path, epochs=1, patches_per_epoch=8)
    with pytest.raises(ValueError, match="pass resume=True"):
        tiny_run(tmp_path, epochs=1, patches_per_epoch=8)
    with pytest.raises(ValueError, match="other settings"):
        tiny_run(tmp_path, epochs=1, patches_per_epoch=16, resume=True)


def test_not_a_checkpoint_is_rejected():
    data = lp.data.T91Patches(SAMPLE_TRAIN, 2)
    tr = _train.Trainer(_train.TrainSpec(**TINY), data.inputs, data.targets)
    with pytest.raises(ValueError, match="not a landprobe recipe checkpoint"):
        tr.load_state_dict({"model": {}})


def test_divergence_is_reported():
    data = lp.data.T91Patches(SAMPLE_TRAIN, 2)
    spec = _train.TrainSpec(**TINY, lr=1e4, clip_norm=None, max_steps=20, epochs=10)
    tr = _train.Trainer(spec, data.inputs, data.targets)
    with pytest.raises((FloatingPointError, ValueError), match="lower the learning rate|lower lr"):
        tr.run()


def test_summarize_needs_every_history(tmp_path):
    with pytest.raises(ValueError, match="all-l2.*history.jsonl. is missing"):
        summarize(tmp_path)
    for s in ("all-l2", "mix", "all-l1"):
        (tmp_path / s).mkdir()
        (tmp_path / s / "history.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        summarize(tmp_path)


def test_demo_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="settings="):
        lp.recipes.demo(out=tmp_path, settings=("all-l2", "l0"))
    with pytest.raises(ValueError, match="steps=0"):
        lp.recipes.demo(out=tmp_path, steps=0)
    with pytest.raises(ValueError, match="points=1"):
        lp.recipes.demo(out=tmp_path, points=1)
    with pytest.raises(ValueError, match="threads=0"):
        lp.recipes.demo(out=tmp_path, threads=0)
    with pytest.raises(ValueError, match="extend=-0.1"):
        lp.recipes.demo(out=tmp_path, extend=-0.1)
    with pytest.raises(ValueError, match="amp='fp16'"):
        lp.recipes.demo(out=tmp_path, amp="fp16")


def test_demo_is_deterministic_for_a_seed(tmp_path):
    kw = dict(steps=2, points=2, extend=0.0, progress=False, verbose=False)
    first = lp.recipes.demo(out=tmp_path / "a", seed=3, **kw)
    again = lp.recipes.demo(out=tmp_path / "b", seed=3, **kw)
    other = lp.recipes.demo(out=tmp_path / "c", seed=4, **kw)

    def numbers(res):
        return ([(r["psnr"], r["penalty"]) for r in res["runs"]],
                [(c["curve"]["losses"], c["distance"]) for c in res["curves"]])

    assert numbers(first) == numbers(again)
    assert numbers(first) != numbers(other)
    assert [r["seed"] for r in other["runs"]] == [4, 5, 4]
    saved = json.loads((tmp_path / "a" / "demo.json").read_text())
    assert numbers(saved) == numbers(first) and saved["settings"]["seed"] == 3


def test_validation_on_centre_crops_and_whole_images_at_the_end(tmp_path):
    from landprobe.recipes.reproduce import _centre_crop

    x = torch.arange(2 * 10 * 12, dtype=torch.float32).reshape(2, 10, 12)[:1]
    cx, cy = _centre_crop(x, x + 1, 5, 2)             # 5 -> 4 (a multiple of the scale), centred on even offsets
    assert cx.shape == (1, 4, 4) and torch.equal(cx, x[:, 2:6, 4:8]) and torch.equal(cy, x[:, 2:6, 4:8] + 1)
    final = tiny_run(tmp_path, epochs=1, patches_per_epoch=8, val_crop=64)
    val = lp.data.SREvalSet(SAMPLE_VAL, 2)
    crops = [_centre_crop(*val[i], 64, 2) for i in range(len(val))]
    assert final["bicubic_psnr"] == pytest.approx(np.mean([float(lp.metrics.psnr(y, x, shave=2)) for x, y in crops]))
    assert final["bicubic_psnr_whole_images"] == pytest.approx(val.bicubic_psnr())
    assert final["val_crop"] == 64 and math.isfinite(final["psnr_whole_images"])
    assert final["psnr_whole_images"] != final["psnr"]  # the whole images are another set
