"""Free-energy representation learning: Gibbs kernels, the exact
Hessian operator of Lemma 5 and the paper's small models."""

from pytransfer.free_energy.gibbs import gibbs_moments, gibbs_weights
from pytransfer.free_energy.models import FreeEnergyModel, digits_model, mnist_model
from pytransfer.free_energy.operator import (
    Functionals,
    GibbsModel,
    GibbsOperator,
    SolveInfo,
    conjugate_gradient,
    floor_multiplier,
    minres,
)

__all__ = ["FreeEnergyModel", "Functionals", "GibbsModel", "GibbsOperator", "SolveInfo",
           "conjugate_gradient", "digits_model", "floor_multiplier", "gibbs_moments",
           "gibbs_weights", "minres", "mnist_model"]
