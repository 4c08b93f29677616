"""discdiff.context: clean context at training time (``clean_mask``) and its random masks.

The loss with clean context is checked against an independent computation: the NELBO of the
same logits at the same z_t with the clean positions set to x_0 and left out of the mask.
"""

from __future__ import annotations

import math

import pytest
import torch

from discdiff import GaussianCurriculum, MaskedDiffusion, UniformDiffusion, losses
from discdiff.context import hold_clean, random_clean_mask, reads_token_levels
from discdiff.models import DiT
from discdiff.schedules import GammaSchedule
from discdiff.typing import Bag

K, B, L = 7, 64, 12


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Recorder(torch.nn.Module):
    """A token-level denoiser: logits from the input and its per-token level; records calls."""

    reads_token_levels = True

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(K, K, generator=gen(0), dtype=torch.float64))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, z_t, sigma):
        self.calls.append((z_t, sigma.detach().clone()))
        if isinstance(z_t, Bag):
            rows = (z_t.weights.unsqueeze(-1).to(torch.float64) * self.table[z_t.ids]).sum(-2)
        elif z_t.is_floating_point():
            rows = z_t.to(torch.float64) @ self.table
        else:
            rows = self.table[z_t]
        return rows + sigma.unsqueeze(-1).to(torch.float64)


def test_random_clean_mask_shares_kinds_and_always_leaves_a_noisy_position():
    n, share = 6000, 0.25
    clean = random_clean_mask(n, L, share=share, generator=gen(1))
    rows = clean.any(-1)
    # a row is chosen with probability 0.25 and then keeps >= 1 clean position
    assert abs(float(rows.float().mean()) - share) < 4 * math.sqrt(share * (1 - share) / n)
    assert not bool(clean.all(-1).any())
    chosen = clean[rows]
    prefix = chosen[:, 0] & ~chosen[:, -1]
    middle = ~chosen[:, 0]
    infill = chosen[:, 0] & chosen[:, -1]
    for kind in (prefix, middle, infill):  # each of the three kinds about a third of the rows
        assert 0.25 < float(kind.float().mean()) < 0.42
    # contiguous: a prefix is clean up to a point, then noisy to the end
    first_noisy = (~chosen[prefix]).float().argmax(-1)
    assert bool((chosen[prefix].cumsum(-1)[torch.arange(len(first_noisy)), -1]
                 == first_noisy).all())  # fmt: skip
    assert torch.equal(random_clean_mask(n, L, share=share, generator=gen(1)), clean)
    assert not bool(random_clean_mask(50, L, share=0.0, generator=gen(2)).any())


