"""remove_stale_temps: the temporary files of an interrupted atomic write are removed when a run
starts (connect, AutoNEB, level set, the monitor, the recipe), and no other file is."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import landprobe as lp
from helpers import CASES, perturbed
from landprobe.common.io import atomic_write
from landprobe.common.tempfiles import remove_stale_temps
from landprobe.engine.core import Engine
from landprobe.monitor import LandscapeMonitor
from landprobe.probes import toys
from landprobe.probes.curves.levelset import level_set
from landprobe.probes.curves.neb import auto_neb

# Names beside a target "ckpt.pt" that resemble the temporary files of atomic_write but are not.
FOREIGN = [
    ".ckpt.pt.abc.tmp",             # random part too short
    ".ckpt.pt.abcdefghi.tmp",       # too long
    ".ckpt.pt.ABCDEFGH.tmp",        # not mkstemp's alphabet
    "ckpt.pt.abcdefgh.tmp",         # no leading dot
    ".ckpt.pt.abcdefgh.tmp.bak",
    ".ckpt.pt.abcdefgh.temp",
    ".ckpt.ptx.abcdefgh.tmp",       # another target's
    ".xckpt.pt.abcdefgh.tmp",
    ".ckpt.abcdefgh.tmp",
    "ckpt.pt",
    "notes.txt",
]


def plant(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"half-written")
    return [folder / n for n in names]


def temps_of(target):
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")
                  and p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- the function
def test_removes_ours_and_keeps_every_other_file(tmp_path):
    ours = plant(tmp_path, [".ckpt.pt.k2j4_x9q.tmp", ".ckpt.pt.00000000.tmp"])
    foreign = plant(tmp_path, FOREIGN)
    (tmp_path / ".ckpt.pt.dirdirdi.tmp").mkdir()                          # a folder is never removed
    os.symlink(tmp_path / "notes.txt", tmp_path / ".ckpt.pt.linklink.tmp")  # nor is a link
    assert remove_stale_temps(tmp_path / "ckpt.pt") == sorted(ours)
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in foreign)
    assert (tmp_path / ".ckpt.pt.dirdirdi.tmp").is_dir() and (tmp_path / ".ckpt.pt.linklink.tmp").is_symlink()
    assert remove_stale_temps(tmp_path / "ckpt.pt") == []


def test_name_with_regex_characters_and_missing_folder(tmp_path):
    ours = plant(tmp_path, [".run[1]+.pt.abcdefgh.tmp"])
    kept = plant(tmp_path, [".run1.pt.abcdefgh.tmp", ".run[1]+Xpt.abcdefgh.tmp"])
    assert remove_stale_temps(str(tmp_path / "run[1]+.pt")) == ours
    assert all(p.exists() for p in kept)
    assert remove_stale_temps(tmp_path / "no" / "such" / "ckpt.pt") == []
    assert remove_stale_temps(tmp_path / "notes.txt" / "ckpt.pt") == []   # parent is a file


def test_matches_the_names_atomic_write_uses(tmp_path):
    target = tmp_path / "ckpt.pt"
    seen = []
    for _ in range(20):
        atomic_write(target, lambda fh: seen.extend(n for n in os.listdir(tmp_path) if n != "ckpt.pt"))
    assert len(seen) == 20
    plant(tmp_path, seen)                      # as if each of those writes had been killed
    assert [p.name for p in remove_stale_temps(target)] == sorted(seen)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


# ----------------------------------------------------------------------------- where runs start
def connect_run(checkpoint, steps=4):
    model, data = CASES[0].build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, CASES[0].loss_fn, data)
    return probe.connect(perturbed(model, 1), perturbed(model, 2), method="bezier", bends=1, steps=steps, lr=0.01,
                         t_samples=1, points=3, seed=0, checkpoint=checkpoint, checkpoint_every=2)


def test_connect_removes_stale_temps_at_start_and_on_resume(tmp_path):
    ck = tmp_path / "p.pt"
    foreign = plant(tmp_path, [".p.pt.backup.tmp", ".q.pt.abcdefgh.tmp"])
    plant(tmp_path, [".p.pt.a1b2c3d4.tmp"])
    connect_run(ck)
    assert ck.is_file() and temps_of(ck) == [".p.pt.backup.tmp"]
    plant(tmp_path, [".p.pt.zz_9y8x7.tmp"])                    # killed while writing, then resumed
    resumed = connect_run(ck)
    assert resumed.settings["resumed_at_step"] == 4
    assert torch.load(ck, weights_only=True)["step"] == 4
    assert temps_of(ck) == [".p.pt.backup.tmp"] and all(p.exists() for p in foreign)


def test_only_the_process_that_writes_files_removes_them(tmp_path, monkeypatch):
    monkeypatch.setattr(Engine, "writes_files", property(lambda self: False))
    ck = tmp_path / "p.pt"
    stale = plant(tmp_path, [".p.pt.a1b2c3d4.tmp"])
    connect_run(ck, steps=2)
    assert stale[0].exists()


def test_auto_neb_removes_stale_temps(tmp_path):
    v = toys.CurvyValley()
    a, b = v.minima()
    ck = tmp_path / "neb.pt"
    stale = plant(tmp_path, [".neb.pt.a1b2c3d4.tmp"])
    kept = plant(tmp_path, [".neb.pt.a1b2c3d4.tmp.old"])
    auto_neb(toys.toy_probe(v), a, b, schedule=[dict(steps=3, lr=0.02, insert=1)], checkpoint=ck)
    assert ck.is_file() and not stale[0].exists() and kept[0].exists()


def test_level_set_removes_stale_temps(tmp_path):
    case = CASES[0]
    model, data = case.build(dtype=torch.float64)
    probe = lp.LandscapeProbe(model, case.loss_fn, data)
    a, b = perturbed(model, 1, 0.3), perturbed(model, 2, 0.3)
    ck = tmp_path / "ls.pt"
    stale = plant(tmp_path, [".ls.pt.a1b2c3d4.tmp"])
    kept = plant(tmp_path, [".ls.pt.a1b2c3.tmp"])
    level_set(probe, a, b, threshold=max(probe.loss(a), probe.loss(b)) + 0.01, steps=5, lr=0.05, check_every=5,
              max_beads=3, checkpoint=ck)
    assert not stale[0].exists() and kept[0].exists()


def test_monitor_removes_stale_temps_of_its_files(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    data = [(x, x.sum(1, keepdim=True))]
    stale = plant(tmp_path, [".monitor.json.a1b2c3d4.tmp", ".monitor_previous.pt.e5f6g7h8.tmp"])
    kept = plant(tmp_path, [".other.json.a1b2c3d4.tmp", ".monitor.json.tmp"])
    LandscapeMonitor(net, nn.MSELoss(), data, hessian=False, directory=tmp_path)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_recipe_resume_leaves_no_stale_temps(tmp_path):
    from landprobe.recipes.reproduce import reproduce

    opts = dict(data=lp.data.sample_dir("train"), val=lp.data.sample_dir("val"), out=tmp_path, progress=False,
                width=0.05, batch_size=8, epochs=2, patches_per_epoch=16)
    first = reproduce("mix", max_steps=3, **opts)
    assert first["steps"] == 3
    run = tmp_path / "mix"
    stale = plant(run, [".checkpoint.pt.a1b2c3d4.tmp", ".history.jsonl.e5f6g7h8.tmp", ".final.json.i9j0k1l2.tmp"])
    kept = plant(run, [".checkpoint.pt.a1b2c3d4.tmp.keep"])
    second = reproduce("mix", resume=True, **opts)
    assert second["steps"] == 4
    assert not any(p.exists() for p in stale) and kept[0].exists()
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.parametrize("name", ["ckpt.pt", "history.jsonl", "monitor.json"])
def test_roundtrip_after_removal(tmp_path, name):
    target = tmp_path / name
    plant(tmp_path, [f".{name}.abcdefgh.tmp"])
    remove_stale_temps(target)
    atomic_write(target, lambda fh: fh.write("x"))
    assert sorted(os.listdir(tmp_path)) == [name]
