"""The shared trainer: seeded batches, resume equality, run folders, 2-process DDP (gloo)."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from pytransfer.methods._trainer import CHECKPOINT, StepContext, Trainer

N, D = 40, 5


def _data():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N, D, generator=g)
    y = (x @ torch.randn(D, 3, generator=g)).argmax(1)
    return x, y


def _setup(seed=0, **kw):
    x, y = _data()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)

    def step(ctx: StepContext):
        b = ctx.batch("train", N, 16)
        ce = F.cross_entropy(model(x[b.idx]), y[b.idx], reduction="sum") / b.total
        drop = F.dropout(torch.ones(4), 0.5).sum() / (4 * ctx.world)  # uses the global RNG
        return ce, {"ce": ce, "drop": drop}

    def evaluate(m):
        return {"acc": (m(x).argmax(1) == y).float().mean()}

    kw.setdefault("steps", 12)
    return Trainer(model, opt, step, seed=seed, method="toy", settings={"lr": 0.05},
                   evaluate=evaluate, eval_every=4, **kw)


def test_batches_are_epochwise_permutations_and_loss_decreases():
    ctx = StepContext(0, 0, 1, torch.Generator().manual_seed(0))
    seen = torch.cat([ctx.batch("a", 10, 4).idx for _ in range(5)])  # two epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:20].tolist()) == list(range(10))
    res = _setup(steps=30).fit()
    assert res.metrics[-1]["ce"] < 0.7 * res.metrics[0]["ce"]
    assert res.run_dir is None


class Kill(RuntimeError):
    pass


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    full = _setup(run_dir=tmp_path / "full", checkpoint_every=3)
    ref = full.fit()

    def killer(step, total, record):
        if step == 8:
            raise Kill

    t = _setup(run_dir=tmp_path / "cut", checkpoint_every=3)
    with pytest.raises(Kill):
        t.fit(progress=killer)
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["step"] == 6
    with pytest.raises(ValueError, match="not empty"):
        _setup(run_dir=tmp_path / "cut")
    again = _setup(seed=0, run_dir=tmp_path / "cut", resume=True, checkpoint_every=3)
    torch.manual_seed(999)  # the global RNG is restored from the checkpoint
    res = again.fit()
    assert res.metrics == ref.metrics
    for a, b in zip(full.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r) for r in lines] == ref.metrics
    cfg = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert cfg["settings"] == {"lr": 0.05} and cfg["environment"]["torch"] == torch.__version__
    # a finished run resumes to its stored result without training
    assert _setup(run_dir=tmp_path / "cut", resume=True).fit().metrics == ref.metrics


def test_resume_refuses_other_settings_and_runs_root_names_folders(tmp_path):
    _setup(run_dir=tmp_path / "r", steps=3).fit()
    with pytest.raises(ValueError, match="differs in steps"):
        _setup(run_dir=tmp_path / "r", steps=4, resume=True).fit()
    a = _setup(runs_root=tmp_path / "runs", steps=1)
    b = _setup(runs_root=tmp_path / "runs", steps=1)
    a.fit()
    assert a.run_dir.name.startswith("toy-") and a.run_dir != b.run_dir




def _ddp_worker(rank, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from pytransfer.methods._trainer import init_distributed

    torch.set_num_threads(1)
    assert init_distributed("cpu") == (rank, 2)
    t = _setup(seed=0, run_dir=f"{out}_run")  # rank 0 writes, both ranks check first
    res = t.fit()
    torch.save({"metrics": res.metrics, "params": [p.detach() for p in t.model.parameters()]},
               f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_process_gloo_ddp_matches_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    mp.start_processes(_ddp_worker, args=(port, out), nprocs=2, join=True, start_method="fork")
    t = _setup(seed=0)
    ref = t.fit()
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert len(got["metrics"]) == len(ref.metrics)
        for a, b in zip(got["metrics"], ref.metrics):
            assert a.keys() == b.keys()
            for k in set(a) - {"drop"}:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (k, a, b)
        for p, q in zip(got["params"], t.model.parameters()):
            torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6)
    lines = (tmp_path / "ddp_run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r) for r in lines] == torch.load(f"{out}.0", weights_only=True)["metrics"]
    assert json.loads((tmp_path / "ddp_run" / "config.json").read_text())["world_size"] == 2
