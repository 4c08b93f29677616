"""Padding is exact: a padded row's real tokens get the logits they get alone.

    python -m benchmarks.bench_padding

A tiny random DiT (every weight drawn from N(0, 0.05^2), so nothing is zero-initialised), rows of
16, 11, 5 and 1 real tokens padded to L = 16 with ``padding_mask``, compared with each row run
alone at its own length, in float32 and float64.
"""

from __future__ import annotations

import torch

from discdiff.models import DiT

LENGTHS = (16, 11, 5, 1)
K = 61


def worst_difference(dtype: torch.dtype, seed: int = 0) -> float:
    torch.manual_seed(seed)
    model = DiT.from_preset("tiny", vocab_size=K, hidden_size=64, n_blocks=2, n_heads=4,
                            cond_dim=32).to(dtype).eval()  # fmt: skip
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    length = max(LENGTHS)
    x = torch.randint(0, K, (len(LENGTHS), length))
    mask = torch.arange(length)[None] < torch.tensor(LENGTHS)[:, None]
    sigma = torch.rand(len(LENGTHS), dtype=dtype)
    with torch.no_grad():
        padded = model(x, sigma, padding_mask=mask)
        return max(float((padded[i, :n] - model(x[i : i + 1, :n], sigma[i : i + 1])[0]).abs().max())
                   for i, n in enumerate(LENGTHS))  # fmt: skip


def main() -> None:
    for dtype in (torch.float32, torch.float64):
        print(f"{str(dtype):14s} max |logits(padded row) - logits(row alone)| on real tokens = "
              f"{worst_difference(dtype):.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
