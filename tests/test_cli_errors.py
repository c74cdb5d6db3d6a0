"""User errors of the CLI: each bad input below exits with status 2 and one line on stderr, no
traceback, before any training, and leaves every file that existed untouched (nothing is
deleted, overwritten or written beside it)."""

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from pytransfer.cli import app

runner = CliRunner()


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save("f.npy", rng.normal(size=(20, 3)))
    np.save("y.npy", np.arange(20) % 3)
    np.save("y2.npy", np.arange(20) % 2)
    np.save("y_short.npy", np.arange(19) % 3)
    np.save("obj.npy", np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    open("empty.npy", "wb").close()
    with open("corrupt.npy", "wb") as f:
        f.write(b"\x93NUMPY\x01\x00garbage")
    for d in ("plots", "out", "tout"):
        (tmp_path / d).mkdir()
    (tmp_path / "out" / "iso_exact.jsonl").write_text('{"step": 0}\n')
    (tmp_path / "out" / "keep.txt").write_text("mine")
    (tmp_path / "tout" / "transfer_geodesic_ot_rd.png").write_bytes(b"an old plot")
    (tmp_path / "plots" / "old.png").write_bytes(b"an old dendrogram")
    return tmp_path


def _snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


RANK = ["hscore", "rank", "--labels", "y.npy", "--features"]
CLUSTER = ["hscore", "cluster", "--features", "f.npy", "--targets", "y.npy", "--targets",
           "y2.npy"]
ISO = ["free-energy", "iso-classification", "--quick"]
TRANSFER = ["free-energy", "transfer", "--quick"]

BAD = {
    "rank: missing features": ([*RANK, "missing.npy"], "missing.npy"),
    "rank: empty .npy": ([*RANK, "empty.npy"], "empty.npy is empty"),
    "rank: corrupt .npy": ([*RANK, "corrupt.npy"], "corrupt.npy"),
    "rank: pickled object .npy": ([*RANK, "obj.npy"], "obj.npy"),
    "rank: missing labels": (["hscore", "rank", "--features", "f.npy", "--labels", "no.npy"],
                             "no.npy"),
    "rank: empty labels": (["hscore", "rank", "--features", "f.npy", "--labels", "empty.npy"],
                           "empty.npy"),
    "rank: labels of another length": (["hscore", "rank", "--features", "f.npy", "--labels",
                                        "y_short.npy"], "19 rows"),
    "rank: shrinkage word": ([*RANK, "f.npy", "--shrinkage", "lots"], "--shrinkage"),
    "rank: shrinkage > 1": ([*RANK, "f.npy", "--shrinkage", "2"], "--shrinkage"),
    "rank: no --labels": (["hscore", "rank", "--features", "f.npy"], "--labels"),
    "rank: unknown option": ([*RANK, "f.npy", "--bogus"], "--bogus"),
    "cluster: dendrogram a folder": ([*CLUSTER, "--dendrogram", "plots"], "is a folder"),
    "cluster: dendrogram exists": ([*CLUSTER, "--dendrogram", "plots/old.png"],
                                   "already exists"),
    "cluster: dendrogram not .png": ([*CLUSTER, "--dendrogram", "tree.txt"], ".png"),
    "cluster: dendrogram folder missing": ([*CLUSTER, "--dendrogram", "nowhere/t.png"],
                                           "does not exist"),
    "cluster: one target": (["hscore", "cluster", "--features", "f.npy", "--targets", "y.npy"],
                            "at least two"),
    "cluster: zero clusters": ([*CLUSTER, "--clusters", "0"], "--clusters"),
    "cluster: more clusters than targets": ([*CLUSTER, "--clusters", "3"], "--clusters"),
    "cluster: empty target": (["hscore", "cluster", "--features", "f.npy", "--targets",
                               "y.npy", "--targets", "empty.npy"], "empty.npy"),
    "iso: unknown variant": ([*ISO, "--out", "new", "--variant", "bogus"], "--variant"),
    "iso: lam 0": ([*ISO, "--out", "new", "--lam", "0"], "--lam"),
    "iso: gamma 0": ([*ISO, "--out", "new", "--gamma", "0"], "--gamma"),
    "iso: negative lam": ([*ISO, "--out", "new", "--lam", "-1"], "--lam"),
    "iso: nan lam": ([*ISO, "--out", "new", "--lam", "nan"], "--lam"),
    "iso: steps 0": ([*ISO, "--out", "new", "--steps", "0"], "--steps"),
    "iso: steps -2": ([*ISO, "--out", "new", "--steps", "-2"], "--steps"),
    "iso: record exists": ([*ISO, "--out", "out"], "iso_exact.jsonl already exists"),
    "iso: lam 0 beside a record": ([*ISO, "--out", "out", "--lam", "0"], "--lam"),
    "iso: out is a file": ([*ISO, "--out", "out/keep.txt"], "is a file"),
    "iso: no --out": (ISO, "--out"),
    "iso: negative seed": ([*ISO, "--out", "new", "--seed", "-1"], "--seed"),
    "transfer: unknown rule": ([*TRANSFER, "--out", "new", "--rule", "bogus"], "--rule"),
    "transfer: unknown interpolation": ([*TRANSFER, "--out", "new", "--interpolation", "x"],
                                        "--interpolation"),
    "transfer: negative gamma": ([*TRANSFER, "--out", "new", "--gamma", "-3"], "--gamma"),
    "transfer: nan slope": ([*TRANSFER, "--out", "new", "--slope", "nan"], "--slope"),
    "transfer: plot exists": ([*TRANSFER, "--out", "tout", "--rule", "geodesic"],
                              "already exists"),
    "unknown command": (["bogus"], "bogus"),
    "unknown subcommand": (["hscore", "bogus"], "bogus"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line(files, case):
    args, needle = BAD[case]
    before = _snapshot(files)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert _snapshot(files) == before  # nothing deleted, overwritten or created
    assert not (files / "new").exists()  # checked before the out folder is made


def test_good_cluster_writes_only_the_new_png(files):
    before = _snapshot(files)
    res = runner.invoke(app, [*CLUSTER, "--dendrogram", "plots/tree.png"])
    assert res.exit_code == 0, res.output
    after = _snapshot(files)
    assert set(after) - set(before) == {"plots/tree.png"}
    assert all(after[k] == v for k, v in before.items())
    assert (files / "plots" / "tree.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backends_runs():
    res = runner.invoke(app, ["backends"])
    assert res.exit_code == 0 and "sinkhorn" in res.output
