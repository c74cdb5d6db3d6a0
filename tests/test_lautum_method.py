"""The Lautum method (issue 11): label splits, a smoke run of each of the 4 methods, the
global-batch term under DDP, resume; ``pytransfer lautum`` user errors and run folders."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from pytransfer.cli import app
from pytransfer.methods import lautum as method
from pytransfer.methods._trainer import StepContext
from pytransfer.methods.lautum import (
    METHODS,
    LautumConfig,
    TransferData,
    digits_task,
    run_one,
    split_labels,
    table_rows,
)

TINY = replace(LautumConfig(), pre_steps=4, post_steps=3, eval_every=3, batch=32)
runner = CliRunner()


def synthetic(n_per_class=12) -> TransferData:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 16, generator=gen) + y[:, None]
    return TransferData("synthetic", x, y, x + 0.1, y, x[:6] - 0.1, y[:6], 3, 3, (4, 4))


def test_split_labels_per_class_and_disjoint():
    data = synthetic()
    data = data._replace(x_train=torch.arange(36.0)[:, None].repeat(1, 16))
    s = split_labels(data, 6, seed=1)
    assert torch.bincount(s.y_lab).tolist() == [2, 2, 2]
    lab, unlab = set(s.x_lab[:, 0].tolist()), set(s.x_unlab[:, 0].tolist())
    assert not lab & unlab and len(lab | unlab) == 36
    assert torch.equal(s.x_all, torch.cat([s.x_lab, s.x_unlab]))
    assert not torch.equal(split_labels(data, 6, seed=2).x_lab, s.x_lab)
    for bad in (4, 0, 36):
        with pytest.raises(ValueError, match="labels"):
            split_labels(data, bad, 0)


def test_digits_task_keeps_a_fixed_test_split():
    a, b = digits_task(), digits_task()
    assert torch.equal(a.x_test, b.x_test)
    assert len(a.x_train) + len(a.x_test) == 896  # every digit 5-9 of sklearn digits
    assert a.ys.max() == 4 and a.y_train.max() == 4 and a.y_test.min() == 0


@pytest.mark.parametrize("name", METHODS)
def test_smoke_each_method(name):
    res = run_one(name, 50, 0, digits_task(), TINY).record
    assert res["method"] == name and res["labels"] == 50
    assert 0.0 <= res["test_acc"] <= 1.0
    last = res["curve"][-1]
    assert last["step"] == TINY.post_steps and "test_acc" in last
    if name == "te":
        assert {"consistency", "w"} <= set(last)


def test_pre_transfer_metrics_hold_the_regulariser():
    data = digits_task()
    split = split_labels(data, 50, 0)
    torch.manual_seed(0)
    model = method.Net(64, 5)
    for name, key in (("lautum", "lautum"), ("mmd", "mk_mmd")):
        step = method.pre_step(name, model, data, split, TINY)
        ctx = StepContext(0, 0, 1, torch.Generator().manual_seed(0))
        loss, metrics = step(ctx)
        sign = -TINY.lam if name == "lautum" else TINY.mmd_weight
        torch.testing.assert_close(loss, metrics["source_ce"] + sign * metrics[key])
        if name == "lautum":
            assert float(metrics[key].detach()) > 0  # an information: the loss subtracts it


def test_global_term_logs_a_share_and_keeps_the_gradient():
    x = torch.tensor(3.0, requires_grad=True)
    term = method._global_term(x * x, world=4)
    term.backward()
    assert float(term.detach()) == pytest.approx(9 / 4) and float(x.grad) == pytest.approx(6.0)


def test_resume_of_a_finished_run_gives_the_same_record(tmp_path):
    first = run_one("te", 50, 1, digits_task(), TINY, tmp_path / "r").record
    again = run_one("te", 50, 1, digits_task(), TINY, tmp_path / "r", resume=True).record
    assert again["test_acc"] == first["test_acc"] and again["curve"] == first["curve"]
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"pre", "post"}


def test_table_rows_mean_and_std():
    recs = [{"method": "lautum", "labels": 50, "test_acc": a} for a in (0.5, 0.7)]
    recs += [{"method": "standard", "labels": 50, "test_acc": 0.4}]
    header, rows = table_rows(recs)
    assert header == ["method", "50 labels"]
    assert rows == [["standard", "0.400 ± 0.000"], ["Lautum", "0.600 ± 0.100"]]


CLI = ["lautum", "--labels", "50", "--seeds", "1", "--pre-steps", "3", "--post-steps", "2"]


@pytest.mark.parametrize("args,needle", [
    (["--labels", "7"], "--labels"), (["--labels", "x"], "--labels"),
    (["--seeds", "0"], "--seeds"), (["--pre-steps", "0"], "--pre-steps"),
    (["--lam", "-1"], "--lam"), (["--data", "mnist"], "--data"),
    (["--method", "bogus"], "--method"), (["--resume"], "--resume needs --out"),
    (["--labels", "5000"], "labels=5000"),
])
def test_cli_user_errors_exit_2(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [*CLI, *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()


def test_cli_run_folder_report_and_refusal(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, [*CLI, "--method", "lautum", "--out", str(out)])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "results.json", "lautum_accuracy.png", "lautum-labels50-seed0"} <= names
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["method"], r["labels"], r["seed"]) for r in runs] == [("lautum", 50, 0)]
    again = runner.invoke(app, [*CLI, "--method", "lautum", "--out", str(out)])
    assert again.exit_code == 2 and "not empty" in again.output
