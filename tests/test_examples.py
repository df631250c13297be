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
