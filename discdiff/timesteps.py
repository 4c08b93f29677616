"""Training times t in [eps, 1], stratified (antithetic) over the *global* batch (Concepts §3).

The global batch of an optimiser step has n = batch_size · world_size · accum_steps sequences,
spread over data-parallel ranks and gradient-accumulation steps. Sequence g of it gets
t_g = (u + g/n) mod 1, mapped to eps + (1 - eps) t_g: one point per stratum [g/n, (g+1)/n)
shifted by u, so the n times never repeat and their mean has far lower variance than i.i.d.
times (standard deviation 1/(n √12) instead of 1/√(12 n)).

That needs one offset u per optimiser step, the same on every rank and accumulation step.
``AntitheticTimes`` derives it from (seed, step), so the ranks agree without communicating;
``antithetic_times`` is the primitive that takes u (or a generator) and the global layout.

Block diffusion (Concepts, "Block diffusion") draws one time per block: with ``blocks=n`` every
sequence holds n strata, the global batch n · batch_size · world_size · accum_steps of them, laid
out row-major (sequence, then block), so the times are (B, n). ``blocks=None`` is (B,) as before,
and ``blocks=1`` gives the same values as a (B, 1) column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor

from discdiff.typing import as_float, check_count, typechecked

__all__ = ["AntitheticTimes", "antithetic_times"]


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
    blocks: int | None = None,
) -> Float[Tensor, " b *n"]:
    """This call's share of the stratified times of the global batch, in [eps, 1].

    Sequence j of this call is sequence g = (accum_index · world_size + rank) · batch_size + j of
    the global batch and gets eps + (1 - eps) · ((u + g/n) mod 1), n the global batch size.
    With ``blocks`` (block diffusion) block k of sequence g is stratum g · blocks + k of
    n · blocks, and the result is (batch_size, blocks).

    The offset u must be the same in every call that builds one global batch (all ranks, all
    accumulation steps): pass ``u`` (e.g. drawn once per optimiser step and broadcast), or pass a
    ``generator`` seeded identically on every rank *and* reset to the same state for every
    accumulation step. ``AntitheticTimes`` does this for you. A generator that advances between
    accumulation steps gives different u's, breaking the strata. With neither, u is drawn from
    torch's global generator (fine for a single process and step).

    Returns:
        (batch_size,) times in [eps, 1], or (batch_size, blocks) with ``blocks``.
    """
    batch_size = check_count(batch_size, "batch_size")
    per_row = 1 if blocks is None else check_count(blocks, "blocks")
    world_size = check_count(world_size, "world_size")
    accum_steps = check_count(accum_steps, "accum_steps")
    rank = _check_index(rank, "rank", world_size, "world_size")
    accum_index = _check_index(accum_index, "accum_index", accum_steps, "accum_steps")
    _check_eps(eps)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    n = batch_size * world_size * accum_steps * per_row
    if u is None:
        gen_device = generator.device if generator is not None else "cpu"
        u_t = torch.rand((), generator=generator, device=gen_device, dtype=torch.float64)
    else:
        u_t = torch.as_tensor(u, dtype=torch.float64)
        if u_t.numel() != 1 or not bool((u_t >= 0) & (u_t < 1)):
            raise ValueError(f"u must be a single number in [0, 1), got {u}")
        u_t = u_t.reshape(())
    start = (accum_index * world_size + rank) * batch_size * per_row
    g = torch.arange(start, start + batch_size * per_row, dtype=torch.float64, device=u_t.device)
    t = torch.remainder(u_t + g / n, 1.0)
    t = t if blocks is None else t.view(batch_size, per_row)
    return (eps + (1 - eps) * t).to(device=device or u_t.device, dtype=dtype)


@dataclass(frozen=True)
class AntitheticTimes:
    """Stratified times over the global batch, with u derived from (seed, step).

    Every rank and accumulation step of optimiser step ``step`` derives the same u from a
    generator seeded by (``seed``, ``step``), so the global batch is stratified without any
    communication. World size and rank come from ``torch.distributed`` when it is initialised
    (1 and 0 otherwise), unless given.

        times = AntitheticTimes(eps=1e-3, seed=0)
        for index in range(accum_steps):
            t = times(micro_batch, step=step, accum_index=index, accum_steps=accum_steps)

    Args:
        eps: smallest time, in [0, 1).
        seed: an integer >= 0; the same on every rank.
    """

    eps: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        _check_eps(self.eps)
        check_count(self.seed, "seed", minimum=0)

    def generator(self, step: int) -> torch.Generator:
        """The CPU generator of optimiser step ``step``: its first float64 draw is u."""
        step = check_count(step, "step", minimum=0)
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step * 7919 + 17) % 2**63)

    def offset(self, step: int) -> float:
        """u in [0, 1) of optimiser step ``step``."""
        return float(torch.rand((), generator=self.generator(step), dtype=torch.float64))

    def __call__(
        self,
        batch_size: int,
        *,
        step: int,
        accum_index: int = 0,
        accum_steps: int = 1,
        world_size: int | None = None,
        rank: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        blocks: int | None = None,
    ) -> Float[Tensor, " b *n"]:
        """(batch_size,) times in [eps, 1] for this rank's accumulation step ``accum_index``;
        (batch_size, blocks) with ``blocks``, one time per block (block diffusion)."""
        distributed = dist.is_available() and dist.is_initialized()
        if world_size is None:
            world_size = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        return antithetic_times(
            batch_size, eps=self.eps, world_size=world_size, rank=rank, accum_steps=accum_steps,
            accum_index=accum_index, u=self.offset(step), device=device, dtype=dtype,
            blocks=blocks,
        )  # fmt: skip


def _check_index(value: int, name: str, count: int, count_name: str) -> int:
    value = check_count(value, name, minimum=0)
    if value >= count:
        raise ValueError(f"{name} must be an integer in [0, {count_name}={count}), got {value!r}")
    return value


def _check_eps(eps: float) -> None:
    value = as_float(eps, "eps")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"eps must lie in [0, 1), got {eps}")
