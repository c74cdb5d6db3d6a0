"""``pytransfer free-energy`` (pytransfer/cli/free_energy.py): the quick runs write a JSONL
record with sane values and the two PNG plots, beside files already there."""

import json
import math

import pytest
from typer.testing import CliRunner

from pytransfer.cli import app

runner = CliRunner()


def _check(out, stem, steps):
    recs = [json.loads(line) for line in (out / f"{stem}.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(steps + 1))
    assert recs[-1]["t"] == pytest.approx(1.0)
    for r in recs:
        assert all(math.isfinite(r[k]) for k in ("R", "D", "C", "F", "lam", "gamma"))
        assert r["D"] > 0 and r["C"] > 0 and r["lam"] > 0 and r["gamma"] > 0
        assert r["F"] == pytest.approx(r["R"] + r["lam"] * r["D"] + r["gamma"] * r["C"])
    for suffix in ("rd", "C"):
        png = (out / f"{stem}_{suffix}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    return recs


def test_iso_classification_quick(tmp_path):
    (tmp_path / "iso_practical.jsonl").write_text("an earlier record\n")
    res = runner.invoke(app, ["free-energy", "iso-classification", "--out", str(tmp_path),
                              "--quick"])
    assert res.exit_code == 0, res.output
    recs = _check(tmp_path, "iso_exact", 3)
    assert recs[-1]["lam"] == pytest.approx(1.0)  # lambda-dot = lambda: doubles over t in [0, 1]
    assert "iso_exact" in res.output
    assert (tmp_path / "iso_practical.jsonl").read_text() == "an earlier record\n"


def test_transfer_quick(tmp_path):
    res = runner.invoke(app, ["free-energy", "transfer", "--out", str(tmp_path), "--quick",
                              "--rule", "geodesic"])
    assert res.exit_code == 0, res.output
    _check(tmp_path, "transfer_geodesic_ot", 3)
