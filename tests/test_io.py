import os
import stat

import pytest
import torch

from landprobe.common.io import atomic_torch_save, atomic_write, load_json, save_json


def test_atomic_json_round_trip_and_permissions(tmp_path):
    path = save_json(tmp_path / "a" / "x.json", {"v": float("nan"), "t": torch.tensor([1.0, 2.0])})
    assert load_json(path) == {"v": "nan", "t": [1.0, 2.0]}
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o666 & ~_umask()  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_failed_write_leaves_the_old_file(tmp_path):
    path = save_json(tmp_path / "x.json", {"v": 1})

    def boom(fh):
        fh.write("{half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, boom)
    assert load_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_checkpoints_load_with_weights_only(tmp_path):
    path = atomic_torch_save({"model": {"w": torch.ones(2)}, "step": 3}, tmp_path / "c.pt")
    back = torch.load(path, weights_only=True)
    assert back["step"] == 3 and torch.equal(back["model"]["w"], torch.ones(2))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
