"""The extension boundary (issue 15, hardening 1-2): every call to pytransfer._C goes through
``_ext.call``, which checks each buffer, keeps contiguous copies alive for the call and passes
the thread count; every binding gives the same result on non-contiguous inputs."""

import ctypes

import numpy as np
import pytest
import torch

from pytransfer import _ext
from pytransfer.bench import roofline
from pytransfer.free_energy import _ops as gibbs_ops
from pytransfer.free_energy.reference import gibbs_moments_reference, gibbs_weights_reference
from pytransfer.mmd import _ops as mmd_ops
from pytransfer.mmd.reference import mmd_linear_reference, mmd_quadratic_reference
from pytransfer.mmd.spec import centered_sq
from pytransfer.ot import _ops as ot_ops
from pytransfer.ot import block, points, scaling
from pytransfer.ot.reference import sinkhorn_log_reference

pytestmark = pytest.mark.skipif(_ext.unavailable() is not None, reason="no compiled extension")


def _strided(x: torch.Tensor) -> torch.Tensor:
    """x's values in a non-contiguous layout (every other element of a wider buffer)."""
    wide = torch.full((*x.shape[:-1], 2 * x.shape[-1]), float("nan"), dtype=x.dtype)
    wide[..., ::2] = x
    out = wide[..., ::2]
    assert not out.is_contiguous()
    return out


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _problem():
    g = _gen(1)
    a = torch.rand(3, 5, dtype=torch.float64, generator=g) + 0.1
    b = torch.rand(3, 4, dtype=torch.float64, generator=g) + 0.1
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    return a, b, torch.rand(1, 5, 4, dtype=torch.float64, generator=g)


class _Recorder:
    """Stands in for pytransfer._C: reads every pointer argument's memory when called (after
    allocating look-alike buffers, which reuse any block freed before the call)."""

    def __init__(self, n):
        self.n, self.seen, self.args = n, [], None

    def probe(self, dtype, *args):
        junk = [torch.full((self.n,), -7.0, dtype=torch.float64) for _ in range(8)]
        self.args = args
        self.seen = [np.ctypeslib.as_array((ctypes.c_double * self.n).from_address(p)).copy()
                     for p in args[:-1] if p]
        del junk


def test_call_keeps_contiguous_copies_alive(monkeypatch):
    x = _strided(torch.arange(64, dtype=torch.float64))
    rec = _Recorder(64)
    monkeypatch.setattr(_ext, "_C", rec)
    _ext.call("probe", torch.float64, _ext.src(x, 64), _ext.src(None, 3))
    np.testing.assert_array_equal(rec.seen[0], np.arange(64.0))
    assert rec.args[1] == 0  # an absent optional input is a null pointer
    assert rec.args[-1] == torch.get_num_threads()


@pytest.mark.parametrize(("args", "error", "match"), [
    ((_ext.src(torch.zeros(3), 3),), TypeError, "dtype torch.float32"),
    ((_ext.src(torch.zeros(3, dtype=torch.float64), 4),), ValueError, r"shape \(3,\)"),
    ((_ext.dst(torch.zeros(3, 2, dtype=torch.float64).T, 2, 3),), ValueError, "not contiguous"),
    ((_ext.dst(None, 3),), ValueError, "None"),
    ((torch.zeros(3, dtype=torch.float64),), TypeError, "bare tensor"),
    ((_ext.src(torch.zeros(3, dtype=torch.float64, device="meta"), 3),), ValueError, "meta"),
])
def test_call_refuses_what_the_kernel_would_misread(monkeypatch, args, error, match):
    monkeypatch.setattr(_ext, "_C", _Recorder(3))
    with pytest.raises(error, match=match):
        _ext.call("probe", torch.float64, *args)


