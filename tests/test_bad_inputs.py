"""Bad inputs across the public API: each raises a named error type whose message names the
offending argument or file (and says how to fix it); failed writes leave no file behind."""

from __future__ import annotations

import json
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import landprobe as lp
from landprobe import capacity, curvature, data as lpdata, generalization as gen, metrics
from landprobe.common.io import LoadError, atomic_torch_save
from landprobe.generalization import (BoundTrace, BoundTracker, LangevinSamples, MemorizationOptions,
                                      MemorizationResult, TwoPhaseResult)
from landprobe.optim import SGLD

torch.set_num_threads(1)
MSE = nn.MSELoss()


# ----------------------------------------------------------------------------- builders
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def tiny_data(batches: int = 2) -> list:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)) for _ in range(batches)]


def probe(**kw) -> lp.LandscapeProbe:
    return lp.LandscapeProbe(tiny_model(), MSE, tiny_data(), progress=False, **kw)


def point(shift: float = 0.0) -> dict:
    return {k: v.detach().clone() + shift for k, v in tiny_model().state_dict().items()}


def class_data(n: int = 8) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g))


class NoLen(Dataset):
    """A map-style Dataset without __len__."""

    def __getitem__(self, i):
        return torch.zeros(3), torch.zeros(2)


def png(width: int, height: int, pixels: bytes = b"\x00" * 16) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


def folder(tmp_path, name: str, files: dict[str, bytes]):
    root = tmp_path / name
    root.mkdir()
    for fname, blob in files.items():
        (root / fname).write_bytes(blob)
    return root


def check(thunk, exc, pattern):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=pattern):
            thunk()


