"""Exact categorical draws over large vocabularies, chunked over rows.

Gumbel-max in float32 over K = 50k classes under-samples the low-probability tail (float32
uniforms cannot produce the extreme noise those tokens need), and a float32 cumulative sum loses
tokens below ~1e-7 of the mass. Here every categorical draw is a two-stage draw: the K classes
are cut into blocks of ``~sqrt(K)`` classes, the block masses are accumulated in float64, a
float64 uniform picks a block against their float64 cumulative sum, and a second float64 uniform
picks a class against the float64 cumulative sum of that block's entries only. Each class is
drawn with probability (its float32 weight) / (float64 total): exact up to the float32 rounding
of the weights themselves, a relative error of about 6e-8 * (1 + |logit - max|) per class (1e-6
at a probability ratio of e^-15), whatever its size; only classes below ~1e-38 of the top one
(float32 underflow) are lost. Rows are processed in chunks, so no (B, L, K) temporary is ever
allocated.

Top-k and nucleus (top-p) filtering act on the weights of a chunk before the draw; the nucleus
threshold is found without a full sort (a partial top-64, then a radix select).

Randomness comes from a ``torch.Generator`` (one stream laid out over all rows) or a
``RowStream`` (``discdiff.samplers.streams``: numbers keyed by (seed, row), so a row draws the
same classes whatever the batch); every draw site goes through ``uniforms`` / ``randint``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff._chunks import chunk_rows
from discdiff.samplers.streams import RowStream, row_source
from discdiff.typing import check_count, checks_enabled, reject_if, typechecked

__all__ = ["sample_categorical", "sample_categorical_logits"]

_NUCLEUS_TOP = 64  # nucleus: a partial sort this wide settles peaked rows
_RADIX_BITS = 11  # nucleus: bits per radix-select level (2048 buckets)


def block_size(k: int) -> int:
    """Power of two >= sqrt(K): both stages of a draw then cost O(sqrt(K)) per row."""
    return max(8, 1 << math.ceil(math.log2(math.sqrt(k))))


def row_chunks(n_rows: int, k: int, device: torch.device) -> Iterator[slice]:
    """Slices of rows of an (n_rows, K) array, each small enough to stay in cache on a CPU."""
    # Larger chunks than the losses': the draw's passes are lighter per element.
    step = chunk_rows(k, device, cpu_elements=1 << 19, device_elements=1 << 26)
    for r0 in range(0, n_rows, step):
        yield slice(r0, min(r0 + step, n_rows))


@dataclass(frozen=True)
class ChunkLaw:
    """The categorical law of a chunk of rows: weights (n, K) >= 0 and float64 block masses."""

    weights: Tensor  # (n, K), float32 (float64 when the input was)
    block: int
    masses: Tensor  # (n, n_blocks) float64
    cum: Tensor  # (n, n_blocks) float64 cumulative masses
    total: Tensor  # (n,) float64

    @staticmethod
    def of(weights: Tensor, block: int, what: str) -> ChunkLaw:
        n, k = weights.shape
        full = (k // block) * block
        parts = []
        if full:
            parts.append(
                weights[:, :full].view(n, full // block, block).sum(-1, dtype=torch.float64)
            )
        if full < k:
            parts.append(weights[:, full:].sum(-1, keepdim=True, dtype=torch.float64))
        masses = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        cum = masses.cumsum(-1)
        total = cum[:, -1]
        if checks_enabled():
            reject_if(
                ~(torch.isfinite(total) & (total > 0)),
                f"{what} has a row with NaN or +inf values, or with no class of positive "
                "probability",
            )
        return ChunkLaw(weights, block, masses, cum, total)

    def draw(self, rows: Tensor, u_block: Tensor, u_within: Tensor) -> Tensor:
        """Draw one class for each of ``rows`` (chunk-local indices) from two float64 uniforms."""
        if rows.numel() == 0:
            return rows.clone()
        k = self.weights.shape[1]
        cum = self.cum[rows]
        v = (u_block * cum[:, -1]).unsqueeze(-1)
        b = torch.searchsorted(cum, v, right=True).squeeze(-1)
        # u * total can round up to total itself: fall back to the last block with mass.
        b = torch.minimum(b, _last_positive(self.masses[rows]))
        start = b * self.block
        cols = start.unsqueeze(-1) + torch.arange(self.block, device=rows.device)
        inside = cols < k
        w = self.weights[rows.unsqueeze(-1), cols.clamp(max=k - 1)].to(torch.float64)
        w = w * inside
        wcum = w.cumsum(-1)
        v = (u_within * wcum[:, -1]).unsqueeze(-1)
        j = torch.searchsorted(wcum, v, right=True).squeeze(-1)
        j = torch.minimum(j, _last_positive(w))
        return start + j


def _last_positive(x: Tensor) -> Tensor:
    idx = torch.arange(x.shape[-1], device=x.device)
    return torch.where(x > 0, idx, -1).amax(-1)


def softmax_weights(
    logits: Tensor, *, exclude: int | None, top_k: int | None, top_p: float | None
) -> Tensor:
    """softmax over a chunk of rows (float32, float64 for float64 logits), class ``exclude``
    removed, then top-k and nucleus filtering; not renormalised (the law divides by the total)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    p = torch.softmax(logits, dim=-1, dtype=dtype)
    if exclude is not None:
        p[:, exclude] = 0
    k = p.shape[-1]
    if top_k is not None and top_k < k:
        threshold = torch.topk(p, top_k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        p.masked_fill_(p < threshold, 0)
    if top_p is not None and top_p < 1:
        p.masked_fill_(p < _nucleus_threshold(p, top_p), 0)
    return p


def _nucleus_threshold(p: Tensor, top_p: float) -> Tensor:
    """Per row (as (n, 1)), the largest value tau with sum_{p_j >= tau} p_j >= top_p sum_j p_j:
    the probability of the last class of the smallest top set holding top_p of the mass (ties at
    the boundary are all kept). Sorts only when cheap: the top 64 settle peaked rows; the others
    go through a sort-free radix select (``_nucleus_radix``)."""
    n, k = p.shape
    target = top_p * p.sum(-1, dtype=torch.float64)
    threshold = torch.empty(n, dtype=p.dtype, device=p.device)
    width = min(k, _NUCLEUS_TOP)
    values = torch.topk(p, width, dim=-1, sorted=True).values
    cum = values.to(torch.float64).cumsum(-1)
    done = (cum[:, -1] >= target) | (width == k)
    first = (cum < target.unsqueeze(-1)).sum(-1).clamp(max=width - 1)
    threshold[done] = values[done, first[done]]
    rows = (~done).nonzero().squeeze(-1)
    if rows.numel():
        threshold[rows] = _nucleus_radix(p[rows], target[rows])
    return threshold.unsqueeze(-1)


def _nucleus_radix(p: Tensor, target: Tensor) -> Tensor:
    """The largest value tau of each row with sum_{p >= tau} p >= target, by radix select.

    Non-negative floats order like their bit patterns, so tau is found 11 bits at a time, from
    the top: a float64 histogram of the mass over the next 11 bits (among the classes that share
    the bits fixed so far) gives the bucket where the mass from above crosses the target. The
    first level is one pass over the row; later levels only see the classes of the chosen
    bucket. The last bucket holds a single value: tau exactly, no sort needed."""
    n = p.shape[0]
    bits, total_bits = (torch.int32, 31) if p.dtype == torch.float32 else (torch.int64, 63)
    keys = p.view(bits)
    values = p
    rows: Tensor | None = None  # None: every class of every row; else the surviving classes
    above = torch.zeros(n, dtype=torch.float64, device=p.device)  # mass of larger prefixes
    prefix = torch.zeros(n, dtype=bits, device=p.device)
    top = total_bits
    while top > 0:
        shift = max(0, top - _RADIX_BITS)
        width = top - shift
        size = 1 << width
        key = ((keys >> shift) & (size - 1)).long()
        masses = torch.zeros(n, size, dtype=torch.float64, device=p.device)
        if rows is None:
            masses.scatter_add_(1, key, values.to(torch.float64))
        else:
            masses.view(-1).index_add_(0, rows * size + key, values.to(torch.float64))
        from_top = torch.cat([masses.new_zeros(n, 1), masses.flip(-1).cumsum(-1)], dim=-1)
        # how many of the largest buckets still leave the mass below the target (>= 1)
        short = ((above.unsqueeze(-1) + from_top) < target.unsqueeze(-1)).sum(-1, keepdim=True)
        taken = (short - 1).clamp(max=size - 1)
        above = above + from_top.gather(1, taken).squeeze(-1)
        bucket = size - 1 - taken.squeeze(-1)
        prefix = (prefix << width) | bucket.to(bits)
        if rows is None:
            rows, cols = (key == bucket.unsqueeze(-1)).nonzero(as_tuple=True)
            values, keys = p[rows, cols], keys[rows, cols]
        else:
            keep = key == bucket[rows]
            rows, values, keys = rows[keep], values[keep], keys[keep]
        top = shift
    return prefix.view(p.dtype)


def check_filters(top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError unless top_k is None or a positive integer and top_p None or in (0, 1]."""
    if top_k is not None:
        check_count(top_k, "top_k")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1] or be None, got {top_p!r}")


Source = torch.Generator | RowStream | None
"""Where a draw's randomness comes from: a generator (None: torch's global one) or a stream."""


def uniforms(n: int, source: Source, device: torch.device) -> Tensor:
    """n float64 uniforms in [0, 1), (n,): the next ``torch.rand`` of a generator, or the next
    draw of a ``RowStream`` (n = rows * its length, laid out row-major)."""
    if isinstance(source, RowStream):
        return source.uniforms(n, device)
    return torch.rand(n, dtype=torch.float64, generator=source, device=device)


def randint(k: int, n: int, source: Source, device: torch.device) -> Tensor:
    """n int64 integers uniform on [0, k), (n,), from a generator or a ``RowStream``."""
    if isinstance(source, RowStream):
        return source.randint(k, n, device)
    return torch.randint(0, k, (n,), generator=source, device=device)


def _row_length(batch: list[int]) -> int:
    """The numbers per row of a (*batch) draw: row = the first batch index (1 if none)."""
    return math.prod(batch[1:]) if batch else 1


@typechecked
def sample_categorical(
    probs: Float[Tensor, "*batch k"],
    *,
    generator: torch.Generator | RowStream | None = None,
    seed: int | None = None,
) -> Int[Tensor, "*batch"]:
    """Draw one class per row from probabilities (..., K), exactly (see the module docstring).

    Rows need not be normalised (they are divided by their float64 sum); entries must be >= 0.
    Consumes two float64 uniforms per row from ``generator``, or, with ``seed`` (an int, not
    with ``generator``), from a ``RowStream`` keyed by the first batch index: the classes drawn
    for ``probs[i]`` are then the same whatever else ``probs`` holds. Returns int64 ids (...).
    """
    *batch, k = probs.shape
    generator = row_source(generator, seed, _row_length(batch))
    flat = probs.reshape(-1, k)
    n = flat.shape[0]
    u_block, u_within = uniforms(n, generator, flat.device), uniforms(n, generator, flat.device)
    out = torch.empty(n, dtype=torch.long, device=flat.device)
    block = block_size(k)
    for rows in row_chunks(n, k, flat.device):
        w = flat[rows]
        if checks_enabled():
            reject_if(w < 0, "probs has negative entries")
        law = ChunkLaw.of(w, block, "probs")
        local = torch.arange(w.shape[0], device=w.device)
        out[rows] = law.draw(local, u_block[rows], u_within[rows])
    return out.reshape(batch)


@typechecked
def sample_categorical_logits(
    logits: Float[Tensor, "*batch k"],
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | RowStream | None = None,
    seed: int | None = None,
) -> Int[Tensor, "*batch"]:
    """Draw one class per row from softmax(logits) (..., K), exactly, after optional top-k and
    nucleus (top-p) filtering with renormalisation.

    ``top_k`` keeps the classes at least as probable as the k-th most probable one; ``top_p``
    then keeps the smallest most-probable set holding that fraction of the remaining mass (ties
    at either boundary are kept).

    The softmax is taken in float32 (float64 for float64 logits) chunk by chunk; nothing of size
    (..., K) is allocated. Consumes two float64 uniforms per row, from ``generator`` or from
    the ``RowStream`` of ``seed`` (as in ``sample_categorical``). Returns int64 ids (...).
    """
    check_filters(top_k, top_p)
    *batch, k = logits.shape
    generator = row_source(generator, seed, _row_length(batch))
    flat = logits.reshape(-1, k)
    n = flat.shape[0]
    u_block, u_within = uniforms(n, generator, flat.device), uniforms(n, generator, flat.device)
    out = torch.empty(n, dtype=torch.long, device=flat.device)
    block = block_size(k)
    for rows in row_chunks(n, k, flat.device):
        w = softmax_weights(flat[rows], exclude=None, top_k=top_k, top_p=top_p)
        law = ChunkLaw.of(w, block, "logits")
        local = torch.arange(w.shape[0], device=w.device)
        out[rows] = law.draw(local, u_block[rows], u_within[rows])
    return out.reshape(batch)
