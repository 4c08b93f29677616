"""Training times t in [eps, 1]: stratified (antithetic) over the global batch."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from discdiff.typing import check_count, typechecked

__all__ = ["antithetic_times"]


@typechecked
def antithetic_times(
    batch_size: int,
    *,
    eps: float = 1e-3,
    world_size: int = 1,
    rank: int = 0,
    accum_steps: int = 1,
    accum_index: int = 0,
    u: float | Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, " b"]:
    """Stratified (antithetic) times over the global batch, mapped to [eps, 1].

    The global batch has n = batch_size · world_size · accum_steps sequences; sequence
    g = (accum_index · world_size + rank) · batch_size + j gets t_g = (u + g/n) mod 1, returned as
    eps + (1 - eps) t_g. Across all ranks and accumulation steps the n times are exactly one point
    per stratum [g/n, (g+1)/n) shifted by u: they never repeat, and their mean has far lower
    variance than i.i.d. times.

    The offset u must be the same in every call that builds one global batch (all ranks, all
    accumulation steps): pass ``u`` (e.g. drawn once per optimiser step and broadcast), or pass a
    ``generator`` seeded identically on every rank *and* reset to the same state for every
    accumulation step (e.g. ``torch.Generator().manual_seed(seed + optimiser_step)``). A
    generator that advances between accumulation steps gives different u's, breaking the strata.
    With neither, u is drawn from torch's global generator (fine for a single process, step).

    Returns:
        (batch_size,) times in [eps, 1].
    """
    batch_size = check_count(batch_size, "batch_size")
    world_size = check_count(world_size, "world_size")
    accum_steps = check_count(accum_steps, "accum_steps")
    rank = check_count(rank, "rank", minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
    accum_index = check_count(accum_index, "accum_index", minimum=0)
    if accum_index >= accum_steps:
        raise ValueError(
            f"accum_index must be an integer in [0, accum_steps={accum_steps}), got {accum_index!r}"
        )
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must lie in [0, 1), got {eps}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    n = batch_size * world_size * accum_steps
    if u is None:
        gen_device = generator.device if generator is not None else "cpu"
        u_t = torch.rand((), generator=generator, device=gen_device, dtype=torch.float64)
    else:
        u_t = torch.as_tensor(u, dtype=torch.float64)
        if u_t.numel() != 1 or not bool((u_t >= 0) & (u_t < 1)):
            raise ValueError(f"u must be a single number in [0, 1), got {u}")
        u_t = u_t.reshape(())
    start = (accum_index * world_size + rank) * batch_size
    g = torch.arange(start, start + batch_size, dtype=torch.float64, device=u_t.device)
    t = torch.remainder(u_t + g / n, 1.0)
    return (eps + (1 - eps) * t).to(device=device or u_t.device, dtype=dtype)
