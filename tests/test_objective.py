"""The ``Objective`` protocol: both diffusions and both distillers train in one loop."""

import copy

import pytest
import torch

from discdiff import DCDistiller, MaskedDiffusion, SDTTDistiller, UniformDiffusion
from discdiff.curriculum import GaussianCurriculum
from discdiff.objective import Bound, Objective
from discdiff.schedules import GammaSchedule
from discdiff.testing.training import ToyDenoiser

K, L = 6, 5


def _objectives():
    uniform_teacher = ToyDenoiser(K, L, hidden=16, depth=1)
    masked_teacher = ToyDenoiser(K + 1, L, hidden=16, depth=1)
    curriculum = GaussianCurriculum(window=GammaSchedule(-3.0, 3.0), tau=0.1, end_step=2)
    return {
        "duo": (UniformDiffusion(K, curriculum=curriculum), K),
        "mdlm": (MaskedDiffusion(K), K + 1),
        "dcd": (
            DCDistiller(uniform_teacher, K, initial_steps=8, steps_per_round=2, n_rounds=2),
            K,
        ),  # fmt: skip
        "sdtt": (
            SDTTDistiller(masked_teacher, K, initial_steps=8, steps_per_round=2, n_rounds=2),
            K + 1,
        ),  # fmt: skip
    }


@pytest.mark.parametrize("name", ["duo", "mdlm", "dcd", "sdtt"])
def test_one_loop_trains_every_objective(name):
    objective, logits = _objectives()[name]
    assert isinstance(objective, Objective)
    assert objective.model_vocab_size == logits
    gen = torch.Generator().manual_seed(0)
    model = ToyDenoiser(logits, L, hidden=16, depth=1)
    ema = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x_0 = torch.randint(K, (4, L), generator=gen)
    mask = torch.ones(4, L, dtype=torch.bool)
    mask[0, -2:] = False
    phases = []
    for step in range(4):
        loss = objective.loss(model, x_0, step, generator=gen, mask=mask, reduction="mean")
        assert loss.ndim == 0 and torch.isfinite(loss) and loss >= 0
        loss.backward()
        opt.step()
        opt.zero_grad()
        objective.after_step(step, model, ema)
        phases.append(objective.phase(step))
    bound = objective.bound(model, x_0, generator=gen, mask=mask)
    assert isinstance(bound, Bound)
    torch.testing.assert_close(sum(bound.terms.values()), bound.total)
    assert bool((bound.total >= 0).all()) and torch.isfinite(bound.mean())
    # the mean counts only the masked-in tokens
    torch.testing.assert_close(bound.mean(), bound.total[mask].mean())
    samples = objective.sample(model.eval(), 2, L, 3, generator=gen)
    assert samples.shape == (2, L) and int(samples.max()) < K
    state = objective.state_dict()
    objective.load_state_dict(state)
    expected = {
        "duo": ["curriculum", "curriculum", "discrete", "discrete"],
        "mdlm": ["masked"] * 4,
        "dcd": ["round0", "round0", "round1", "round1"],
        "sdtt": ["round0", "round0", "round1", "round1"],
    }[name]
    assert phases == expected


def test_a_diffusion_refuses_another_objectives_state():
    with pytest.raises(ValueError, match="no state to restore"):
        UniformDiffusion(K).load_state_dict({"round": 1})
