"""Free-energy equilibration on the shared trainer: the objective and the schedule against a
hand-written Adam loop, exact resume, the process generator."""

import json

import pytest
import torch

from pytransfer.free_energy import FreeEnergyModel
from pytransfer.methods.free_energy import equilibrate, variational_free_energy

DT = torch.float64


def _data(n=10):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 4, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


def _model():
    torch.manual_seed(0)
    return FreeEnergyModel(4, 3, 2, 3).to(DT)


def test_equals_a_hand_written_adam_loop_on_epochwise_batches_with_the_schedule():
    data, steps, lr, power, bs = _data(), 7, 0.05, 5.0, 4
    model = _model()
    torch.manual_seed(1)
    equilibrate(model, data, 0.5, 2.0, steps=steps, lr=lr, batch_size=bs, samples=2,
                schedule_power=power, seed=7)

    ref = _model()
    opt = torch.optim.Adam(ref.parameters(), lr=lr)
    g = torch.Generator().manual_seed(7)
    order = torch.cat([torch.randperm(10, generator=g) for _ in range(3)])  # 28 > 7 * 4 rows
    torch.manual_seed(1)
    peak = 2 / (2 + power)
    for k in range(steps):
        s = (k + 1) / (steps + 1)
        opt.param_groups[0]["lr"] = lr * s * s * (1 - s) ** power / (peak**2 * (1 - peak) ** power)
        idx = order[k * bs:(k + 1) * bs]
        loss = variational_free_energy(ref, data[0][idx], data[1][idx], 0.5, 2.0, samples=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_lowers_the_free_energy_and_logs_the_schedule_to_the_run_folder(tmp_path):
    data = _data(64)
    model = _model()

    @torch.no_grad()
    def free_energy():  # on all 64 rows, 64 samples each, the same noise before and after
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return float(variational_free_energy(model, *data, 0.5, 2.0, samples=64))

    before, records = free_energy(), []
    equilibrate(model, data, 0.5, 2.0, steps=60, lr=0.03, batch_size=16, schedule_power=1.0,
                run_dir=tmp_path / "eq", progress=lambda s, t, r: records.append(r))
    assert len(records) == 60 and records[-1]["step"] == 60
    assert records[0]["lr"] == pytest.approx(0.03 * (1 / 61) ** 2 * (60 / 61) / (4 / 27))
    assert free_energy() < before - 0.4, (before, free_energy())  # 4.30 -> 3.60
    lines = (tmp_path / "eq" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    cfg = json.loads((tmp_path / "eq" / "config.json").read_text())
    assert cfg["method"] == "equilibrate" and cfg["settings"]["schedule_power"] == 1.0


class Kill(RuntimeError):
    pass


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    data, kw = _data(), {"steps": 120, "lr": 0.05, "batch_size": 4, "schedule_power": 1.0}
    full = _model()
    equilibrate(full, data, 0.5, 2.0, run_dir=tmp_path / "full", **kw)

    def killer(step, total, record):
        if step == 110:
            raise Kill

    cut = _model()
    with pytest.raises(Kill):
        equilibrate(cut, data, 0.5, 2.0, run_dir=tmp_path / "cut", progress=killer, **kw)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 100
    with pytest.raises(ValueError, match="not empty"):
        equilibrate(_model(), data, 0.5, 2.0, run_dir=tmp_path / "cut", **kw)
    torch.manual_seed(999)  # the checkpoint restores the global RNG of the reparameterisation
    again = _model()
    equilibrate(again, data, 0.5, 2.0, run_dir=tmp_path / "cut", resume=True, **kw)
    for a, b in zip(full.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    read = [(tmp_path / r / "metrics.jsonl").read_text() for r in ("full", "cut")]
    assert read[0] == read[1] and len(read[0].splitlines()) == 120


def test_process_generator_seeds_it_and_the_optimizer_and_mode_are_kept():
    data = _data()
    out = []
    for _ in range(2):
        model = _model().eval()
        gen = torch.Generator().manual_seed(5)
        before = gen.get_state()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        torch.manual_seed(1)
        assert equilibrate(model, data, 0.5, 2.0, steps=3, batch_size=4, optimizer=opt,
                           generator=gen) is opt
        assert not model.training and not torch.equal(gen.get_state(), before)
        assert opt.state and opt.param_groups[0]["lr"] == 0.01
        out.append(torch.nn.utils.parameters_to_vector(model.parameters()))
    assert torch.equal(out[0], out[1])
    other = _model()
    torch.manual_seed(1)
    equilibrate(other, data, 0.5, 2.0, steps=3, batch_size=4, lr=0.01,
                generator=torch.Generator().manual_seed(6))
    assert not torch.equal(out[0], torch.nn.utils.parameters_to_vector(other.parameters()))
