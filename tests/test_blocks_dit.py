"""The block sampler on the DiT block model, in float64: sampling over the KV cache gives the
same tokens as recomputing the clean blocks at every call, with a partial prompt block, for both
processes; rows stop at EOS."""

from __future__ import annotations

import pytest
import torch

from discdiff import MaskedDiffusion, UniformDiffusion
from discdiff.models import DiT

K = 11


def _dit(vocab: int, block_size: int) -> DiT:
    torch.manual_seed(0)
    model = DiT.from_preset("tiny", vocab_size=vocab, hidden_size=32, n_blocks=2, n_heads=2,
                            cond_dim=16, block_size=block_size).double()  # fmt: skip
    with torch.no_grad():  # away from the adaLN-zero start, whose logits are all 0
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kappa_or_remask", [None, 0.5])
def test_cached_equals_recomputed_token_for_token(masked, kappa_or_remask):
    diffusion = (MaskedDiffusion if masked else UniformDiffusion)(K, block_size=4)
    model = _dit(diffusion.model_vocab_size, 4)
    prompt = torch.randint(K, (5, 6), generator=torch.Generator().manual_seed(1))
    options = {"prompt": prompt, "seed": 3, "tail": "greedy"}
    if kappa_or_remask is not None and not masked:
        options["kappa"] = kappa_or_remask
    runs = [diffusion.sample(model, 5, 22, 3, kv_cache=cached, **options)
            for cached in (True, False)]  # fmt: skip
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, :6], prompt)
    assert len({tuple(r) for r in runs[0][:, 6:].tolist()}) > 1  # not a degenerate model


def test_rows_stop_at_eos_and_pad_with_it():
    diffusion = UniformDiffusion(K, block_size=4)
    model = _dit(K, 4)
    x = diffusion.sample(model, 6, 40, 2, seed=0, eos_id=3, tail="none")
    for row in x.tolist():
        if 3 in row:
            first = row.index(3)
            assert all(tok == 3 for tok in row[first:])
