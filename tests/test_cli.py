"""The command line: the demo runs end to end and prints its table; backends lists ops."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pytransfer.cli import app

runner = CliRunner()


def test_demo_writes_report_beside_an_existing_demo_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--quick", "--steps", "4", "--seeds", "1",
                                 "--labels", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "demo" / "keep.txt").read_text() == "mine"
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("demo-")]
    report = (folder / "report.md").read_text()
    for row in ("target only", "consecutive fine-tuning", "joint fine-tuning (no OT)",
                "JTLN (MK-MMD cost)", "JTLN (OT cost)"):
        assert report.count(f"| {row} |") == 2  # one table per task
    assert "task `digits`" in report and "task `styles`" in report
    for row in ("standard", "Temporal Ensembling", "MK-MMD", "Lautum"):  # Lautum's table
        assert report.count(f"| {row} |") == 1
    for png in ("jtln_accuracy.png", "jtln_curves.png", "free_energy_rd.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    accs = [float(x) for x in re.findall(r"(\d\.\d{3}) ±", result.output)]
    # 5 JTLN rows x 2 tasks x 1 label count, then Lautum's 4 methods x 3 label counts
    assert len(accs) == 10 + 12 and all(0.0 <= a <= 1.0 for a in accs)
    assert "free-energy iso-classification on digits" in result.output
    assert "Layer choice" in result.output and "Spearman" in result.output


@pytest.mark.parametrize("args,needle", [(["--seeds", "0"], "--seeds"),
                                         (["--steps", "0"], "--steps"),
                                         (["--labels", "1"], "--labels"),
                                         (["--labels", "500"], "--labels 500")])
def test_demo_user_errors_exit_2(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", *args])
    assert result.exit_code == 2 and needle in result.output
    assert not (tmp_path / "runs").exists()


def test_demo_refuses_a_non_empty_out(tmp_path):
    (tmp_path / "x.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_backends_command_lists_sinkhorn():
    result = runner.invoke(app, ["backends"])
    assert result.exit_code == 0
    assert "sinkhorn" in result.output and "available" in result.output


def test_readme_quick_start_runs():
    """The README's Python example is executed, so it cannot rot."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert bool(scope["res"].converged.all())
    assert scope["value"].shape == ()