# ----------------------------------------------------------------------------- data
DATA = {
    "data-int": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, 5), TypeError, r"data must be an iterable.*got int"),
    "data-str": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, "xy"), TypeError, r"data must be.*got str"),
    "data-empty-list": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, []).loss(), ValueError,
                        r"data yielded no batch"),
    "data-empty-loader": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, DataLoader(TensorDataset(
        torch.zeros(0, 3), torch.zeros(0, 2)))).loss(), ValueError, r"data yielded no batch"),
    "data-generator": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, (b for b in tiny_data())), TypeError,
                       r"data is a one-shot iterator \(generator\).*list\(data\)"),
    "data-list-iterator": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, iter(tiny_data())), TypeError,
                           r"data is a one-shot iterator"),
    "batch-bare-tensor": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, [torch.randn(4, 3)]).loss(), ValueError,
                          r"pair \(inputs, targets\).*got Tensor.*BatchLoss"),
    "batch-triple": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, [(torch.randn(4, 3),) * 3]).loss(),
                     ValueError, r"got tuple of length 3"),
    "batch-dict-without-batchloss": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, [{"x": torch.randn(4, 3)}])
                                     .loss(), ValueError, r"got dict.*BatchLoss"),
    "batch-inputs-wrong-width": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, [(torch.randn(4, 5),
                                 torch.randn(4, 2))]).loss(), RuntimeError, r"inputs \(4, 5\) and targets \(4, 2\)"),
    "batch-targets-wrong-length": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, [(torch.randn(4, 3),
                                   torch.randn(3, 2))]).loss(), RuntimeError, r"targets \(3, 2\).*shapes"),
    "precision-dataset-without-len": (lambda t: lp.LandscapeProbe(tiny_model(), MSE, NoLen(), precision=0.1),
                                      ValueError, r"precision= needs random access.*__len__.*got NoLen"),
    "precision-loader-over-dataset-without-len": (lambda t: lp.LandscapeProbe(
        tiny_model(), MSE, DataLoader(NoLen(), batch_size=2), precision=0.1), ValueError,
        r"dataset \(NoLen\) has no __len__"),
    "model-class": (lambda t: lp.LandscapeProbe(nn.Linear, MSE, tiny_data()), TypeError,
                    r"model: received the class Linear; instantiate it"),
    "loss-class": (lambda t: lp.LandscapeProbe(tiny_model(), nn.MSELoss, tiny_data()), TypeError,
                   r"loss_fn: received the class MSELoss; instantiate it: MSELoss\(\)"),
    "list-images-missing-folder": (lambda t: lpdata.list_images(t / "absent"), ValueError,
                                   r"'.*absent' does not exist or is not a folder"),
    "list-images-a-file": (lambda t: lpdata.list_images(folder(t, "f", {"a.png": b"x"}) / "a.png"), ValueError,
                           r"a\.png' does not exist or is not a folder"),
    "list-images-empty-folder": (lambda t: lpdata.list_images(folder(t, "empty", {})), ValueError,
                                 r"'.*empty' holds no image file"),
    "t91-non-image-files": (lambda t: lpdata.T91Patches(folder(t, "texts", {"a.txt": b"x", "b.csv": b"1"})),
                            ValueError, r"'.*texts' holds no image file"),
    "t91-missing-folder": (lambda t: lpdata.T91Patches(t / "absent"), ValueError, r"absent' does not exist"),
    "t91-truncated-png": (lambda t: lpdata.T91Patches(folder(t, "cut", {"cut.png": png(64, 64)})), LoadError,
                          r"cut\.png"),
    "t91-absurd-size-png": (lambda t: lpdata.T91Patches(folder(t, "bomb", {"bomb.png": png(30000, 30000)})),
                            LoadError, r"bomb\.png.*too many pixels"),
    "t91-scale-1": (lambda t: lpdata.T91Patches(lpdata.sample_dir("train"), scale=1), ValueError,
                    r"`scale` must be an integer >= 2.*got 1"),
    "t91-patch-0": (lambda t: lpdata.T91Patches(lpdata.sample_dir("train"), patch=0), ValueError,
                    r"`patch` must be a positive integer, got 0"),
    "sreval-missing-folder": (lambda t: lpdata.SREvalSet(t / "absent", scale=2), ValueError,
                              r"absent' does not exist"),
    "sreval-scale-0": (lambda t: lpdata.SREvalSet(lpdata.sample_dir("val"), scale=0), ValueError, r"scale.*got 0"),
    "load-y-missing": (lambda t: lpdata.load_y(t / "absent.png"), LoadError, r"absent\.png.*does not exist"),
    "load-y-text-file": (lambda t: lpdata.load_y(folder(t, "f", {"note.png": b"hello"}) / "note.png"), LoadError,
                         r"note\.png.*not an image"),
    "load-y-truncated-png": (lambda t: lpdata.load_y(folder(t, "f", {"cut.png": png(64, 64)}) / "cut.png"),
                             LoadError, r"cut\.png.*truncated or corrupt"),
    "load-y-absurd-size-png": (lambda t: lpdata.load_y(folder(t, "f", {"huge.png": png(30000, 30000)}) /
                                                       "huge.png"), LoadError, r"huge\.png.*too many pixels"),
    "sample-dir-unknown": (lambda t: lpdata.sample_dir("nope"), ValueError, r"`subset` must be one of.*'nope'"),
    "imresize-neither-scale-nor-size": (lambda t: lpdata.imresize(np.zeros((4, 4))), ValueError,
                                        r"exactly one of `scale`.*scale=None, size=None"),
    "imresize-scale-0": (lambda t: lpdata.imresize(np.zeros((4, 4)), 0), ValueError, r"`scale` must be positive"),
    "rgb2y-two-channels": (lambda t: lpdata.rgb2y(np.zeros((4, 4, 2))), ValueError, r"\(H, W, 3\).*\(4, 4, 2\)"),
    "bicubic-pair-float-image": (lambda t: lpdata.bicubic_pair(np.zeros((8, 8)), 2), TypeError,
                                 r"`y` must be a 2-D uint8.*float64"),
    "corrupt-unknown-kind": (lambda t: lpdata.corrupt(class_data(), "blur"), ValueError, r"kind='blur'"),
    "corrupt-labels-without-p": (lambda t: lpdata.corrupt(class_data(), "labels", num_classes=2), ValueError,
                                 r"needs p=.*got p=None"),
    "corrupt-labels-p-2": (lambda t: lpdata.corrupt(class_data(), "labels", p=2, num_classes=2), ValueError,
                           r"p=2; expected a probability"),
    "corrupt-dataset-without-len": (lambda t: lpdata.corrupt(NoLen(), "shuffled_pixels"), TypeError,
                                    r"`dataset` \(NoLen\) must be a map-style dataset"),
    "materialize-empty": (lambda t: lpdata.materialize(TensorDataset(torch.zeros(0, 3), torch.zeros(0))),
                          ValueError, r"`dataset` is empty"),
    "sr-covariates-shapes": (lambda t: lpdata.sr_covariates(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 8, 8)),
                             ValueError, r"\(2, 1, 4, 4\) and \(2, 1, 8, 8\)"),
    "sr-covariates-with-mean-shapes": (lambda t: lpdata.sr_covariates_with_mean(torch.zeros(2, 1, 4, 4),
                                                                                torch.zeros(2, 1, 8, 8)),
                                       ValueError, r"sr_covariates_with_mean needs .*\(2, 1, 4, 4\) and \(2, 1, 8, 8\)"),
}


@pytest.mark.parametrize("case", list(DATA), ids=list(DATA))
def test_bad_data(case, tmp_path):
    thunk, exc, pattern = DATA[case]
    check(lambda: thunk(tmp_path), exc, pattern)


# ----------------------------------------------------------------------------- penalties
PENALTIES = {
    "unknown-kind": (lambda: lp.SubnetNormPenalty(tiny_model(), {"weight": "l7"}), ValueError,
                     r"unknown kind 'l7' for subnet 'weight'"),
    "empty-norms": (lambda: lp.SubnetNormPenalty(tiny_model(), {}), ValueError, r"norms is empty"),
    "norms-a-list": (lambda: lp.SubnetNormPenalty(tiny_model(), ["l2"]), TypeError, r"norms has type list"),
    "selector-matches-nothing": (lambda: lp.SubnetNormPenalty(tiny_model(), {"decoder.*": "l2"}), ValueError,
                                 r"selector 'decoder\.\*' matched no parameter.*Close names"),
    "weight-negative": (lambda: lp.SubnetNormPenalty(tiny_model(), {"weight": "l2"}, weight=-1), ValueError,
                        r"weight=-1; expected a finite, non-negative"),
    "weight-nan": (lambda: lp.SubnetNormPenalty(tiny_model(), {"weight": "l2"}, weight=float("nan")), ValueError,
                   r"weight=nan"),
    "weight-string": (lambda: lp.SubnetNormPenalty(tiny_model(), {"weight": "l2"}, weight="1"), TypeError,
                      r"weight='1' has type str"),
    "weight-unknown-subnet-key": (lambda: lp.SubnetNormPenalty(tiny_model(), {"weight": "l2"},
                                                               weight={"other": 1.0}), ValueError,
                                  r"unexpected \['other'\]"),
    "model-class": (lambda: lp.SubnetNormPenalty(nn.Linear, {"weight": "l2"}), TypeError,
                    r"model is the class Linear"),
    "power-iterations-0": (lambda: lp.SubnetNormPenalty(tiny_model(), {"weight": "spectral"}, power_iterations=0),
                           ValueError, r"power_iterations=0"),
    "darc1-weight-negative": (lambda: lp.DARC1Penalty(-1), ValueError, r"weight=-1"),
    "darc1-weight-string": (lambda: lp.DARC1Penalty("a"), TypeError, r"weight='a' has type str"),
    "darc1-scalar-output": (lambda: lp.DARC1Penalty(1.0)(torch.zeros(())), ValueError, r"0-dim tensor"),
    "select-matches-nothing": (lambda: lp.select(tiny_model(), "zzz*"), ValueError, r"'zzz\*' matched no"),
}


