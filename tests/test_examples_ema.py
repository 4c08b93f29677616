"""examples.ema: torch's AveragedModel as the weights' EMA; the distillers' refresh from it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from discdiff.models import DiT
from examples.ema import build_ema, ema_state_dict, load_ema_state_dict, update_ema
from examples.objectives import DCDObjective, SDTTObjective


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def test_every_update_is_an_ema_step_from_the_initial_weights():
    model = _net()
    start = [p.detach().clone() for p in model.parameters()]
    ema = build_ema(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    update_ema(ema, model)
    for s, p, e in zip(start, model.parameters(), ema.module.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * s + 0.1 * p)  # not a copy of the first update
    with pytest.raises(ValueError, match="decay"):
        build_ema(model, 1.0)


def test_state_dict_round_trip_is_exact():
    model = _net()
    ema = build_ema(model, 0.99)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.1)
        update_ema(ema, model)
    state = ema_state_dict(ema)
    assert set(state) == {n for n, _ in model.named_parameters()}  # the old checkpoints' keys
    other = build_ema(_net(), 0.99)
    load_ema_state_dict(other, state)
    for a, b in zip(ema.module.parameters(), other.module.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="lacks parameters"):
        load_ema_state_dict(other, {"0.weight": state["0.weight"]})


def _dit(k: int) -> DiT:
    return DiT.from_preset("tiny", vocab_size=k, hidden_size=16, n_blocks=1, n_heads=2,
                           cond_dim=8, dropout=0.0)  # fmt: skip


@pytest.mark.parametrize("kind", ["dcd", "sdtt"])
def test_distillers_refresh_their_teacher_from_the_ema(kind):
    k = 6
    teacher, student = _dit(k + (kind == "sdtt")), _dit(k + (kind == "sdtt"))
    if kind == "dcd":
        objective = DCDObjective(teacher, k, rounds=2, steps_per_round=2, gamma_min=-3.0,
                                 gamma_max=1.0, T=8, divergence="kl_student_teacher",
                                 refresh_from="ema")  # fmt: skip
    else:
        objective = SDTTObjective(teacher, k, rounds=2, steps_per_round=2, teacher_steps=2,
                                  T=8, divergence="kl_student_teacher", refresh_from="ema")
    ema = build_ema(student, 0.5)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    update_ema(ema, student)
    objective.after_step(0, student, ema)  # inside round 0: nothing happens
    assert objective.distiller.round == 0
    objective.after_step(1, student, ema)  # the end of round 0
    assert objective.distiller.round == 1
    held = objective.distiller.teacher.state_dict()
    for name, value in ema.module.state_dict().items():
        assert torch.equal(held[name], value), name
    student_weight = dict(student.named_parameters())["embed.weight"]
    assert not torch.equal(held["embed.weight"], student_weight)  # the average, not the student
