"""Unreadable inputs raise one error type, LoadError (a ValueError), naming the file."""

import json
import struct
import zlib

import numpy as np
import pytest
import torch

import landprobe as lp
from landprobe.common.io import LoadError, atomic_torch_save, load_torch
from landprobe.data import load_y
from helpers import CASES, perturbed


def assert_load_error(excinfo, path):
    err = excinfo.value
    assert isinstance(err, LoadError) and isinstance(err, ValueError)
    assert path.name in str(err)
    return err


def good_checkpoint(tmp_path):
    return atomic_torch_save({"w": torch.arange(1000, dtype=torch.float64), "step": 3}, tmp_path / "good.pt")


def test_load_error_is_exported_from_the_root():
    assert lp.LoadError is LoadError and issubclass(LoadError, ValueError)


@pytest.mark.parametrize("damage", ["zero_bytes", "half_length", "garbage", "text"])
def test_damaged_torch_files_raise_load_error(tmp_path, damage):
    data = good_checkpoint(tmp_path).read_bytes()
    payload = {"zero_bytes": b"", "half_length": data[: len(data) // 2],
               "garbage": bytes(range(256)) * 4, "text": b"this is not a checkpoint\n"}[damage]
    path = tmp_path / f"{damage}.pt"
    path.write_bytes(payload)
    with pytest.raises(LoadError) as excinfo:
        load_torch(path)
    assert_load_error(excinfo, path)


def test_missing_torch_file_raises_load_error(tmp_path):
    with pytest.raises(LoadError) as excinfo:
        load_torch(tmp_path / "absent.pt")
    assert "does not exist" in str(assert_load_error(excinfo, tmp_path / "absent.pt"))


def test_good_torch_file_still_loads(tmp_path):
    back = load_torch(good_checkpoint(tmp_path), map_location="cpu")
    assert back["step"] == 3 and back["w"].shape == (1000,)


def test_connect_resume_from_a_truncated_checkpoint_raises_load_error(tmp_path):
    model, data = CASES[0].build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    args = dict(method="bezier", bends=2, steps=4, lr=0.01, optimizer="adam", t_samples=2, points=3, seed=3,
                checkpoint_every=2)
    ck = tmp_path / "connect.pt"
    probe.connect(perturbed(model, 1), perturbed(model, 2), checkpoint=ck, **args)
    blob = ck.read_bytes()
    ck.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(LoadError) as excinfo:
        probe.connect(perturbed(model, 1), perturbed(model, 2), checkpoint=ck, **args)
    assert_load_error(excinfo, ck)


def make_curve(n=3):
    return lp.Curve(alphas=np.linspace(0, 1, n), losses=np.arange(n, dtype=float), stderr=np.zeros(n),
                    loss_a=0.0, loss_b=float(n - 1), settings={"steps": n})


def test_curve_round_trip_writes_a_format_version(tmp_path):
    path = make_curve().save(tmp_path / "curve.json")
    assert json.loads(path.read_text())["format"] == 1
    back = lp.Curve.load(path)
    np.testing.assert_array_equal(back.losses, [0.0, 1.0, 2.0])


def test_curve_without_format_field_loads_as_version_1(tmp_path):
    path = make_curve().save(tmp_path / "old.json")
    data = json.loads(path.read_text())
    del data["format"]
    path.write_text(json.dumps(data))
    assert lp.Curve.load(path).loss_b == 2.0


def _rewrite(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_curve_truncated_json(tmp_path):
    path = make_curve().save(tmp_path / "cut.json")
    path.write_text(path.read_text()[:40])
    with pytest.raises(LoadError) as excinfo:
        lp.Curve.load(path)
    assert "line" in str(assert_load_error(excinfo, path))        # the parse position


def test_curve_empty_file(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("")
    with pytest.raises(LoadError) as excinfo:
        lp.Curve.load(path)
    assert "empty" in str(assert_load_error(excinfo, path))


def test_curve_top_level_list(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2, 3]\n")
    with pytest.raises(LoadError) as excinfo:
        lp.Curve.load(path)
    assert_load_error(excinfo, path)


def test_curve_mismatched_lengths(tmp_path):
    path = make_curve(5).save(tmp_path / "mismatch.json")
    _rewrite(path, lambda d: d.update(losses=d["losses"][:3]))
    with pytest.raises(LoadError) as excinfo:
        lp.Curve.load(path)
    msg = str(assert_load_error(excinfo, path))
    assert "alphas" in msg and "losses" in msg


def test_curve_missing_field(tmp_path):
    path = make_curve().save(tmp_path / "missing.json")
    _rewrite(path, lambda d: d.pop("losses"))
    with pytest.raises(LoadError) as excinfo:
        lp.Curve.load(path)
    assert "'losses'" in str(assert_load_error(excinfo, path))


def test_curve_not_a_landprobe_file(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"name": "something else"}')
    with pytest.raises(LoadError) as excinfo:
        lp.Curve.load(path)
    assert "not a landprobe" in str(assert_load_error(excinfo, path))


def test_surface_loaded_as_curve(tmp_path):
    surface = lp.Surface(xs=np.array([0.0, 1.0]), ys=np.array([0.0, 1.0]), losses=np.zeros((2, 2)),
                         stderr=np.zeros((2, 2)), center_loss=0.0)
    path = surface.save(tmp_path / "surface.json")
    with pytest.raises(LoadError) as excinfo:
        lp.Curve.load(path)
    msg = str(assert_load_error(excinfo, path))
    assert "Surface" in msg and "lp.Surface.load" in msg


def test_curve_newer_format_version(tmp_path):
    path = make_curve().save(tmp_path / "future.json")
    _rewrite(path, lambda d: d.update(format=99))
    with pytest.raises(LoadError) as excinfo:
        lp.Curve.load(path)
    msg = str(assert_load_error(excinfo, path))
    assert "99" in msg and "upgrade" in msg


def _png_header(width, height):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)        # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_png_declaring_30000_squared_pixels(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(30000, 30000))
    with pytest.raises(LoadError) as excinfo:
        load_y(path)
    assert_load_error(excinfo, path)


def test_garbage_png(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"definitely not an image" * 10)
    with pytest.raises(LoadError) as excinfo:
        load_y(path)
    assert_load_error(excinfo, path)


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(_png_header(64, 64))          # header for 64x64 but almost no pixel data
    with pytest.raises(LoadError) as excinfo:
        load_y(path)
    assert_load_error(excinfo, path)


def test_a_corrupt_t91_patch_cache_is_rebuilt_with_a_warning(tmp_path):
    from landprobe.data import T91Patches, list_images, sample_dir
    from landprobe.data import _datasets as datasets_module

    root = tmp_path / "imgs"
    root.mkdir()
    for f in list_images(sample_dir("train"))[:2]:
        (root / f.name).write_bytes(f.read_bytes())
    cache = tmp_path / "cache"
    a = T91Patches(root, scale=2, cache_dir=cache)
    (cache_file,) = cache.glob("t91patches-*.pt")
    blob = cache_file.read_bytes()
    cache_file.write_bytes(blob[: len(blob) // 2])
    datasets_module._MEMORY_CACHE.clear()
    with pytest.warns(RuntimeWarning, match=cache_file.name):
        b = T91Patches(root, scale=2, cache_dir=cache)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert load_torch(cache_file)["inputs"].shape == a.inputs.shape          # rewritten whole
