"""Laws of the time sampling (Concepts §3): over every rank and accumulation step of one optimiser
step the times are exactly one point per stratum of the global batch, the offset u depends on
(seed, step) alone, and bad arguments raise errors that name them."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from discdiff import timesteps
from discdiff.timesteps import AntitheticTimes, antithetic_times

F64 = torch.float64


def assert_one_point_per_stratum(t: torch.Tensor, u: float, eps: float) -> None:
    n = t.numel()
    assert (t >= eps).all() and (t <= 1).all()
    raw = torch.sort((t.double() - eps) / (1 - eps)).values
    expected = torch.sort(torch.remainder(u + torch.arange(n, dtype=F64) / n, 1.0)).values
    torch.testing.assert_close(raw, expected, rtol=0, atol=1e-12)
    # One point per stratum [j/n, (j+1)/n) of the shifted grid: no repeats across ranks/steps.
    strata = torch.floor(torch.remainder(raw - u, 1.0) * n + 0.5).long() % n
    assert sorted(strata.tolist()) == list(range(n))


layouts = {
    "batch": st.integers(1, 8),
    "world": st.integers(1, 4),
    "accum": st.integers(1, 3),
    "eps": st.sampled_from([0.0, 1e-3, 0.1]),
}


# --- the primitive -----------------------------------------------------------------------------


@given(u=st.floats(0.0, 1.0, exclude_max=True), **layouts)
def test_antithetic_strata_cover_the_global_batch_once(batch, world, accum, u, eps):
    parts = [
        antithetic_times(batch, eps=eps, world_size=world, rank=r, accum_steps=accum,
                         accum_index=s, u=u, dtype=F64)  # fmt: skip
        for r in range(world)
        for s in range(accum)
    ]
    assert all(p.shape == (batch,) for p in parts)
    assert_one_point_per_stratum(torch.cat(parts), u, eps)


def test_antithetic_times_with_identically_seeded_generators():
    ranks = [
        antithetic_times(4, world_size=2, rank=r, generator=torch.Generator().manual_seed(3))
        for r in range(2)
    ]
    t = torch.sort(torch.cat(ranks)).values
    gaps = torch.diff(t)
    torch.testing.assert_close(gaps, torch.full_like(gaps, (1 - 1e-3) / 8), rtol=1e-5, atol=1e-6)
    a = antithetic_times(16, generator=torch.Generator().manual_seed(1))
    b = antithetic_times(16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32
    # The batch mean spreads n times less than with i.i.d. times: sd 1/(n √12) instead of
    # 1/√(12 n) (0.036 vs 0.102 at n = 8).
    means = torch.stack(
        [antithetic_times(8, generator=torch.Generator().manual_seed(s)).mean() for s in range(400)]
    )
    assert float(means.std()) == pytest.approx((1 - 1e-3) / (8 * math.sqrt(12)), rel=0.15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": 4, "world_size": 2, "rank": 2}, "rank"),
        ({"batch_size": 4, "rank": -1}, "rank"),
        ({"batch_size": 4, "accum_steps": 2, "accum_index": 2}, "accum_index"),
        ({"batch_size": 4, "accum_steps": 0}, "accum_steps"),
        ({"batch_size": 4, "eps": 1.0}, "eps"),
        ({"batch_size": 4, "eps": math.nan}, "eps"),
        ({"batch_size": 4, "u": 1.0}, "u must"),
        ({"batch_size": 4, "world_size": 0}, "world_size"),
        ({"batch_size": 4, "dtype": torch.int64}, "dtype"),
    ],
)
def test_antithetic_times_rejects_bad_arguments(kwargs, match):
    batch = kwargs.pop("batch_size")
    with pytest.raises((ValueError, TypeError), match=match):
        antithetic_times(batch, **kwargs)


# --- AntitheticTimes: u from (seed, step) --------------------------------------------------------


@given(seed=st.integers(0, 2**40), step=st.integers(0, 10**6), **layouts)
def test_simulated_ranks_and_accumulation_steps_stratify_the_global_batch(
    batch, world, accum, eps, seed, step
):
    times = AntitheticTimes(eps=eps, seed=seed)
    parts = [
        times(batch, step=step, accum_index=s, accum_steps=accum, world_size=world, rank=r,
              dtype=F64)  # fmt: skip
        for r in range(world)
        for s in range(accum)
    ]
    assert_one_point_per_stratum(torch.cat(parts), times.offset(step), eps)


def test_the_offset_depends_on_seed_and_step_alone():
    # Two objects built apart (two "ranks") agree on u at every step; steps and seeds differ.
    a, b = AntitheticTimes(seed=7), AntitheticTimes(seed=7)
    offsets = [a.offset(s) for s in range(50)]
    assert offsets == [b.offset(s) for s in range(50)]
    assert all(0.0 <= u < 1.0 for u in offsets) and len(set(offsets)) == 50
    assert AntitheticTimes(seed=8).offset(3) != offsets[3]
    # Drawing from torch's global generator in between changes nothing.
    torch.rand(5)
    assert a.offset(3) == offsets[3]
    # u is the first float64 draw of the step's generator, as the primitive would draw it.
    torch.testing.assert_close(
        a(6, step=3, accum_index=1, accum_steps=2, world_size=3, rank=2),
        antithetic_times(6, world_size=3, rank=2, accum_steps=2, accum_index=1,
                         generator=a.generator(3)),
        rtol=0, atol=0,
    )  # fmt: skip


def test_world_size_and_rank_come_from_torch_distributed(monkeypatch):
    times = AntitheticTimes(seed=1)
    single = times(8, step=4, dtype=F64)
    assert single.shape == (8,)
    assert_one_point_per_stratum(single, times.offset(4), times.eps)
    parts = []
    for rank in range(4):
        monkeypatch.setattr(timesteps.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(timesteps.dist, "get_world_size", lambda: 4)
        monkeypatch.setattr(timesteps.dist, "get_rank", lambda rank=rank: rank)
        parts.append(times(2, step=4, dtype=F64))
        # Explicit values win over the process group's.
        explicit = times(8, step=4, world_size=1, rank=0, dtype=F64)
        assert torch.equal(explicit, single)
    assert_one_point_per_stratum(torch.cat(parts), times.offset(4), times.eps)


def test_device_and_dtype_are_honoured():
    t = AntitheticTimes()(3, step=0, device="cpu", dtype=torch.float16)
    assert t.dtype == torch.float16 and t.device.type == "cpu"


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: AntitheticTimes(eps=1.0), "eps"),
        (lambda: AntitheticTimes(eps=-0.1), "eps"),
        (lambda: AntitheticTimes(eps="small"), "eps"),
        (lambda: AntitheticTimes(seed=-1), "seed"),
        (lambda: AntitheticTimes(seed=1.5), "seed"),
        (lambda: AntitheticTimes()(4, step=-1), "step"),
        (lambda: AntitheticTimes()(4, step=True), "step"),
        (lambda: AntitheticTimes()(0, step=0), "batch_size"),
        (lambda: AntitheticTimes()(4, step=0, accum_index=1), "accum_index"),
        (lambda: AntitheticTimes()(4, step=0, world_size=2, rank=2), "rank"),
    ],
)
def test_antithetic_times_object_rejects_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()
