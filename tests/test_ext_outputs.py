"""The extension boundary's cheaper outputs (issue 13, fixed per-call overhead): several fresh
outputs in one allocation (``_ext.Outputs``), zeroed accumulators (``_ext.zeros``), and a call
prepared but not made (``_ext.bound``)."""

import io
import itertools
import math

import pytest
import torch

from pytransfer import _ext


class _Args:
    """Stands in for pytransfer._C: records the arguments of every call."""

    def probe(self, dtype, *args):
        self.args = (dtype, *args)
        return "done"


SLOTS = ((torch.float32, (3, 5)), (torch.int64, (3,)), (torch.bool, (3,)),
         (torch.float32, (0,)), (torch.float64, (2, 2)), (torch.bool, (7,)))


def test_outputs_are_aligned_disjoint_slots_of_one_allocation():
    """Slots of the allocation's dtype are contiguous views of it, the others copies (one
    storage never shown as two dtypes: torch.save takes them all); 64-byte aligned, none
    overlapping."""
    outs = _ext.Outputs(_ext.Layout(*SLOTS))
    flat = outs.flat
    assert flat.dtype == torch.float32
    lo, hi = flat.data_ptr(), flat.data_ptr() + flat.numel() * flat.element_size()
    spans = []
    for i, (dtype, shape) in enumerate(SLOTS):
        start = lo + outs.layout.offsets[i]
        assert start % 64 == 0
        spans.append((start, start + math.prod(shape) * _ext._PROTOTYPES[dtype].element_size()))
        assert lo <= spans[-1][0] <= spans[-1][1] <= hi
        t = outs.tensor(i)
        assert t.dtype == dtype and t.shape == shape and t.is_contiguous()
        shared = t.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
        assert shared == (dtype == torch.float32)
        if shared and t.numel():
            assert t.data_ptr() == start
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    a, b = outs.tensor(0), outs.tensor(0)
    a.fill_(2.5)
    assert a is not b and torch.equal(b, torch.full((3, 5), 2.5))  # new views of one slot
    flat.view(torch.int64)[outs.layout.slots[1][3]:][:3] = torch.tensor([4, 5, 6])
    assert torch.equal(outs.tensor(1), torch.tensor([4, 5, 6]))  # the copy holds the values
    torch.save([outs.tensor(i) for i in range(len(SLOTS))], io.BytesIO())
    flat.view(torch.bool)[outs.layout.offsets[2]:][:3] = torch.tensor([True, False, True])
    assert not outs.all(2) and outs.tensor(2).tolist() == [True, False, True]
    flat.view(torch.bool)[outs.layout.offsets[2] + 1] = True
    assert outs.all(2) and outs.all(3)  # (empty: all)


def test_view_is_one_kept_view_per_slot():
    """``view``: made once per slot and allocation, the slot's memory (writes show both ways),
    the same shape as ``tensor``'s; a slot of another dtype is refused, not reinterpreted."""
    outs = _ext.Outputs(_ext.Layout(*SLOTS))
    v = outs.view(0)
    assert outs.view(0) is v and v.shape == (3, 5) and v.is_contiguous()
    assert v.data_ptr() == outs.flat.data_ptr() + outs.layout.offsets[0]
    outs.tensor(0).fill_(1.5)
    assert torch.equal(v, torch.full((3, 5), 1.5))
    v[0, 0] = -2.0
    assert outs.tensor(0)[0, 0] == -2.0
    assert outs.view(3).shape == (0,)
    with pytest.raises(TypeError, match=r"slot 1 is torch\.int64"):
        outs.view(1)


def test_call_passes_a_pointer_per_slot_in_order(monkeypatch):
    rec = _Args()
    monkeypatch.setattr(_ext, "_C", rec)
    outs = _ext.Outputs(_ext.Layout(*SLOTS))
    _ext.call("probe", torch.float32, 7, outs, 0.5, threads=False)
    base = outs.flat.data_ptr()
    assert rec.args == ("float32", 7, *(base + o for o in outs.layout.offsets), 0.5)


def test_zeros_is_a_fresh_zeroed_output(monkeypatch):
    rec = _Args()
    monkeypatch.setattr(_ext, "_C", rec)
    acc = _ext.zeros(torch.float64, 2, 3)
    assert acc.tensor.dtype == torch.float64 and acc.tensor.shape == (2, 3)
    assert torch.equal(acc.tensor, torch.zeros(2, 3, dtype=torch.float64))
    _ext.call("probe", torch.float32, acc, threads=False)  # another dtype than the call's
    assert rec.args == ("float32", acc.tensor.data_ptr())


def test_bound_is_the_call_not_made(monkeypatch):
    """The same checked arguments; the contiguous copy of a strided input is kept for the
    later calls; the checks still refuse what the kernel would misread."""
    rec = _Args()
    monkeypatch.setattr(_ext, "_C", rec)
    x = torch.arange(12, dtype=torch.float64).reshape(3, 4)[:, ::2]
    run = _ext.bound("probe", torch.float64, _ext.src(x, 3, 2), 5, threads=1)
    assert not hasattr(rec, "args")
    assert run() == "done"
    (copy,) = run.copies
    assert rec.args == ("float64", copy.data_ptr(), 5, 1) and torch.equal(copy, x)
    with pytest.raises(TypeError, match=r"dtype torch\.float32"):
        _ext.bound("probe", torch.float64, _ext.src(x.float(), 3, 2))
