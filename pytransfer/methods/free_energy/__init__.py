"""Free-energy processes ("A Free-Energy Principle for Representation Learning", Gao &
Chaudhari, ICML 2020): equilibration, iso-classification (eq. 17-22, 31) and transfer with a
changing data distribution (Lemma 9, eq. 23-30), on the exact operator of
``pytransfer.free_energy``.

``config`` (settings, state), ``equilibrium`` (eq. 12 and the schedule eta(t)), ``paths`` (the
mixture and OT data paths, eq. 23, 36-37), ``checkpoint``, ``process`` (the processes) and
``demo`` (the part of ``pytransfer demo``).

**What uses the shared trainer.** Equilibration is SGD (Adam on the variational free energy),
so :func:`equilibrate` is a step function (:func:`equilibrium_step`) on
``pytransfer.methods._trainer.Trainer``, like every other method: seeded epoch-wise batches,
``progress``, an optional run folder with exact resume. The processes are not SGD epochs: a
step is a linear solve (MINRES on the Gibbs Hessian), an Euler move of theta and of (lambda,
gamma), optionally a short re-equilibration, and a record of R, D, C at the new point. Their
state (step, t, lambda, gamma, the records, the optimizer whose Adam moments the
re-equilibrations reuse, the process generator that seeds them) is not the trainer's, so
``checkpoint`` keeps its own file, rewritten atomically after each step and read with
``torch.load(weights_only=True)``; a resumed process replays the same equilibrations because
each one's seed is drawn from the checkpointed generator.
"""

from pytransfer.methods.free_energy.checkpoint import resume, save_checkpoint
from pytransfer.methods.free_energy.config import RULES, VARIANTS, ProcessConfig, ProcessState
from pytransfer.methods.free_energy.demo import run_demo
from pytransfer.methods.free_energy.equilibrium import (
    equilibrate,
    equilibrium_step,
    eta_schedule,
    variational_free_energy,
)
from pytransfer.methods.free_energy.paths import (
    INTERPOLATIONS,
    DataPath,
    mixture_batch,
    ot_batch,
    ot_coupling,
    ot_coupling_points,
    sample_batch,
    sample_pairs,
)
from pytransfer.methods.free_energy.process import (
    Rates,
    iso_classification,
    transfer,
    transfer_rates,
)

__all__ = ["INTERPOLATIONS", "RULES", "VARIANTS", "DataPath", "ProcessConfig", "ProcessState",
           "Rates", "equilibrate", "equilibrium_step", "eta_schedule", "iso_classification",
           "mixture_batch", "ot_batch", "ot_coupling", "ot_coupling_points", "resume", "run_demo",
           "sample_batch", "sample_pairs", "save_checkpoint", "transfer", "transfer_rates",
           "variational_free_energy"]
