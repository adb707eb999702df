"""The command line as a program: --version, `python -m mbt`, a fast start that loads no torch, usage errors as
one line with exit 2, `mbt flops RUN_DIR`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mbt
from mbt.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
HEAVY = ("torch", "numpy", "av", "matplotlib", "scipy", "yaml", "pydantic", "tqdm")


def test_version_flags_print_the_package_version(capsys):
    for flag in ("--version", "-V"):
        with pytest.raises(SystemExit) as done:
            main([flag])
        assert done.value.code == 0
        assert capsys.readouterr().out.strip() == f"mbt {mbt.__version__}"


def test_python_dash_m_mbt_is_the_command_line():
    run = subprocess.run([sys.executable, "-m", "mbt", "--version"], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == f"mbt {mbt.__version__}"
    run = subprocess.run([sys.executable, "-m", "mbt", "--help"], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0 and "usage: mbt" in run.stdout and "export" in run.stdout


def test_the_command_line_and_every_help_load_no_heavy_module():
    probe = ("import sys, contextlib, io\n"
             "import mbt.cli\n"
             "parser = mbt.cli.build_parser()\n"
             "commands = parser._subparsers._group_actions[0].choices\n"
             "for name in commands:\n"
             "    with contextlib.redirect_stdout(io.StringIO()):\n"
             "        try:\n"
             "            mbt.cli.main([name, '--help'])\n"
             "        except SystemExit:\n"
             "            pass\n"
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
             "print(len(commands))\n")
    run = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    loaded, count = run.stdout.strip().splitlines()
    assert loaded == "[]" and int(count) >= 10


def test_lazy_package_still_exports_the_public_names():
    from mbt import MBT, Classifier, MBTConfig, Preprocessor

    assert MBT.__name__ == "MBT" and MBTConfig.__name__ == "MBTConfig"
    assert callable(Classifier.from_pretrained) and callable(Preprocessor.from_pretrained)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mbt.nope  # noqa: B018


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "RUN", "--manifest", "m.csv", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["evaluate", "RUN", "--manifest", "m.csv", "--clips", "0"], "--clips must be >= 1, got 0"),
    (["predict", "RUN", "a.mp4", "--top-k", "-3"], "--top-k must be >= 1, got -3"),
    (["predict", "RUN"], "nothing to predict"),
    (["predict", "RUN", "--folder", "d"], "give --out FILE.jsonl"),
])
def test_bad_numbers_are_one_line_exit_2_before_any_work(argv, message, capsys):
    assert main(argv) == 2  # RUN does not exist: the check comes first
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_flops_reads_a_run_directory(tmp_path, capsys):
    from mbt import MBT, MBTConfig

    cfg = MBTConfig.preset("mbt-tiny", depth=2, width=32, num_heads=2, mlp_dim=64, num_frames=4, image_size=32,
                           spec_frames=48, num_mel_bins=16, num_classes=3, fusion_layer=0)
    MBT(cfg).save_pretrained(tmp_path / "run")
    assert main(["flops", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"] == sum(p.numel() for p in MBT(cfg).parameters()) and report["gflops"] > 0
    assert main(["flops", str(tmp_path / "run"), "--set", "model.depth=4"]) == 2
    assert main(["flops", str(tmp_path), "--json"]) == 2  # a folder without config.json
    assert "config.json: not found" in capsys.readouterr().err
