"""Gibbs-expectation Hessian-vector products A.v (Lemma 5 of "A Free-Energy Principle for
Representation Learning") on a batch of 64, an MLP free-energy model, float32.

Subject: ``GibbsOperator.hvp`` (double backward through the graph of grad J built once per
batch). Anchors: one forward+backward of J (A.v <= 1.5x its time), A.v with the graph rebuilt
per product, ``torch.func.jvp`` of ``torch.func.grad`` of J (plain torch), and the naive
per-sample formula E_x[<grad^2 H v> - Cov_w(grad H) v] (timed on a few rows and scaled;
>= 15x). The float64 reference is A.v of the same operator (same samples) in float64.
"""

from __future__ import annotations

import copy

import torch
from torch.func import functional_call, grad, jacrev, jvp

from pytransfer.bench.timing import time_call
from pytransfer.bench.workload import Impl, Target, Work, Workload
from pytransfer.free_energy import FreeEnergyModel, GibbsOperator

NAIVE_ROWS = 4  # the per-sample formula is timed on this many rows of x and scaled
MODELS = {"tiny": (12, 8, 2, 3), "quick": (64, 32, 4, 10), "full": (784, 120, 16, 10)}
SAMPLES = {"tiny": (4,), "quick": (8, 32), "full": (8, 32, 128)}
BATCH = {"tiny": 6, "quick": 64, "full": 64}


def setup(size: str, samples: int, device: str = "cpu"):
    torch.manual_seed(0)
    model = FreeEnergyModel(*MODELS[size]).to(device)
    batch = BATCH[size]
    x = torch.rand(batch, model.encoder[0].in_features, device=device)
    y = torch.randint(0, MODELS[size][-1], (batch,), device=device)
    op = GibbsOperator(model, (x, y), 1.0, 2.0, samples=samples)
    v = torch.randn(op.numel, device=device)
    return model, op, v


def float64_twin(op: GibbsOperator) -> GibbsOperator:
    """The same operator (same samples z) with the model and data in float64."""
    twin = GibbsOperator.__new__(GibbsOperator)
    twin.__dict__.update(op.__dict__)
    twin.model = copy.deepcopy(op.model).double()
    twin.params = list(twin.model.parameters())
    twin.dtype = torch.float64
    twin.x = op.x.double() if op.x.is_floating_point() else op.x
    twin.z, twin.log_q, twin.pi = op.z.double(), op.log_q.double(), op.pi.double()
    twin._terms, twin._grad = twin._evaluate(op.lam, op.gamma), None
    return twin


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


def _flat(op, parts: dict) -> torch.Tensor:
    """A flat vector over all parameters from per-name pieces (zeros elsewhere)."""
    return torch.cat([parts[n].flatten() if n in parts else torch.zeros(p.numel(),
                      dtype=p.dtype, device=p.device) for n, p in op.model.named_parameters()])


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


def _workload(size: str, S: int, device: str) -> Workload:
    model, op, v = setup(size, S, device)
    op.hvp(v)  # builds the graph of grad J once (per batch, reused by every product)
    H, params = _functional(op)
    vt = _split(op, v, params)

    def J(theta):
        return -(op.pi * torch.logsumexp(-H(theta) - op.log_q, 1)).sum()

    def fwd_bwd():
        terms = op._evaluate(op.lam, op.gamma)
        torch.autograd.grad(op._J(terms), [p for p in model.parameters() if p.requires_grad],
                            allow_unused=True)

    def rebuilt():
        fresh = GibbsOperator.__new__(GibbsOperator)
        fresh.__dict__.update(op.__dict__)
        fresh._terms, fresh._grad = op._evaluate(op.lam, op.gamma), None
        return fresh.hvp(v)

    X = op.x.shape[0]
    rows = min(NAIVE_ROWS, X)
    naive = "naive per-sample formula"
    impls: dict[str, Impl | str] = {
        "A.v (cached graph)": Impl(lambda: op.hvp(v), tol=1e-4),
        "forward+backward of J": Impl(fwd_bwd, anchor=True, compare=False),
        "A.v (graph rebuilt)": Impl(rebuilt, anchor=True, tol=1e-4),
        "jvp(grad J) (torch.func)": Impl(lambda: _flat(op, jvp(grad(J), (params,), (vt,))[1]),
                                         anchor=True, tol=1e-4),
        naive: Impl(naive_hvp(op, v, rows), anchor=True, scale=X / rows, compare=False),
    }
    targets = [Target("forward+backward of J", 1 / 1.5), Target(naive, 15.0)]
    twin = float64_twin(op)

    def work() -> Work:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            op.hvp(v)
        return Work(flops=float(counter.get_total_flops()))
    def metrics():
        fwd_bwd()
        t_fb = time_call(fwd_bwd, 3)
        t_solve = time_call(lambda: op.solve(op.b_lambda(), maxiter=20, rtol=0.0), 1)
        return {"MINRES 20 it / fwd+bwd": (t_solve / t_fb, 30.0, "<="),
                "parameters": (float(op.numel), None, ">=")}
    return Workload(
        op="gibbs", family=f"A.v, batch {X}, {op.numel} params", size=S, size_name="S",
        detail="fp32", subject="A.v (cached graph)", impls=impls,
        reference=lambda: twin.hvp(v.double()), targets=targets, work=work,
        metrics=metrics if S == 32 and size == "full" else None,
        rounds={"tiny": 1, "quick": 3, "full": 3}[size])


def workloads(size: str, device: str = "cpu") -> list[Workload]:
    return [_workload(size, S, device) for S in SAMPLES[size]]