@pytest.mark.parametrize("case", list(PENALTIES), ids=list(PENALTIES))
def test_bad_penalty(case):
    check(*PENALTIES[case])


# ----------------------------------------------------------------------------- probes
PROBES = {
    "bn-unknown": (lambda: probe(bn="frozen"), ValueError, r"bn='frozen'; expected one of"),
    "precision-0": (lambda: probe(precision=0), ValueError, r"precision=0; expected a relative error"),
    "precision-string": (lambda: probe(precision="0.1"), ValueError, r"precision='0\.1'"),
    "min-batches-1": (lambda: probe(precision=0.1, min_batches=1), ValueError, r"min_batches=1"),
    "batch-size-0": (lambda: probe(precision=0.1, batch_size=0), ValueError, r"batch_size=0"),
    "batch-size-float": (lambda: probe(precision=0.1, batch_size=2.5), ValueError, r"batch_size=2\.5"),
    "seed-string": (lambda: probe(precision=0.1, seed="a"), ValueError, r"seed='a'; expected an integer"),
    "dtype-string": (lambda: probe(dtype="float16"), ValueError, r"dtype=float16"),
    "interpolate-points-0": (lambda: probe().interpolate(point(), point(1), 0), ValueError, r"points=0"),
    "interpolate-points-1": (lambda: probe().interpolate(point(), point(1), 1), ValueError, r"points=1"),
    "interpolate-points-float": (lambda: probe().interpolate(point(), point(1), 2.5), ValueError, r"points=2\.5"),
    "interpolate-extend-negative": (lambda: probe().interpolate(point(), point(1), 3, extend=-1), ValueError,
                                    r"extend=-1"),
    "interpolate-extend-nan": (lambda: probe().interpolate(point(), point(1), 3, extend=float("nan")), ValueError,
                               r"extend=nan"),
    "interpolate-batch-points-0": (lambda: probe().interpolate(point(), point(1), 3, batch_points=0), ValueError,
                                   r"batch_points=0"),
    "interpolate-model-class": (lambda: probe().interpolate(nn.Linear, point(1), 3), TypeError,
                                r"a is the class Linear; pass an instance"),
    "interpolate-wrong-shape": (lambda: probe().interpolate({"weight": torch.zeros(5, 5), "bias": torch.zeros(2)},
                                                            point(1), 3), ValueError,
                                r"a has shapes that differ.*weight: \(5, 5\) vs model \(2, 3\)"),
    "plane-points-0": (lambda: probe().plane(None, None, None, 0), ValueError, r"points=0"),
    "plane-span-negative": (lambda: probe().plane(None, None, -1, 3), ValueError, r"span=-1"),
    "plane-normalization-unknown": (lambda: probe().plane(None, None, None, 3, "sphere"), ValueError,
                                    r"normalization='sphere'"),
    "plane-directions-wrong-shape": (lambda: probe().plane(None, [{"weight": torch.zeros(5, 5),
                                                                   "bias": torch.zeros(2)}] * 2, None, 3),
                                     ValueError, r"directions\[0\] has shapes that differ"),
    "plane-three-directions": (lambda: probe().plane(None, [point(), point(), point()], None, 3), TypeError,
                               r"directions must be a pair.*length 3"),
    "connect-method-unknown": (lambda: probe().connect(point(), point(1), method="spline", steps=1), ValueError,
                               r"method='spline'"),
    "connect-bends-0": (lambda: probe().connect(point(), point(1), bends=0, steps=1), ValueError, r"bends=0"),
    "connect-lr-0": (lambda: probe().connect(point(), point(1), lr=0, steps=1), ValueError, r"lr=0"),
    "connect-optimizer-unknown": (lambda: probe().connect(point(), point(1), optimizer="lbfgs", steps=1),
                                  ValueError, r"optimizer='lbfgs'"),
    "connect-t-samples-0": (lambda: probe().connect(point(), point(1), t_samples=0, steps=1), ValueError,
                            r"t_samples=0"),
    "auto-neb-images-0": (lambda: probe().auto_neb(point(), point(1), images=0, steps=1), ValueError, r"images=0"),
    "auto-neb-lr-negative": (lambda: probe().auto_neb(point(), point(1), lr=-1, steps=1), ValueError,
                             r"\['lr'\]=-1"),
    "auto-neb-schedule-unknown-key": (lambda: probe().auto_neb(point(), point(1), schedule=[{"foo": 1}]),
                                      ValueError, r"schedule\[0\].*unknown keys \['foo'\]"),
    "level-set-threshold-nan": (lambda: probe().level_set(point(), point(1), float("nan"), steps=1), ValueError,
                                r"threshold=nan"),
    "level-set-threshold-string": (lambda: probe().level_set(point(), point(1), "1", steps=1), ValueError,
                                   r"threshold='1'"),
    "level-set-max-beads-1": (lambda: probe().level_set(point(), point(1), 1.0, steps=1, max_beads=1), ValueError,
                              r"max_beads=1"),
    "level-set-lr-0": (lambda: probe().level_set(point(), point(1), 1.0, steps=1, lr=0), ValueError, r"lr=0"),
    "perturb-scale-negative": (lambda: probe().perturb(lambda ps: torch.optim.SGD(ps, lr=0.1), scale=-1, steps=1,
                                                       repeats=1), ValueError, r"scale=-1"),
    "perturb-repeats-0": (lambda: probe().perturb(lambda ps: torch.optim.SGD(ps, lr=0.1), steps=1, repeats=0),
                          ValueError, r"repeats=0"),
    "perturb-optimizer-string": (lambda: probe().perturb("sgd", steps=1, repeats=1), TypeError,
                                 r"optimizer must be.*got str"),
    "perturb-eval-every-0": (lambda: probe().perturb(lambda ps: torch.optim.SGD(ps, lr=0.1), steps=2, repeats=1,
                                                     eval_every=0), ValueError, r"eval_every=0"),
}


