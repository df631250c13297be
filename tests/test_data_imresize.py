"""imresize against hand-checkable cases and an independent per-pixel float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers_sr import keys_cubic, reference_imresize
from landprobe.data import cubic, imresize, resize_weights
from landprobe.data import _imresize as imresize_module

CASES = [  # (in_hw, kwargs): odd sizes, integer and non-integer scales, both directions, size=
    ((7, 9), dict(scale=0.5)),
    ((13, 17), dict(scale=1 / 3)),
    ((12, 8), dict(scale=0.25)),
    ((9, 11), dict(scale=0.37)),
    ((5, 7), dict(scale=2)),
    ((5, 3), dict(scale=3)),
    ((4, 6), dict(scale=4)),
    ((6, 5), dict(scale=1.7)),
    ((11, 7), dict(size=(5, 13))),  # height shrinks, width grows: order matters for uint8
    ((8, 10), dict(size=(19, 4))),
    ((10, 9), dict(scale=(0.6, 2.5))),
]


def case_id(case):
    (h, w), kw = case
    return f"in={h}x{w}-" + "-".join(f"{k}={v if not isinstance(v, float) else round(v, 3)}" for k, v in kw.items())


class TestSmoke:
    def test_output_size_is_ceil_of_scale_times_size(self):
        assert imresize(torch.zeros(7, 9), 0.5).shape == (4, 5)
        assert imresize(torch.zeros(10, 10), 1 / 3).shape == (4, 4)
        assert imresize(torch.zeros(5, 3), 2.5).shape == (13, 8)
        assert imresize(torch.zeros(6, 6), size=(4, 9)).shape == (4, 9)

    def test_layouts_agree(self):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2, 3, 9, 7, generator=g, dtype=torch.float64)
        y4 = imresize(x, 0.5)
        assert y4.shape == (2, 3, 5, 4)
        torch.testing.assert_close(imresize(x[1], 0.5), y4[1], rtol=0, atol=1e-15)
        torch.testing.assert_close(imresize(x[1, 2], 0.5), y4[1, 2], rtol=0, atol=1e-15)
        hwc = x[0].permute(1, 2, 0).numpy()
        out = imresize(hwc, 0.5)
        assert isinstance(out, np.ndarray) and out.shape == (5, 4, 3)
        np.testing.assert_allclose(out, y4[0].permute(1, 2, 0).numpy(), rtol=0, atol=1e-15)

    def test_dtypes_preserved(self):
        assert imresize(torch.rand(6, 6), 2).dtype == torch.float32
        assert imresize(np.random.rand(6, 6).astype(np.float32), 2).dtype == np.float32
        assert imresize(np.zeros((6, 6), np.uint8), 2).dtype == np.uint8
        assert imresize(torch.zeros(6, 6, dtype=torch.uint8), 0.5).dtype == torch.uint8


class TestFeature:
    @pytest.mark.parametrize("kw", [dict(scale=0.5), dict(scale=1 / 3), dict(scale=2.7), dict(size=(3, 20))])
    def test_constant_stays_constant(self, kw):
        x = torch.full((2, 11, 13), 0.3, dtype=torch.float64)
        y = imresize(x, **kw)
        torch.testing.assert_close(y, torch.full_like(y, 0.3), rtol=0, atol=1e-14)

    def test_upsampling_impulse_response_is_the_cubic_kernel(self):
        n, s, c = 20, 2, 10  # impulse at 1-based column 10, far from both borders
        x = torch.zeros(1, n, dtype=torch.float64)
        x[0, c - 1] = 1.0
        y = imresize(x, (1, s))[0]
        for i in range(6, 35):  # interior outputs (the mirrored taps stay at zero weight)
            u = i / s + 0.5 * (1 - 1 / s)
            assert y[i - 1].item() == pytest.approx(keys_cubic(u - c), abs=1e-15)
        # hand values: output 19 sits at u = 9.75, 0.25 left of the impulse: cubic(0.25)
        assert y[18].item() == pytest.approx(1.5 * 0.25**3 - 2.5 * 0.25**2 + 1, abs=1e-15)

    def test_downsampling_impulse_response_is_the_widened_kernel(self):
        n, c = 24, 12
        x = torch.zeros(1, n, dtype=torch.float64)
        x[0, c - 1] = 1.0
        y = imresize(x, (1, 0.5))[0]
        for i in range(4, 9):
            u = i / 0.5 + 0.5 * (1 - 2)
            # at scale 1/2 the widened kernel's taps sum to exactly 1, so no renormalisation
            assert y[i - 1].item() == pytest.approx(0.5 * keys_cubic(0.5 * (u - c)), abs=1e-15)

    def test_hand_computed_two_pixel_upsample(self):
        # [0, 1] -> 4 pixels. Output 2 sits at u = 1.25: taps 1 (0.25 away), 2 (0.75), 0 -> 1
        # (mirrored, 1.25) and 3 -> 2 (mirrored, 1.75): weight of pixel 2 is
        # cubic(0.75) + cubic(1.75) = 0.2265625 - 0.0234375 = 0.203125.
        y = imresize(torch.tensor([[0.0, 1.0]], dtype=torch.float64), size=(1, 4))
        assert y[0, 1].item() == pytest.approx(0.203125, abs=1e-15)
        assert y[0, 2].item() == pytest.approx(0.796875, abs=1e-15)
        assert imresize(torch.tensor([[0, 255]], dtype=torch.uint8), size=(1, 4)).tolist() == [[0, 52, 203, 255]]

    def test_smooth_ramp_survives_up_then_down(self):
        r = torch.arange(40, dtype=torch.float64)
        ramp = (0.01 * r[:, None] + 0.02 * r[None, :]).expand(40, 40).contiguous()
        up = imresize(ramp, 2)
        # cubic convolution reproduces linear functions exactly away from the mirrored border
        u = torch.arange(1, 81, dtype=torch.float64) / 2 + 0.25 - 1  # 0-based input coordinate
        expected_up = 0.01 * u[:, None] + 0.02 * u[None, :]
        torch.testing.assert_close(up[4:-4, 4:-4], expected_up[4:-4, 4:-4], rtol=0, atol=1e-12)
        back = imresize(up, 0.5)
        torch.testing.assert_close(back[4:-4, 4:-4], ramp[4:-4, 4:-4], rtol=0, atol=1e-12)
        assert (back - ramp).abs().max() < 0.01  # the border differs, but only a little

    @pytest.mark.parametrize("case", CASES, ids=case_id)
    def test_float64_matches_reference(self, case):
        (h, w), kw = case
        img = np.random.default_rng(h * 100 + w).random((h, w))
        got = imresize(torch.from_numpy(img), **kw).numpy()
        expected = reference_imresize(img, **kw)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)

    @pytest.mark.parametrize("case", CASES, ids=case_id)
    def test_uint8_matches_reference_with_per_pass_rounding(self, case):
        (h, w), kw = case
        img = np.random.default_rng(h * 7 + w).integers(0, 256, (h, w)).astype(np.uint8)
        got = imresize(img, **kw)
        expected = reference_imresize(img, uint8=True, **kw)
        np.testing.assert_array_equal(got, expected.astype(np.uint8))

    def test_uint8_order_and_intermediate_rounding_matter(self):
        # Guards the two MATLAB details above: the other dimension order, or rounding only
        # at the end, give different pixels on this image.
        img = np.random.default_rng(3).integers(0, 256, (11, 7)).astype(np.uint8)
        got = imresize(img, size=(5, 13)).astype(np.float64)
        only_end = np.clip(np.floor(reference_imresize(img, size=(5, 13)) + 0.5), 0, 255)
        assert np.abs(got - only_end).max() >= 1
        w_first = reference_imresize(reference_imresize(img, size=(11, 13), uint8=True), size=(5, 13), uint8=True)
        assert np.abs(got - w_first).max() >= 1

    def test_weights_are_cached(self):
        for fn in (imresize_module._polyphase_np, imresize_module._weights_np):
            fn.cache_clear()
        imresize(torch.zeros(2, 33, 35), 0.5)  # polyphase plans, one per dimension
        imresize(torch.zeros(2, 33, 35), 0.37)  # not periodic: dense matrices
        first = (imresize_module._polyphase_np.cache_info(), imresize_module._weights_np.cache_info())
        imresize(torch.ones(1, 33, 35), 0.5)
        imresize(torch.ones(1, 33, 35), 0.37)
        second = (imresize_module._polyphase_np.cache_info(), imresize_module._weights_np.cache_info())
        assert first[0].misses == second[0].misses == 4  # (33, 0.5), (35, 0.5), (33, 0.37), (35, 0.37)
        assert first[1].misses == second[1].misses == 2  # dense only for the 0.37 pair
        assert second[0].hits == first[0].hits + 4  # plans are looked up, never recomputed
        W = resize_weights(33, 17, 0.5)
        assert W.shape == (17, 33) and not W.flags.writeable
        np.testing.assert_allclose(W.sum(axis=1), 1.0, rtol=0, atol=1e-13)

    @pytest.mark.parametrize("in_len,scale", [(33, 0.5), (31, 1 / 3), (40, 0.25), (17, 2), (9, 3), (11, 4), (12, 2 / 3), (13, 1.5)])
    def test_polyphase_path_equals_dense_weights(self, in_len, scale):
        assert imresize_module._polyphase_np(in_len, math.ceil(in_len * scale), scale, True) is not None
        x = torch.from_numpy(np.random.default_rng(in_len).random((in_len, 5)))
        W = torch.from_numpy(np.array(resize_weights(in_len, math.ceil(in_len * scale), scale)))
        torch.testing.assert_close(imresize(x, (scale, 1.0)), W @ x, rtol=0, atol=1e-14)

    def test_kernel_function(self):
        xs = np.linspace(-2.5, 2.5, 41)
        np.testing.assert_allclose(cubic(xs), [keys_cubic(v) for v in xs], rtol=0, atol=1e-15)

    def test_gradcheck_float64(self):
        x = torch.rand(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: imresize(t, 0.5), (x,))

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda_matches_cpu(self):  # pragma: no cover - GPU machines only
        x = torch.rand(2, 3, 31, 29, dtype=torch.float64)
        torch.testing.assert_close(imresize(x.cuda(), 1 / 3).cpu(), imresize(x, 1 / 3), rtol=0, atol=1e-12)


class TestException:
    def test_scale_and_size(self):
        with pytest.raises(ValueError, match="exactly one of `scale`"):
            imresize(torch.zeros(4, 4))
        with pytest.raises(ValueError, match="exactly one of `scale`"):
            imresize(torch.zeros(4, 4), 2, size=(8, 8))
        with pytest.raises(ValueError, match=r"`size` must be \(height, width\)"):
            imresize(torch.zeros(4, 4), size=(8,))
        with pytest.raises(ValueError, match="`size` must be positive"):
            imresize(torch.zeros(4, 4), size=(0, 8))
        with pytest.raises(ValueError, match="`scale` must be positive and finite"):
            imresize(torch.zeros(4, 4), -0.5)
        with pytest.raises(ValueError, match="`scale` must be positive and finite"):
            imresize(torch.zeros(4, 4), math.inf)
        with pytest.raises(ValueError, match=r"`scale` must be a number or \(scale_h, scale_w\)"):
            imresize(torch.zeros(4, 4), (1, 2, 3))

    def test_layout_and_type(self):
        with pytest.raises(ValueError, match=r"a tensor must be \(N, C, H, W\)"):
            imresize(torch.zeros(1, 1, 1, 4, 4), 2)
        with pytest.raises(ValueError, match=r"a numpy image must be \(H, W\) or \(H, W, C\)"):
            imresize(np.zeros(4), 2)
        with pytest.raises(TypeError, match="must be a torch.Tensor or numpy.ndarray, got list"):
            imresize([[0.0]], 2)
        with pytest.raises(TypeError, match="dtype must be floating point or uint8, got torch.int32"):
            imresize(torch.zeros(4, 4, dtype=torch.int32), 2)
