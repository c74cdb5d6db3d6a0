"""``pytransfer bench``: every registered workload's implementations agree with the float64
reference at tiny sizes (timings are never asserted), the anchors that check the harness's
own claims, and the command's exit statuses and output files."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import pytransfer.bench as pb
from pytransfer import _ext
from pytransfer.bench import Impl, Target, Work, Workload
from pytransfer.bench.readme import END, START, rewrite, section
from pytransfer.bench.roofline import attainment
from pytransfer.bench.runner import missed, run_workload
from pytransfer.bench.timing import time_alternated
from pytransfer.bench.workload import relative_error
from pytransfer.cli import app

runner = CliRunner()
PEAKS = {"exp_per_s": 1e9, "flop_per_s": 1e10, "bytes_per_s": 1e9}


@pytest.mark.parametrize("op", pb.OPS)
def test_every_implementation_agrees_with_the_float64_reference(op):
    module = pb.load(op)
    if isinstance(module, str):
        pytest.skip(module)
    workloads = module.workloads("tiny", "cpu")
    assert workloads
    for w in workloads:
        assert w.subject in w.runnable(), w.name
        assert all(t.anchor in w.impls for t in w.targets), w.name
        ref = w.reference()
        assert ref.dtype == torch.float64
        checked = 0
        for label, impl in w.runnable().items():
            out = impl.fn()
            if impl.compare and out is not None:
                err = relative_error(out, ref, impl.take)
                assert err <= impl.tol, f"{w.name}: {label}: {err:.2e} > {impl.tol:.0e}"
                checked += 1
        assert checked >= 2 or len(w.runnable()) == 1, f"{w.name}: nothing to compare"


def test_sinkhorn_workload_is_finite_and_matches_pot():
    """POT's per-problem log-domain solver, an independent implementation, on the benchmark's
    own problem (64 problems, 100 iterations)."""
    import ot

    from pytransfer.bench.sinkhorn import EPS, ITERS, problem
    from pytransfer.ot import sinkhorn

    a, b, cost = problem(64)
    res = sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0)
    assert np.isfinite(res.transport_cost.numpy()).all()
    want = [ot.sinkhorn2(a[k].double().numpy(), b[k].double().numpy(),
                         cost.double().numpy(), EPS, method="sinkhorn_log",
                         numItermax=ITERS, stopThr=0.0) for k in range(4)]
    assert res.transport_cost[:4].double().numpy() == pytest.approx(want, rel=1e-4)


def test_hscore_anchors_agree():
    from pytransfer.bench.hscore import problem, tllib_h_score
    from pytransfer.hscore import h_score
    from pytransfer.hscore.reference import h_score_reference

    f, y = problem(3000, 64, 10)
    want = float(h_score_reference(f, y, 10))
    assert float(h_score(f, y, backend="cpu")) == pytest.approx(want, rel=1e-6)
    # tllib uses 1/(N-1) for both covariances: the same H (the normalisers cancel)
    assert tllib_h_score(f.numpy(), y.numpy()) == pytest.approx(want, rel=1e-6)


def test_tllib_anchor_is_a_linear_mmd_estimate():
    """The anchor estimates the same quantity: identical samples give (almost) tllib's
    constant, shifted ones a clearly larger value."""
    from pytransfer.bench.mmd import U, features, tllib_linear_mk_mmd
    from pytransfer.mmd import gaussian_kernels

    alphas = gaussian_kernels(U).multipliers
    xs, _ = features(64, 8)
    same = tllib_linear_mk_mmd(xs, xs.clone(), alphas) - 2.0 / 63
    shifted = tllib_linear_mk_mmd(xs, xs + 3.0, alphas) - 2.0 / 63
    assert abs(same.item()) < 1e-5 < shifted.item()


def test_relative_error_and_attainment():
    assert relative_error(torch.tensor([2.0, 4.2]), torch.tensor([2.0, 4.0])) == \
        pytest.approx(0.05)
    assert relative_error([1.0, 9.0], torch.tensor([1.0, 2.0, 3.0]), take=2) == \
        pytest.approx(7 / 2)
    with pytest.raises(ValueError, match="entries"):
        relative_error(torch.ones(3), torch.ones(2))
    # 1e9 flops take 0.1 s at the GEMM peak, 1e9 bytes 1 s at the copy peak: memory-bound
    got = attainment(Work(flops=1e9, bytes=1e9), 2.0, PEAKS)
    assert got["bound"] == "memory" and got["fraction"] == pytest.approx(0.5)
    assert attainment(Work(exps=4e9), 8.0, PEAKS)["bound"] == "exp"


@pytest.mark.skipif(_ext.unavailable() is not None, reason="no compiled extension")
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 2e-7), (torch.float64, 1e-15)])
def test_kernels_exp_is_exp_and_in_the_exp_peak(monkeypatch, dtype, rtol):
    """The kernels' own exp (the exp ceiling's second probe) against numpy's, at both dtypes
    and across the range it does not clamp; the peak is the faster of the two probes."""
    from pytransfer.bench import roofline

    for name in ("EXP_ELEMENTS", "VEXP_ELEMENTS", "COPY_ELEMENTS"):
        monkeypatch.setattr(roofline, name, 1 << 10)
    monkeypatch.setattr(roofline, "GEMM_SIZE", 16)

    x = torch.linspace(-80, 80, 1001, dtype=dtype)
    want = np.exp(x.double().numpy())
    np.testing.assert_allclose(roofline.vexp(x, 2).double().numpy(), want, rtol=4 * rtol)
    peaks = roofline.measure("cpu", rounds=1)
    assert peaks["exp_per_s"] == max(peaks["exp_torch_per_s"], peaks["exp_vexp_per_s"])


def _fake_workload(target: float = 1e9) -> Workload:
    def broken():
        raise RuntimeError("out of memory\nsecond line")
    return Workload(
        op="fake", family="fake", size=8, size_name="n", detail="test", subject="ours",
        impls={"ours": Impl(lambda: torch.tensor([1.0, 2.0])),
               "anchor": Impl(lambda: torch.tensor([1.0, 2.002], dtype=torch.float64), anchor=True),
               "other estimate": Impl(lambda: torch.tensor([5.0]), anchor=True, compare=False),
               "broken": Impl(broken, anchor=True),
               "absent": "not installed here"},
        reference=lambda: torch.tensor([1.0, 2.0], dtype=torch.float64),
        targets=[Target("anchor", target), Target("absent", 2.0)], work=Work(flops=1e6),
        rounds=1)


def test_run_workload_records_errors_reasons_and_missed_targets():
    rec = run_workload(_fake_workload(), device="cpu", n_threads=1, peaks=PEAKS, sweep=2)
    assert rec["error"] == {"ours": 0.0, "anchor": pytest.approx(1e-3)}
    assert rec["missing"] == {"absent": "not installed here"}
    assert rec["failed"] == {"broken": "RuntimeError: out of memory"}
    assert set(rec["speedup"]) == {"ours"}  # only this package's kernels
    assert rec["ratios"]["anchor"]["met"] is False
    assert rec["ratios"]["absent"] == {"ratio": None, "target": 2.0, "met": None}
    assert rec["roofline"]["bound"] == "GEMM"
    assert [m.split(": vs ")[1].split(":")[0] for m in missed([rec])] == ["anchor"]
    json.dumps(rec)  # results.json holds it as is


def _logged(seen: list, exc: Exception):
    """call(name, fail_at=None): a callable that appends name to ``seen`` and raises ``exc``
    at its ``fail_at``-th call."""
    def call(name, fail_at=None):
        def fn():
            seen.append(name)
            if seen.count(name) == fail_at:
                raise exc
            return torch.ones(1)
        return fn
    return call


def test_time_alternated_takes_turns_and_drops_an_entry_that_raises():
    """Each entry's calls split over the rounds (7 calls in 3 rounds: 2, 2, 3), the entries
    taking turns within a round; an entry that raises is not called again and has no time."""
    seen = []
    entry = _logged(seen, RuntimeError("out of memory"))
    times, failed = time_alternated({"a": (entry("a"), 7), "b": (entry("b"), 3),
                                     "c": (entry("c", fail_at=2), 5)}, rounds=3)
    assert "".join(seen) == "aabc" + "aabc" + "aaab"  # c raised at its second call
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert list(failed) == ["c"] and str(failed["c"]) == "out of memory"


def test_run_workload_times_the_implementations_in_turns():
    """The timed calls alternate between the implementations (after each one's own first
    calls); a failure inside them is recorded like one in a first call."""
    seen = []
    call = _logged(seen, ValueError("bad"))
    w = Workload(op="fake", family="fake", size=1, size_name="n", detail="", subject="x",
                 impls={"x": Impl(call("x")), "y": Impl(call("y", fail_at=5))}, rounds=1)
    rec = run_workload(w, device="cpu", n_threads=1, peaks=None)
    timed = "".join(seen)[4:]  # after the two first calls of each
    assert timed.startswith("xxyy") and timed.count("y") == 3  # y's fifth call raised
    assert rec["failed"] == {"y": "ValueError: bad"} and set(rec["times_s"]) == {"x"}
    assert set(rec["peak_mib"]) == {"x"}


@pytest.fixture
def fake_ops(monkeypatch):
    """The command on a fake op (and a registered one without a module); fixed peaks."""
    from pytransfer.bench import roofline

    monkeypatch.setattr(pb, "OPS", (*pb.OPS, "absentop"))
    real = pb.load

    def load(op):
        if op == "sinkhorn":
            return SimpleNamespace(workloads=lambda size, device: [_fake_workload()])
        return real(op)
    monkeypatch.setattr(pb, "load", load)
    monkeypatch.setattr(roofline, "measure", lambda device: PEAKS)


def test_bench_command_writes_results_and_check_exits_1(fake_ops, tmp_path):
    out = tmp_path / "res"
    result = runner.invoke(app, ["bench", "--quick", "--ops", "sinkhorn,absentop", "--out",
                                 str(out), "--check"])
    assert result.exit_code == 1, result.output
    assert "absentop: registered, but no workload module" in result.output
    assert "1 stated target(s) missed" in result.output
    data = json.loads((out / "results.json").read_text())
    assert {"cpu", "threads", "torch", "triton", "pytransfer", "git_commit",
            "device_name"} <= set(data["meta"])
    assert data["absent"] == {"absentop": "registered, but no workload module "
                                          "pytransfer.bench.absentop yet"}
    assert data["ratios"]["fake"]["fake, n=8"]["anchor"] > 0
    assert {p.name for p in out.glob("*.png")} == {"scaling_fake.png", "roofline.png",
                                                   "ratios.png"}
    # a second run never touches the first: it gets its own subfolder
    before = (out / "results.json").read_bytes()
    result = runner.invoke(app, ["bench", "--ops", "sinkhorn", "--out", str(out)])
    assert result.exit_code == 0, result.output  # without --check a miss only informs
    assert (out / "results.json").read_bytes() == before
    assert len(list(out.glob("run-*/results.json"))) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--ops", "sinkhorn,nosuch"], "unknown op 'nosuch'"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
])
def test_bench_user_errors_exit_2(fake_ops, tmp_path, args, message):
    result = runner.invoke(app, ["bench", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_bench_cuda_without_cuda_exits_2(tmp_path):
    result = runner.invoke(app, ["bench", "--device", "cuda", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_readme_section_is_rewritten_between_markers(tmp_path):
    rec = run_workload(_fake_workload(target=1e-9), device="cpu", n_threads=1, peaks=PEAKS)
    result = {"meta": {"size": "quick", "threads": 1, "cpu": "Test CPU", "cpu_count": 2,
                       "device": "cpu", "torch": "2", "triton": "3", "git_commit": "abc",
                       "note": "noisy"},
              "peaks": PEAKS, "absent": {"lautum": "no module"}, "missed": [],
              "records": [rec]}
    text = section(result, "bench/reference/x.json")
    assert "Test CPU (2 cores), 1 thread(s)" in text and "**noisy**" in text
    assert "1.00 G exp/s (torch.exp)" in text  # a results file from before the exp probe
    vexp = {**PEAKS, "exp_torch_per_s": 0.4e9, "exp_vexp_per_s": 1e9}
    assert "1.00 G exp/s (float32, the kernels' own vectorised exp; torch.exp 0.40)" in \
        section({**result, "peaks": vexp}, "x.json")
    assert "| fake | fake, n=8 (test) | ours | anchor |" in text and "≥ 1e-09× ✓" in text
    assert "- lautum (op): no module" in text
    assert "- absent (fake: fake, n=8): not installed here" in text
    assert " s " not in text and " ms" not in text  # ratios, never absolute times
    results = tmp_path / "r.json"
    results.write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n{START}\nold\n{END}\n\n## Next\n")
    rewrite(readme, results)
    new = readme.read_text()
    assert new.startswith(f"# T\n\n{START}\n") and new.endswith(f"{END}\n\n## Next\n")
    assert "old" not in new and "Test CPU" in new
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        rewrite(readme, results)


def test_pointcloud_workload_matches_pot_at_the_final_eps():
    """POT's log-domain solver, an independent implementation, on the benchmark's clouds:
    <P, C> of OT(a, b) at the final eps after the same number of iterations."""
    import ot

    from pytransfer.bench.pointcloud import EPS, clouds, n_iterations
    from pytransfer.ot import sinkhorn_points

    x, y = clouds(64)
    iters = n_iterations(x, y)
    w = np.full(64, 1 / 64)
    want = ot.sinkhorn2(w, w, ot.dist(x.double().numpy(), y.double().numpy()) / 2, EPS,
                        method="sinkhorn_log", numItermax=iters, stopThr=0.0)
    got = sinkhorn_points(x, y, eps=EPS, max_iter=iters, tol=0.0).transport_cost
    assert float(got) == pytest.approx(float(want), rel=1e-4)


def test_lautum_gradient_finite_where_the_anchor_is_not():
    from pytransfer.bench.lautum import (
        anchor_cca_lautum,
        anchor_gradient_error,
        gradient_finite,
        near_one_problem,
        repeated_problem,
    )
    from pytransfer.lautum import gaussian_lautum

    ru, rv = repeated_problem()
    assert gradient_finite(gaussian_lautum, ru, rv) == 1.0
    assert gradient_finite(anchor_cca_lautum, ru, rv) == 0.0
    nu, nv = near_one_problem()
    assert gradient_finite(lambda a, b: gaussian_lautum(a, b, ridge=1e-4), nu, nv) == 1.0
    assert gradient_finite(anchor_cca_lautum, nu, nv) == 0.0
    assert anchor_gradient_error() > 1e-3  # finite but wrong where eigenvalues nearly tie


def test_scaling_plot_ticks_and_legends_clear_of_each_other():
    """The OTLoss sizes of a quick run (a factor 4 apart at the top, six-digit numbers): no two
    x tick labels overlap, and no legend covers the plotting area."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pytransfer.bench.plots import scaling_figure

    labels = ["ours", "hand-written", "a much longer anchor name (with a reason)"]
    recs = [{"family": fam, "size": s, "size_name": "B*n*m", "subject": "ours",
             "anchors": labels[1:], "times_s": {k: s * (i + 1) * 1e-8 for i, k in
                                                enumerate(labels)}}
            for fam in ("OTLoss", "other") for s in (4, 3200, 219648, 878592)]
    fig = scaling_figure("losses", recs)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert len(axes) == 2
    for ax in axes:
        ticks = [t.get_window_extent(r) for t in ax.get_xticklabels() if t.get_text()]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "3200", "220k", "879k"]
        assert not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1:])
        legend = ax.get_legend().get_window_extent(r)
        assert not legend.overlaps(ax.get_window_extent(r))
        assert not any(legend.overlaps(t) for t in ticks)
        assert not legend.overlaps(ax.xaxis.label.get_window_extent(r))
    plt.close(fig)
