"""LandscapeCallback in a Lightning Trainer: the monitor's numbers, logging, an untouched
module, checkpoint + resume, argument errors, and the optional import."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from torch import nn

import landprobe as lp

HAVE_LIGHTNING = importlib.util.find_spec("lightning") is not None
needs_lightning = pytest.mark.skipif(not HAVE_LIGHTNING,
                                     reason="lightning is not installed (pip install landprobe[lightning])")

if HAVE_LIGHTNING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from landprobe.integrations.lightning import LandscapeCallback

    class Regressor(pl.LightningModule):
        """A small MLP (with dropout, so that the global RNG matters) under ``self.net``."""

        def __init__(self, seed: int = 0, dropout: float = 0.2):
            super().__init__()
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 1)).double()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    class Snapshots(Callback):
        """The network's weights at the end of each training epoch."""

        def __init__(self):
            self.states = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.states.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})


def problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 3, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    return x, y


def loader(shuffle=True):
    x, y = problem()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=12, shuffle=shuffle)


def probe_data():
    x, y = problem()
    return [(x[:24], y[:24]), (x[24:], y[24:])]


OPTIONS = dict(network="net", trace_matvecs=6, subnets={"head": "3"}, capacity=["norms"], interpolate_points=5)


def fit(epochs, callbacks, shuffle=True, dropout=0.2, **kwargs):
    torch.manual_seed(123)                                  # the DataLoader's shuffles and the dropout masks
    module = Regressor(dropout=dropout)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1,
                         **{"logger": False, "enable_checkpointing": False, **kwargs})
    trainer.fit(module, loader(shuffle))
    return module, trainer


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def hand_history(states):
    """A LandscapeMonitor driven by hand over the given weights, epoch by epoch."""
    net = Regressor().net
    monitor = lp.LandscapeMonitor(net, nn.MSELoss(), probe_data(), **{k: v for k, v in OPTIONS.items()
                                                                       if k != "network"})
    for epoch, state in enumerate(states, start=1):
        net.load_state_dict(state)
        monitor(epoch)
    return monitor.history


@needs_lightning
def test_records_equal_a_monitor_driven_by_hand_and_training_is_unaffected():
    snaps = Snapshots()
    callback = LandscapeCallback(nn.MSELoss(), probe_data(), **OPTIONS)
    module, trainer = fit(3, [callback, snaps])
    plain_snaps = Snapshots()
    plain, _ = fit(3, [plain_snaps])
    for a, b in zip(snaps.states, plain_snaps.states):     # every epoch, bitwise
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), plain.parameters()))
    assert module.training == plain.training and all(m.training for m in module.modules())
    history = callback.history
    assert history.epochs.tolist() == [1.0, 2.0, 3.0]
    assert without_seconds(history.records) == without_seconds(hand_history(snaps.states).records)
    assert history.records[2]["previous_epoch"] == 2 and history.records[2]["distance"] > 0
    assert set(history.records[0]["hessian"]) == {"model", "head"}


@needs_lightning
def test_every_and_logged_metrics_reach_callback_metrics_and_the_loggers(tmp_path):
    callback = LandscapeCallback(nn.MSELoss(), probe_data(), every=2, **OPTIONS)
    _, trainer = fit(4, [callback], logger=CSVLogger(tmp_path, name="csv"))
    history = callback.history
    assert history.epochs.tolist() == [2.0, 4.0]
    last = history.records[-1]
    metrics = trainer.callback_metrics
    expected = {"landscape/loss": last["loss"], "landscape/lambda_max": last["lambda_max"],
                "landscape/trace": last["trace"], "landscape/barrier": last["barrier"],
                "landscape/distance": last["distance"], "landscape/l2": last["capacity"]["model"]["l2"],
                "landscape/head/lambda_max": last["hessian"]["head"]["lambda_max"],
                "landscape/head/l2": last["capacity"]["head"]["l2"]}
    for name, value in expected.items():
        assert float(metrics[name]) == pytest.approx(value, rel=1e-6, abs=1e-12), name
    assert "landscape/epoch" not in metrics and "landscape/seconds" not in metrics
    trainer.loggers[0].save()
    header, *rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    assert "landscape/trace" in header.split(",") and len(rows) == 2       # epochs 2 and 4


