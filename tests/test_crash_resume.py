"""``landprobe reproduce`` killed with SIGKILL at seeded random moments (at least once in the
middle of a checkpoint write) and continued with ``--resume`` after each kill ends with the
weights, optimizer state and history of an uninterrupted run, bitwise, and leaves no temporary
file of ``atomic_write`` behind."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import landprobe as lp
from landprobe.common.io import load_json

SAMPLE = lp.data.sample_dir()
# a 2,790-parameter WARSHIP; 8 of the 49 sample patches per epoch in batches of 4: 2 steps an
# epoch, a checkpoint after every step, and the run stops inside epoch 10 (most of the time of
# each process goes to importing torch)
STEPS = 19
ARGS = ["reproduce", "--setting", "mix", "--data", str(SAMPLE / "train"), "--val", str(SAMPLE / "val"),
        "--width", "0.05", "--batch-size", "4", "--patches-per-epoch", "8", "--epochs", "10",
        "--max-steps", str(STEPS), "--checkpoint-every", "1", "--seed", "0", "--threads", "1", "--no-progress"]
KILLS = 3                                   # kills that must land before the run may complete
TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # atomic_write's temporary files: .NAME.XXXXXXXX.tmp
WAIT_S = 120


def start(out: Path, log: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "landprobe.cli", *ARGS, "--out", str(out), *(["--resume"] if resume else [])]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def checkpoint_step(ckpt: Path) -> int:
    """The step of ``ckpt`` (0 before the first one); loading it also checks it is whole."""
    if not ckpt.exists():
        return 0
    return int(torch.load(ckpt, weights_only=True)["step"])


def checkpoint_temps(run: Path) -> set[str]:
    if not run.is_dir():
        return set()
    return {n for n in os.listdir(run) if n.startswith(".checkpoint.pt.") and TEMP.fullmatch(n)}


def checkpoint_key(ckpt: Path) -> tuple[int, int] | None:
    """What tells one checkpoint file from the next (each write renames a new file over it)."""
    try:
        st = os.stat(ckpt)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def kill_after(proc: subprocess.Popen, run: Path, resumed_from: tuple[int, int] | None, target: int, mode: str,
               fraction: float) -> None:
    """SIGKILL ``proc`` once it has written a checkpoint of step ``target`` or later (the first
    one it writes, if it resumed past ``target``): ``fraction`` of its mean step time later (mode
    "time"), or the moment it next starts writing a checkpoint (mode "write")."""
    ckpt, seen, deadline = run / "checkpoint.pt", resumed_from, time.monotonic() + WAIT_S
    written: list[tuple[float, int]] = []           # (time seen, step) of the checkpoints proc wrote
    while not written or written[-1][1] < target:
        if proc.poll() is not None:
            return
        assert time.monotonic() < deadline, f"no checkpoint of step {target} in {WAIT_S} s"
        time.sleep(0.005)
        key = checkpoint_key(ckpt)
        if key is not None and key != seen:
            seen = key
            written.append((time.monotonic(), checkpoint_step(ckpt)))
    if mode == "time":
        (t0, s0), (t1, s1) = written[0], written[-1]
        time.sleep(fraction * (t1 - t0) / (s1 - s0) if s1 > s0 else 0.0)
    else:
        before = checkpoint_temps(run)
        while proc.poll() is None and not checkpoint_temps(run) - before:
            pass                                    # poll as fast as possible: a write takes milliseconds
    proc.send_signal(signal.SIGKILL)                # nothing is sent once the process has exited
    proc.wait(WAIT_S)


def history(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rows]  # timings differ


def kill_and_resume(out: Path, logs: Path, rng: random.Random) -> list[tuple]:
    """Start the run in ``out``, SIGKILL it on ``rng``'s schedule and resume it after each kill
    until ``KILLS`` kills landed mid-run, one of them inside a checkpoint write; then let it
    complete. Returns one ``(mode, target step, checkpoint step after the kill, temporary
    checkpoint files left)`` per kill that landed."""
    run, events = out / "mix", []
    for attempt in range(1, 3 * KILLS + 1):
        step, key = checkpoint_step(run / "checkpoint.pt"), checkpoint_key(run / "checkpoint.pt")
        log = logs / f"attempt{attempt}.log"
        proc = start(out, log, resume=attempt > 1)
        try:
            if len(events) >= KILLS and any(e[3] for e in events):
                assert proc.wait(WAIT_S) == 0, log.read_text()
                return events
            target = min(step + rng.randint(1, 3), STEPS - 4)   # checkpoints to wait for
            mode = "time" if any(e[3] for e in events) else "write"   # one write kill, then any moment
            kill_after(proc, run, key, target, mode, rng.uniform(0.0, 1.5))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode == 0:                    # completed before the kill: nothing landed
            return events
        assert proc.returncode == -signal.SIGKILL, log.read_text()
        after = checkpoint_step(run / "checkpoint.pt")   # the last complete checkpoint still loads
        assert target <= after < STEPS, (target, after)
        events.append((mode, target, after, sorted(checkpoint_temps(run))))  # temps: killed inside atomic_write
    raise AssertionError(f"the run did not complete after {3 * KILLS} attempts: {events}")


@pytest.mark.slow  # five processes, each importing torch: about 30 s of CPU
def test_sigkill_at_random_moments_and_mid_write_then_resume_is_bitwise(tmp_path):
    full = start(tmp_path / "full", tmp_path / "full.log", resume=False)   # alongside the killed run
    try:
        events = kill_and_resume(tmp_path / "killed", tmp_path, random.Random(8861))
        assert full.wait(WAIT_S) == 0, (tmp_path / "full.log").read_text()
    finally:
        if full.poll() is None:
            full.kill()
            full.wait()
    print("kills (mode, target step, checkpoint step after, temporary checkpoint files left):", events)
    assert len(events) >= 3, f"only {len(events)} kills landed before the run completed: {events}"
    assert any(e[3] for e in events), f"no kill landed inside a checkpoint write: {events}"

    run, ref = tmp_path / "killed" / "mix", tmp_path / "full" / "mix"
    a = torch.load(ref / "checkpoint.pt", weights_only=True)
    b = torch.load(run / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == STEPS
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]), i
    assert history(run) == history(ref)
    assert [p for p in tmp_path.rglob("*") if TEMP.fullmatch(p.name)] == []
    assert load_json(run / "final.json")["steps"] == STEPS
