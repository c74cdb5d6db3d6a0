"""The command line: the demo runs end to end and prints its table; backends lists ops."""

import re
from pathlib import Path

from typer.testing import CliRunner

from pytransfer.cli import app

runner = CliRunner()


def test_demo_prints_accuracy_table():
    result = runner.invoke(app, ["demo", "--steps", "20", "--seeds", "1", "--quick"])
    assert result.exit_code == 0, result.output
    accs = [float(x) for x in re.findall(r"(\d\.\d{3}) ±", result.output)]
    assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
    assert "free-energy iso-classification on digits" in result.output
    assert "Layer choice" in result.output and "Spearman" in result.output


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
