"""Gibbs-expectation HVPs (issue 7): A.v of Lemma 5 on batch 64, S = 32, an MLP model with
~200k parameters (quick: a small one), one thread, float32.

Subject: ``GibbsOperator.hvp`` (double-backward through the graph of grad J built once per
batch). Anchors in the same run: one forward+backward of J; A.v with the graph rebuilt per
product; ``torch.func.jvp`` of ``torch.func.grad`` of J; the naive per-sample formula
E_x[<grad^2 H v> - Cov_w(grad H) v] (torch.func per-sample gradients, timed on a subset of the
batch and scaled); this package's reference weights. Targets: A.v <= 1.5x forward+backward
(anchor/subject >= 0.67), >= 15x the naive formula; 20-iteration MINRES <= 30x fwd+bwd.
Memory (every S): peak-RSS increments of fwd+bwd (activations) and of the cached graph + A.v,
measured in a fresh process; flat in S relative to the activations, far below S*X*P floats.

    python -c "from bench.bench_gibbs import cases; ..."   # see /work/notes/issue-7-readme.md
    pytest bench/bench_gibbs.py --benchmark-enable
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call, grad, jacrev, jvp

from bench.common import Case, pin_one_thread, time_call
from pytransfer.free_energy import FreeEnergyModel, GibbsOperator

NAIVE_ROWS = 4  # the per-sample formula is timed on this many rows of x and scaled


def setup(quick: bool, samples: int = 32, batch: int = 64):
    torch.manual_seed(0)
    model = (FreeEnergyModel(64, 32, 4, 10) if quick else FreeEnergyModel(784, 120, 16, 10))
    x = torch.rand(batch, model.encoder[0].in_features)
    y = torch.randint(0, 10, (batch,))
    op = GibbsOperator(model, (x, y), 1.0, 2.0, samples=samples)
    v = torch.randn(op.numel)
    return model, op, v


def _functional(op: GibbsOperator, rows=slice(None)):
    """theta (dict of the Hamiltonian's parameters) -> H (X, S) on the held samples."""
    model = op.model
    names = [n for n, _ in model.named_parameters() if not n.startswith("encoder")]
    z, x, y = op.z[:, rows], op.x[rows], op.y[rows]

    class Terms(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self):
            m = self.m
            return (-m.log_prior(z) - op.lam * m.log_decoder(x, z)
                    - op.gamma * m.log_classifier(y, z)).T

    def H(theta):
        return functional_call(Terms(), {f"m.{n}": t for n, t in theta.items()}, ())
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    return H, params


def _split(op, v, names):
    pieces = dict(zip([n for n, _ in op.model.named_parameters()],
                      v.split([p.numel() for p in op.model.parameters()]), strict=True))
    return {n: pieces[n].view_as(p) for n, p in op.model.named_parameters() if n in names}


def naive_hvp(op: GibbsOperator, v: torch.Tensor, rows: int):
    """E_x[sum_s w grad^2 H v - Cov_w(grad H) v] with per-sample gradients (rows of x only)."""
    H, params = _functional(op, slice(0, rows))
    vt = _split(op, v, params)
    log_q = op.log_q[:rows]

    def run():
        w = torch.softmax(-H(params) - log_q, 1).detach()
        g = jacrev(H)(params)  # per-sample gradients, each (X, S, *shape)
        flat = torch.cat([g[n].flatten(2) for n in params], 2)  # (X, S, P)
        s = flat @ torch.cat([vt[n].flatten() for n in params])  # (X, S)
        cov = torch.einsum("xs,xsp->p", w * (s - (w * s).sum(1, keepdim=True)), flat)
        _, hv = jvp(grad(lambda th: (w * H(th)).sum()), (params,), (vt,))
        return (torch.cat([hv[n].flatten() for n in params]) - cov) / rows  # mean over x
    return run


def candidates(quick: bool, samples: int = 32) -> tuple[dict, dict]:
    model, op, v = setup(quick, samples)
    op.hvp(v)  # builds the graph of grad J once (per batch, reused by every product)
    H, params = _functional(op)
    vt = _split(op, v, params)

    def J(theta):
        return -torch.logsumexp(-H(theta) - op.log_q, 1).mean()

    def fwd_bwd():
        fresh = GibbsOperator.__new__(GibbsOperator)
        fresh.__dict__.update(op.__dict__)
        fresh._terms = op._evaluate(op.lam, op.gamma)
        torch.autograd.grad(fresh._J(fresh._terms), [p for p in model.parameters()
                                                     if p.requires_grad], allow_unused=True)

    def rebuilt():
        fresh = GibbsOperator.__new__(GibbsOperator)
        fresh.__dict__.update(op.__dict__)
        fresh._terms, fresh._grad = op._evaluate(op.lam, op.gamma), None
        fresh.hvp(v)

    X = op.x.shape[0]
    rows = min(NAIVE_ROWS, X)
    cands = {
        "A.v (cached graph)": lambda: op.hvp(v),
        "forward+backward of J": fwd_bwd,
        "A.v (graph rebuilt)": rebuilt,
        "jvp(grad J)": lambda: jvp(grad(J), (params,), (vt,)),
        f"naive per-sample formula (x{X // rows})": naive_hvp(op, v, rows),
    }
    return cands, {"op": op, "v": v, "scale": X / rows, "naive_label": list(cands)[-1]}


_MEMORY = """
import json, torch
from bench.bench_gibbs import setup
torch.set_num_threads(1)
def peak():  # VmHWM of this process (ru_maxrss would carry the forking parent's peak)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024  # MiB
model, op, v = setup({quick}, {samples})
base = peak()
params = [p for p in model.parameters() if p.requires_grad]
torch.autograd.grad(op._J(op._evaluate(op.lam, op.gamma)), params, allow_unused=True)
fb = peak()
op.hvp(v); op.hvp(v)
print(json.dumps({{"activations": fb - base, "hvp": peak() - base}}))
"""


def memory(quick: bool, samples: int) -> dict[str, float]:
    """Peak-RSS increments (MiB, Linux VmHWM) over the set-up model, batch and samples, in a
    fresh process: one forward+backward of J (its activations), and the cached graph of
    grad J plus two A.v."""
    out = subprocess.run([sys.executable, "-c", _MEMORY.format(quick=quick, samples=samples)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cases(quick: bool = False) -> list[Case]:
    pin_one_thread()
    out = []
    for S in ([32] if quick else [8, 32, 128]):
        cands, ctx = candidates(quick, S)
        op, v = ctx["op"], ctx["v"]

        def metrics(cands=cands, op=op, v=v, S=S):
            mem = memory(quick, S)
            per_sample = S * op.x.shape[0] * op.numel * 4 / 2**20  # per-sample gradients, MiB
            out = {"peak MiB: fwd+bwd of J (activations)": (mem["activations"], None, "<="),
                   "peak MiB: graph of grad J + A.v": (mem["hvp"], None, "<="),
                   "A.v peak / activations": (mem["hvp"] / max(mem["activations"], 1.0),
                                              None, "<="),
                   "A.v peak / per-sample gradients": (mem["hvp"] / per_sample, None, "<=")}
            if S != 32:
                return out
            fb = time_call(cands["forward+backward of J"], 3)
            t = time_call(lambda: op.solve(op.b_lambda(), maxiter=20, rtol=0.0), 1)
            return {"MINRES 20 it / fwd+bwd": (t / fb, 30.0, "<="),
                    "parameters": (float(op.numel), None, ">="), **out}
        targets = {"forward+backward of J": 1 / 1.5, ctx["naive_label"]: 15.0}
        if S != 32:  # the S sweep: A.v and fwd+bwd only
            cands = {k: cands[k] for k in ("A.v (cached graph)", "forward+backward of J")}
            targets = {"forward+backward of J": 1 / 1.5}
        name = f"batch 64, S={S}, {op.numel} params ({'quick' if quick else 'full'}), fp32"
        out.append(Case("gibbs", name, "A.v (cached graph)", cands, targets, metrics, rounds=3,
                        scale={ctx["naive_label"]: ctx["scale"]}))
    return out


@pytest.fixture(scope="module")
def quick_candidates():
    return candidates(True)[0]


@pytest.mark.parametrize("label", ["A.v (cached graph)", "forward+backward of J",
                                   "A.v (graph rebuilt)", "jvp(grad J)"])
def test_hvp(benchmark, quick_candidates, label):
    benchmark(quick_candidates[label])
