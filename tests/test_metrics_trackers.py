"""PSNRTracker and EmpiricalErrorTracker: weighting, epochs, stages, persistence, plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landprobe.metrics import DEFAULT_STAGES, EmpiricalErrorTracker, PSNRTracker, psnr


def _batch(seed, n):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, 1, 10, 10, generator=g)
    sr = (hr + 0.03 * torch.randn(n, 1, 10, 10, generator=g)).clamp(0, 1)
    return sr, hr


class TestPSNRTracker:
    def test_sample_weighted_over_uneven_batches(self):
        batches = [_batch(0, 5), _batch(1, 2), _batch(2, 1)]
        tr = PSNRTracker(shave=2)
        for sr, hr in batches:
            tr.update(sr, hr)
        assert tr.count == 8
        all_sr = torch.cat([b[0] for b in batches])
        all_hr = torch.cat([b[1] for b in batches])
        expected = psnr(all_hr, all_sr, shave=2).mean().item()
        assert tr.end_epoch() == pytest.approx(expected, abs=1e-10)
        assert tr.history == [pytest.approx(expected, abs=1e-10)] and tr.count == 0

    def test_update_returns_batch_mean_and_accepts_one_image(self):
        sr, hr = _batch(3, 4)
        tr = PSNRTracker()
        assert tr.update(sr, hr) == pytest.approx(psnr(hr, sr).mean().item(), abs=1e-10)
        tr.update(sr[0], hr[0])
        assert tr.count == 5

    def test_stage_summary(self):
        tr = PSNRTracker()
        assert tr.stages == DEFAULT_STAGES
        tr.history = [float(e) for e in range(1, 46)]
        s = tr.summary()
        assert list(s) == ["epochs 1-15", "epochs 16-30", "epochs 31-45"]
        assert [s[k]["mean"] for k in s] == [8.0, 23.0, 38.0]
        assert s["epochs 16-30"]["min"] == 16.0 and s["epochs 16-30"]["last"] == 30.0
        tr.history = tr.history[:20]
        s = tr.summary()
        assert s["epochs 16-30"]["n"] == 5 and s["epochs 16-30"]["mean"] == 18.0
        assert s["epochs 31-45"] == {"first": 31, "last_epoch": 45, "n": 0, "mean": None, "min": None, "max": None, "last": None}
        custom = PSNRTracker(stages=[(1, 2), (3, 4)])
        custom.history = [1.0, 2.0, 3.0, 5.0]
        assert [v["mean"] for v in custom.summary().values()] == [1.5, 4.0]

    def test_save_load_round_trip(self, tmp_path):
        tr = PSNRTracker(shave=3, data_range=1.0, stages=[(1, 2)])
        for e in range(3):
            tr.update(*_batch(e, 3))
            tr.end_epoch()
        tr.update(*_batch(9, 2))  # an open epoch survives too
        path = tr.save(tmp_path / "sub" / "psnr.json")
        assert json.loads(path.read_text())["kind"] == "PSNRTracker"
        back = PSNRTracker.load(path)
        assert back.history == tr.history and back.shave == 3 and back.stages == ((1, 2),)
        assert back.count == 2 and back.end_epoch() == pytest.approx(tr.end_epoch(), abs=1e-12)
        assert not list(path.parent.glob("*.tmp"))

    def test_plot(self):
        pytest.importorskip("matplotlib")
        tr = PSNRTracker()
        tr.history = [30.0, 31.0, 31.5]
        ax = tr.plot()
        assert len(ax.lines) == 1 and list(ax.lines[0].get_ydata()) == [30.0, 31.0, 31.5]
        assert ax.get_ylabel() == "PSNR (dB)"


class TestEmpiricalErrorTracker:
    def test_weighted_mean(self):
        tr = EmpiricalErrorTracker()
        losses, sizes = [0.5, 0.25, 2.0], [64, 64, 3]
        for loss, n in zip(losses, sizes):
            tr.update(torch.tensor(loss), n)
        assert tr.end_epoch() == pytest.approx(np.average(losses, weights=sizes), abs=1e-15)
        tr.update(1.0, 1)
        assert tr.end_epoch() == 1.0 and len(tr.history) == 2
        assert "epochs=2" in repr(tr)

    def test_save_load(self, tmp_path):
        tr = EmpiricalErrorTracker(stages=[(1, 1), (2, 5)])
        tr.update(0.1, 10)
        tr.end_epoch()
        back = EmpiricalErrorTracker.load(tr.save(tmp_path / "e.json"))
        assert back.history == [0.1] and back.stages == ((1, 1), (2, 5))

    def test_errors(self, tmp_path):
        tr = EmpiricalErrorTracker()
        with pytest.raises(ValueError, match=r"no samples in the current epoch; call update"):
            tr.end_epoch()
        with pytest.raises(ValueError, match="`n` must be the batch size"):
            tr.update(1.0, 0)
        with pytest.raises(ValueError, match="`stages` entry \\(5, 3\\) is not a valid inclusive epoch range"):
            EmpiricalErrorTracker(stages=[(5, 3)])
        with pytest.raises(ValueError, match="`stages` must be a sequence of"):
            EmpiricalErrorTracker(stages=[1, 2])
        path = PSNRTracker().save(tmp_path / "p.json")
        with pytest.raises(ValueError, match="holds kind 'PSNRTracker', not EmpiricalErrorTracker"):
            EmpiricalErrorTracker.load(path)