@pytest.mark.parametrize("case", list(PROBES), ids=list(PROBES))
def test_bad_probe_argument(case):
    check(*PROBES[case])


# ----------------------------------------------------------------------------- curvature
def H():
    return probe().hessian()


CURVATURE = {
    "hessian-hvp-unknown": (lambda: probe().hessian(hvp="finite"), ValueError, r"hvp='finite'"),
    "hessian-graph-unknown": (lambda: probe().hessian(graph="lazy"), ValueError, r"graph='lazy'"),
    "hessian-graph-bytes-negative": (lambda: probe().hessian(graph_bytes=-1), ValueError, r"graph_bytes=-1"),
    "hessian-of-a-model": (lambda: curvature.hessian(tiny_model()), TypeError,
                           r"expected a LandscapeProbe or an Engine, got Linear"),
    "eig-k-too-big": (lambda: H().top_eigenvalues(k=100), ValueError, r"k=100.*dimension n=8"),
    "eig-k-0": (lambda: H().top_eigenvalues(k=0), ValueError, r"k=0"),
    "eig-tol-0": (lambda: H().top_eigenvalues(tol=0), ValueError, r"tol=0"),
    "eig-tol-negative": (lambda: H().top_eigenvalues(tol=-1e-6), ValueError, r"tol=-1e-06"),
    "eig-atol-negative": (lambda: H().top_eigenvalues(atol=-1.0), ValueError, r"atol=-1\.0"),
    "eig-which-unknown": (lambda: H().top_eigenvalues(which="XX"), ValueError, r"which='XX'"),
    "eig-method-unknown": (lambda: H().top_eigenvalues(method="power"), ValueError, r"method='power'"),
    "eig-max-iter-0": (lambda: H().top_eigenvalues(max_iter=0), ValueError, r"max_iter=0"),
    "trace-method-unknown": (lambda: H().trace(method="exact"), ValueError, r"method='exact'"),
    "trace-hutchpp-matvecs-2": (lambda: H().trace(method="hutch++", matvecs=2), ValueError, r"matvecs=2"),
    "slq-steps-0": (lambda: H().density(steps=0), ValueError, r"steps=0"),
    "slq-probes-0": (lambda: H().density(probes=0), ValueError, r"probes=0"),
    "slq-sigma-negative": (lambda: H().density(sigma=-1), ValueError, r"sigma=-1"),
    "slq-grid-0": (lambda: H().density(grid=0), ValueError, r"grid=0"),
    "subsample-0": (lambda: H().subsample(0), ValueError, r"fraction=0"),
    "dense-over-max-n": (lambda: H().dense(max_n=2), ValueError, r"max_n=2"),
    "matvec-wrong-length": (lambda: H().matvec(torch.zeros(3)), ValueError, r"v has shape \(3,\)"),
    "block-matches-nothing": (lambda: H().block("nothing*"), ValueError, r"'nothing\*' matched no"),
    "lanczos-steps-0": (lambda: curvature.lanczos(lambda v: v, torch.ones(3), 0), ValueError, r"steps=0"),
    "lanczos-zero-start": (lambda: curvature.lanczos(lambda v: v, torch.zeros(3), 2), ValueError,
                           r"v0 has norm 0\.0"),
}


@pytest.mark.parametrize("case", list(CURVATURE), ids=list(CURVATURE))
def test_bad_curvature_argument(case):
    check(*CURVATURE[case])


# ----------------------------------------------------------------------------- metrics, capacity, optim
def frames(n=8, value=None):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, n, n, generator=g)
    return x if value is None else torch.full_like(x, value)


