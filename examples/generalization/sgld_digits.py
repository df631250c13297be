"""SGLD at two temperatures on the 8x8 digits, with the bound terms along training.

    OMP_NUM_THREADS=1 python examples/generalization/sgld_digits.py --out results/sgld

For each inverse temperature beta: an MLP (64 -> hidden -> 10, ReLU) trained by
``landprobe.optim.SGLD`` on mean cross-entropy (mini-batches of a seeded shuffle, step size
lr * gamma^(epoch - 1) in epoch ``epoch``, weight decay), in the user's own loop with a
``BoundTracker`` fed the step size and the measured squared mini-batch gradient norm after
every step; train and test error per epoch. Then ``langevin_sample`` continues the chain
from the trained model (at the step size a next epoch would have; the model itself is left
as it was) and keeps every ``thin``-th iterate: effective sample sizes, and the test error
of the averaged prediction of the kept iterates. Writes ``sgld_digits.json`` (numbers, settings, command,
versions, CPU, date), ``sgld_digits.png``, and one ``bounds_beta<beta>.json`` per beta.
Needs scikit-learn (the data) and matplotlib (the figure).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import landprobe as lp
from landprobe.common.hardware import cpu_model
from landprobe.common.io import save_json
from landprobe.generalization.bounds import BoundTracker, grad_norm_sq
from landprobe.generalization.langevin import langevin_sample
from landprobe.optim import SGLD

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits import load_digits_split




def error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) != y).double().mean())


def make_model(hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train(args: argparse.Namespace, beta: float, train_set, test_set) -> tuple[nn.Module, dict[str, Any], Any]:
    """The user's loop: SGLD steps, the tracker fed after each, errors and terms per epoch."""
    (x, y), (xt, yt) = train_set, test_set
    n = len(y)
    model = make_model(args.hidden, args.seed)
    opt = SGLD(model.parameters(), lr=args.lr, beta=beta, weight_decay=args.weight_decay, generator=args.seed + 1)
    tracker = BoundTracker(beta=beta, n=n, lipschitz=args.lipschitz, lam=args.weight_decay)
    shuffle = torch.Generator().manual_seed(args.seed + 2)
    log: dict[str, list[float]] = {"epoch": [], "lr": [], "train_error": [], "test_error": [], "train_loss": []}
    max_g2 = 0.0
    for epoch in range(1, args.epochs + 1):
        lr = args.lr * args.gamma ** (epoch - 1)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        order = torch.randperm(n, generator=shuffle)
        for start in range(0, n, args.batch):
            idx = order[start:start + args.batch]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            g2 = grad_norm_sq(model.parameters())
            opt.step()
            tracker.step(lr, g2)
            max_g2 = max(max_g2, g2)
        tracker.epoch_end(epoch)
        model.eval()
        with torch.no_grad():
            log["train_loss"].append(float(nn.functional.cross_entropy(model(x), y)))
        log["epoch"].append(epoch)
        log["lr"].append(lr)
        log["train_error"].append(error(model, x, y))
        log["test_error"].append(error(model, xt, yt))
    log["max_grad_norm"] = [max_g2 ** 0.5]
    return model, log, tracker.trace(beta=beta)


