"""Per-token bounds reduced to a perplexity, token-weighted across batches and data-parallel ranks;
the entropy of samples.

A validation bound is reported per token: the sum of the per-token bound over every counted
token of every batch on every rank, over the number of those tokens, and the perplexity
exp(that). Averaging per-batch or per-rank means instead weights a short (padded) batch or a
rank with fewer tokens as much as a full one; ``BoundMeter`` keeps the sums and reduces them once.

A generative perplexity is reported with ``sample_entropy`` beside it (Concepts §7): low-entropy
(repetitive) samples get a low perplexity without being good text.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from jaxtyping import Float, Int
from torch import Tensor

from discdiff.losses._common import accumulation_dtype

if TYPE_CHECKING:
    from discdiff.diffusion import NELBO

__all__ = ["BoundMeter", "sample_entropy"]

_RESERVED = ("nll_per_token", "ppl", "tokens")


class BoundMeter:
    """Token-weighted sums of a per-token bound and its terms; one all_reduce into a perplexity.

        meter = BoundMeter()
        for x_0 in batches:                        # this rank's share of the validation set
            meter.update(diffusion.nelbo(model, x_0), mask=x_0 != pad_id)
        meter.compute()  # {"ppl", "nll_per_token", "tokens", "diffusion", "prior", ...}

    ``update`` takes a ``NELBO`` (its fields are the terms), a mapping of named per-token terms
    whose sum is the bound, or a single per-token tensor (the bound itself, e.g. an AR model's
    NLL). Sums are kept as float64 tensors on the inputs' device, so updates never wait for the
    device. ``compute`` sums them over the ranks of ``group`` with one all_reduce when
    torch.distributed is initialised: every rank must then have updated at least once, with the
    same term names (they fix the layout of the reduced vector).
    """

    def __init__(self) -> None:
        self._names: tuple[str, ...] | None = None
        self._sums: Tensor | None = None  # [tokens, bound, *terms]

    def update(
        self,
        per_token_terms: NELBO | Mapping[str, Float[Tensor, "b l"]] | Float[Tensor, "b l"],
        mask: Tensor | None = None,
    ) -> None:
        """Add a batch: per-token terms (B, L); ``mask`` (B, L) is true where a token counts
        (padding false). Masked-out positions are ignored even when they hold inf or NaN."""
        terms = _as_terms(per_token_terms)
        names = tuple(terms) if isinstance(terms, dict) else ()
        bad = [name for name in names if name in _RESERVED]
        if bad:
            raise ValueError(f"per_token_terms may not name a term {bad[0]!r} ({_RESERVED})")
        if self._names is not None and names != self._names:
            raise ValueError(
                f"per_token_terms names the terms {names}, but earlier updates named {self._names}"
            )
        values = list(terms.values()) if isinstance(terms, dict) else [terms]
        shape = values[0].shape
        for name, value in zip(names, values, strict=False):
            if value.shape != shape:
                raise ValueError(
                    f"per_token_terms[{name!r}] has shape {tuple(value.shape)}, the first term "
                    f"{tuple(shape)}"
                )
        dtype = accumulation_dtype(values[0].device)
        stacked = torch.stack([v.detach().to(dtype) for v in values])
        if mask is None:
            counted = stacked.new_tensor(float(stacked[0].numel()))
        else:
            if mask.shape != shape:
                raise ValueError(
                    f"mask must have the per-token shape {tuple(shape)}, got {tuple(mask.shape)}"
                )
            keep = (mask != 0).to(stacked.device)
            counted = keep.sum().to(dtype)
            stacked = torch.where(keep, stacked, 0.0)
        per_term = stacked.flatten(1).sum(1)
        row = torch.cat([counted.reshape(1), per_term.sum().reshape(1), per_term[: len(names)]])
        self._names = names
        self._sums = row if self._sums is None else self._sums + row.to(self._sums.device)

    def compute(self, group: Any = None) -> dict[str, float]:
        """{"ppl", "nll_per_token", "tokens", one per-token mean per term}, over every rank.

        ``nll_per_token`` is the bound per counted token, in nats; ``ppl`` = exp(nll_per_token).
        With torch.distributed initialised this is a collective: call it on every rank of
        ``group`` (default: the world).
        """
        if self._sums is None or self._names is None:
            raise ValueError("BoundMeter.compute before any update: there is nothing to reduce")
        sums = self._sums
        if dist.is_available() and dist.is_initialized():
            sums = sums.clone()
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        elif group is not None:
            raise ValueError("group was given, but torch.distributed is not initialised")
        tokens, bound, *per_term = sums.tolist()
        if tokens == 0:
            raise ValueError("BoundMeter.compute: no token was counted (empty data or all masked)")
        nll = bound / tokens
        result = {"ppl": math.exp(nll) if nll < 709.0 else math.inf, "nll_per_token": nll,
                  "tokens": int(tokens)}  # fmt: skip
        result.update({name: s / tokens for name, s in zip(self._names, per_term, strict=True)})
        return result


def _as_terms(per_token_terms: Any) -> dict[str, Tensor] | Tensor:
    """The named terms of a NELBO or a mapping; a lone tensor (the bound itself) as it is."""
    if isinstance(per_token_terms, Tensor):
        return per_token_terms
    if dataclasses.is_dataclass(per_token_terms) and not isinstance(per_token_terms, type):
        fields = dataclasses.fields(per_token_terms)
        terms = {f.name: getattr(per_token_terms, f.name) for f in fields}
    elif isinstance(per_token_terms, Mapping):
        terms = dict(per_token_terms)
    else:
        raise TypeError(
            "per_token_terms must be a NELBO, a mapping of named per-token terms or a tensor, "
            f"got {type(per_token_terms).__name__}"
        )
    if not terms or not all(isinstance(v, Tensor) for v in terms.values()):
        raise TypeError("per_token_terms must hold at least one per-token tensor, and only those")
    return terms


def sample_entropy(samples: Int[Tensor, "n l"]) -> float:
    """The mean over samples of the entropy (nats) of each sample's empirical token law.

    ``samples`` (N, L) integer token ids, N >= 1 sequences of L >= 1 tokens. Row i's law is
    p_i(j) = (count of j in row i) / L and its entropy H_i = -sum_j p_i(j) log p_i(j), in
    [0, log min(L, K)]; the result is (1/N) sum_i H_i, computed in float64 on the CPU. The
    paper reports it beside the generative perplexity, since repetitive text scores well.
    """
    if not isinstance(samples, Tensor):
        kind = type(samples).__name__
        raise TypeError(f"samples must be a (N, L) tensor of token ids, got {kind}")
    if samples.dtype.is_floating_point or samples.dtype.is_complex or samples.dtype == torch.bool:
        raise TypeError(f"samples must hold integer token ids, got dtype {samples.dtype}")
    if samples.dim() != 2 or samples.numel() == 0:
        raise ValueError(
            "samples must be a non-empty (N, L) tensor, one sequence per row (samples[None] "
            f"for a single sequence), got shape {tuple(samples.shape)}"
        )
    n, length = samples.shape
    ids, _ = samples.detach().cpu().sort(dim=1)
    # Runs of equal ids in a sorted row are the counts of its tokens: flat start positions of
    # the runs (every row starts one), their lengths, and the row each belongs to.
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    first = starts.flatten().nonzero().squeeze(1)
    counts = torch.diff(first, append=first.new_tensor([n * length]))
    p = counts.to(torch.float64) / length
    per_row = torch.zeros(n, dtype=torch.float64).index_add_(0, first // length, -p * p.log())
    return math.fsum(per_row.tolist()) / n
