"""Free-energy processes (Achille et al., "A free-energy principle for representation
learning"): equilibration, iso-classification (eq. 17-22, 31) and transfer with a changing data
distribution (Lemma 9, eq. 23-28), on the exact operator of ``pytransfer.free_energy``.

Every process step appends R, D, C, F (eq. 1, 4, 10) and (t, lambda, gamma) to its record
(optionally a JSONL file) and can checkpoint/resume (model, optimiser and process state). The
data path of a transfer is the mixture (eq. 23) or the OT interpolation (Appendix F, eq. 37),
each one function returning a :class:`DataPath`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch

from pytransfer import _checks
from pytransfer.free_energy import GibbsOperator

VARIANTS = ("exact", "practical")


def variational_free_energy(model, x: torch.Tensor, y: torch.Tensor, lam: float, gamma: float,
                            samples: int = 1) -> torch.Tensor:
    """E_x E_{e(z|x)}[H + log e] = R + lam D + gamma C (eq. 8, 12) with reparameterised samples:
    an upper bound on F, minimised over every parameter, the encoder included."""
    q = model.encode(x)
    z = q.rsample((samples,))
    H = -model.log_prior(z) - lam * model.log_decoder(x, z) - gamma * model.log_classifier(y, z)
    return (H + q.log_prob(z)).mean()


def eta_schedule(step: int, total: int, power: float = 1.0) -> float:
    """eta(t) = (t/T)^2 (1 - t/T)^power normalised to peak 1 (Sec. 5.1; the arXiv text has
    power 5, the conference version 1)."""
    s = step / total
    peak_s = 2.0 / (2.0 + power)
    return (s * s * (1 - s) ** power) / (peak_s**2 * (1 - peak_s) ** power)


def _batch(data, batch_size: int, gen: torch.Generator):
    x, y = data
    idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
    return x[idx], y[idx]


def equilibrate(model, data: tuple[torch.Tensor, torch.Tensor], lam: float, gamma: float, *,
                steps: int, lr: float = 1e-3, batch_size: int = 64, samples: int = 1,
                optimizer: torch.optim.Optimizer | None = None, schedule_power: float | None = None,
                generator: torch.Generator | None = None) -> torch.optim.Optimizer:
    """Adam on the variational free energy at fixed (lam, gamma) (eq. 12): brings theta to the
    equilibrium surface and the encoder to the Gibbs measure. ``schedule_power`` set: the
    learning rate follows :func:`eta_schedule` with peak ``lr`` (Sec. 5.1)."""
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    gen = generator or torch.Generator().manual_seed(0)
    for k in range(steps):
        if schedule_power is not None:
            for g in opt.param_groups:
                g["lr"] = lr * eta_schedule(k + 1, steps + 1, schedule_power)
        x, y = _batch(data, batch_size, gen)
        loss = variational_free_energy(model, x, y, lam, gamma, samples)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return opt


@dataclass
class ProcessConfig:
    """Settings of an iso-classification or transfer process.

    ``lam_rate``: lambda-dot of the exact process (lambda moves by lam_rate over the process);
    ``alpha``: time scale of the practical variant (eq. 22/31); ``fd_step``: its finite
    difference in (lambda, gamma); ``equil_steps``: re-equilibration steps after each Euler
    step (the practical variant's schedule eta(t)); ``eval_seed`` fixes the evaluation samples;
    ``slope``: k = dD/dR of the geodesic transfer (eq. 30; the paper leaves it free);
    ``ot_eps``: Sinkhorn regularisation of the OT interpolation (relative to the mean cost).
    """

    steps: int = 20
    lam_rate: float = 1.0
    alpha: float = 1.0
    fd_step: float = 1e-3
    samples: int = 32
    weights: str = "importance"
    batch_size: int = 64
    minres_iters: int = 30
    minres_rtol: float = 1e-6
    damping: float = 0.0
    equil_steps: int = 0
    equil_lr: float = 1e-3
    schedule_power: float = 1.0
    eval_seed: int = 0
    seed: int = 0
    slope: float = -1.0
    ot_eps: float = 0.05


@dataclass
class ProcessState:
    step: int
    lam: float
    gamma: float
    t: float = 0.0
    records: list[dict] = field(default_factory=list)


def _functionals(model, batch, lam, gamma, cfg: ProcessConfig, data_weights=None) -> dict:
    with torch.random.fork_rng():
        torch.manual_seed(cfg.eval_seed)  # common random numbers: comparable across steps
        op = GibbsOperator(model, batch, lam, gamma, samples=cfg.samples, weights=cfg.weights,
                           data_weights=data_weights)
    return asdict(op.functionals())


def _log(state: ProcessState, rec: dict, log_path: str | None) -> None:
    state.records.append(rec)
    if log_path:
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _save(path, model, opt, state, gen):
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "state": asdict(state), "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state()}, path)


def _resume(path, model, opt, state, gen) -> ProcessState:
    if not path or not os.path.exists(path):
        return state
    ck = torch.load(path, weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    gen.set_state(ck["generator"])
    torch.set_rng_state(ck["torch_rng"])
    return ProcessState(**ck["state"])


def _move(model, delta: torch.Tensor) -> None:
    with torch.no_grad():
        vec = torch.nn.utils.parameters_to_vector(model.parameters())
        torch.nn.utils.vector_to_parameters(vec + delta, model.parameters())


def iso_classification(model, data: tuple[torch.Tensor, torch.Tensor], lam: float, gamma: float,
                       cfg: ProcessConfig | None = None, *, variant: str = "exact",
                       eval_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
                       log_path: str | None = None, checkpoint: str | None = None,
                       until: int | None = None, progress=None) -> list[dict]:
    """Iso-classification process from an equilibrated model at (lam, gamma); one record a step.

    ``variant="exact"`` (eq. 17-21): lambda-dot = cfg.lam_rate, gamma-dot from
    C_lambda lambda-dot + C_gamma gamma-dot = 0, theta-dot = A^-1(b_lambda lambda-dot +
    b_gamma gamma-dot) by MINRES; Euler steps of dt = 1/steps. ``variant="practical"``
    (Remark 7, eq. 22/31): lambda-dot = -alpha dC/dgamma, gamma-dot = alpha dC/dlambda by
    central finite differences of C at fixed theta (Gibbs reweighting of the held samples),
    theta moved only by re-equilibration under eta(t). ``checkpoint``: resumed if it exists;
    ``until``: stop after that step (a later call with the checkpoint continues);
    ``progress(step)`` is called after each step.
    """
    cfg = cfg or ProcessConfig()
    _checks.choice("variant", variant, VARIANTS)
    lam, gamma = _checks.positive_float("lam", lam), _checks.positive_float("gamma", gamma)
    gen = torch.Generator().manual_seed(cfg.seed)
    eval_batch = eval_batch or _batch(data, 256, torch.Generator().manual_seed(cfg.eval_seed))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.equil_lr)
    state = _resume(checkpoint, model, opt, ProcessState(0, lam, gamma), gen)
    dt = 1.0 / cfg.steps
    if state.step == 0 and not state.records:
        _log(state, {"step": 0, "t": 0.0, "lam": lam, "gamma": gamma,
                     **_functionals(model, eval_batch, lam, gamma, cfg)}, log_path)
    while state.step < min(cfg.steps, cfg.steps if until is None else until):
        op = GibbsOperator(model, _batch(data, cfg.batch_size, gen), state.lam, state.gamma,
                           samples=cfg.samples, weights=cfg.weights)
        extra = {}
        if variant == "exact":
            solve = {"maxiter": cfg.minres_iters, "damping": cfg.damping}
            th_l, info_l = op.solve(op.b_lambda(), **solve)
            th_g, info_g = op.solve(op.b_gamma(), **solve)
            c_l, c_g = op.C_lambda(th_l), op.C_gamma(th_g)
            lam_dot = cfg.lam_rate
            gamma_dot = -c_l * lam_dot / c_g
            _move(model, dt * (th_l * lam_dot + th_g * gamma_dot))
            extra = {"C_lambda": c_l, "C_gamma": c_g, "minres_iters": info_l.iterations
                     + info_g.iterations, "minres_rel_residual": info_l.residual_norms[-1]
                     / max(info_l.residual_norms[0], 1e-300)}
        else:
            h = cfg.fd_step
            lam_, gam_ = state.lam, state.gamma
            dC_dl = (op.functionals(lam_ + h, gam_).C - op.functionals(lam_ - h, gam_).C) / (2 * h)
            dC_dg = (op.functionals(lam_, gam_ + h).C - op.functionals(lam_, gam_ - h).C) / (2 * h)
            lam_dot, gamma_dot = -cfg.alpha * dC_dg, cfg.alpha * dC_dl
            extra = {"dC_dlambda": dC_dl, "dC_dgamma": dC_dg}
        state.lam = max(state.lam + dt * lam_dot, 1e-6)
        state.gamma = max(state.gamma + dt * gamma_dot, 1e-6)
        if cfg.equil_steps:
            equilibrate(model, data, state.lam, state.gamma, steps=cfg.equil_steps,
                        lr=cfg.equil_lr, batch_size=cfg.batch_size, optimizer=opt,
                        schedule_power=cfg.schedule_power, generator=gen)
        state.step += 1
        state.t = state.step * dt
        _log(state, {"step": state.step, "t": state.t, "lam": state.lam, "gamma": state.gamma,
                     **_functionals(model, eval_batch, state.lam, state.gamma, cfg), **extra},
             log_path)
        if checkpoint:
            _save(checkpoint, model, opt, state, gen)
        if progress:
            progress(state.step)
    return state.records


@dataclass
class DataPath:
    """Rows of p(x, t) drawn once, as functions of t (eq. 23, 37): x(t) = (1 - t) x0 + t x1,
    data weights pi(t) = (1 - t) pi0 + t pi1 and labels y0 (hard, fixed) or, with y1 given,
    the label distributions (1 - t) y0 + t y1 (Remark 11). ``at(t)`` takes a float or a 0-d
    tensor (differentiable: the t-derivatives of Lemma 9)."""

    x0: torch.Tensor
    x1: torch.Tensor
    y0: torch.Tensor
    pi0: torch.Tensor
    pi1: torch.Tensor
    y1: torch.Tensor | None = None

    def at(self, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.x0 if self.x1 is self.x0 else torch.lerp(self.x0, self.x1, t)
        y = self.y0 if self.y1 is None else torch.lerp(self.y0, self.y1, t)
        return x, y, torch.lerp(self.pi0, self.pi1, t)


def mixture_batch(source, target, batch_size: int, gen: torch.Generator) -> DataPath:
    """p(x, t) = (1 - t) p_s + t p_t (eq. 23): half source, half target rows with data weights
    (1 - t)/n_s and t/n_t (so d/dt of an expectation is E_target - E_source); labels kept."""
    xs, ys = _batch(source, max(batch_size // 2, 1), gen)
    xt, yt = _batch(target, max(batch_size // 2, 1), gen)
    ns, nt = xs.shape[0], xt.shape[0]
    pi0 = torch.cat([torch.full((ns,), 1.0 / ns), torch.zeros(nt)]).to(xs.dtype)
    pi1 = torch.cat([torch.zeros(ns), torch.full((nt,), 1.0 / nt)]).to(xs.dtype)
    x = torch.cat([xs, xt])
    return DataPath(x, x, torch.cat([ys, yt]), pi0, pi1)


def ot_coupling(xs: torch.Tensor, xt: torch.Tensor, eps: float = 0.05,
                max_iter: int = 2000) -> torch.Tensor:
    """Gamma* of eq. 36 between the empirical source and target (uniform weights) on the dense
    cost ||x_i - x_j||^2 (divided by its mean, so ``eps`` is relative), by entropic Sinkhorn
    (``pytransfer.ot.sinkhorn``) as the paper does; (n_s, n_t), mass 1. For data sets whose
    n_s x n_t cost fits in memory."""
    from pytransfer.ot import sinkhorn

    cost = torch.cdist(xs.flatten(1), xt.flatten(1)).pow(2)
    cost = cost / cost.mean().clamp_min(torch.finfo(cost.dtype).tiny)
    a = torch.full((xs.shape[0],), 1.0 / xs.shape[0], dtype=cost.dtype)
    b = torch.full((xt.shape[0],), 1.0 / xt.shape[0], dtype=cost.dtype)
    return sinkhorn(a, b, cost, eps, max_iter=max_iter, tol=1e-6, return_plan=True).plan


def sample_pairs(plan: torch.Tensor, n: int, gen: torch.Generator):
    """n index pairs (i, j) drawn i.i.d. from the coupling ``plan`` (n_s, n_t)."""
    flat = torch.multinomial(plan.flatten().double(), n, replacement=True, generator=gen)
    return flat // plan.shape[1], flat % plan.shape[1]


def ot_batch(source, target, batch_size: int, gen: torch.Generator, *, plan: torch.Tensor,
             classes: int) -> DataPath:
    """The OT interpolation of Appendix F (eq. 37): pairs (i, j) ~ Gamma*, rows
    x(t) = (1 - t) x_i + t x_j with equal weights and labels (1 - t) e_{y_i} + t e_{y_j}
    (Remark 11). ``plan`` from :func:`ot_coupling` on the full source and target."""
    i, j = sample_pairs(plan, batch_size, gen)
    (xs, ys), (xt, yt) = source, target
    hot = torch.nn.functional.one_hot
    pi = torch.full((batch_size,), 1.0 / batch_size, dtype=xs.dtype)
    return DataPath(xs[i], xt[j], hot(ys[i], classes).to(xs.dtype), pi, pi,
                    hot(yt[j], classes).to(xs.dtype))


INTERPOLATIONS = {"mixture": mixture_batch, "ot": ot_batch}
RULES = ("constant-lambda", "geodesic")


@dataclass
class Rates:
    """Total derivatives on the equilibrium surface: ``R[k]``, ``D[k]``, ``C[k]`` for k in
    ("lam", "gamma", "t") are the partial at fixed theta plus grad . theta_k (eq. 21, 27)."""

    R: dict[str, float]
    D: dict[str, float]
    C: dict[str, float]


def _rates(op: GibbsOperator, path: DataPath, t: float,
           thetas: dict[str, torch.Tensor]) -> Rates:
    """R, D, C (eq. 1, 4, 10) on the operator's held samples as functions of (theta, lambda,
    gamma, t) through the data path, differentiated by autograd; combined with the tangents
    theta_lambda, theta_gamma, theta_t of eq. 24."""
    dt = op.dtype
    lam, gam, tt = (torch.tensor(v, dtype=dt, requires_grad=True) for v in (op.lam, op.gamma, t))
    x, y, pi = path.at(tt)
    terms = op._evaluate(lam, gam, x, y)
    logits = -terms["H"] - op._logq_for(terms["H"])
    w = torch.softmax(logits, 1)
    pi = pi / pi.sum()
    D = (pi * (w * -terms["log_d"]).sum(1)).sum()
    C = (pi * (w * -terms["log_c"]).sum(1)).sum()
    if op.weights == "importance":
        R = -(pi * torch.logsumexp(logits, 1)).sum() - lam * D - gam * C
    else:
        R = (pi * (w * (op.log_q - terms["log_m"])).sum(1)).sum()
    out = {}
    for name, f in (("R", R), ("D", D), ("C", C)):
        partial = torch.autograd.grad(f, (lam, gam, tt), retain_graph=True, allow_unused=True)
        grad = op._grad_of(f, retain_graph=True)
        out[name] = {k: (0.0 if p is None else float(p)) + float(grad @ thetas[k])
                     for k, p in zip(("lam", "gamma", "t"), partial, strict=True)}
    return Rates(**out)


def _b_t(op: GibbsOperator, path: DataPath, t: float) -> torch.Tensor:
    """b_t = -d/dt grad J (eq. 25): the mixed derivative of J(theta, t) along the data path."""
    tt = torch.tensor(t, dtype=op.dtype, requires_grad=True)
    x, y, pi = path.at(tt)
    terms = op._evaluate(op.lam, op.gamma, x, y)
    J = -((pi / pi.sum()) * torch.logsumexp(-terms["H"] - op._logq_for(terms["H"]), 1)).sum()
    (dJ_dt,) = torch.autograd.grad(J, tt, create_graph=True)
    return -op._grad_of(dJ_dt).detach()


def transfer_rates(op: GibbsOperator, path: DataPath, t: float, cfg: ProcessConfig,
                   rule: str = "constant-lambda") -> dict:
    """lambda-dot, gamma-dot and theta-dot of the iso-classification transfer (Lemma 9,
    eq. 24-28) at time t. ``rule="constant-lambda"``: lambda-dot = cfg.lam_rate and
    C_lambda lambda-dot + C_gamma gamma-dot + C_t = 0 (eq. 38). ``rule="geodesic"`` (eq. 30):
    C-dot = 0 and D-dot = k R-dot with k = cfg.slope, i.e. (D_lambda - k R_lambda) lambda-dot
    + (D_gamma - k R_gamma) gamma-dot = k R_t - D_t, which on the equilibrium surface (first
    law R_lambda = -lambda D_lambda - gamma C_lambda) is eq. 30."""
    solve = {"maxiter": cfg.minres_iters, "damping": cfg.damping, "rtol": cfg.minres_rtol}
    thetas = {"lam": op.solve(op.b_lambda(), **solve)[0],
              "gamma": op.solve(op.b_gamma(), **solve)[0],
              "t": op.solve(_b_t(op, path, t), **solve)[0]}
    r = _rates(op, path, t, thetas)
    C, D, R = r.C, r.D, r.R
    if rule == "constant-lambda":
        lam_dot = cfg.lam_rate
        gamma_dot = -(C["lam"] * lam_dot + C["t"]) / C["gamma"]
    else:
        k = cfg.slope
        m = torch.tensor([[D["lam"] - k * R["lam"], D["gamma"] - k * R["gamma"]],
                          [C["lam"], C["gamma"]]], dtype=torch.float64)
        rhs = torch.tensor([k * R["t"] - D["t"], -C["t"]], dtype=torch.float64)
        lam_dot, gamma_dot = (float(u) for u in torch.linalg.solve(m, rhs))
    theta_dot = thetas["lam"] * lam_dot + thetas["gamma"] * gamma_dot + thetas["t"]
    return {"lam_dot": lam_dot, "gamma_dot": gamma_dot, "theta_dot": theta_dot,
            "C_t": C["t"], "rates": r}


def transfer(model, source: tuple[torch.Tensor, torch.Tensor],
             target: tuple[torch.Tensor, torch.Tensor], lam: float, gamma: float,
             cfg: ProcessConfig | None = None, *, rule: str = "constant-lambda",
             interpolation: str = "mixture", log_path: str | None = None,
             checkpoint: str | None = None, progress=None) -> list[dict]:
    """Iso-classification transfer source -> target along p(x, t) (Lemma 9, eq. 24-28):
    theta-dot = theta_lambda lambda-dot + theta_gamma gamma-dot + theta_t with (lambda-dot,
    gamma-dot) from :func:`transfer_rates` (``rule``: eq. 38 or the geodesic eq. 30).
    ``interpolation``: "mixture" (eq. 23) or "ot" (Appendix F, coupling of the full data
    sets by Sinkhorn, eps = cfg.ot_eps). Records as for iso_classification, with R, D, C on
    a fixed evaluation path at t; ``progress(step)`` is called after each step."""
    cfg = cfg or ProcessConfig()
    lam, gamma = _checks.positive_float("lam", lam), _checks.positive_float("gamma", gamma)
    _checks.choice("rule", rule, RULES)
    _checks.choice("interpolation", interpolation, tuple(INTERPOLATIONS))
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.equil_lr)
    state = _resume(checkpoint, model, opt, ProcessState(0, lam, gamma), gen)
    draw, kw = INTERPOLATIONS[interpolation], {}
    if interpolation == "ot":
        kw = {"plan": ot_coupling(source[0], target[0], cfg.ot_eps),
              "classes": int(max(source[1].max(), target[1].max())) + 1}
    eval_path = draw(source, target, 256, torch.Generator().manual_seed(cfg.eval_seed), **kw)

    def eval_record(t):
        x, y, pi = eval_path.at(t)
        return _functionals(model, (x, y), state.lam, state.gamma, cfg, pi.clamp_min(1e-12))

    dt = 1.0 / cfg.steps
    if state.step == 0 and not state.records:
        _log(state, {"step": 0, "t": 0.0, "lam": lam, "gamma": gamma, **eval_record(0.0)},
             log_path)
    while state.step < cfg.steps:
        path = draw(source, target, cfg.batch_size, gen, **kw)
        x, y, pi = path.at(state.t)
        op = GibbsOperator(model, (x, y), state.lam, state.gamma, samples=cfg.samples,
                           weights=cfg.weights, data_weights=pi.clamp_min(1e-12))
        step = transfer_rates(op, path, state.t, cfg, rule)
        _move(model, dt * step["theta_dot"])
        state.lam = max(state.lam + dt * step["lam_dot"], 1e-6)
        state.gamma = max(state.gamma + dt * step["gamma_dot"], 1e-6)
        state.step += 1
        state.t = state.step * dt
        if cfg.equil_steps:
            mix = (torch.cat([source[0], target[0]]), torch.cat([source[1], target[1]]))
            equilibrate(model, mix, state.lam, state.gamma, steps=cfg.equil_steps,
                        lr=cfg.equil_lr, batch_size=cfg.batch_size, optimizer=opt,
                        schedule_power=cfg.schedule_power, generator=gen)
        _log(state, {"step": state.step, "t": state.t, "lam": state.lam, "gamma": state.gamma,
                     **eval_record(state.t), "C_t": step["C_t"]}, log_path)
        if checkpoint:
            _save(checkpoint, model, opt, state, gen)
        if progress:
            progress(state.step)
    return state.records


def run_demo(console, quick: bool = False) -> list[dict]:
    """Iso-classification on sklearn digits, both variants from one equilibrated model; prints
    a table of (t, lambda, gamma, R, D, C) per variant. Returns the two records."""
    import copy

    from rich.table import Table

    from pytransfer.data import digits_transfer
    from pytransfer.free_energy import digits_model

    torch.manual_seed(0)
    d = digits_transfer()
    data = (torch.cat([d.xs, d.xt_train, d.xt_test]),
            torch.cat([d.ys, d.yt_train + 5, d.yt_test + 5]))
    lam, gamma = 0.5, 2.0
    model = digits_model(latent=4, hidden=32)
    equilibrate(model, data, lam, gamma, steps=150 if quick else 600, lr=3e-3, batch_size=128)
    steps = 4 if quick else 8
    out = []
    for variant in VARIANTS:
        m = copy.deepcopy(model)
        cfg = ProcessConfig(steps=steps, lam_rate=lam, alpha=1.0, samples=16, batch_size=64,
                            minres_iters=15, damping=1e-3, equil_steps=10, equil_lr=1e-3)
        recs = iso_classification(m, data, lam, gamma, cfg, variant=variant)
        table = Table(title=f"free-energy iso-classification on digits: {variant}")
        for col in ("t", "lambda", "gamma", "R", "D", "C"):
            table.add_column(col, justify="right")
        for r in recs:
            table.add_row(f"{r['t']:.2f}", f"{r['lam']:.3f}", f"{r['gamma']:.3f}",
                          f"{r['R']:.3f}", f"{r['D']:.3f}", f"{r['C']:.4f}")
        console.print(table)
        out.append(recs)
    return out
