"""Bad input to pytransfer.mmd: a clear error that names the argument."""

import math

import pytest
import torch

from pytransfer import BackendUnavailableError
from pytransfer.mmd import (
    KernelSpec,
    class_pair_mmd,
    gaussian_kernels,
    mk_mmd,
    optimize_kernel_weights,
)

XS = torch.randn(6, 3, dtype=torch.float64)
XT = torch.randn(6, 3, dtype=torch.float64)
YS = torch.tensor([0, 0, 1, 1, 2, 2])


def _poke(t, value):
    t = t.clone()
    t[1, 1] = value
    return t


def _mmd(xs=XS, xt=XT, **kw):
    return lambda: mk_mmd(xs, xt, **kw)


CASES = [
    ("feature dim", _mmd(xt=XT[:, :2]), ValueError, "same feature dimension"),
    ("batch size linear", _mmd(xt=XT[:4]), ValueError, "same batch size"),
    ("odd n", _mmd(xs=XS[:5], xt=XT[:5]), ValueError, "drop_last=True"),
    ("n < 2 linear", _mmd(xs=XS[:1], xt=XT[:1], drop_last=True), ValueError, "n >= 2"),
    ("n < 2 quadratic", _mmd(xt=XT[:1], estimator="quadratic"), ValueError, ">= 2 rows"),
    ("nan", _mmd(xs=_poke(XS, math.nan)), ValueError, "xs contains NaN"),
    ("inf", _mmd(xt=_poke(XT, math.inf), estimator="quadratic"), ValueError, "xt contains NaN"),
    ("int dtype", _mmd(xs=XS.long(), xt=XT.long()), TypeError, "xs must have a floating"),
    ("mixed dtype", _mmd(xt=XT.float()), TypeError, "share one float dtype"),
    ("not a tensor", _mmd(xs=XS.tolist()), TypeError, "xs must be a torch.Tensor"),
    ("1-D", _mmd(xs=XS[:, 0], xt=XT[:, 0]), ValueError, "xs must be 2-D"),
    ("mixed devices", _mmd(xt=XT.to("meta")), ValueError, "one device"),
    ("estimator", _mmd(estimator="biased"), ValueError, "estimator must be one of"),
    ("negative weight", _mmd(kernels=gaussian_kernels(2), weights=[1.5, -0.5]), ValueError,
     "weights has negative"),
    ("nan weight", _mmd(kernels=gaussian_kernels(2), weights=[math.nan, 1.0]), ValueError,
     "weights contains NaN"),
    ("weights sum", _mmd(kernels=gaussian_kernels(2), weights=[0.5, 0.4]), ValueError,
     "sum to 1"),
    ("weights shape", _mmd(kernels=gaussian_kernels(2), weights=[1.0]), ValueError,
     r"shape \(2,\)"),
    ("kernels type", _mmd(kernels=[1.0, 2.0]), TypeError, "kernels must be a KernelSpec"),
    ("tensor base", _mmd(kernels=KernelSpec((1.0,), torch.tensor(-1.0))), ValueError,
     "base must be finite"),
    ("backend", _mmd(backend="gpu"), ValueError, "backend must be one of"),
    ("cuda backend", _mmd(backend="cuda"), BackendUnavailableError, "cuda"),
    ("negative multiplier", lambda: gaussian_kernels(2, multipliers=[1.0, -2.0]), ValueError,
     "multipliers must be finite and > 0"),
    ("inf multiplier", lambda: gaussian_kernels(1, multipliers=[math.inf]), ValueError,
     "multipliers must be finite"),
    ("multiplier count", lambda: gaussian_kernels(3, multipliers=[1.0, 2.0]), ValueError,
     "exactly|num=3"),
    ("num", lambda: gaussian_kernels(0), ValueError, "num must be >= 1"),
    ("base float", lambda: gaussian_kernels(3, base=0.0), ValueError, "base must be"),
    ("base str", lambda: gaussian_kernels(3, base="median"), ValueError, "base must be one of"),
    ("empty class", lambda: class_pair_mmd(XS, torch.tensor([0, 0, 2, 2, 2, 2]), XT, YS),
     ValueError, r"classes \[1\]"),
    ("single-sample class", lambda: class_pair_mmd(XS, YS, XT, torch.tensor([0, 0, 0, 1, 1, 2])),
     ValueError, "fewer than 2"),
    ("label dtype", lambda: class_pair_mmd(XS, YS.double(), XT, YS), TypeError, "integer label"),
    ("label shape", lambda: class_pair_mmd(XS, YS[:5], XT, YS), ValueError, r"shape \(6,\)"),
    ("class-pair linear", lambda: class_pair_mmd(XS, YS, XT, YS, estimator="linear"), ValueError,
     "'quadratic'"),
    ("weights n", lambda: optimize_kernel_weights(XS[:2], XT[:2]), ValueError, "n >= 4"),
    ("weights reg", lambda: optimize_kernel_weights(XS, XT, reg=-1.0), ValueError, "reg must be"),
]


@pytest.mark.parametrize("name,call,exc,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_check_inputs_false_skips_value_checks_not_shapes():
    out = mk_mmd(_poke(XS, math.nan), XT, check_inputs=False, backend="cpu")
    assert math.isnan(out.item())
    with pytest.raises(ValueError, match="same feature dimension"):
        mk_mmd(XS, XT[:, :2], check_inputs=False)
