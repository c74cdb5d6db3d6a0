"""``pytransfer jtln``: user errors exit 2 with one line before any training; a run writes its
folder, refuses to reuse it, and resumes it."""

import json

import pytest
from typer.testing import CliRunner

from pytransfer.cli import app

runner = CliRunner()
TINY = ["jtln", "--labels", "2", "--seeds", "1", "--steps", "4", "--pretrain-steps", "2",
        "--eval-every", "0"]


@pytest.mark.parametrize("args,needle", [
    (["--alpha", "-1"], "alpha"),
    (["--cost", "bogus"], "--cost"),
    (["--ot-inputs", "test"], "--ot-inputs"),
    (["--labels", "500"], "--labels 500"),
    (["--labels", "a,b"], "--labels"),
    (["--seeds", "0"], "--seeds"),
    (["--steps", "0"], "--steps"),
    (["--device", "tpu9"], "--device"),
    (["--cost", "mmd", "--labels", "1"], "needs --labels >= 2"),
    (["--resume"], "--resume needs --out"),
])
def test_user_errors_exit_2_with_one_line(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [*TINY, *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()  # refused before any training or folder


def test_run_folder_written_refused_then_resumed(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, [*TINY, "--out", str(out), "--method", "joint"])
    assert res.exit_code == 0, res.output
    sub = out / "digits-joint-labels2-seed0"
    assert {p.name for p in sub.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoint.pt"}
    acc = json.loads((out / "results.json").read_text())["2"]
    before = (sub / "metrics.jsonl").read_text()
    again = runner.invoke(app, [*TINY, "--out", str(out), "--method", "joint"])
    assert again.exit_code == 2 and "not empty" in again.output
    resumed = runner.invoke(app, [*TINY, "--out", str(out), "--method", "joint", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "results.json").read_text())["2"] == acc
    assert (sub / "metrics.jsonl").read_text() == before
    other = runner.invoke(app, [*TINY, "--out", str(out), "--method", "joint", "--resume",
                                "--lr", "0.5"])
    assert other.exit_code == 2 and "differs in settings" in other.output


def test_unknown_data_spec_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [*TINY, "--data", "bogus:nowhere"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