OTHERS = {
    "psnr-shapes": (lambda: metrics.psnr(frames(8), frames(4)), ValueError, r"same shape.*\(1, 1, 4, 4\)"),
    "psnr-int64": (lambda: metrics.psnr(frames().long(), frames()), TypeError, r"`hr` dtype.*int64"),
    "psnr-uint8-vs-float": (lambda: metrics.psnr(frames().mul(255).to(torch.uint8), frames()), ValueError,
                            r"`hr` is torch\.uint8 and `sr` is torch\.float32"),
    "psnr-nan": (lambda: metrics.psnr(frames(value=float("nan")), frames()), ValueError, r"`hr` contains 64 NaN"),
    "psnr-0-255-floats": (lambda: metrics.psnr(frames() * 255, frames()), ValueError,
                          r"`hr` has values up to .* data_range=1.*data_range=255"),
    "psnr-data-range-0": (lambda: metrics.psnr(frames(), frames(), data_range=0), ValueError, r"`data_range`.*got 0"),
    "psnr-reduction-unknown": (lambda: metrics.psnr(frames(), frames(), reduction="sum"), ValueError,
                               r"`reduction`.*'sum'"),
    "psnr-shave-whole-image": (lambda: metrics.psnr(frames(), frames(), shave=4), ValueError, r"`shave`=4"),
    "psnr-list": (lambda: metrics.psnr([1, 2], [1, 2]), TypeError, r"`hr` must be a torch\.Tensor.*got list"),
    "psnr-tracker-stage-reversed": (lambda: metrics.PSNRTracker(stages=[[5, 2]]), ValueError, r"\(5, 2\)"),
    "psnr-tracker-data-range-0": (lambda: metrics.PSNRTracker(data_range=0), ValueError, r"`data_range`.*got 0"),
    "psnr-tracker-shave-negative": (lambda: metrics.PSNRTracker(shave=-2), ValueError, r"`shave`.*got -2"),
    "error-tracker-n-0": (lambda: metrics.EmpiricalErrorTracker().update(1.0, n=0), ValueError, r"`n`.*got 0"),
    "error-tracker-loss-string": (lambda: metrics.EmpiricalErrorTracker().update("x"), TypeError,
                                  r"`loss`='x' is not a number"),
    "error-tracker-loss-vector": (lambda: metrics.EmpiricalErrorTracker().update(torch.ones(4)), ValueError,
                                  r"`loss` has shape \(4,\)"),
    "error-tracker-empty-epoch": (lambda: metrics.EmpiricalErrorTracker().end_epoch(), ValueError,
                                  r"no samples in the current epoch"),
    "capacity-unknown-measure": (lambda: capacity.report(tiny_model(), measures=["nope"]), ValueError,
                                 r"unknown group\(s\) \['nope'\]"),
    "capacity-measures-string": (lambda: capacity.report(tiny_model(), measures="nope"), ValueError,
                                 r"measures='nope'"),
    "capacity-measures-empty": (lambda: capacity.report(tiny_model(), measures=[]), ValueError,
                                r"measures=\[\] names no group"),
    "capacity-threshold-negative": (lambda: capacity.fraction_near_zero(torch.ones(3), threshold=-1), ValueError,
                                    r"threshold=-1"),
    "capacity-epsilon-0": (lambda: capacity.epsilon_sharpness(tiny_model(), MSE, tiny_data(), epsilon=0),
                           ValueError, r"epsilon=0"),
    "capacity-sharpness-steps-0": (lambda: capacity.epsilon_sharpness(tiny_model(), MSE, tiny_data(), steps=0),
                                   ValueError, r"steps=0"),
    "capacity-pac-bayes-samples-0": (lambda: capacity.pac_bayes_sigma(tiny_model(), MSE, tiny_data(), samples=0),
                                     ValueError, r"samples=0"),
    "capacity-path-norm-p-0": (lambda: capacity.path_norm(nn.Sequential(nn.Linear(3, 2)), p=0), ValueError,
                               r"p=0"),
    "capacity-max-batches-0": (lambda: capacity.report(tiny_model(), tiny_data(), loss_fn=MSE, max_batches=0),
                               ValueError, r"max_batches=0"),
    "capacity-treves-rolls-kind": (lambda: capacity.treves_rolls(torch.ones(3, 3), kind="foo"), ValueError,
                                   r"kind='foo'"),
    "capacity-spectral-norm-vector": (lambda: capacity.spectral_norm(torch.ones(3)), ValueError, r"got \(3,\)"),
    "capacity-conv-norm-of-linear": (lambda: capacity.conv_operator_norm(nn.Linear(2, 2), (4, 4)), TypeError,
                                     r"needs an nn\.Conv1d/2d/3d, got Linear"),
    "capacity-register-builtin-name": (lambda: capacity.register_measure("norms", lambda ctx: None), ValueError,
                                       r"name='norms' is a built-in"),
    "capacity-unregister-unknown": (lambda: capacity.unregister_measure("nope"), ValueError,
                                    r"name='nope' is not registered"),
    "capacity-model-class": (lambda: capacity.report(nn.Linear), TypeError, r"received the class Linear"),
    "sgld-lr-negative": (lambda: SGLD(nn.Linear(2, 1).parameters(), lr=-1, beta=1), ValueError, r"lr=-1"),
    "sgld-lr-nan": (lambda: SGLD(nn.Linear(2, 1).parameters(), lr=float("nan"), beta=1), ValueError, r"lr=nan"),
    "sgld-temperature-0": (lambda: SGLD(nn.Linear(2, 1).parameters(), lr=0.1, beta=0), ValueError, r"beta=0"),
    "sgld-temperature-string": (lambda: SGLD(nn.Linear(2, 1).parameters(), lr=0.1, beta="1"), ValueError,
                                r"beta='1'"),
    "sgld-weight-decay-negative": (lambda: SGLD(nn.Linear(2, 1).parameters(), lr=0.1, beta=1, weight_decay=-1),
                                   ValueError, r"weight_decay=-1"),
    "sgld-generator-string": (lambda: SGLD(nn.Linear(2, 1).parameters(), lr=0.1, beta=1, generator="x"),
                              TypeError, r"generator has type str"),
    "sgld-no-parameters": (lambda: SGLD([], lr=0.1, beta=1), ValueError, r"SGLD: params is empty"),
    "sgld-foreign-state": (lambda: SGLD(nn.Linear(2, 1).parameters(), lr=0.1, beta=1).load_state_dict({"x": 1}),
                           ValueError, r"no 'generator' entry"),
}