def sample(args: argparse.Namespace, model: nn.Module, beta: float, lr: float, train_set, test_set
           ) -> dict[str, Any]:
    """Continue the chain with the sampler; ESS and the test error of the averaged prediction."""
    (x, y), (xt, yt) = train_set, test_set
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed + 3))
    batches = [(x[order[i:i + args.batch]], y[order[i:i + args.batch]]) for i in range(0, len(y), args.batch)]
    probe = lp.LandscapeProbe(model, nn.CrossEntropyLoss(), batches)
    before = [p.detach().clone() for p in model.parameters()]
    r = langevin_sample(probe, lr=lr, beta=beta, steps=args.sample_steps, thin=args.thin,
                        weight_decay=args.weight_decay, seed=args.seed)
    if not all(torch.equal(p, b) for p, b in zip(model.parameters(), before)):
        raise RuntimeError("langevin_sample left the model changed")
    copy_ = copy.deepcopy(model).eval()
    probs, errors = torch.zeros(len(yt), 10), []
    for i in range(r.count):
        r.sample_params(i).apply_to(copy_)
        with torch.no_grad():
            out = copy_(xt)
        probs += out.softmax(1)
        errors.append(float((out.argmax(1) != yt).double().mean()))
    return {"steps": args.sample_steps, "thin": args.thin, "lr": lr, "kept": r.count,
            "ess": dict(zip(r.names, r.ess.tolist())), "loss_ess": r.loss_ess,
            "mean_loss": float(np.mean(r.losses)),
            "loss_per_pass": r.losses[: len(r.losses) // len(batches) * len(batches)].reshape(-1, len(batches))
            .mean(1).tolist(),
            "test_error_mean_of_samples": float(np.mean(errors)),
            "test_error_averaged_prediction": float((probs.argmax(1) != yt).double().mean())}


def plot(runs: list[dict[str, Any]], traces: list[Any], batches: int, path: Path) -> None:
    from landprobe.common.results import require_matplotlib

    plt = require_matplotlib()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for i, (run, trace) in enumerate(zip(runs, traces)):
        c, label = f"C{i}", f"beta = {run['beta']:g}"
        log = run["epochs"]
        axes[0, 0].plot(log["epoch"], log["train_error"], color=c, ls="--", label=f"{label}, train")
        axes[0, 0].plot(log["epoch"], log["test_error"], color=c, label=f"{label}, test")
        axes[0, 1].plot(trace.epochs, trace.pac_bayes, color=c, label=label)
        reached = bool(np.isfinite(trace.stability).any())
        axes[1, 0].plot(trace.epochs, trace.stability, color=c, marker=".",
                        label=label if reached else f"{label}: k0 not reached")
        passes = run["sampler"]["loss_per_pass"]
        axes[1, 1].plot((np.arange(len(passes)) + 1) * batches, passes, color=c, label=label)
    axes[0, 0].set(xlabel="epoch", ylabel="error", yscale="log", title="train / test error")
    axes[0, 1].set(xlabel="epoch", ylabel="term", yscale="log",
                   title=r"PAC-Bayes term $\sqrt{\beta/n\,\sum_k \eta_k e^{-\lambda(T_N-T_k)/2}\|g_k\|^2}$")
    axes[1, 0].set(xlabel="epoch", ylabel="term", xlim=axes[0, 1].get_xlim(),
                   title=r"stability term $\sqrt{\beta\sum_{k\geq k_0}\eta_k}$ (none before $k_0$)")
    axes[1, 1].set(xlabel="sampler step", ylabel="mean mini-batch loss per pass", yscale="log",
                   title="langevin_sample after training: loss trace")
    for ax in axes.flat:
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/sgld")
    ap.add_argument("--betas", type=float, nargs="+", default=[100.0, 10000.0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--gamma", type=float, default=0.95, help="step size factor per epoch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--weight-decay", type=float, default=1e-3, help="also lambda of the PAC-Bayes term")
    ap.add_argument("--lipschitz", type=float, default=1.0, help="the assumed L of the stability term's k0")
    ap.add_argument("--sample-steps", type=int, default=10000)
    ap.add_argument("--thin", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    train_set, test_set = load_digits_split(test=0.3, seed=args.seed)
    started = time.perf_counter()
    runs, traces = [], []
    batches = -(-len(train_set[1]) // args.batch)
    for beta in args.betas:
        t0 = time.perf_counter()
        model, log, trace = train(args, beta, train_set, test_set)
        trace.save(out / f"bounds_beta{beta:g}.json")
        traces.append(trace)
        sampler = sample(args, model, beta, log["lr"][-1] * args.gamma, train_set, test_set)
        runs.append({"beta": beta, "epochs": log, "bounds": trace.to_dict(), "final": {
            "train_error": log["train_error"][-1], "test_error": log["test_error"][-1],
            "train_loss": log["train_loss"][-1], **{k: v for k, v in trace.final().items() if k != "epochs"},
            "max_grad_norm": log["max_grad_norm"][0]}, "sampler": sampler, "seconds": time.perf_counter() - t0})
        f = runs[-1]["final"]
        print(f"beta={beta:g}: train error {f['train_error']:.4f}, test error {f['test_error']:.4f}, "
              f"PAC-Bayes term {f['pac_bayes']:.3f}, stability term {f['stability']:.3f} (k0 {f['k0']}), "
              f"sampler: averaged-prediction test error {sampler['test_error_averaged_prediction']:.4f}, "
              f"min ESS {min(sampler['ess'].values()):.1f} of {sampler['kept']}")
    record = {"command": " ".join([Path(sys.executable).name] + sys.argv), "settings": vars(args),
              "n_train": len(train_set[1]), "n_test": len(test_set[1]), "torch": torch.__version__,
              "landprobe": lp.__version__, "cpu": cpu_model(), "threads": torch.get_num_threads(),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "seconds": time.perf_counter() - started, "runs": runs}
    save_json(out / "sgld_digits.json", record)
    try:
        plot(runs, traces, batches, out / "sgld_digits.png")
    except ImportError:
        print("matplotlib not installed: skipped the figure (pip install 'landprobe[plot]')")
    print(f"wrote {out / 'sgld_digits.json'} in {record['seconds']:.0f} s")
    return record


if __name__ == "__main__":
    main()
