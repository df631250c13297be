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
    assert proc.returncode == 0, proc.stderr[-3000:]
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