@pytest.mark.parametrize("case", list(OTHERS), ids=list(OTHERS))
def test_bad_metric_capacity_optim_argument(case):
    check(*OTHERS[case])


# ----------------------------------------------------------------------------- monitor, generalization
def mem(**kw):
    args = dict(corruptions=[0.0], num_classes=2, options=MemorizationOptions(max_steps=1, batch_size=4))
    args.update(kw)
    return gen.memorization(args.pop("factory", lambda seed: nn.Linear(3, 2)), class_data(), class_data(),
                            nn.CrossEntropyLoss(), **args)


def pairs(n_x=8, n_y=8):
    return torch.randn(n_x, 3), torch.randint(0, 2, (n_y,))


ENTRY_POINTS = {
    "monitor-every-0": (lambda: lp.LandscapeMonitor(probe(), every=0), ValueError, r"every=0"),
    "monitor-hessian-unknown": (lambda: lp.LandscapeMonitor(probe(), hessian="blocks"), ValueError,
                                r"hessian='blocks'"),
    "monitor-capacity-unknown": (lambda: lp.LandscapeMonitor(probe(), capacity=["nope"]), ValueError,
                                 r"capacity=\['nope'\]"),
    "monitor-capacity-options-unknown": (lambda: lp.LandscapeMonitor(probe(), capacity_options={"nope": 1}),
                                         ValueError, r"capacity_options has unknown key\(s\) \['nope'\]"),
    "monitor-trace-matvecs-0": (lambda: lp.LandscapeMonitor(probe(), trace_matvecs=0), ValueError,
                                r"trace_matvecs=0"),
    "monitor-eig-tol-0": (lambda: lp.LandscapeMonitor(probe(), eig_tol=0), ValueError, r"eig_tol=0"),
    "monitor-model-without-data": (lambda: lp.LandscapeMonitor(tiny_model()), TypeError,
                                   r"a model needs loss_fn and data"),
    "monitor-model-class": (lambda: lp.LandscapeMonitor(nn.Linear, MSE, tiny_data()), TypeError,
                            r"received the class Linear"),
    "monitor-resume-without-directory": (lambda: lp.LandscapeMonitor(probe(), resume=True), ValueError,
                                         r"resume=True needs directory="),
    "monitor-epoch-string": (lambda: lp.LandscapeMonitor(probe(), hessian=False, capacity=False).epoch_end("a"),
                             TypeError, r"epoch='a'"),
    "langevin-steps-0": (lambda: gen.langevin_sample(probe(), 0.1, 1.0, 0), ValueError, r"steps=0"),
    "langevin-temperature-0": (lambda: gen.langevin_sample(probe(), 0.1, 0, 2), ValueError, r"beta=0"),
    "langevin-thin-0": (lambda: gen.langevin_sample(probe(), 0.1, 1.0, 2, thin=0), ValueError, r"thin=0"),
    "langevin-burn-in-negative": (lambda: gen.langevin_sample(probe(), 0.1, 1.0, 2, burn_in=-1), ValueError,
                                  r"burn_in=-1"),
    "langevin-keep-unknown": (lambda: gen.langevin_sample(probe(), 0.1, 1.0, 2, keep="all"), ValueError,
                              r"keep='all'"),
    "langevin-of-a-model": (lambda: gen.langevin_sample(tiny_model(), 0.1, 1.0, 2), TypeError,
                            r"expected a LandscapeProbe or an Engine"),
    "bound-tracker-beta-0": (lambda: BoundTracker(beta=0, n=10), ValueError, r"beta=0"),
    "bound-tracker-n-0": (lambda: BoundTracker(beta=1, n=0), ValueError, r"n=0"),
    "bound-tracker-grad-nan": (lambda: BoundTracker(beta=1, n=10).step(0.1, float("nan")), ValueError,
                               r"grad_norm_sq=nan"),
    "bound-tracker-foreign-state": (lambda: BoundTracker(beta=1, n=10).load_state_dict({"x": 1}), ValueError,
                                    r"state lacks 'settings'"),
    "two-phase-bound-alpha-2": (lambda: gen.two_phase_bound(0.1, 100, 2.0, 1, 1, 1, 1, 0.1), ValueError,
                                r"alpha=2\.0"),
    "two-phase-bound-delta-0": (lambda: gen.two_phase_bound(0.1, 100, 0.5, 1, 1, 1, 1, 0.0), ValueError,
                                r"delta=0\.0"),
    "ess-empty-chain": (lambda: gen.effective_sample_size([]), ValueError, r"x has shape \(0,\)"),
    "memorization-options-threshold-0": (lambda: MemorizationOptions(threshold=0), ValueError, r"threshold=0"),
    "memorization-options-check-unknown": (lambda: MemorizationOptions(check="half"), ValueError,
                                           r"check='half'"),
    "memorization-corruption-unknown": (lambda: mem(corruptions=["blur"]), ValueError, r"corruption 'blur'"),
    "memorization-corruption-level-2": (lambda: mem(corruptions=[2.0]), ValueError, r"corruption 2\.0"),
    "memorization-seeds-empty": (lambda: mem(seeds=[]), ValueError, r"seeds=\[\]"),
    "memorization-factory-a-class": (lambda: mem(factory=nn.Linear), TypeError,
                                     r"model_factory is the class Linear"),
    "memorization-train-a-loader": (lambda: gen.memorization(lambda s: nn.Linear(3, 2), DataLoader(class_data()),
                                                             class_data(), nn.CrossEntropyLoss()), TypeError,
                                    r"`train` is a DataLoader"),
    "two-phase-train-steps-an-int": (lambda: gen.two_phase_train(nn.Linear(3, 2), MSE, tiny_data(), tiny_data(),
                                                                 optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
                                                                 steps=1), ValueError, r"steps=1; expected a pair"),
    "two-phase-train-steps-negative": (lambda: gen.two_phase_train(
        nn.Linear(3, 2), MSE, tiny_data(), tiny_data(), optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
        steps=(-1, 1)), ValueError, r"steps\[0\]=-1"),
    "two-phase-experiment-alpha-0": (lambda: gen.two_phase_experiment(lambda: nn.Linear(3, 2), pairs(), pairs(),
                                                                      alpha=0), ValueError, r"alpha=0"),
    "two-phase-experiment-seeds-empty": (lambda: gen.two_phase_experiment(lambda: nn.Linear(3, 2), pairs(),
                                                                          pairs(), seeds=[]), ValueError,
                                         r"seeds=\[\]"),
    "two-phase-experiment-labels-short": (lambda: gen.two_phase_experiment(lambda: nn.Linear(3, 2), pairs(8, 7),
                                                                           pairs(), steps=1), ValueError,
                                          r"train must be a pair"),
}


