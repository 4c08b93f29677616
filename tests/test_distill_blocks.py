"""DCD of block models (SPEC §10 with §6): one pair of times per block, both models called as
block models; at b = L it is DCD of the ordinary model, and it distils DiffusionGemma."""

from __future__ import annotations

import copy

import pytest
import torch

from discdiff import DCDistiller
from discdiff.models import DiT

K, B, L = 11, 3, 8


def _dit(block_size: int | None, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    model = DiT.from_preset("tiny", vocab_size=K, hidden_size=32, n_blocks=2, n_heads=2,
                            cond_dim=16, dropout=0.0, block_size=block_size).double()  # fmt: skip
    with torch.no_grad():  # the adaLN-zero output layer would make every logit 0
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _distiller(teacher, block_size):
    return DCDistiller(teacher, K, initial_steps=8, steps_per_round=2, n_rounds=2,
                       kl_dtype=torch.float64, block_size=block_size)  # fmt: skip


def test_at_one_block_it_is_dcd_of_the_ordinary_model():
    plain_teacher, block_teacher = _dit(None), _dit(L)
    block_teacher.load_state_dict(plain_teacher.state_dict())
    plain_student, block_student = _dit(None, seed=1), _dit(L, seed=1)
    block_student.load_state_dict(plain_student.state_dict())
    x_0 = torch.randint(K, (B, L), generator=torch.Generator().manual_seed(0))
    losses = []
    for teacher, student, b in ((plain_teacher, plain_student, None),
                                (block_teacher, block_student, L)):  # fmt: skip
        gen = torch.Generator().manual_seed(5)
        losses.append(_distiller(teacher, b).loss(student, x_0, 0, generator=gen))
    assert float(losses[0].detach().abs().max()) > 1e-6  # the models differ: a loss to compare
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-9, atol=1e-12)


def test_block_dcd_trains_and_its_student_samples_block_by_block():
    teacher = _dit(4)
    student = copy.deepcopy(teacher).train()
    distiller = _distiller(teacher, 4)
    x_0 = torch.randint(K, (B, L), generator=torch.Generator().manual_seed(1))
    loss = distiller.loss(student, x_0, 0, generator=torch.Generator().manual_seed(2))
    assert loss.shape == (B, L) and bool((loss >= 0).all()) and bool(torch.isfinite(loss).all())
    loss.mean().backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    records = []
    x = distiller.sample(student.eval(), 2, 12, 2, seed=0, callback=records.append)
    assert x.shape == (2, 12) and sorted({r.block for r in records}) == [0, 1, 2]
    assert distiller.to_dict()["block_size"] == 4
    assert DCDistiller.from_dict(distiller.to_dict(), teacher=teacher).block_size == 4
    with pytest.raises(ValueError, match="block_size"):
        _distiller(teacher, 3).loss(student, x_0, 0)  # 3 does not divide L = 8


def test_dcd_distils_diffusion_gemma_through_its_recompute_pass():
    pytest.importorskip("transformers")
    from discdiff.adapters import DiffusionGemmaDenoiser
    from tests.diffusion_gemma_tiny import tiny_model

    teacher = DiffusionGemmaDenoiser(tiny_model(logit_scale=10.0))
    student = DiffusionGemmaDenoiser(tiny_model(seed=1, logit_scale=10.0)).train()
    k, b = teacher.vocab_size, teacher.block_size
    distiller = DCDistiller(teacher, k, initial_steps=8, steps_per_round=2, n_rounds=2,
                            block_size=b)  # fmt: skip
    x_0 = torch.randint(3, k - 4, (2, 2 * b), generator=torch.Generator().manual_seed(3))
    loss = distiller.loss(student, x_0, 0, generator=torch.Generator().manual_seed(4))
    assert loss.shape == x_0.shape and bool(torch.isfinite(loss).all())
    assert float(loss.detach().sum()) > 0
    loss.mean().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0)
               for p in student.parameters())  # fmt: skip
