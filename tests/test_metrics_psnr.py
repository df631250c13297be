"""PSNR: hand values, the torchmetrics reference, clamping, shaving and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from landprobe.metrics import psnr


def _pair(seed=0, n=4, c=1, h=12, w=10):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    sr = (hr + 0.05 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    return hr, sr


class TestFeature:
    def test_hand_values(self):
        hr = torch.zeros(1, 1, 4, 4)
        sr = hr + 1 / 255  # MSE 1 on [0, 255]
        assert psnr(hr, sr).item() == pytest.approx(20 * math.log10(255), abs=1e-4)
        assert psnr(hr * 255, sr * 255, data_range=255).item() == pytest.approx(20 * math.log10(255), abs=1e-9)
        assert psnr(hr, hr).item() == math.inf

    def test_matches_torchmetrics(self):
        tm = pytest.importorskip("torchmetrics.functional.image")
        hr, sr = _pair()
        hr255, sr255 = hr * 255, sr * 255
        expected = tm.peak_signal_noise_ratio(sr255, hr255, data_range=255, dim=(1, 2, 3), reduction="none")
        torch.testing.assert_close(psnr(hr255, sr255, data_range=255), expected.double(), rtol=0, atol=1e-6)
        torch.testing.assert_close(psnr(hr, sr), expected.double(), rtol=0, atol=1e-6)
        mean = tm.peak_signal_noise_ratio(sr255, hr255, data_range=255, dim=(1, 2, 3))
        assert psnr(hr, sr, reduction="mean").item() == pytest.approx(mean.item(), abs=1e-6)

    def test_shave_removes_the_border(self):
        hr, sr = _pair(1, n=2, h=16, w=16)
        sr2 = sr.clone()
        sr2[..., :3, :] = 0.0  # damage the border only
        sr2[..., :, -3:] = 1.0
        torch.testing.assert_close(psnr(hr, sr2, shave=3), psnr(hr, sr, shave=3), rtol=0, atol=0)
        torch.testing.assert_close(psnr(hr, sr, shave=3), psnr(hr[..., 3:-3, 3:-3], sr[..., 3:-3, 3:-3]))
        assert (psnr(hr, sr2) < psnr(hr, sr)).all()

    def test_sr_is_clamped_to_the_range(self):
        hr, sr = _pair(2)
        wild = sr.clone()
        wild[:, :, 0, 0] = 1.7
        wild[:, :, 1, 1] = -0.4
        tame = wild.clamp(0, 1)
        torch.testing.assert_close(psnr(hr, wild), psnr(hr, tame), rtol=0, atol=0)

    def test_layouts_and_numpy(self):
        hr, sr = _pair(3, n=1, c=3)
        per = psnr(hr, sr)
        assert per.shape == (1,) and per.dtype == torch.float64
        assert psnr(hr[0], sr[0]).shape == ()
        assert psnr(hr[0, 0], sr[0, 0]).item() == pytest.approx(psnr(hr[:, :1], sr[:, :1]).item(), abs=1e-12)
        got = psnr(hr[0].permute(1, 2, 0).numpy(), sr[0].permute(1, 2, 0).numpy())
        assert isinstance(got, np.floating) and got == pytest.approx(per.item(), abs=1e-12)
        u8h = (hr * 255).round().to(torch.uint8)
        u8s = (sr * 255).round().to(torch.uint8)
        assert psnr(u8h, u8s, data_range=255).item() == pytest.approx(
            psnr(u8h.double() / 255, u8s.double() / 255).item(), abs=1e-9
        )

    def test_mean_is_mean_of_per_image(self):
        hr, sr = _pair(4, n=5)
        assert psnr(hr, sr, reduction="mean").item() == pytest.approx(psnr(hr, sr).mean().item(), abs=1e-12)


class TestException:
    def test_shapes(self):
        with pytest.raises(ValueError, match="must have the same shape"):
            psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
        with pytest.raises(ValueError, match=r"`hr` must be \(N, C, H, W\)"):
            psnr(torch.zeros(4), torch.zeros(4))
        with pytest.raises(ValueError, match=r"numpy `sr` must be \(H, W\) or \(H, W, C\)"):
            psnr(np.zeros((4, 4)), np.zeros(4))

    def test_arguments(self):
        x = torch.zeros(1, 1, 8, 8)
        with pytest.raises(ValueError, match="removes the whole 8x8 image"):
            psnr(x, x, shave=4)
        with pytest.raises(ValueError, match="`shave` must be a non-negative integer"):
            psnr(x, x, shave=-1)
        with pytest.raises(ValueError, match="`data_range` must be a positive number"):
            psnr(x, x, data_range=0)
        with pytest.raises(ValueError, match="`reduction` must be 'none' or 'mean'"):
            psnr(x, x, reduction="sum")

    def test_types(self):
        with pytest.raises(TypeError, match="`hr` must be a torch.Tensor or numpy.ndarray, got list"):
            psnr([[0.0]], torch.zeros(1, 1))
        with pytest.raises(TypeError, match="dtype must be floating point or uint8, got torch.int64"):
            psnr(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))


class TestInputChecks:
    """Wrongly scaled, mixed-dtype or non-finite inputs raise instead of returning a plausible number."""

    def test_uint8_defaults_to_range_255(self):
        hr, sr = _pair(5)
        u8h = (hr * 255).round().to(torch.uint8)
        u8s = (sr * 255).round().to(torch.uint8)
        expected = psnr(u8h.double() / 255, u8s.double() / 255)
        torch.testing.assert_close(psnr(u8h, u8s), expected, rtol=0, atol=1e-9)
        torch.testing.assert_close(psnr(u8h, u8s, data_range=255), expected, rtol=0, atol=1e-9)
        got = psnr(u8h[0, 0].numpy(), u8s[0, 0].numpy())
        assert got == pytest.approx(expected[0].item(), abs=1e-9)

    def test_float_defaults_unchanged(self):
        hr, sr = _pair(6)
        torch.testing.assert_close(psnr(hr, sr), psnr(hr, sr, data_range=1.0), rtol=0, atol=0)
        torch.testing.assert_close(psnr(hr * 255, sr * 255, data_range=255), psnr(hr, sr), rtol=0, atol=1e-9)
        edge = hr.clone()
        edge[:, :, 0, 0] = 1.5          # at the limit of the check: accepted
        assert torch.isfinite(psnr(edge, sr)).all()

    def test_float_0_255_against_the_default_range(self):
        hr, sr = _pair(7)
        with pytest.raises(ValueError, match=r"`hr` has values up to .* data_range=1: .*pass data_range=255"):
            psnr(hr * 255, sr * 255)
        with pytest.raises(ValueError, match=r"`sr` has mean .* data_range=1, far above white: .*data_range=255"):
            psnr(hr, sr * 255)
        with pytest.raises(ValueError, match=r"`hr` has values up to .* data_range=1"):
            psnr(hr[0, 0].numpy() * 255, sr[0, 0].numpy())
        with pytest.raises(ValueError, match=r"`hr` has values up to 600 with data_range=255: pass the images' white"):
            psnr(torch.full((1, 4, 4), 600.0), torch.zeros(1, 4, 4), data_range=255)

    def test_hr_far_below_zero(self):
        hr, sr = _pair(8)
        with pytest.raises(ValueError, match=r"`hr` has values down to -0\.9\d*; images must lie in \[0, data_range\]"):
            psnr(hr * 2 - 1, sr)

    def test_mixed_uint8_and_float(self):
        hr, sr = _pair(9)
        u8 = (hr * 255).round().to(torch.uint8)
        with pytest.raises(ValueError, match=r"`hr` is torch.uint8 and `sr` is torch.float64; give both as uint8"):
            psnr(u8, sr)
        with pytest.raises(ValueError, match=r"`hr` is torch.float64 and `sr` is torch.uint8"):
            psnr(hr, u8, data_range=255)
        with pytest.raises(ValueError, match="give both as uint8"):
            psnr(u8[0, 0].numpy(), sr[0, 0].numpy())

    def test_uint8_with_another_range(self):
        u8 = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
        with pytest.raises(ValueError, match=r"uint8 images have data_range=255, got data_range=1.0"):
            psnr(u8, u8, data_range=1.0)

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    @pytest.mark.parametrize("which", ["hr", "sr"])
    def test_non_finite(self, bad, which):
        hr, sr = _pair(10)
        (hr if which == "hr" else sr)[1, 0, 2, 3] = bad
        with pytest.raises(ValueError, match=rf"`{which}` contains 1 NaN or inf value\(s\)"):
            psnr(hr, sr)
        with pytest.raises(ValueError, match=rf"`{which}` contains 1 NaN or inf"):
            psnr(hr.float(), sr.float(), shave=3, reduction="mean")