@needs_lightning
def test_checkpoint_and_resume_continue_the_history(tmp_path):
    options = dict(OPTIONS, capacity=False)
    whole = LandscapeCallback(nn.MSELoss(), probe_data(), **options)
    fit(3, [whole], shuffle=False, dropout=0.0)
    first = LandscapeCallback(nn.MSELoss(), probe_data(), **options)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit(2, [first, ckpt], shuffle=False, dropout=0.0, enable_checkpointing=True)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"][first.state_key]
    assert [r["epoch"] for r in saved["records"]] == [1, 2] and saved["previous_epoch"] == 2
    resumed = LandscapeCallback(nn.MSELoss(), probe_data(), **options)
    torch.manual_seed(123)
    trainer = pl.Trainer(max_epochs=3, callbacks=[resumed], enable_progress_bar=False, enable_model_summary=False,
                         logger=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.fit(Regressor(seed=7, dropout=0.0), loader(False), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.history.epochs.tolist() == [1.0, 2.0, 3.0]
    assert resumed.history.records[2]["previous_epoch"] == 2
    assert without_seconds(resumed.history.records) == without_seconds(whole.history.records)


@needs_lightning
def test_directory_is_written_and_the_module_itself_can_be_measured(tmp_path):
    callback = LandscapeCallback(nn.MSELoss(), probe_data(), hessian=False, capacity=False, directory=tmp_path)
    module, _ = fit(2, [callback])
    assert callback.monitor.probe.model is module                   # network=None: the LightningModule
    assert lp.LandscapeMonitor.load(tmp_path).records == callback.history.records
    again = LandscapeCallback(nn.MSELoss(), probe_data(), hessian=False, capacity=False, directory=tmp_path,
                              resume=True)
    fit(1, [again])
    assert [r["epoch"] for r in again.history.records] == [1, 2, 1]  # a new run counts its epochs from 1


@needs_lightning
@pytest.mark.parametrize("kwargs,exc,match", [
    ({"every": 0}, ValueError, "every=0"),
    ({"interpolate_points": 1}, ValueError, "interpolate_points=1"),
    ({"trace_matvecs": 2}, ValueError, "trace_matvecs=2"),
    ({"hessian": "blocks"}, ValueError, "hessian='blocks'"),
    ({"network": 3}, ValueError, "network=3"),
    ({"network": ""}, ValueError, "network=''"),
    ({"probe_options": {"sharding": None}}, ValueError, r"probe_options has unknown key\(s\) \['sharding'\]"),
    ({"resume": True}, ValueError, "resume=True needs directory"),
    ({"log_prefix": None}, ValueError, "log_prefix=None"),
    ({"data": None}, TypeError, "data=None"),
    ({"loss_fn": "mse"}, TypeError, "loss_fn"),
])
def test_bad_arguments_fail_at_construction(kwargs, exc, match):
    args = {"loss_fn": nn.MSELoss(), "data": probe_data(), **kwargs}
    with pytest.raises(exc, match=match):
        LandscapeCallback(args.pop("loss_fn"), args.pop("data"), **args)


@needs_lightning
@pytest.mark.parametrize("kwargs,exc,match", [
    ({"network": "backbone"}, ValueError, "Regressor has no attribute 'backbone'"),
    ({"network": "training"}, TypeError, "is a bool, not an nn.Module"),
    ({"network": "net", "subnets": {"x": "nothere"}}, ValueError, "matched no parameter"),
    ({"capacity": "some"}, ValueError, "capacity='some'"),
])
def test_bad_arguments_about_the_module_fail_when_fit_starts(kwargs, exc, match):
    callback = LandscapeCallback(nn.MSELoss(), probe_data(), hessian=False, **kwargs)
    with pytest.raises(exc, match=match):
        fit(1, [callback])


@needs_lightning
def test_a_checkpoint_of_another_network_is_refused():
    callback = LandscapeCallback(nn.MSELoss(), probe_data(), network="net", hessian=False, capacity=False)
    callback.load_state_dict({"records": [], "previous_epoch": 1, "previous": {"w": torch.zeros(2)}})
    with pytest.raises(ValueError, match="does not fit the model"):
        fit(1, [callback])


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_landprobe_does_not_import_lightning():
    proc = run_python("import sys, landprobe, landprobe.integrations\n"
                      "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_integration_without_lightning_says_how_to_install_it():
    proc = run_python("import sys\nsys.modules['lightning'] = None\nsys.modules['lightning.pytorch'] = None\n"
                      "import landprobe.integrations.lightning")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "pip install landprobe[lightning]" in proc.stderr


@needs_lightning
def test_the_python_block_of_docs_lightning_runs(tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "lightning.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(blocks[0], "docs/lightning.md", "exec"), namespace)  # noqa: S102 - our own docs
    out = capsys.readouterr().out
    assert "barrier 1 -> 2:" in out and "landscape/head/l2" in out
    assert namespace["callback"].history.epochs.tolist() == [1.0, 2.0]
