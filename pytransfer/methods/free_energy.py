"""Free-energy processes (Achille et al., "A free-energy principle for representation
learning"): equilibration, iso-classification (eq. 17-22, 31) and transfer with a changing data
distribution (Lemma 9, eq. 23-28), on the exact operator of ``pytransfer.free_energy``.

Every process step appends R, D, C, F (eq. 1, 4, 10) and (t, lambda, gamma) to its record
(optionally a JSONL file) and can checkpoint/resume (model, optimiser and process state). The
OT interpolation of the data (Appendix F) and geodesic transfer (eq. 30) are not implemented.
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
    step (the practical variant's schedule eta(t)); ``eval_seed`` fixes the evaluation samples.
    """

    steps: int = 20
    lam_rate: float = 1.0
    alpha: float = 1.0
    fd_step: float = 1e-3
    samples: int = 32
    weights: str = "importance"
    batch_size: int = 64
    minres_iters: int = 30
    damping: float = 0.0
    equil_steps: int = 0
    equil_lr: float = 1e-3
    schedule_power: float = 1.0
    eval_seed: int = 0
    seed: int = 0


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
                       until: int | None = None) -> list[dict]:
    """Iso-classification process from an equilibrated model at (lam, gamma); one record a step.

    ``variant="exact"`` (eq. 17-21): lambda-dot = cfg.lam_rate, gamma-dot from
    C_lambda lambda-dot + C_gamma gamma-dot = 0, theta-dot = A^-1(b_lambda lambda-dot +
    b_gamma gamma-dot) by MINRES; Euler steps of dt = 1/steps. ``variant="practical"``
    (Remark 7, eq. 22/31): lambda-dot = -alpha dC/dgamma, gamma-dot = alpha dC/dlambda by
    central finite differences of C at fixed theta (Gibbs reweighting of the held samples),
    theta moved only by re-equilibration under eta(t). ``checkpoint``: resumed if it exists;
    ``until``: stop after that step (a later call with the checkpoint continues).
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
    return state.records


def mixture_batch(source, target, t: float, batch_size: int, gen: torch.Generator):
    """A batch of p(x, t) = (1 - t) p_s + t p_t (eq. 23): half source, half target rows with
    data weights (1 - t) and t (so d/dt of an expectation is E_target - E_source); the one
    place the data interpolation lives (Appendix F's OT interpolation would replace it)."""
    xs, ys = _batch(source, max(batch_size // 2, 1), gen)
    xt, yt = _batch(target, max(batch_size // 2, 1), gen)
    ns, nt = xs.shape[0], xt.shape[0]
    is_target = torch.cat([torch.zeros(ns, dtype=torch.bool), torch.ones(nt, dtype=torch.bool)])
    pi = torch.where(is_target, t / nt, (1 - t) / ns).to(xs.dtype)
    return (torch.cat([xs, xt]), torch.cat([ys, yt])), pi, is_target


def transfer(model, source: tuple[torch.Tensor, torch.Tensor],
             target: tuple[torch.Tensor, torch.Tensor], lam: float, gamma: float,
             cfg: ProcessConfig | None = None, *, log_path: str | None = None,
             checkpoint: str | None = None) -> list[dict]:
    """Iso-classification transfer source -> target along p(x, t) (Lemma 9, eq. 24-28) with the
    lambda-dot = const heuristic (eq. 38): gamma-dot from C_lambda lambda-dot + C_gamma gamma-dot
    + C_t = 0, theta-dot = theta_lambda lambda-dot + theta_gamma gamma-dot + theta_t, where
    theta_t = A^-1 b_t, b_t = E_source<grad H> - E_target<grad H> (eq. 25) and
    C_t = (C_target - C_source) + grad C . theta_t (eq. 27). Records as for iso_classification,
    with C on the mixture at t."""
    cfg = cfg or ProcessConfig()
    lam, gamma = _checks.positive_float("lam", lam), _checks.positive_float("gamma", gamma)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.equil_lr)
    state = _resume(checkpoint, model, opt, ProcessState(0, lam, gamma), gen)
    eval_gen = torch.Generator().manual_seed(cfg.eval_seed)
    eval_s, eval_t = _batch(source, 128, eval_gen), _batch(target, 128, eval_gen)
    eval_batch = (torch.cat([eval_s[0], eval_t[0]]), torch.cat([eval_s[1], eval_t[1]]))

    def eval_record(t):
        n = eval_s[0].shape[0]
        pi = torch.cat([torch.full((n,), 1 - t), torch.full((eval_t[0].shape[0],), t)])
        pi = pi.clamp_min(1e-12).to(eval_s[0].dtype)
        return _functionals(model, eval_batch, state.lam, state.gamma, cfg, pi)

    dt = 1.0 / cfg.steps
    if state.step == 0 and not state.records:
        _log(state, {"step": 0, "t": 0.0, "lam": lam, "gamma": gamma, **eval_record(0.0)},
             log_path)
    while state.step < cfg.steps:
        batch, pi, is_target = mixture_batch(source, target, state.t, cfg.batch_size, gen)
        op = GibbsOperator(model, batch, state.lam, state.gamma, samples=cfg.samples,
                           weights=cfg.weights, data_weights=pi.clamp_min(1e-12))
        solve = {"maxiter": cfg.minres_iters, "damping": cfg.damping}
        th_l = op.solve(op.b_lambda(), **solve)[0]
        th_g = op.solve(op.b_gamma(), **solve)[0]
        b_t, dC_dt = _time_terms(op, is_target)
        th_t = op.solve(b_t, **solve)[0]
        g_C = op.grad_C()
        c_l, c_g = op.C_lambda(th_l), op.C_gamma(th_g)
        c_t = dC_dt + float(g_C @ th_t)
        lam_dot = cfg.lam_rate
        gamma_dot = -(c_l * lam_dot + c_t) / c_g
        _move(model, dt * (th_l * lam_dot + th_g * gamma_dot + th_t))
        state.lam = max(state.lam + dt * lam_dot, 1e-6)
        state.gamma = max(state.gamma + dt * gamma_dot, 1e-6)
        state.step += 1
        state.t = state.step * dt
        if cfg.equil_steps:
            mix = (torch.cat([source[0], target[0]]), torch.cat([source[1], target[1]]))
            equilibrate(model, mix, state.lam, state.gamma, steps=cfg.equil_steps,
                        lr=cfg.equil_lr, batch_size=cfg.batch_size, optimizer=opt,
                        schedule_power=cfg.schedule_power, generator=gen)
        _log(state, {"step": state.step, "t": state.t, "lam": state.lam, "gamma": state.gamma,
                     **eval_record(state.t), "C_t": c_t}, log_path)
        if checkpoint:
            _save(checkpoint, model, opt, state, gen)
    return state.records


def _time_terms(op: GibbsOperator, is_target: torch.Tensor) -> tuple[torch.Tensor, float]:
    """b_t (eq. 25) and dC/dt at fixed theta for the mixture: with d/dt p = p_t - p_s,
    b_t = -(E_t - E_s)<grad H> and dC/dt = C_target - C_source."""
    diff = torch.where(is_target, 1.0 / is_target.sum(), -1.0 / (~is_target).sum())
    diff = diff.to(op.dtype)
    lse = torch.logsumexp(-op._terms["H"] - op._logq_for(op._terms["H"]), 1)
    b_t = op._grad_of((diff * lse).sum(), retain_graph=True).detach()  # -(E_t - E_s) grad J_x
    dC_dt = float((diff * -op.means[:, 1]).sum())
    return b_t, dC_dt


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
