"""Laws of the bound meter: the per-token bound is token-weighted over batches, padding and
data-parallel ranks, so that two gloo processes reduce to the perplexity of one process on the
concatenated data; bad updates raise errors that name the argument."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from discdiff.diffusion import NELBO
from discdiff.metrics import BoundMeter, sample_entropy

F64 = torch.float64


def make_batches(seed: int = 0) -> list[tuple[NELBO, torch.Tensor]]:
    """Batches of different sizes and lengths, with padding; padded positions hold NaN/inf."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b, length in ((3, 5), (1, 7), (2, 4), (4, 6)):
        terms = [torch.rand(b, length, generator=g, dtype=F64) * s for s in (3.0, 0.01, 0.2)]
        mask = torch.rand(b, length, generator=g) < 0.7
        mask[0, 0] = True
        terms[0] = torch.where(mask, terms[0], torch.tensor([math.nan, math.inf])[length % 2])
        batches.append((NELBO(*terms), mask))
    return batches


def expected(batches: list[tuple[NELBO, torch.Tensor]]) -> dict[str, float]:
    """Per-token means over the concatenated counted tokens, written out directly."""
    counted = {
        name: torch.cat([getattr(nelbo, name)[mask] for nelbo, mask in batches])
        for name in ("diffusion", "prior", "reconstruction")
    }
    total = counted["diffusion"] + counted["prior"] + counted["reconstruction"]
    nll = float(total.mean())
    out = {name: float(v.mean()) for name, v in counted.items()}
    return {"ppl": math.exp(nll), "nll_per_token": nll, "tokens": float(total.numel()), **out}


def assert_results_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


# --- one process ---------------------------------------------------------------------------------


def test_token_weighted_over_padded_batches():
    batches = make_batches()
    meter = BoundMeter()
    for nelbo, mask in batches:
        meter.update(nelbo, mask=mask)
    assert_results_close(meter.compute(), expected(batches))


def test_a_tensor_or_a_mapping_of_terms():
    batches = make_batches(1)
    whole, named = BoundMeter(), BoundMeter()
    for nelbo, mask in batches:
        total = torch.where(mask, nelbo.total, 0.0)
        whole.update(total.float(), mask=mask)
        named.update({"diffusion": nelbo.diffusion, "prior": nelbo.prior,
                      "reconstruction": nelbo.reconstruction}, mask=mask)  # fmt: skip
    want = expected(batches)
    got = whole.compute()
    assert set(got) == {"ppl", "nll_per_token", "tokens"} and got["tokens"] == want["tokens"]
    assert got["nll_per_token"] == pytest.approx(want["nll_per_token"], rel=1e-6)  # float32 in
    assert_results_close(named.compute(), want)
    # Without a mask every position counts; the bound per token of a constant is the constant.
    plain = BoundMeter()
    plain.update(torch.full((2, 3), 2.0))
    plain.update(torch.full((1, 4), 2.0))
    result = plain.compute()
    assert result["tokens"] == 10 and result["ppl"] == pytest.approx(math.exp(2.0))


def test_a_huge_bound_gives_an_infinite_perplexity_not_an_error():
    meter = BoundMeter()
    meter.update(torch.full((1, 2), 1e4))
    assert meter.compute()["ppl"] == math.inf


def test_bad_updates_raise_errors_naming_the_argument():
    meter = BoundMeter()
    with pytest.raises(ValueError, match="before any update"):
        meter.compute()
    with pytest.raises(TypeError, match="per_token_terms"):
        meter.update([torch.zeros(2, 3)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="per_token_terms"):
        meter.update({})
    with pytest.raises(ValueError, match="ppl"):
        meter.update({"ppl": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="mask"):
        meter.update(torch.zeros(2, 3), mask=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"per_token_terms\['b'\]"):
        meter.update({"a": torch.zeros(2, 3), "b": torch.zeros(2, 4)})
    meter.update({"a": torch.zeros(2, 3)}, mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="earlier updates"):
        meter.update({"b": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="no token was counted"):
        meter.compute()
    with pytest.raises(ValueError, match="group"):
        meter.compute(group=object())


# --- two gloo processes --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # Uneven shares: rank 0 gets batches 0 and 2, rank 1 batches 1 and 3 (more tokens).
        meter = BoundMeter()
        for nelbo, mask in make_batches()[rank::world]:
            meter.update(nelbo, mask=mask)
        unpadded = BoundMeter()
        for nelbo, _ in make_batches(2)[rank::world]:
            unpadded.update(torch.nan_to_num(nelbo.total, nan=1.0, posinf=1.0))
        torch.save({"padded": meter.compute(), "unpadded": unpadded.compute(),
                    "again": meter.compute()}, os.path.join(out, f"rank{rank}.pt"))  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_reduce_to_the_single_process_result(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    want = expected(make_batches())
    single = BoundMeter()
    for nelbo, _ in make_batches(2):
        single.update(torch.nan_to_num(nelbo.total, nan=1.0, posinf=1.0))
    for result in ranks:
        assert_results_close(result["padded"], want)
        assert_results_close(result["again"], want)  # compute does not consume the sums
        assert_results_close(result["unpadded"], single.compute())


# --- sample_entropy ---------------------------------------------------------------------------


def _entropy_by_counting(rows: list[list[int]]) -> float:
    """The mean unigram entropy, independently: a Counter per row and math.log, in Python."""
    from collections import Counter

    values = []
    for row in rows:
        n = len(row)
        values.append(-sum(c / n * math.log(c / n) for c in Counter(row).values()))
    return math.fsum(values) / len(values)


@pytest.mark.parametrize(("n", "length", "k"), [(1, 1, 2), (3, 7, 2), (8, 33, 5), (5, 64, 1000),
                                                 (4, 16, 50257)])  # fmt: skip
def test_sample_entropy_matches_counting(n, length, k):
    g = torch.Generator().manual_seed(n * 1000 + length)
    samples = torch.randint(0, k, (n, length), generator=g)
    got = sample_entropy(samples)
    assert got == pytest.approx(_entropy_by_counting(samples.tolist()), rel=1e-13, abs=1e-15)
    assert 0.0 <= got <= math.log(min(length, k)) + 1e-12


def test_sample_entropy_known_values():
    assert sample_entropy(torch.zeros(3, 10, dtype=torch.long)) == 0.0
    assert sample_entropy(torch.arange(8).repeat(2, 1)) == pytest.approx(math.log(8), rel=1e-15)
    # one row of two equally frequent ids (log 2) and one constant row (0): the mean
    rows = torch.tensor([[4, 9, 9, 4], [7, 7, 7, 7]], dtype=torch.int32)
    assert sample_entropy(rows) == pytest.approx(math.log(2) / 2, rel=1e-15)
    # the order of the tokens in a row does not matter, the order of the rows neither
    perm = torch.tensor([[9, 4, 4, 9], [7, 7, 7, 7]])
    assert sample_entropy(perm.flip(0)) == sample_entropy(rows)


def test_sample_entropy_refuses_bad_samples():
    with pytest.raises(TypeError, match="integer token ids"):
        sample_entropy(torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"samples\[None\]"):
        sample_entropy(torch.arange(5))
    with pytest.raises(ValueError, match="non-empty"):
        sample_entropy(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="tensor of token ids"):
        sample_entropy([[1, 2]])
