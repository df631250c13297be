"""BT.601 conversions as MATLAB's rgb2ycbcr / ycbcr2rgb, and modcrop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landprobe.data import modcrop, rgb2y, rgb2ycbcr, ycbcr2rgb

# (RGB in [0, 255], YCbCr on [0, 255] from MATLAB's matrix: Y = 16 + 65.481 R + 128.553 G + 24.966 B, R..B in [0, 1])
KNOWN = [
    ((255, 255, 255), (235.0, 128.0, 128.0)),
    ((0, 0, 0), (16.0, 128.0, 128.0)),
    ((255, 0, 0), (16 + 65.481, 128 - 37.797, 128 + 112.0)),
    ((0, 255, 0), (16 + 128.553, 128 - 74.203, 128 - 93.786)),
    ((0, 0, 255), (16 + 24.966, 128 + 112.0, 128 - 18.214)),
]


class TestFeature:
    @pytest.mark.parametrize("rgb,ycc", KNOWN, ids=["white", "black", "red", "green", "blue"])
    def test_known_colours_float(self, rgb, ycc):
        x = torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1) / 255
        got = rgb2ycbcr(x).view(3) * 255
        torch.testing.assert_close(got, torch.tensor(ycc, dtype=torch.float64), rtol=0, atol=1e-10)
        assert rgb2y(x).shape == (1, 1, 1)
        assert rgb2y(x).item() * 255 == pytest.approx(ycc[0], abs=1e-10)

    @pytest.mark.parametrize("rgb,ycc", KNOWN, ids=["white", "black", "red", "green", "blue"])
    def test_known_colours_uint8_rounded_like_matlab(self, rgb, ycc):
        px = np.array([[rgb]], dtype=np.uint8)
        got = rgb2ycbcr(px)
        assert got.dtype == np.uint8
        assert got[0, 0].tolist() == [int(np.floor(v + 0.5)) for v in ycc]
        assert rgb2y(px).shape == (1, 1) and rgb2y(px)[0, 0] == int(np.floor(ycc[0] + 0.5))

    def test_round_trip_float_torch_and_numpy(self):
        g = torch.Generator().manual_seed(1)
        x = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64)
        torch.testing.assert_close(ycbcr2rgb(rgb2ycbcr(x)), x, rtol=0, atol=1e-12)
        a = x[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ycbcr2rgb(rgb2ycbcr(a)), a, rtol=0, atol=1e-12)
        np.testing.assert_allclose(rgb2ycbcr(a), rgb2ycbcr(x[0]).permute(1, 2, 0).numpy(), rtol=0, atol=1e-14)

    def test_round_trip_uint8_within_quantisation(self):
        px = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
        back = ycbcr2rgb(rgb2ycbcr(px)).astype(int)
        # YCbCr steps are up to ~1.6 RGB levels (1 / 0.859 for Y, and the chroma gains)
        assert np.abs(back - px.astype(int)).max() <= 2
        assert np.abs(back - px.astype(int)).mean() < 0.8

    def test_float32_stays_float32_and_y_is_first_channel(self):
        x = torch.rand(3, 4, 4)
        assert rgb2ycbcr(x).dtype == torch.float32
        torch.testing.assert_close(rgb2y(x), rgb2ycbcr(x)[:1])

    def test_modcrop(self):
        t = torch.arange(3 * 10 * 7).view(3, 10, 7)
        assert modcrop(t, 3).shape == (3, 9, 6)
        assert torch.equal(modcrop(t, 3), t[:, :9, :6])  # the top-left corner stays
        assert modcrop(np.zeros((10, 7, 3)), 4).shape == (8, 4, 3)
        assert modcrop(np.zeros((10, 7)), 1).shape == (10, 7)


class TestException:
    def test_channels(self):
        with pytest.raises(ValueError, match=r"3 channels at dim -3"):
            rgb2ycbcr(torch.zeros(4, 4, 3))
        with pytest.raises(ValueError, match=r"must be \(H, W, 3\)"):
            ycbcr2rgb(np.zeros((3, 4, 4)))
        with pytest.raises(ValueError, match=r"3 channels at dim -3"):
            rgb2y(torch.zeros(4, 4))

    def test_types(self):
        with pytest.raises(TypeError, match="dtype must be floating point .* or uint8 .*got int32"):
            rgb2ycbcr(np.zeros((2, 2, 3), dtype=np.int32))
        with pytest.raises(TypeError, match="expected a torch.Tensor or numpy.ndarray, got list"):
            rgb2y([[0, 0, 0]])

    @pytest.mark.parametrize("bad", [0, -2, 2.0, True])
    def test_modcrop_scale(self, bad):
        with pytest.raises(ValueError, match="`scale` must be a positive integer"):
            modcrop(torch.zeros(4, 4), bad)