def test_out_buffers_are_fresh_outputs_as_declared(monkeypatch):
    """``out`` allocates the declared shape and dtype (CPU, contiguous), which ``call`` passes
    unchecked; a tensor subclass is still a bare tensor, scalars pass as they are."""
    class Args:
        def probe(self, dtype, *args):
            self.args = args

    rec = Args()
    monkeypatch.setattr(_ext, "_C", rec)
    o, flags = _ext.out(torch.float64, 2, 3), _ext.out(torch.bool, 5)
    assert o.tensor.shape == (2, 3) and o.tensor.dtype == torch.float64
    assert o.tensor.is_contiguous() and o.tensor.is_cpu and flags.tensor.dtype == torch.bool
    _ext.call("probe", torch.float64, o, 7, 0.5, True, "x", flags, threads=False)
    assert rec.args == (o.tensor.data_ptr(), 7, 0.5, True, "x", flags.tensor.data_ptr())
    with pytest.raises(TypeError, match="argument 0 is a bare tensor"):
        _ext.call("probe", torch.float64, torch.nn.Parameter(torch.zeros(3)))
    _ext.call("probe", torch.float64, 5, threads=1)  # a capped thread count is passed as is
    assert rec.args == (5, 1)


def test_block_kernel_threads_capped_at_its_blocks(monkeypatch):
    """The block kernel gets at most one thread per block of problems (no thread idles at
    its barriers), and the thread count otherwise."""
    seen = []
    real = _ext.call

    def spy(fn, dtype, *args, **kw):
        seen.append(kw.get("threads", True))
        return real(fn, dtype, *args, **kw)

    monkeypatch.setattr(_ext, "call", spy)
    a, b, C = _problem()  # 3 float64 problems: one block of 8 lanes
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        block.solve(a, b, C, 0.3, 10, 0.0)
        block.solve(torch.cat([a] * 6), torch.cat([b] * 6), C, 0.3, 10, 0.0)  # 18: 3 blocks
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]


def test_call_names_supported_dtypes_only():
    with pytest.raises(TypeError, match="float32 or float64"):
        _ext.call("sinkhorn_log", torch.float16)


# ---------------------------------------------------------------- every binding, strided
def _sinkhorn_log():
    a, b, C = _problem()
    g0 = torch.rand(3, 4, dtype=torch.float64, generator=_gen(2)) * 0.1
    want = sinkhorn_log_reference(a, b, C, 0.3, 200, 1e-12, g0)
    got = ot_ops.sinkhorn_log_cpu(_strided(a), _strided(b), _strided(C), 0.3, 200, 1e-12,
                                  _strided(g0))
    return got, want


@pytest.mark.parametrize("bounds", [(0.0, 1e15), (1e-15, 1e-16), (float("nan"), 1.0)])
def test_block_kernel_refuses_a_scaling_range_without_0_lo_hi(monkeypatch, bounds):
    """The block kernel tells a support by x > 0 (a lane in the scaling form has its supported
    scalings in [lo, hi]): a range with lo <= 0 (or empty) is refused, not miscomputed."""
    a, b, C = _problem()
    monkeypatch.setitem(scaling.SAFE_RANGE, torch.float64, bounds)
    with pytest.raises(ValueError, match="0 < lo <= hi"):
        block.solve(a, b, C, 0.3, 10, 0.0)


def _sinkhorn_scaling():
    a, b, C = _problem()
    want = ot_ops.scaling_cpu_with_flags(a, b, C, 0.3, 200, 1e-12)
    got = ot_ops.scaling_cpu_with_flags(_strided(a), _strided(b), _strided(C), 0.3, 200, 1e-12)
    return got, want


def _sinkhorn_block_objective():
    a, b, C = _problem()
    outs, _ = block.run(a, b, C, 0.3, 200, 1e-12)
    want = block.objective(outs, 0.3).clone()
    got = torch.full((3,), float("nan"), dtype=torch.float64)
    _ext.call("sinkhorn_block_objective", torch.float64,
              *(_ext.src(_strided(outs.tensor(i)), *outs.tensor(i).shape)
                for i in (10, 11, 0, 1, 8, 9)), 3, 5, 4, 0.3, _ext.dst(got, 3), threads=False)
    return got, want


def _sinkhorn_check():
    a, b, C = _problem()
    want = block.check(a, b, C, 1e-5)
    got = block.check(_strided(a), _strided(b), _strided(C), 1e-5)
    assert want[0] and got[0]
    return torch.tensor(got[1:]), torch.tensor(want[1:])


def _clouds():
    g = _gen(4)
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=g)
    y = torch.randn(2, 4, 3, dtype=torch.float64, generator=g)
    a, b, _ = _problem()
    return x, y, a[:2], b[:2]


