"""The ``landprobe`` command: argument errors, missing folders, the demo and a reproduce run."""

import json
import subprocess
import sys

import pytest

import landprobe as lp
from landprobe import cli

SAMPLE_TRAIN, SAMPLE_VAL = str(lp.data.sample_dir("train")), str(lp.data.sample_dir("val"))


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code, capsys.readouterr().err


def test_bad_setting_is_a_usage_error(capsys):
    code, err = run_main(["reproduce", "--setting", "all-l3"], capsys)
    assert code == 2 and "invalid choice: 'all-l3'" in err and "all-l2" in err


@pytest.mark.parametrize("flag, value, match", [
    ("--max-steps", "0", "expected a positive integer (>= 1), got 0"),
    ("--epochs", "-3", "expected a positive integer (>= 1), got -3"),
    ("--epochs", "ten", "expected a positive integer, got 'ten'"),
    ("--seed", "-1", "expected a non-negative integer, got -1"),
    ("--width", "0", "expected a positive finite number, got 0"),
    ("--width", "wide", "expected a positive number, got 'wide'"),
    ("--amp", "fp16", "invalid choice: 'fp16'"),
])
def test_bad_numbers_are_usage_errors(capsys, flag, value, match):
    code, err = run_main(["reproduce", "--setting", "mix", flag, value], capsys)
    assert code == 2 and match in err and flag in err


def test_missing_setting_and_command(capsys):
    code, err = run_main(["reproduce"], capsys)
    assert code == 2 and "--setting" in err
    code, err = run_main([], capsys)
    assert code == 2 and "COMMAND" in err


@pytest.mark.parametrize("flag", ["--data", "--val"])
def test_missing_folder_names_the_path(tmp_path, capsys, flag):
    missing = tmp_path / "nowhere" / "T91"
    code, err = run_main(["reproduce", "--setting", "mix", flag, str(missing), "--out", str(tmp_path)], capsys)
    assert code == 2 and str(missing) in err and err.startswith("landprobe reproduce: error:")


def test_subcommands_are_a_registry(capsys):
    def register(sub):
        p = sub.add_parser("echo")
        p.add_argument("word")
        p.set_defaults(func=lambda args: print(args.word) or 0)

    cli.SUBCOMMANDS["echo"] = register
    try:
        assert cli.main(["echo", "hello"]) == 0
        assert capsys.readouterr().out == "hello\n"
    finally:
        del cli.SUBCOMMANDS["echo"]
    assert set(cli.SUBCOMMANDS) >= {"demo", "reproduce"}


def test_demo_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "3", "--points", "3", "--extend", "0.5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "demo.json").read_text())
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [(r["name"], r["setting"], r["seed"]) for r in res["runs"]] == [("A", "all-l2", 0), ("B", "all-l2", 1),
                                                                          ("C", "all-l1", 0)]
    assert res["settings"]["steps"] == 3 and res["settings"]["threads"] == 1
    for c in res["curves"]:
        assert c["curve"]["alphas"] == [-0.5, 0.0, 0.5, 1.0, 1.5]
        # the curve passes through the empirical errors of the two trained models; the table prints them
        assert c["loss_a"] == c["curve"]["losses"][1] and c["loss_b"] == c["curve"]["losses"][3]
        assert f"{c['loss_a']:.4g}" in printed and f"{c['barrier']:.3g}" in printed
    # A and C start from one init, B from another: only A -> C's ends are close
    assert res["curves"][1]["distance"] < res["curves"][0]["distance"]
    # each model is compared with bicubic in words; 3 steps are too few, and the table says why
    for r in res["runs"]:
        word = "beats bicubic by" if r["gain_db"] > 0 else "below bicubic by"
        assert f"{word} {r['gain_db']:+.2f} dB" in printed
    assert "below bicubic by" in printed and "steps are too few" in printed


def test_reproduce_all_through_the_console_script(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "landprobe.cli", "reproduce", "--setting", "all", "--epochs", "2", "--max-steps", "1",
         "--data", SAMPLE_TRAIN, "--val", SAMPLE_VAL, "--out", str(out), "--no-progress", "--threads", "1",
         "--width", "0.05", "--batch-size", "64"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # 49 sample patches, batch 64: epoch 1 ends after ceil(49 / 64) = 1 step; --max-steps 1 stops there
    for s in ("all-l2", "mix", "all-l1"):
        rows = [json.loads(x) for x in (out / s / "history.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1]
        assert json.loads((out / s / "final.json").read_text())["steps"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert "Enet/Rnet" in proc.stdout and "bicubic" in proc.stdout
    assert summary["runs"]["mix"]["parameters"] > 0


def _one_line_error(err, command):
    assert err.count("\n") == 1 and err.startswith(f"landprobe {command}: error:") and "Traceback" not in err


@pytest.mark.parametrize("command, prog", [(["reproduce", "--setting", "mix"], "reproduce"),
                                           (["probe", "interpolate", "a.pt", "b.pt"], "probe interpolate")])
def test_bad_device_is_a_usage_error(capsys, command, prog):
    code, err = run_main([*command, "--device", "bogus"], capsys)
    assert code == 2 and "--device 'bogus' is not a device (expected cpu, cuda, cuda:N, mps)" in err
    _one_line_error(err, prog)


@pytest.mark.parametrize("device", ["cuda", "cuda:{n}", "mps"])
def test_unavailable_device_names_what_is_available(capsys, device):
    import torch

    device = device.format(n=torch.cuda.device_count())  # cuda:N past the last GPU is never available
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available")
    code, err = run_main(["reproduce", "--setting", "mix", "--device", device], capsys)
    assert code == 2 and f"--device '{device}' is not available" in err and "available: cpu" in err
    _one_line_error(err, "reproduce")


def _every_subcommand():
    """Each command line whose --help the ``landprobe`` command answers."""
    yield []
    for name in cli.SUBCOMMANDS:
        yield [name]
    for kind in ("interpolate", "plane", "connect", "level-set"):
        yield ["probe", kind]


@pytest.mark.parametrize("command", list(_every_subcommand()), ids=lambda c: " ".join(c) or "landprobe")
def test_help_is_plain_text(capsys, command):
    import re

    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0 and "usage: landprobe" in text
    assert "``" not in text and not re.search(r":[a-z]+:`", text), text


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"landprobe {lp.__version__}\n"
    proc = subprocess.run([sys.executable, "-m", "landprobe.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout == f"landprobe {lp.__version__}\n"
