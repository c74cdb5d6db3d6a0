"""Test configuration. TRITON_INTERPRET must be set before anything imports triton."""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch
from hypothesis import settings

from pytransfer import _ext

torch.set_num_threads(1)

# Property tests draw the same examples on every run (CI must not depend on luck); set
# HYPOTHESIS_PROFILE=explore to search new examples locally.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: backends whose kernels these tests run on CPU tensors (triton through the interpreter)
CPU_BACKENDS = ["reference", "cpu", "triton"]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    if request.param == "cpu" and _ext.unavailable():
        pytest.fail(f"compiled extension missing: {_ext.unavailable()}")
    return request.param


def random_problem(B, n, m, *, dtype=torch.float64, shared=True, seed=0, scale=1.0):
    """Normalised random weights and a cost in [0, scale]."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(B, n, generator=gen, dtype=dtype) + 0.05
    b = torch.rand(B, m, generator=gen, dtype=dtype) + 0.05
    a = a / a.sum(-1, keepdim=True)
    b = b / b.sum(-1, keepdim=True)
    shape = (n, m) if shared else (B, n, m)
    cost = torch.rand(*shape, generator=gen, dtype=dtype) * scale
    return a, b, cost
