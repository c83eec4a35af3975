"""Bad input never trains: one line naming the problem, exit code 2, no run claiming success."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_trainer, write_config

pytestmark = pytest.mark.slow


def make_files(folder: Path, header: str, row: str) -> Path:
    folder.mkdir()
    for split in ("train", "val", "test"):
        (folder / f"{split}.csv").write_text(header + "\n" + "\n".join([row] * 20) + "\n")
    return folder


def files_config(tmp: Path, data_dir: Path) -> Path:
    return write_config(tmp / "files.yaml", f"""\
extends: v3
experiment: files
data: {{source: files, path: {data_dir}, label_column: label}}
""")


def assert_bad_input(tmp: Path, proc, *needles: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    for status in tmp.glob("runs/*/*/status.json"):
        assert json.loads(status.read_text())["state"] != "SUCCEEDED"


def test_unknown_model_factory(tmp_path):
    proc = run_trainer(tmp_path, "--config", "v3", "--set", "model.name=no_such_pkg.models:build")
    assert_bad_input(tmp_path, proc, "model.name", "no_such_pkg")


def test_unknown_model_name(tmp_path):
    proc = run_trainer(tmp_path, "--config", "v3", "--set", "model.name=resnet")
    assert_bad_input(tmp_path, proc, "model.name", "unknown model 'resnet'")


def test_missing_label_column(tmp_path):
    data = make_files(tmp_path / "data", "a,b,target", "1,2,0")
    proc = run_trainer(tmp_path, "--config", str(files_config(tmp_path, data)))
    assert_bad_input(tmp_path, proc, "label column 'label' not found", "train.csv")


def test_non_numeric_feature(tmp_path):
    data = make_files(tmp_path / "data", "a,b,label", "1,x,0")
    proc = run_trainer(tmp_path, "--config", str(files_config(tmp_path, data)))
    assert_bad_input(tmp_path, proc, "feature column 'b' is not numeric", "'x'")


def test_unsupported_run_mode(tmp_path):
    proc = run_trainer(tmp_path, "--config", "v3", "--set", "pipeline.1.mode=distill")
    assert_bad_input(tmp_path, proc, "Unsupported run mode: distill", "pipeline.1.mode")


def test_eval_only_without_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "e.yaml", """\
extends: v3
experiment: e
pipeline:
  - {name: eval, mode: eval_only}
""")
    proc = run_trainer(tmp_path, "--config", str(cfg))
    assert_bad_input(tmp_path, proc, "eval_only", "no checkpoint")


def test_eval_only_with_a_missing_checkpoint_file(tmp_path):
    cfg = write_config(tmp_path / "e.yaml", f"""\
extends: v3
experiment: e
pipeline:
  - {{name: eval, mode: eval_only, init_from: {tmp_path}/nothing.pt}}
""")
    proc = run_trainer(tmp_path, "--config", str(cfg))
    assert_bad_input(tmp_path, proc, "has no checkpoint", "nothing.pt")


def test_malformed_yaml(tmp_path):
    cfg = write_config(tmp_path / "bad.yaml", "experiment: bad\ntraining: {epochs: 3\n")
    proc = run_trainer(tmp_path, "--config", str(cfg))
    assert_bad_input(tmp_path, proc, "bad.yaml", "malformed YAML", "line")
    assert not (tmp_path / "runs").exists()


def test_misspelt_key_gets_did_you_mean(tmp_path):
    proc = run_trainer(tmp_path, "--config", "v3", "--set", "training.epocs=3")
    assert_bad_input(tmp_path, proc, "training.epocs", "did you mean 'epochs'")
    assert not (tmp_path / "runs").exists()