@pytest.mark.parametrize("case", list(ENTRY_POINTS), ids=list(ENTRY_POINTS))
def test_bad_entry_point_argument(case):
    check(*ENTRY_POINTS[case])


# ----------------------------------------------------------------------------- result files
RESULT_TYPES = [lp.Curve, lp.Surface, lp.Path, lp.LevelSet, lp.PerturbationResult, lp.TrajectoryPCA,
                lp.TrajectoryMDS, lp.Eigenpairs, lp.TraceEstimate, lp.Spectrum, lp.CapacityReport,
                lp.MonitorHistory, BoundTrace, LangevinSamples, MemorizationResult, TwoPhaseResult]
DAMAGES = {
    "missing": (None, r"does not exist"),
    "empty": ("", r"empty"),
    "truncated": ('{"kind": "X", "format": 1, "values": [1.0, 2', r"line 1"),
    "top-level-list": ("[1, 2, 3]\n", r"array"),
    "other-result-type": ("other", r"holds a (Curve|Surface), not a"),
    "newer-format": ("newer", r"format version 99.*upgrade"),
}


def damaged_file(tmp_path, cls, damage):
    path = tmp_path / f"{cls.__name__.lower()}-{damage}.json"
    content = DAMAGES[damage][0]
    if content == "other":
        other = "Surface" if cls is lp.Curve else "Curve"
        content = json.dumps({"kind": other, "format": 1})
    elif content == "newer":
        content = json.dumps({"kind": cls.__name__, "format": 99})
    if content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("cls", RESULT_TYPES, ids=[c.__name__ for c in RESULT_TYPES])
def test_result_load_of_a_damaged_file(tmp_path, cls, damage):
    path = damaged_file(tmp_path, cls, damage)
    check(lambda: cls.load(path), LoadError, re.escape(path.name) + r".*" + DAMAGES[damage][1])


MISMATCHED = {
    lp.Curve: dict(alphas=[0, 1], losses=[0.0], stderr=[0, 0], loss_a=0, loss_b=0),
    lp.Path: dict(ts=[0, 0.5, 1], losses=[1, 2], stderr=[0, 0, 0], loss_a=0, loss_b=0, knots=[], knot_losses=[],
                  length=1, method="bezier"),
    lp.LevelSet: dict(connected=True, reason="", threshold=1, loss_a=0, loss_b=0, ts=[0, 1], losses=[0],
                      bead_ts=[0, 1], bead_losses=[0, 0], length=1, normalized_length=1),
    lp.TrajectoryPCA: dict(steps=[0, 1, 2], coords=[[0, 0], [1, 1]], explained_variance_ratio=[0.5, 0.5],
                           singular_values=[1, 1]),
    lp.TrajectoryMDS: dict(steps=[0, 1], coords=[[0, 0], [1, 1]], distances=[[0, 1], [1, 0], [1, 1]],
                           eigenvalues=[1, 1]),
    lp.Eigenpairs: dict(values=[1, 2], residuals=[0.0], converged=[1, 1]),
    lp.Spectrum: dict(nodes=[[1, 2]], weights=[[0.5, 0.5]], grid=[0, 1, 2], density=[0, 1], sigma=0.1, n=2),
    BoundTrace: dict(epochs=[1, 2], steps=[1], total_time=[1, 2], k0=[1, 1], stability=[1, 1], pac_bayes=[1, 1],
                     grad_norm_sq=[1, 1]),
    TwoPhaseResult: dict(seeds=[0, 1], base_error=[0.1], two_phase_error=[0.1, 0.1], darc1_error=[0.1, 0.1]),
}