def _points_solve():
    x, y, a, b = _clouds()
    sched = torch.tensor([2.0, 0.5], dtype=torch.float64)
    want = points.sinkhorn_points_cpu(x, y, a, b, sched, 2, 50, 1e-12, False, False)
    got = points.sinkhorn_points_cpu(_strided(x), _strided(y), _strided(a), _strided(b),
                                     _strided(sched), 2, 50, 1e-12, False, False)
    return got, want


def _points_values():
    x, y, a, b = _clouds()
    f = torch.randn(2, 5, dtype=torch.float64, generator=_gen(5)) * 0.1
    g = torch.randn(2, 4, dtype=torch.float64, generator=_gen(6)) * 0.1
    want = points.sinkhorn_points_rows(x, y, a, b, f, g, 0.5, 2, "reference", True)
    got = points.sinkhorn_points_rows(*(_strided(t) for t in (x, y, a, b, f, g)), 0.5, 2,
                                      "cpu", True)
    return got, want


def _scaling_div():
    g = _gen(3)
    w, den, x_old = (torch.rand(3, 5, dtype=torch.float64, generator=g) + 0.5 for _ in range(3))
    want_new, got_new = torch.empty_like(w), torch.empty_like(w)
    want = scaling.div_cpu(w, den, x_old, want_new, True)
    got = scaling.div_cpu(_strided(w), _strided(den), _strided(x_old), got_new, True)
    return (got[0], got_new), (want[0], want_new)


def _mmd_inputs(n=6, d=5):
    g = _gen(4)
    xs = torch.randn(n, d, dtype=torch.float64, generator=g)
    xt = torch.randn(n, d, dtype=torch.float64, generator=g) + 0.5
    gammas = torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    return xs, xt, gammas, w, torch.tensor([0, 1, 1], dtype=torch.int32)


def _mmd_linear_fwd():
    xs, xt, gam, w, sq = _mmd_inputs()
    got = mmd_ops.mmd_linear_fwd_cpu(_strided(xs), _strided(xt), _strided(gam), _strided(w), sq)
    return got[0], mmd_linear_reference(xs, xt, gam, w)[1]


def _mmd_linear_bwd():
    xs, xt, gam, w, sq = _mmd_inputs()
    _, coef = mmd_ops.mmd_linear_fwd_cpu(xs, xt, gam, w, sq)
    grad = torch.tensor(1.5, dtype=torch.float64)
    want = mmd_ops.mmd_linear_bwd_cpu(xs, xt, coef, grad)
    return mmd_ops.mmd_linear_bwd_cpu(_strided(xs), _strided(xt), _strided(coef), grad), want


def _mmd_tile():
    xs, xt, gam, w, sq = _mmd_inputs()
    got = mmd_ops.mmd_quadratic_fwd_cpu(_strided(xs), _strided(xt), _strided(gam), _strided(w),
                                        sq)
    return got, mmd_quadratic_reference(xs, xt, gam, w)[1]


def _mmd_moments():
    xs, xt, *_ = _mmd_inputs()
    x = torch.cat([xs, xt])
    return centered_sq(_strided(xs), _strided(xt)), (x - x.mean(0)).square().sum()


def _gibbs_inputs():
    g = _gen(5)
    H = torch.randn(4, 6, dtype=torch.float64, generator=g)
    q = torch.randn(4, 6, dtype=torch.float64, generator=g)
    f = torch.randn(4, 6, 3, dtype=torch.float64, generator=g)
    return H, q, f


def _gibbs_weights_fwd():
    H, q, _ = _gibbs_inputs()
    return gibbs_ops._cpu_weights_fwd(_strided(H), _strided(q)), gibbs_weights_reference(H, q)


def _gibbs_weights_bwd():
    H, q, _ = _gibbs_inputs()
    lw = gibbs_weights_reference(H, q)
    return gibbs_ops._cpu_weights_bwd(_strided(H), _strided(lw)), \
        gibbs_ops._cpu_weights_bwd(H, lw)


def _gibbs_moments_fwd():
    H, q, f = _gibbs_inputs()
    w = gibbs_weights_reference(H, q).exp()
    return gibbs_ops._cpu_moments_fwd(_strided(w), _strided(f)), gibbs_moments_reference(w, f)


