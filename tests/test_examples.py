"""The examples run (with small settings) and write what they promise."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_example(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--out", str(out), "--steps", "20"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "barrier" in proc.stdout
    curve = json.loads((out / "curve.json").read_text())
    assert curve["kind"] == "Curve" and len(curve["alphas"]) == 21
    assert (out / "curve.png").stat().st_size > 1000


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_example_under_torchrun_equals_one_process(tmp_path):
    """docs/distributed.md's script: 2 ranks sharing the data print the one-process numbers."""
    import os

    out = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), str(ROOT / "examples" / "distributed_probe.py"),
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + "\n" + proc.stderr[-8000:]
    assert proc.stdout.count('"loss"') == 1                      # rank 0 prints, once
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import distributed_probe
        one = distributed_probe.main(["--out", str(tmp_path / "one.json")])
    finally:
        sys.path.remove(str(ROOT / "examples"))
    two = json.loads(out.read_text())
    assert two.keys() == one.keys()
    for k in one:
        assert abs(two[k] - one[k]) <= 1e-12 * abs(one[k]), (k, two[k], one[k])


def _run_example(name: str, out: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), "--out", str(out), "--quick"],
                          capture_output=True, text=True, timeout=300, env=env)


def test_own_model_example(tmp_path):
    """Two seeds with a subnet penalty: curve, plane through both, curvature and capacity written."""
    import math

    out = tmp_path / "own"
    proc = _run_example("own_model.py", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "barrier" in proc.stdout and "lambda_max" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    curve = json.loads((out / "curve.json").read_text())
    plane = json.loads((out / "plane.json").read_text())
    assert curve["kind"] == "Curve" and len(curve["alphas"]) == summary["points"]
    assert plane["kind"] == "Surface"
    assert curve["losses"][0] == summary["curve"]["loss_a"] and curve["losses"][-1] == summary["curve"]["loss_b"]
    for name in ("a", "b"):
        s = summary["solutions"][name]
        assert s["lambda_max"] > 0 and s["trace"] > 0 and math.isfinite(s["trace_stderr"])
        assert s["train_loss"] == summary["curve"][f"loss_{name}"]           # the probe's loss at each end
        capacity = json.loads((out / f"capacity_{name}.json").read_text())
        assert {"model", "features", "head"} <= set(capacity["values"])
        assert capacity["values"]["model"]["l2"] == s["l2"]
    assert summary["seconds"] < 120


def test_sr_study_example(tmp_path):
    """The recipe under two settings on the embedded sample, then the segment between them."""
    out = tmp_path / "sr"
    proc = _run_example("sr_study.py", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "barrier" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"] == ["all-l2", "all-l1"]
    for setting in summary["settings"]:
        final = json.loads((out / "runs" / setting / "final.json").read_text())
        assert final["spec"]["setting"] == setting and final["psnr"] == summary["runs"][setting]["psnr"]
        assert (out / "runs" / setting / "checkpoint.pt").is_file()
    curve = json.loads((out / "curve.json").read_text())
    assert curve["kind"] == "Curve" and summary["curve"]["barrier"] >= 0
    assert curve["losses"][0] == summary["curve"]["loss_a"] and curve["losses"][-1] == summary["curve"]["loss_b"]
    assert curve["losses"][0] != curve["losses"][-1]                        # two different solutions