@pytest.mark.parametrize("cls", list(MISMATCHED), ids=[c.__name__ for c in MISMATCHED])
def test_result_load_with_mismatched_array_lengths(tmp_path, cls):
    path = tmp_path / f"{cls.__name__.lower()}.json"
    path.write_text(json.dumps({"kind": cls.__name__, "format": 1, **MISMATCHED[cls]}))
    check(lambda: cls.load(path), LoadError, re.escape(path.name) + r".*should have the same length")


@pytest.mark.parametrize("damage", ["missing", "empty", "top-level-list"])
def test_tracker_load_of_a_damaged_file(tmp_path, damage):
    path = damaged_file(tmp_path, metrics.PSNRTracker, damage)
    check(lambda: metrics.PSNRTracker.load(path), LoadError, re.escape(path.name) + r".*" + DAMAGES[damage][1])


# ----------------------------------------------------------------------------- checkpoints and resume files
def damaged_checkpoint(path, damage):
    if damage == "wrong-object":
        atomic_torch_save([1, 2, 3], path)
        return path
    blob = atomic_torch_save({"w": torch.arange(100.0)}, path).read_bytes()
    path.write_bytes({"zero-bytes": b"", "truncated": blob[: len(blob) // 2],
                      "garbage": bytes(range(256)) * 4}[damage])
    return path


CHECKPOINT_DAMAGES = ["zero-bytes", "truncated", "garbage", "wrong-object"]


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGES)
def test_level_set_resume_from_a_damaged_checkpoint(tmp_path, damage):
    ck = damaged_checkpoint(tmp_path / "levelset.pt", damage)
    check(lambda: probe().level_set(point(), point(0.1), 10.0, steps=1, checkpoint=ck), LoadError,
          r"levelset\.pt" + ("': it holds a list, not a level_set" if damage == "wrong-object" else ""))


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGES)
def test_connect_resume_from_a_damaged_checkpoint(tmp_path, damage):
    ck = damaged_checkpoint(tmp_path / "connect.pt", damage)
    check(lambda: probe().connect(point(), point(0.1), steps=2, checkpoint=ck), LoadError, r"connect\.pt")


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGES)
def test_auto_neb_resume_from_a_damaged_checkpoint(tmp_path, damage):
    ck = damaged_checkpoint(tmp_path / "neb.pt", damage)
    check(lambda: probe().auto_neb(point(), point(0.1), steps=1, checkpoint=ck), LoadError, r"neb\.pt")


@pytest.mark.parametrize("damage", ["empty", "truncated", "top-level-list"])
def test_monitor_resume_from_a_damaged_history(tmp_path, damage):
    directory = tmp_path / "run"
    directory.mkdir()
    text = DAMAGES[damage][0]
    (directory / "monitor.json").write_text(text)
    check(lambda: lp.LandscapeMonitor(probe(), hessian=False, capacity=False, directory=directory, resume=True),
          LoadError, r"monitor\.json")


# ----------------------------------------------------------------------------- writers
def small_curve(settings=None):
    return lp.Curve(np.zeros(2), np.zeros(2), np.zeros(2), 0.0, 0.0, settings=settings or {})


def small_chain(settings):
    return LangevinSamples(["w"], [[1]], np.ones(1), np.ones(1), np.array([1.0]), np.zeros((1, 1)),
                           np.array([np.nan]), 1.0, 1, settings=settings, samples=torch.ones(1, 1))


WRITERS = {
    "result-with-unserializable-setting": (lambda d: small_curve({"fn": object()}).save(d / "curve.json"),
                                           TypeError, r"curve\.json.*not JSON serializable"),
    "result-to-a-folder": (lambda d: small_curve().save(d), IsADirectoryError, r"it is a folder"),
    "langevin-with-unserializable-setting": (lambda d: small_chain({"fn": object()}).save(d / "chain.json"),
                                             TypeError, r"chain\.json"),
    "tracker-to-a-folder": (lambda d: metrics.PSNRTracker().save(d), IsADirectoryError, r"it is a folder"),
    "torch-save-of-a-function": (lambda d: atomic_torch_save({"f": lambda: 1}, d / "state.pt"), TypeError,
                                 r"state\.pt.*not functions"),
}


@pytest.mark.parametrize("case", list(WRITERS), ids=list(WRITERS))
def test_failed_write_leaves_no_file(tmp_path, case):
    thunk, exc, pattern = WRITERS[case]
    out = tmp_path / "out"
    out.mkdir()
    check(lambda: thunk(out), exc, pattern)
    assert sorted(p.name for p in out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