def _gibbs_moments_bwd():
    H, q, f = _gibbs_inputs()
    w = gibbs_weights_reference(H, q).exp()
    m = gibbs_moments_reference(w, f)[0]
    gm, gc = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, 3, dtype=torch.float64)
    want = gibbs_ops._cpu_moments_bwd(w, f, m, gm, gc)
    got = gibbs_ops._cpu_moments_bwd(_strided(w), _strided(f), _strided(m), _strided(gm),
                                     _strided(gc))
    return got, want


def _exp_throughput():
    x = torch.randn(3, 7, dtype=torch.float64, generator=_gen(7)) * 5
    got = roofline.vexp(_strided(x), 3)  # three passes, the same result
    return got, torch.exp(x).flatten()


BINDINGS = {
    "sinkhorn_log": _sinkhorn_log, "sinkhorn_block": _sinkhorn_scaling,
    "sinkhorn_block_objective": _sinkhorn_block_objective,
    "sinkhorn_check": _sinkhorn_check, "points_solve": _points_solve,
    "points_values": _points_values,
    "scaling_div": _scaling_div, "mmd_linear_fwd": _mmd_linear_fwd,
    "mmd_linear_bwd": _mmd_linear_bwd, "mmd_tile": _mmd_tile, "mmd_moments": _mmd_moments,
    "gibbs_weights_fwd": _gibbs_weights_fwd, "gibbs_weights_bwd": _gibbs_weights_bwd,
    "gibbs_moments_fwd": _gibbs_moments_fwd, "gibbs_moments_bwd": _gibbs_moments_bwd,
    "exp_throughput": _exp_throughput,
}


@pytest.mark.parametrize("name", sorted(BINDINGS))
def test_binding_takes_non_contiguous_inputs(name):
    got, want = BINDINGS[name]()
    for x, y in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,), strict=True):
        torch.testing.assert_close(x, y.to(x.dtype), rtol=1e-10, atol=1e-12)


def test_every_binding_of_this_package_is_covered():
    import pytransfer._C as C

    mine = {n for n in dir(C) if not n.startswith("_") and n != "openmp"}
    assert mine == set(BINDINGS)


def test_no_raw_pointer_left_in_python_wrappers():
    """Every wrapper calls the extension through ``_ext.call`` (no data_ptr of a temporary)."""
    import pathlib
    import re

    import pytransfer

    root = pathlib.Path(pytransfer.__file__).parent
    raw = re.compile(r"(?<![\w.])_C\.\w+\(|\.data_ptr\(\)")  # (not torch._C.)
    offenders = {str(p.relative_to(root)): raw.findall(p.read_text()) for p in root.rglob("*.py")
                 if p.name != "_ext.py"}
    # MINRES compares two buffers' addresses (no extension call)
    assert {k: v for k, v in offenders.items() if v} == {
        "free_energy/operator.py": [".data_ptr()", ".data_ptr()"]}


# ---------------------------------------------------------------- threads (hardening 2)
@pytest.mark.parametrize("name", ["gibbs_weights_fwd", "gibbs_weights_bwd", "gibbs_moments_fwd",
                                  "gibbs_moments_bwd"])
def test_gibbs_kernels_take_the_thread_count(monkeypatch, name):
    calls = []
    real = _ext.call

    def spy(fn, dtype, *args, **kw):
        calls.append((fn, kw))
        return real(fn, dtype, *args, **kw)

    monkeypatch.setattr(_ext, "call", spy)
    BINDINGS[name]()
    assert calls and all(fn.startswith("gibbs_") and kw.get("threads", True)
                         for fn, kw in calls)
    n_args = {"gibbs_weights_fwd": 7, "gibbs_weights_bwd": 7, "gibbs_moments_fwd": 9,
              "gibbs_moments_bwd": 12}[name]
    import pytransfer._C as C

    assert f"arg{n_args - 1}" in getattr(C, name).__doc__  # the binding's last arg: threads


def test_gibbs_results_identical_at_1_and_2_threads():
    H, q, f = _gibbs_inputs()
    H, q, f = (torch.cat([x] * 40) for x in (H, q, f))  # enough rows to split
    before = torch.get_num_threads()
    out = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            lw = gibbs_ops._cpu_weights_fwd(H, q)
            out.append((lw, *gibbs_ops._cpu_moments_fwd(lw.exp(), f)))
    finally:
        torch.set_num_threads(before)
    for x, y in zip(*out, strict=True):
        assert torch.equal(x, y)
