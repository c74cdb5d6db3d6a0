"""Free-energy processes ("A Free-Energy Principle for Representation Learning", Gao &
Chaudhari, ICML 2020) on the exact operator of ``pytransfer.free_energy``: iso-classification
(eq. 17-22, 31) and transfer with a changing data distribution (Lemma 9, eq. 23-30, 38).

Every step appends R, D, C, F (eq. 1, 4, 10) and (t, lambda, gamma) to the record (optionally
a JSONL file) and can checkpoint / resume (model, optimiser and process state, in the process's
own atomic checkpoint: a step is a solve and an Euler move, not an SGD epoch). The optional
re-equilibrations after each step are :func:`equilibrate` on the shared trainer, reusing the
process's Adam and seeded from its generator."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from pytransfer import _checks
from pytransfer.free_energy import GibbsOperator, floor_multiplier
from pytransfer.methods.free_energy.checkpoint import resume, save_checkpoint
from pytransfer.methods.free_energy.config import RULES, VARIANTS, ProcessConfig, ProcessState
from pytransfer.methods.free_energy.equilibrium import equilibrate
from pytransfer.methods.free_energy.paths import (
    INTERPOLATIONS,
    DataPath,
    ot_coupling_points,
    sample_batch,
)


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
    eval_batch = eval_batch or sample_batch(data, 256, torch.Generator().manual_seed(cfg.eval_seed))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.equil_lr)
    state = resume(checkpoint, model, opt, ProcessState(0, lam, gamma), gen)
    dt = 1.0 / cfg.steps
    if state.step == 0 and not state.records:
        _log(state, {"step": 0, "t": 0.0, "lam": lam, "gamma": gamma,
                     **_functionals(model, eval_batch, lam, gamma, cfg)}, log_path)
    while state.step < min(cfg.steps, cfg.steps if until is None else until):
        op = GibbsOperator(model, sample_batch(data, cfg.batch_size, gen), state.lam, state.gamma,
                           samples=cfg.samples, weights=cfg.weights)
        extra = {}
        if variant == "exact":
            solve = {"maxiter": cfg.minres_iters, "damping": cfg.damping, "warn": False}
            th_l, info_l = op.solve(op.b_lambda(), **solve)
            th_g, info_g = op.solve(op.b_gamma(), **solve)
            c_l, c_g = op.C_lambda(th_l), op.C_gamma(th_g)
            lam_dot = cfg.lam_rate
            gamma_dot = -c_l * lam_dot / c_g
            _move(model, dt * (th_l * lam_dot + th_g * gamma_dot))
            extra = {"C_lambda": c_l, "C_gamma": c_g, "minres_iters": info_l.iterations
                     + info_g.iterations, **_solve_record(info_l, info_g)}
        else:
            h = cfg.fd_step
            lam_, gam_ = state.lam, state.gamma
            dC_dl = (op.functionals(lam_ + h, gam_).C - op.functionals(lam_ - h, gam_).C) / (2 * h)
            dC_dg = (op.functionals(lam_, gam_ + h).C - op.functionals(lam_, gam_ - h).C) / (2 * h)
            lam_dot, gamma_dot = -cfg.alpha * dC_dg, cfg.alpha * dC_dl
            extra = {"dC_dlambda": dC_dl, "dC_dgamma": dC_dg}
        state.lam = floor_multiplier("lambda", state.lam + dt * lam_dot)
        state.gamma = floor_multiplier("gamma", state.gamma + dt * gamma_dot)
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
            save_checkpoint(checkpoint, model, opt, state, gen)
        if progress:
            progress(state.step)
    return state.records


def _solve_record(*infos) -> dict:
    """What a step's truncated linear solves reached (recorded rather than warned at each
    step): the worst relative residual and whether every solve met its tolerance."""
    rel = max(i.residual_norms[-1] / max(i.residual_norms[0], 1e-300) for i in infos)
    return {"minres_rel_residual": rel, "minres_converged": all(i.converged for i in infos)}


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
    solve = {"maxiter": cfg.minres_iters, "damping": cfg.damping, "rtol": cfg.minres_rtol,
             "warn": False}
    solved = {k: op.solve(b, **solve) for k, b in (("lam", op.b_lambda()),
                                                    ("gamma", op.b_gamma()),
                                                    ("t", _b_t(op, path, t)))}
    thetas = {k: x for k, (x, _) in solved.items()}
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
            "C_t": C["t"], "rates": r, "solves": _solve_record(*(i for _, i in solved.values()))}


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
    state = resume(checkpoint, model, opt, ProcessState(0, lam, gamma), gen)
    draw, kw = INTERPOLATIONS[interpolation], {}
    if interpolation == "ot":
        kw = {"plan": ot_coupling_points(source[0], target[0], cfg.ot_eps),
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
        state.lam = floor_multiplier("lambda", state.lam + dt * step["lam_dot"])
        state.gamma = floor_multiplier("gamma", state.gamma + dt * step["gamma_dot"])
        state.step += 1
        state.t = state.step * dt
        if cfg.equil_steps:
            mix = (torch.cat([source[0], target[0]]), torch.cat([source[1], target[1]]))
            equilibrate(model, mix, state.lam, state.gamma, steps=cfg.equil_steps,
                        lr=cfg.equil_lr, batch_size=cfg.batch_size, optimizer=opt,
                        schedule_power=cfg.schedule_power, generator=gen)
        _log(state, {"step": state.step, "t": state.t, "lam": state.lam, "gamma": state.gamma,
                     **eval_record(state.t), "C_t": step["C_t"], **step["solves"]}, log_path)
        if checkpoint:
            save_checkpoint(checkpoint, model, opt, state, gen)
        if progress:
            progress(state.step)
    return state.records
