"""The validation bound of a model, with its Monte Carlo standard error.

The bound is estimated with one random time per sequence (seeded), so it is itself a random
number: ``evaluate_bound`` returns, beside the per-token NELBO r = sum_i b_i / sum_i n_i (b_i the
bound summed over the n_i real tokens of sequence i), the standard error of that ratio over the
m sequences (delta method),

    se(r) = sqrt(sum_i (b_i - r n_i)^2 / (m (m - 1))) / mean_i(n_i).

It counts the spread of b_i from both the Monte Carlo time and the sequences themselves, so
its square bounds the variance of a re-seeded evaluation on the same sequences from above in
expectation. It is itself an estimate from m sequences: the bound is heavy-tailed (a time near
eps can make one sequence's b_i large), so with few sequences it varies from seed to seed (on
a 20-step toy run with 32 sequences: 0.27 to 0.79 over 8 seeds, whose bounds spread with a
standard deviation of 0.54); more sequences (``train.eval_sequences``) tighten both.

The training loop validates with seed ``validation_seed(cfg)`` and logs it;
``examples.evaluate`` uses the same seed, batch size and sequence count by default, and so
reproduces the logged number.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn

from examples import distributed as D
from examples.config import Config
from examples.data import Batch, Rows, masked_validation_batches
from examples.objectives import Objective

__all__ = ["autocast", "batch_kwargs", "evaluate_bound", "validation_batch_size",
           "validation_seed"]  # fmt: skip

_SEED_OFFSET = 12345  # validation noise apart from the training noise of the same seed


def validation_seed(cfg: Config) -> int:
    """The seed of the training loop's validation noise (``train.seed + 12345``)."""
    return cfg.train.seed + _SEED_OFFSET


def validation_batch_size(cfg: Config, world_size: int = 1) -> int:
    """The loop's validation batch: its per-rank micro-batch (the noise is drawn per batch, so
    a re-evaluation must batch the same way to draw the same times)."""
    tc = cfg.train
    return tc.micro_batch if tc.micro_batch is not None else tc.batch_size // world_size


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA ("auto" or "bf16"); float32 elsewhere. bf16 on CPU is refused."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        raise ValueError(
            "bf16 autocast is only used on CUDA: on CPU it is far slower than float32; "
            "use --train.precision fp32 (or auto)"
        )
    return contextlib.nullcontext()


def batch_kwargs(batch: Batch) -> dict[str, Tensor]:
    """``mask=`` and ``label=`` for an objective only when the batch has padding or labels, so
    other runs call objectives (and backbones) exactly as before."""
    return {k: v for k, v in (("mask", batch.mask), ("label", batch.label)) if v is not None}


def _sequence_sums(terms: dict[str, Tensor], mask: Tensor | None) -> Tensor:
    """[m, sum b, sum n, sum b^2, sum b n, sum n^2] (float64) of a batch's per-sequence bounds
    b_i (its per-token terms added in float64, as ``BoundMeter`` adds them) and real-token
    counts n_i (padding, even inf or NaN there, left out)."""
    total = sum(v.detach().double() for v in terms.values())
    assert isinstance(total, Tensor)
    keep = torch.ones_like(total, dtype=torch.bool) if mask is None else mask.bool()
    b = torch.where(keep, total, 0.0).sum(1)
    n = keep.sum(1).double()
    m = b.new_tensor(float(b.numel()))
    return torch.stack([m, b.sum(), n.sum(), (b * b).sum(), (b * n).sum(), (n * n).sum()])


def _standard_error(sums: Tensor) -> float:
    """The delta-method standard error of sum b / sum n (module docstring)."""
    m, sb, sn, sbb, sbn, snn = sums.tolist()
    if m < 2:
        return math.nan
    r = sb / sn
    residual = max(sbb - 2 * r * sbn + r * r * snn, 0.0)  # sum (b_i - r n_i)^2
    return math.sqrt(residual / (m * (m - 1))) / (sn / m)


@torch.no_grad()
def evaluate_bound(
    objective: Objective, model: nn.Module, rows: Rows, *, batch_size: int,
    max_sequences: int | None, seed: int, device: torch.device, precision: str = "auto",
    info: D.DistInfo | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Validation bound over the first ``max_sequences`` rows: per-token NELBO (the AR objective:
    exact NLL) ``nelbo``, its Monte Carlo standard error ``nelbo_se``, the perplexity and the
    mean of each term. The noise is seeded (``seed``, one generator for all batches), so the
    same model, rows, batch size and seed give the same number. Unpacked rows (``PaddedRows``)
    count real tokens only."""
    from discdiff.metrics import BoundMeter

    info = info or D.DistInfo(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    meter, sums = BoundMeter(), torch.zeros(6, dtype=torch.float64, device=device)
    description, batches = "", 0
    try:
        for batch in masked_validation_batches(
            rows, batch_size, max_sequences, rank=info.rank, world_size=info.world_size
        ):
            batch = batch.to(device)
            with autocast(device, precision):
                bound = objective.bound(model, batch.x_0, generator=gen, **batch_kwargs(batch))
            description = bound.description
            mask = getattr(bound, "mask", None)
            meter.update(bound.terms, mask=mask)  # padding left out
            sums += _sequence_sums(bound.terms, mask).to(device)
            batches += 1
    finally:
        model.train(was_training)
    if batches == 0:  # on every rank alike: the shards have equal numbers of batches
        raise ValueError("the validation split is empty")
    res = meter.compute()
    if info.enabled:
        sums = D.all_reduce_sum(sums)
    nelbo, tokens, ppl = res.pop("nll_per_token"), res.pop("tokens"), res.pop("ppl")
    return {"nelbo": nelbo, "nelbo_se": _standard_error(sums), "ppl": ppl, "tokens": tokens,
            "sequences": int(sums[0]), "seed": seed, "terms": res,
            "bound": description}  # fmt: skip