def test_the_loss_holds_clean_positions_at_level_zero_without_loss():
    model, diffusion = Recorder(), UniformDiffusion(K)
    x_0 = torch.randint(0, K, (B, L), generator=gen(3))
    clean = random_clean_mask(B, L, share=0.5, generator=gen(4))
    t = torch.rand(B, generator=gen(5), dtype=torch.float64) * 0.9 + 0.05
    got = diffusion.loss(model, x_0, t=t, generator=gen(6), clean_mask=clean, fused=False)
    z_t, sigma = model.calls[-1]
    assert torch.equal(z_t[clean], x_0[clean])
    assert bool((sigma[clean] == 0).all())
    a_t = diffusion.schedule.alpha(t).unsqueeze(-1)
    torch.testing.assert_close(sigma[~clean], (-torch.log(a_t)).float().expand(B, L)[~clean]
                               .to(sigma.dtype))  # fmt: skip
    # independently: the NELBO of the same logits at the same z_t, clean positions masked out
    logits = model.table[z_t] + sigma.unsqueeze(-1).to(torch.float64)
    da = diffusion.schedule.dalpha_dt(t).unsqueeze(-1)
    want = losses.uniform_nelbo(logits, x_0, z_t, a_t, da) * ~clean
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert bool((got[clean] == 0).all())
    mean = diffusion.loss(model, x_0, t=t, generator=gen(6), clean_mask=clean, fused=False,
                          reduction="mean")  # fmt: skip
    torch.testing.assert_close(mean, want.sum() / (~clean).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("top_k", [None, 3])
def test_the_curriculum_holds_clean_positions_as_exact_one_hot_inputs(top_k):
    model = Recorder()
    curriculum = GaussianCurriculum(window=GammaSchedule(-3.0, -1.0), tau=0.1, end_step=10,
                                    top_k=top_k)  # fmt: skip
    x_0 = torch.randint(0, K, (8, L), generator=gen(7))
    clean = random_clean_mask(8, L, share=1.0, generator=gen(8))
    UniformDiffusion(K, curriculum=curriculum).loss(model, x_0, clean_mask=clean, fused=False,
                                                    generator=gen(9))  # fmt: skip
    z_in, sigma = model.calls[-1]
    assert bool((sigma[clean] == 0).all()) and bool((sigma[~clean] > 0).all())
    if top_k is None:
        one_hot = torch.nn.functional.one_hot(x_0, K).to(z_in.dtype)
        assert torch.equal(z_in[clean], one_hot[clean])
    else:
        assert torch.equal(z_in.ids[clean][:, 0], x_0[clean])
        assert bool((z_in.weights[clean][:, 0] == 1).all())


def test_hold_clean_on_a_bag_puts_the_token_first_with_weight_one():
    ids = torch.randint(0, K, (2, 3, 4), generator=gen(10))
    bag = Bag(ids, torch.rand(2, 3, 4, generator=gen(11)))
    x_0 = torch.randint(0, K, (2, 3), generator=gen(12))
    clean = torch.tensor([[True, False, True], [False, False, True]])
    held, z = hold_clean(bag, ids[..., 0], x_0, clean, K)
    assert torch.equal(held.ids[clean][:, 0], x_0[clean])
    assert torch.equal(held.weights[clean], torch.tensor([[1.0, 0, 0, 0]] * 3))
    assert torch.equal(held.ids[~clean], ids[~clean]) and torch.equal(z[clean], x_0[clean])


def test_clean_context_needs_a_denoiser_that_reads_token_levels():
    blind = lambda z_t, sigma: torch.zeros(*z_t.shape, K)
    x_0 = torch.randint(0, K, (2, L), generator=gen(13))
    clean = torch.zeros(2, L, dtype=torch.bool)
    with pytest.raises(ValueError, match="clean_mask needs a denoiser that reads per-token"):
        UniformDiffusion(K).loss(blind, x_0, clean_mask=clean)
    with pytest.raises(ValueError, match="clean_mask must be a bool tensor"):
        UniformDiffusion(K).loss(Recorder(), x_0, clean_mask=clean.long())
    with pytest.raises(ValueError, match=r"clean_mask must have the tokens' shape"):
        UniformDiffusion(K).loss(Recorder(), x_0, clean_mask=clean[:, :3])
    # The validation bound holds the context the same way, so it asks the same of the denoiser.
    with pytest.raises(ValueError, match="clean_mask needs a denoiser .* or drop clean_mask"):
        UniformDiffusion(K).nelbo(blind, x_0, clean_mask=clean)
    with pytest.raises(ValueError, match=r"clean_mask must have the tokens' shape"):
        UniformDiffusion(K).nelbo(Recorder(), x_0, clean_mask=clean[:, :3])


def test_the_masked_loss_never_masks_clean_positions_and_scores_only_the_others():
    """A mask is visible as such: any denoiser takes masked clean context (one level per
    sequence), the clean positions are never masked and carry no loss."""
    seen = []

    def blind(z_t, sigma):  # reads one level per sequence
        seen.append((z_t, sigma))
        return torch.log_softmax(torch.arange(K + 1.0, dtype=torch.float64), -1).expand(
            *z_t.shape, K + 1
        )

    diffusion = MaskedDiffusion(K)
    x_0 = torch.randint(0, K, (B, L), generator=gen(14))
    clean = random_clean_mask(B, L, share=0.5, generator=gen(15))
    t = torch.rand(B, generator=gen(16), dtype=torch.float64) * 0.9 + 0.05
    got = diffusion.loss(blind, x_0, t=t, generator=gen(17), clean_mask=clean)
    z_t, sigma = seen[-1]
    assert sigma.shape == (B,) and torch.equal(z_t[clean], x_0[clean])
    assert bool((z_t[~clean] == K).any())  # the free positions were masked
    a_t = diffusion.schedule.alpha(t).unsqueeze(-1)
    da = diffusion.schedule.dalpha_dt(t).unsqueeze(-1)
    logits = blind(z_t, sigma)
    want = losses.masked_nelbo(logits, x_0, z_t, a_t, da, K) * ~clean
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert bool((got[clean] == 0).all()) and bool((got[~clean & (z_t == K)] > 0).all())


@pytest.mark.parametrize("fused", [False, True])
def test_a_dit_trains_with_clean_context_on_both_paths(fused):
    model = DiT.from_preset("tiny", vocab_size=K, hidden_size=32, n_blocks=1, n_heads=2,
                            cond_dim=16).double()  # fmt: skip
    assert reads_token_levels(model)
    x_0 = torch.randint(0, K, (4, L), generator=gen(14))
    clean = random_clean_mask(4, L, share=1.0, generator=gen(15))
    t = torch.full((4,), 0.4, dtype=torch.float64)
    per_token = UniformDiffusion(K).loss(model, x_0, t=t, generator=gen(16), clean_mask=clean,
                                         fused=fused)  # fmt: skip
    assert bool((per_token[clean] == 0).all()) and bool((per_token[~clean] != 0).any())
    per_token.sum().backward()
    other = UniformDiffusion(K).loss(model, x_0, t=t, generator=gen(16), clean_mask=clean,
                                     fused=not fused)  # fmt: skip
    torch.testing.assert_close(per_token, other, rtol=1e-9, atol=1e-10)
