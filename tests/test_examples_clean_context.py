"""The example's Duo objective trains with clean context: a share of the steps keeps clean
positions (level 0, no loss), and the step's mean leaves them out."""

from __future__ import annotations

import torch

from discdiff.models import DiT
from examples.objectives import DuoObjective
from examples.train import _mean_loss

K, B, L = 9, 6, 16


class Recorder(DiT):
    def forward(self, z_t, sigma=None, **kw):
        self.sigmas.append(sigma)
        return super().forward(z_t, sigma, **kw)


def objective(share: float) -> DuoObjective:
    return DuoObjective(K, gamma_min=-3.0, gamma_max=-1.0, tau=1e-3, curriculum_end=0,
                        clean_context=share)  # fmt: skip


def test_every_step_keeps_clean_context_at_share_one_and_none_at_zero():
    model = Recorder.from_preset("tiny", vocab_size=K, hidden_size=32, n_blocks=1, n_heads=2,
                                 cond_dim=16)  # fmt: skip
    model.sigmas = []
    x_0 = torch.randint(0, K, (B, L), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    duo = objective(1.0)
    per_token = duo.loss(model, x_0, step=0, t=None, generator=g)
    held = duo.held_clean
    assert held is not None and bool(held.any(-1).all())  # every row keeps some context
    assert model.sigmas[-1].shape == (B, L) and bool((model.sigmas[-1][held] == 0).all())
    assert bool((per_token[held] == 0).all())
    want = per_token[~held].mean()
    torch.testing.assert_close(_mean_loss(duo, per_token, None), want)
    off = objective(0.0)
    off.loss(model, x_0, step=0, t=None, generator=g)
    assert off.held_clean is None and model.sigmas[-1].shape == (B,)


def test_a_share_of_the_steps_keeps_clean_context():
    model = DiT.from_preset("tiny", vocab_size=K, hidden_size=32, n_blocks=1, n_heads=2,
                            cond_dim=16)  # fmt: skip
    x_0 = torch.randint(0, K, (B, L), generator=torch.Generator().manual_seed(2))
    g, duo = torch.Generator().manual_seed(3), objective(0.25)
    held = 0
    for step in range(80):
        duo.loss(model, x_0, step=step, t=None, generator=g)
        held += duo.held_clean is not None
    assert 8 <= held <= 32  # Binomial(80, 0.25): mean 20, sd 3.9
