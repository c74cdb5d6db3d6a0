"""Bad input to pytransfer.ot.sinkhorn: a clear error that names the argument."""

import math

import pytest
import torch
from conftest import random_problem

from pytransfer import BackendUnavailableError
from pytransfer.ot import sinkhorn

A, B_, C = random_problem(2, 4, 3)


def _with(**kw):
    args = {"a": A, "b": B_, "cost": C, "eps": 0.1}
    extra = {k: kw.pop(k) for k in list(kw) if k not in args}
    args.update(kw)
    return lambda: sinkhorn(args["a"], args["b"], args["cost"], args["eps"], **extra)


def _poke(t, value, idx=(0, 0)):
    t = t.clone()
    t[idx] = value
    return t


CASES = [
    ("negative", _with(a=_poke(A, -0.1)), ValueError, "a has negative"),
    ("nan weights", _with(b=_poke(B_, math.nan)), ValueError, "b contains NaN"),
    ("nan cost", _with(cost=_poke(C, math.nan)), ValueError, "cost contains NaN"),
    ("-inf cost", _with(cost=_poke(C, -math.inf)), ValueError, "cost contains -inf"),
    ("+inf row", _with(cost=_poke(C, math.inf, (2, slice(None)))), ValueError,
     "cost row 2 of problem 0 is \\+inf on every entry"),
    ("+inf column", _with(cost=_poke(C, math.inf, (slice(None), 1))), ValueError,
     "cost column 1 of problem 0"),
    ("+inf row off b's support", _with(
        cost=_poke(C, math.inf, (1, slice(0, 2))),
        b=torch.tensor([[0.5, 0.5, 0.0]] * 2, dtype=torch.float64)),
     ValueError, "cost row 1 of problem 0"),
    ("+inf column, one problem", _with(a=A[0], b=B_[0], cost=_poke(C, math.inf, (slice(None), 2))),
     ValueError, "cost column 2 of problem 0"),
    ("init not a pair", _with(init=torch.zeros(4)), TypeError, "init must be a pair"),
    ("init shape", _with(init=(torch.zeros(2, 4, dtype=torch.float64),
                               torch.zeros(2, 4, dtype=torch.float64))), ValueError,
     r"init\[1\] \(g\) must have shape \(2, 3\) or \(3,\)"),
    ("init dtype", _with(init=(torch.zeros(4), torch.zeros(3))), TypeError,
     r"init\[0\] \(f\) must have the dtype"),
    ("init nan", _with(init=(torch.zeros(4, dtype=torch.float64),
                             torch.full((3,), math.nan, dtype=torch.float64))), ValueError,
     r"init\[1\] \(g\) contains NaN"),
    ("unequal mass", _with(a=A * 1.01), ValueError, "equal total mass"),
    ("all-zero", _with(a=torch.zeros_like(A), b=torch.zeros_like(B_)), ValueError, "zero total"),
    ("shape a/b batch", _with(b=B_[:1]), ValueError, "same batch size"),
    ("shape cost", _with(cost=C[:, :2]), ValueError, "cost must end in"),
    ("cost batch", _with(cost=C.expand(5, 4, 3)), ValueError, "cost batch 5"),
    ("b ndim", _with(b=B_[0]), ValueError, "b must be 2-D"),
    ("eps zero", _with(eps=0.0), ValueError, "eps must be"),
    ("eps nan", _with(eps=math.nan), ValueError, "eps must be"),
    ("eps type", _with(eps="0.1"), TypeError, "eps must be a float"),
    ("int dtype", _with(a=torch.ones(2, 4, dtype=torch.int64)), TypeError,
     "a must have a floating"),
    ("mixed dtypes", _with(cost=C.float()), TypeError, "share one float dtype"),
    ("mixed devices", _with(cost=C.to("meta")), ValueError, "one device"),
    ("not a tensor", _with(a=[0.5, 0.5]), TypeError, "a must be a torch.Tensor"),
    ("unrolled compiled", _with(grad="unrolled", backend="cpu"), ValueError, "backend='reference'"),
    ("unknown grad", _with(grad="exact"), ValueError, "grad must be one of"),
    ("unknown backend", _with(backend="gpu"), ValueError, "backend must be one of"),
    ("cuda backend unavailable", _with(backend="cuda"), BackendUnavailableError, "cuda"),
    ("max_iter", _with(max_iter=0), ValueError, "max_iter must be >= 1"),
    ("tol", _with(tol=-1.0), ValueError, "tol must be"),
]


@pytest.mark.parametrize("name,call,exc,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_check_inputs_false_skips_value_checks_not_shapes():
    out = sinkhorn(A * 1.01, B_, C, 0.1, check_inputs=False, max_iter=5)  # no mass check
    assert out.n_iter.tolist() == [5, 5]
    with pytest.raises(ValueError, match="cost must end in"):
        sinkhorn(A, B_, C[:, :2], 0.1, check_inputs=False)
