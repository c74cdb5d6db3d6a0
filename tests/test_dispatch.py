"""The backend registry: auto rule, environment override, errors, listing."""

import pytest
import torch
from conftest import random_problem

import pytransfer
from pytransfer import _dispatch, _ext
from pytransfer.ot import sinkhorn


def test_backends_lists_every_backend_with_status():
    table = pytransfer.backends()["sinkhorn"]
    assert set(table) == {"reference", "cpu", "triton"}
    assert table["reference"] == "available"
    assert table["cpu"] == "available"


def test_registry_is_honest_about_cuda():
    """No op registers a "cuda" backend (the CUDA C++ kernels are a cubin compile check only,
    never linked); asking for one says so."""
    for op, table in pytransfer.backends().items():
        assert "cuda" not in table, op
    with pytest.raises(pytransfer.BackendUnavailableError, match="cubin"):
        _dispatch.resolve("sinkhorn", "cuda", "cuda", n=3, m=3)
    with pytest.raises(ValueError, match="backend must be one of"):
        _dispatch.register("sinkhorn", "cuda", device_types=("cuda",))
    assert not hasattr(_ext, "cuda_unavailable")


def test_auto_picks_compiled_cpu_kernel():
    assert _dispatch.resolve("sinkhorn", "auto", "cpu", n=3, m=3)[0] == "cpu"


def test_env_overrides_auto(monkeypatch):
    monkeypatch.setenv("PYTRANSFER_BACKEND", "reference")
    assert _dispatch.resolve("sinkhorn", "auto", "cpu", n=3, m=3)[0] == "reference"
    # an explicit backend= still wins over the environment
    assert _dispatch.resolve("sinkhorn", "cpu", "cpu", n=3, m=3)[0] == "cpu"
    monkeypatch.setenv("PYTRANSFER_BACKEND", "fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        _dispatch.resolve("sinkhorn", "auto", "cpu", n=3, m=3)


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_ext, "IMPORT_ERROR", "pytransfer._C is not built (test)")
    monkeypatch.setattr(_dispatch, "_warned", set())
    a, b, C = random_problem(1, 3, 2)
    with pytest.warns(RuntimeWarning, match="reference backend"):
        out = sinkhorn(a, b, C, 0.1)
    ref = sinkhorn(a, b, C, 0.1, backend="reference")
    torch.testing.assert_close(out.f, ref.f)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn(a, b, C, 0.1)  # warned once only
    with pytest.raises(pytransfer.BackendUnavailableError, match="not built"):
        sinkhorn(a, b, C, 0.1, backend="cpu")


def test_triton_without_interpreter_refuses_cpu_tensors(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(pytransfer.BackendUnavailableError, match="runs on cuda tensors"):
        _dispatch.resolve("sinkhorn", "triton", "cpu", n=3, m=3)


def test_triton_tile_limit_is_a_clear_error():
    with pytest.raises(pytransfer.BackendUnavailableError, match="exceeds one program's tile"):
        _dispatch.resolve("sinkhorn", "triton", "cpu", n=300, m=300)
