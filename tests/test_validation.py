"""Check once, at the door: how many value checks (each a device sync on a GPU) a public call
makes, and that the denoiser's output is still checked below the door.

``discdiff.typing.host_checks`` counts the value checks decided on the host. On an accelerator
those checks are asynchronous device assertions instead; where a GPU exists, the last test runs
the hot paths under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import pytest
import torch

import discdiff.typing as typing_module
from discdiff import DCDistiller, GaussianCurriculum, MaskedDiffusion, UniformDiffusion
from discdiff.samplers import sample_masked, sample_uniform
from discdiff.schedules import LogLinearSchedule

K, B, L = 7, 3, 5


class Tiny(torch.nn.Module):
    def __init__(self, vocab_size: int = K):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 8)
        self.out = torch.nn.Linear(8, vocab_size)

    def forward(self, z_t, sigma):
        if isinstance(z_t, torch.Tensor) and z_t.is_floating_point():
            h = z_t @ self.emb.weight
        elif isinstance(z_t, torch.Tensor):
            h = self.emb(z_t)
        else:
            h = (self.emb(z_t.ids) * z_t.weights.unsqueeze(-1)).sum(-2)
        return self.out(h)


def checks_during(fn) -> int:
    before = typing_module.host_checks
    fn()
    return typing_module.host_checks - before


def x0() -> torch.Tensor:
    return torch.randint(0, K, (B, L), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("curriculum", [None, GaussianCurriculum(end_step=10),
                                        GaussianCurriculum(end_step=10, top_k=3)])
def test_uniform_loss_checks_x0_once_and_the_logits_once(curriculum):
    diffusion = UniformDiffusion(K, curriculum=curriculum)
    g = torch.Generator().manual_seed(0)
    assert checks_during(lambda: diffusion.loss(Tiny(), x0(), step=1, generator=g)) == 2


def test_masked_loss_and_bounds_check_x0_once():
    g = torch.Generator().manual_seed(0)
    masked = MaskedDiffusion(K)
    assert checks_during(lambda: masked.loss(Tiny(K + 1), x0(), generator=g)) == 2
    # nelbo: x_0 once, then two denoiser calls (the integrand and the reconstruction)
    assert checks_during(lambda: masked.nelbo(Tiny(K + 1), x0(), generator=g)) == 3
    uniform = UniformDiffusion(K)
    assert checks_during(lambda: uniform.nelbo(Tiny(), x0(), generator=g)) == 3


def test_distillation_checks_x0_once_and_each_denoiser_once():
    distiller = DCDistiller(Tiny(), K, steps_per_round=5, n_rounds=2)
    g = torch.Generator().manual_seed(0)
    assert checks_during(lambda: distiller.loss(Tiny(), x0(), 0, generator=g)) == 3


@pytest.mark.parametrize("tail", ["greedy", "map", "none"])
def test_sampling_checks_each_denoiser_output_once_and_nothing_else(tail):
    g = torch.Generator().manual_seed(0)
    steps = 4
    calls = steps + (tail != "none")
    run = lambda: sample_uniform(Tiny(), B, L, steps, schedule=LogLinearSchedule(),  # noqa: E731
                                 vocab_size=K, tail=tail, kappa=0.5, generator=g)
    assert checks_during(run) == calls
    masked = lambda: sample_masked(Tiny(K + 1), B, L, steps, schedule=LogLinearSchedule(),  # noqa: E731
                                   vocab_size=K + 1, mask_id=K, tail=tail, cache=False,
                                   generator=g)
    assert checks_during(masked) == calls


def test_the_denoisers_output_is_checked_below_the_door():
    def nan_model(z_t, sigma):
        out = torch.zeros(*z_t.shape[:2], K)
        out[0, 0, 0] = float("nan")
        return out

    def impossible_row(z_t, sigma):
        out = torch.zeros(*z_t.shape[:2], K)
        out[0, 1] = -torch.inf
        return out

    for model in (nan_model, impossible_row):
        with pytest.raises(ValueError, match="denoiser returned logits"):
            UniformDiffusion(K).loss(model, x0())
        with pytest.raises(ValueError, match="denoiser returned logits"):
            sample_uniform(model, B, L, 2, schedule=LogLinearSchedule(), vocab_size=K)


def test_x0_is_checked_at_the_door_with_its_name():
    diffusion = UniformDiffusion(K)
    with pytest.raises(ValueError, match="x_0"):
        diffusion.loss(Tiny(), x0() + K)
    with pytest.raises(ValueError, match="x_0 must be a \\(B, L\\)"):
        diffusion.loss(Tiny(), x0()[0])
    with pytest.raises(ValueError, match="step"):
        diffusion.loss(Tiny(), x0(), step=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hot_paths_make_no_host_sync_on_cuda():  # pragma: no cover - GPU only
    device = torch.device("cuda")
    model = Tiny().to(device)
    x = x0().to(device)
    g = torch.Generator(device=device).manual_seed(0)
    t = torch.rand(B, device=device, generator=g) * 0.9 + 0.05
    diffusion = UniformDiffusion(K)
    diffusion.loss(model, x, t=t, generator=g).sum().backward()  # warm-up: lazy inits sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        diffusion.loss(model, x, t=t, generator=g).sum().backward()
        sample_uniform(model, B, L, 3, schedule=LogLinearSchedule(), vocab_size=K,
                       generator=g, device=device)
    finally:
        torch.cuda.set_sync_debug_mode("default")
