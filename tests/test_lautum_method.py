"""The Lautum method (issue 11): label splits, a smoke run of each of the 4 methods, the
global-batch term under DDP, resume; ``pytransfer lautum`` user errors and run folders."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import numpy as np
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


# ------------------------------------------------------------- --data/--target specs
def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.tobytes()


def _spec_files(root, n_src=6, n_tgt=8, hw=8):
    """A fake MNIST (IDX, train + t10k) and a notMNIST-style letters A-J PNG tree, 8x8 grey;
    every image unique (pixel 0 its number, pixel 1 marks source 100 / target 200)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10, dtype=np.uint8), n_src)
    x = rng.integers(0, 256, size=(len(y), hw, hw), dtype=np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(len(y)), 100
    mnist = root / "mnist"
    mnist.mkdir()
    for part, sl in (("train", slice(0, 40)), ("t10k", slice(40, None))):
        (mnist / f"{part}-images-idx3-ubyte").write_bytes(_idx(x[sl]))
        (mnist / f"{part}-labels-idx1-ubyte").write_bytes(_idx(y[sl]))
    letters = root / "letters"
    k = 0
    for c in "ABCDEFGHIJ":
        (letters / c).mkdir(parents=True)
        for i in range(n_tgt):
            img = rng.integers(0, 256, size=(hw, hw), dtype=np.uint8)
            img[0, 0], img[0, 1] = k, 200
            Image.fromarray(img, mode="L").save(letters / c / f"{i}.png")
            k += 1
    return f"mnist:{mnist}", f"folder:{letters}"


def test_spec_task_holds_out_a_test_split(tmp_path):
    src, tgt = _spec_files(tmp_path)
    task = method.spec_task(src, tgt)
    assert (task.num_source, task.num_target, task.image_shape) == (10, 10, (8, 8))
    assert task.xs.shape == (60, 64) and len(task.x_train) + len(task.x_test) == 80
    assert torch.bincount(task.y_test).tolist() == [2] * 10  # a quarter of each class
    ids = lambda x: set((x[:, 0] * 255).round().int().tolist())  # noqa: E731
    assert not ids(task.x_train) & ids(task.x_test)
    assert method.spec_task(src, tgt).x_test.equal(task.x_test)  # fixed for every run
    lab = split_labels(task, 10, 0)
    assert ids(lab.x_all) == ids(task.x_train)


def test_cli_source_target_specs_train_without_the_test_split(tmp_path):
    """A run of every method on MNIST -> letters: the first layer never sees a test image
    while gradients are on, and evaluates every test image."""
    src, tgt = _spec_files(tmp_path)
    test_rows = method.spec_task(src, tgt).x_test
    seen = {True: [], False: []}

    def hook(module, args):
        if isinstance(module, torch.nn.Linear) and module.in_features == 64:
            seen[torch.is_grad_enabled()].append(args[0].detach().reshape(-1, 64))
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        res = runner.invoke(app, ["lautum", "--data", src, "--target", tgt, "--labels", "10",
                                  "--seeds", "1", "--pre-steps", "2", "--post-steps", "2",
                                  "--out", str(tmp_path / "run")])
    finally:
        handle.remove()
    assert res.exit_code == 0, res.output
    runs = json.loads((tmp_path / "run" / "results.json").read_text())["runs"]
    assert sorted(r["method"] for r in runs) == sorted(METHODS)

    def hits(rows):
        rows = torch.cat(rows)
        return (rows[:, None, :] == test_rows[None]).all(-1).any(0)
    assert len(seen[True]) > 10 and not hits(seen[True]).any()
    assert hits(seen[False]).all()


@pytest.mark.parametrize("args,needle", [
    (["--data", "digits", "--target", "folder:x"], "--target needs a source"),
    (["--data", "mnist:/nonexistent"], "--target"),
    (["--data", "mnist:/nonexistent", "--target", "folder:/nonexistent"], "no such file"),
])
def test_cli_spec_errors_exit_2(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [*CLI, *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()


def test_cli_spec_shape_mismatch_exits_2(tmp_path):
    src, _ = _spec_files(tmp_path)
    from PIL import Image

    (tmp_path / "big" / "A").mkdir(parents=True)
    Image.new("L", (5, 5)).save(tmp_path / "big" / "A" / "0.png")
    res = runner.invoke(app, [*CLI, "--data", src, "--target", f"folder:{tmp_path / 'big'}"])
    assert res.exit_code == 2 and "must match" in res.output, res.output


def test_cifar_specs_default_to_classes_0_9_and_cifar_label_counts(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    for folder, name, key, k in (("c10", "data_batch_1", b"labels", 10),
                                 ("c100", "train", b"fine_labels", 20)):
        (tmp_path / folder).mkdir()
        labels = [c for c in range(k) for _ in range(8)]
        batch = {b"data": rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8),
                 key: labels}
        (tmp_path / folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    src, tgt = f"cifar10:{tmp_path / 'c10'}", f"cifar100:{tmp_path / 'c100'}"
    task = method.spec_task(src, tgt)
    assert (task.num_target, task.image_shape) == (10, (3, 32, 32))
    assert len(task.x_test) == 20 and len(task.x_train) == 60 and task.x_train.shape[1] == 3072
    res = runner.invoke(app, ["lautum", "--source", src, "--target", tgt, "--seeds", "1"])
    assert res.exit_code == 2 and "labels=100 needs 10 per class" in res.output, res.output
