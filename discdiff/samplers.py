"""Samplers: uniform-state ancestral and Ψ steps, the greedy tail, nucleus / top-k, and masked
(MDLM) ancestral sampling with the prediction cache and ReMDM-style remasking.

Notation (SPEC §5): ``K`` vocabulary size; one reverse step goes from time ``t`` to ``s < t``
with signal levels ``alpha_t <= alpha_s``; ``alpha_ts = alpha_t / alpha_s`` is the signal kept
from ``s`` to ``t``; ``x_hat = softmax(logits)`` is the denoiser's estimate of the clean token
(after top-k / nucleus filtering, renormalised); ``z_t`` the current tokens.

Exact sampling. Gumbel-max in float32 over K = 50k classes under-samples the low-probability
tail (float32 uniforms cannot produce the extreme noise those tokens need), and a float32
cumulative sum loses tokens below ~1e-7 of the mass. Here every categorical draw is a two-stage
draw: the K classes are cut into blocks of ``~sqrt(K)`` classes, the block masses are accumulated
in float64, a float64 uniform picks a block against their float64 cumulative sum, and a second
float64 uniform picks a class against the float64 cumulative sum of that block's entries only.
Each class is drawn with probability (its float32 weight) / (float64 total): exact up to the
float32 rounding of the weights themselves, a relative error of about 6e-8 * (1 + |logit - max|)
per class (1e-6 at a probability ratio of e^-15), whatever its size; only classes below ~1e-38
of the top one (float32 underflow) are lost.
Rows are processed in chunks, so no (B, L, K) temporary is ever allocated: a step needs only the
denoiser's logits plus a few MiB.

The uniform step is never a (B, L, K) posterior: it is a three-part mixture (see
``uniform_ancestral_step``), so it costs one pass over the logits (softmax, block masses, the
weight of ``z_t``) plus O(sqrt(K)) work for the tokens that draw from ``x_hat``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff.schedules import Schedule
from discdiff.typing import (
    check_range,
    check_tokens,
    check_vocab_size,
    checks_enabled,
    typechecked,
)

__all__ = [
    "CappedKappa",
    "CappedRemask",
    "ConstantKappa",
    "RescaledRemask",
    "masked_ancestral_step",
    "sample_categorical",
    "sample_categorical_logits",
    "sample_masked",
    "sample_uniform",
    "uniform_ancestral_step",
    "uniform_posterior",
]

# Elements per chunk of rows: small on CPU so that a chunk stays in cache across its passes
# (softmax, block sums, gathers); large on accelerators, where launches are the cost.
_CPU_CHUNK_ELEMENTS = 1 << 19
_DEVICE_CHUNK_ELEMENTS = 1 << 26
_NUCLEUS_TOP = 64  # nucleus: a partial sort this wide settles peaked rows
_RADIX_BITS = 11  # nucleus: bits per radix-select level (2048 buckets)

Alpha = float | Tensor
"""A signal level: a Python float, a 0-d tensor, or a tensor broadcastable as (B, 1) / (B, L)."""


# ----------------------------------------------------------------------------------------------
# The explicit posterior (reference; materialises (B, L, K))
# ----------------------------------------------------------------------------------------------


@typechecked
def uniform_posterior(
    probs_x0: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    alpha_s: Alpha,
    alpha_t: Alpha,
) -> Float[Tensor, "b l k"]:
    """q(z_s | z_t, x_hat) of the uniform-state process, as (B, L, K) probabilities (SPEC §5).

    ``probs_x0`` is x_hat (B, L, K), rows summing to one; ``alpha_s >= alpha_t`` are floats or
    tensors broadcastable as (B, 1) / (B, L). Computed in the promoted dtype of the inputs
    (float64 in, float64 out). This is the explicit reference; the samplers never build it.

    With alpha_ts = alpha_t / alpha_s (1 when alpha_s = 0: no time elapses),

        q(z_s | z_t, x_hat) = [K alpha_t x_hat[z_t] e_{z_t} + (alpha_ts - alpha_t) e_{z_t}
                               + (alpha_s - alpha_t) x_hat + (1 - alpha_ts)(1 - alpha_s) / K]
                              / [K alpha_t x_hat[z_t] + 1 - alpha_t].
    """
    b, ln, k = probs_x0.shape
    check_tokens(z_t, k, "z_t")
    a_s = _level(alpha_s, b, ln, "alpha_s", probs_x0)
    a_t = _level(alpha_t, b, ln, "alpha_t", probs_x0)
    _check_ordered(a_s, a_t)
    dtype = torch.result_type(probs_x0, a_s)
    dtype = torch.promote_types(dtype, torch.result_type(probs_x0, a_t))
    probs = probs_x0.to(dtype)
    a_s = torch.as_tensor(a_s, dtype=dtype, device=probs.device)
    a_t = torch.as_tensor(a_t, dtype=dtype, device=probs.device)
    a_s, a_t = _expand_k(a_s, b, ln), _expand_k(a_t, b, ln)  # (B, L, 1)
    a_ts = torch.where(a_s > 0, a_t / a_s.clamp_min(torch.finfo(dtype).tiny), torch.ones_like(a_t))
    index = z_t.unsqueeze(-1)
    x_zt = probs.gather(-1, index)  # (B, L, 1)
    stay = k * a_t * x_zt + a_ts - a_t
    num = (a_s - a_t) * probs + (1 - a_ts) * (1 - a_s) / k
    num = num.scatter_add(-1, index, stay.expand_as(x_zt))
    den = k * a_t * x_zt + 1 - a_t
    if checks_enabled() and bool((den <= 0).any()):
        raise ValueError(
            "z_t has zero probability under probs_x0 at alpha_t = 1: the posterior is undefined"
        )
    return num / den


# ----------------------------------------------------------------------------------------------
# Exact categorical sampling, chunked over rows
# ----------------------------------------------------------------------------------------------


def _block_size(k: int) -> int:
    # Power of two >= sqrt(K): both stages then cost O(sqrt(K)) per drawn row.
    return max(8, 1 << math.ceil(math.log2(math.sqrt(k))))


def _chunk_rows(k: int, device: torch.device) -> int:
    budget = _CPU_CHUNK_ELEMENTS if device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    return max(1, budget // k)


def _row_chunks(n_rows: int, k: int, device: torch.device) -> Iterator[slice]:
    step = _chunk_rows(k, device)
    for r0 in range(0, n_rows, step):
        yield slice(r0, min(r0 + step, n_rows))


@dataclass(frozen=True)
class _ChunkLaw:
    """The categorical law of a chunk of rows: weights (n, K) >= 0 and float64 block masses."""

    weights: Tensor  # (n, K), float32 (float64 when the input was)
    block: int
    masses: Tensor  # (n, n_blocks) float64
    cum: Tensor  # (n, n_blocks) float64 cumulative masses
    total: Tensor  # (n,) float64

    @staticmethod
    def of(weights: Tensor, block: int, what: str) -> _ChunkLaw:
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
        bad = ~(torch.isfinite(total) & (total > 0))
        if bool(bad.any()):
            raise ValueError(
                f"{what} has a row with NaN or +inf values, or with no class of positive "
                "probability"
            )
        return _ChunkLaw(weights, block, masses, cum, total)

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


def _softmax_weights(
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


def _check_filters(top_k: int | None, top_p: float | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1] or be None, got {top_p!r}")


def _uniforms(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, dtype=torch.float64, generator=generator, device=device)


@typechecked
def sample_categorical(
    probs: Float[Tensor, "*batch k"], *, generator: torch.Generator | None = None
) -> Int[Tensor, "*batch"]:
    """Draw one class per row from probabilities (..., K), exactly (see the module docstring).

    Rows need not be normalised (they are divided by their float64 sum); entries must be >= 0.
    Consumes two float64 uniforms per row from ``generator``. Returns int64 ids (...).
    """
    *batch, k = probs.shape
    flat = probs.reshape(-1, k)
    n = flat.shape[0]
    u_block, u_within = _uniforms(n, generator, flat.device), _uniforms(n, generator, flat.device)
    out = torch.empty(n, dtype=torch.long, device=flat.device)
    block = _block_size(k)
    for rows in _row_chunks(n, k, flat.device):
        w = flat[rows]
        if checks_enabled() and bool((w < 0).any()):
            raise ValueError("probs has negative entries")
        law = _ChunkLaw.of(w, block, "probs")
        local = torch.arange(w.shape[0], device=w.device)
        out[rows] = law.draw(local, u_block[rows], u_within[rows])
    return out.reshape(batch)


@typechecked
def sample_categorical_logits(
    logits: Float[Tensor, "*batch k"],
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, "*batch"]:
    """Draw one class per row from softmax(logits) (..., K), exactly, after optional top-k and
    nucleus (top-p) filtering with renormalisation.

    ``top_k`` keeps the classes at least as probable as the k-th most probable one; ``top_p``
    then keeps the smallest most-probable set holding that fraction of the remaining mass (ties
    at either boundary are kept).

    The softmax is taken in float32 (float64 for float64 logits) chunk by chunk; nothing of size
    (..., K) is allocated. Consumes two float64 uniforms per row. Returns int64 ids (...).
    """
    _check_filters(top_k, top_p)
    *batch, k = logits.shape
    flat = logits.reshape(-1, k)
    n = flat.shape[0]
    u_block, u_within = _uniforms(n, generator, flat.device), _uniforms(n, generator, flat.device)
    out = torch.empty(n, dtype=torch.long, device=flat.device)
    block = _block_size(k)
    for rows in _row_chunks(n, k, flat.device):
        w = _softmax_weights(flat[rows], exclude=None, top_k=top_k, top_p=top_p)
        law = _ChunkLaw.of(w, block, "logits")
        local = torch.arange(w.shape[0], device=w.device)
        out[rows] = law.draw(local, u_block[rows], u_within[rows])
    return out.reshape(batch)


# ----------------------------------------------------------------------------------------------
# One reverse step
# ----------------------------------------------------------------------------------------------


def _level(x: Alpha, b: int, ln: int, name: str, like: Tensor) -> float | Tensor:
    """A signal level as a float, or a float64 tensor broadcast to (B, L)."""
    if isinstance(x, Tensor) and x.numel() == 1:
        x = float(x)
    if not isinstance(x, Tensor):
        x = float(x)
        check_range(x, name, 0.0, 1.0)
        return x
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be a float or a tensor of shape (B, 1) or (B, L), got {tuple(x.shape)}"
        )
    try:
        x = x.to(device=like.device).expand(b, ln)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to (B, L) = ({b}, {ln})"
        ) from None
    check_range(x, name, 0.0, 1.0)
    return x


def _check_ordered(a_s: float | Tensor, a_t: float | Tensor) -> None:
    if not checks_enabled():
        return
    if bool(torch.as_tensor(a_s < a_t).any()):
        raise ValueError("alpha_s must be >= alpha_t (s < t: the reverse step gains signal)")


def _expand_k(a: Tensor, b: int, ln: int) -> Tensor:
    return a.expand(b, ln).unsqueeze(-1) if a.ndim == 2 else a


def _flat(x: float | Tensor) -> float | Tensor:
    return x if isinstance(x, float) else x.reshape(-1).to(torch.float64)


def _rows(x: float | Tensor, rows: slice) -> float | Tensor:
    return x if isinstance(x, float) else x[rows]


@typechecked
def uniform_ancestral_step(
    logits: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    alpha_s: Alpha,
    alpha_t: Alpha,
    *,
    kappa: Alpha | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, "b l"]:
    """One reverse step t -> s of the uniform-state process: z_s ~ q(z_s | z_t, x_hat), or the
    Ψ-sampler's kappa * q(z_s | z_t, x_hat) + (1 - kappa) * (alpha_s x_hat + (1 - alpha_s) / K).

    ``logits`` (B, L, K) from the denoiser; x_hat = softmax(logits) after top-k / nucleus
    filtering, renormalised. ``kappa`` in [0, 1] (float or (B, 1) / (B, L)); None or 1 is the
    ancestral step, and gives bit-identical samples for the same generator state.

    Derivation (SPEC §5). With q(z_t = i | z_s = j) = alpha_ts [i = j] + (1 - alpha_ts) / K and
    q(z_s = j | x_hat) = alpha_s x_hat_j + (1 - alpha_s) / K, K times their product is

        K alpha_ts alpha_s x_hat_j [i = j] + alpha_ts (1 - alpha_s) [i = j]
          + (1 - alpha_ts) alpha_s x_hat_j + (1 - alpha_ts)(1 - alpha_s) / K
        = (K alpha_t x_hat_i + alpha_ts - alpha_t) [i = j]       stay at z_t
          + (alpha_s - alpha_t) x_hat_j                          draw from x_hat
          + (1 - alpha_ts)(1 - alpha_s) / K                      draw uniformly

    using alpha_ts alpha_s = alpha_t. Summed over j the three weights give
    K alpha_t x_hat_i + alpha_ts - alpha_t + alpha_s - alpha_t + 1 - alpha_ts - alpha_s + alpha_t
    = K alpha_t x_hat_i + 1 - alpha_t = K q(z_t = i | x_hat), the posterior's denominator. All
    three are >= 0 for alpha_s >= alpha_t. So the step picks a component with one float64 uniform
    (probabilities weight / sum) and then draws from it: only x_hat needs O(K) work, and only
    for the tokens that pick it. The Ψ forward term alpha_s x_hat + (1 - alpha_s) / K is a
    mixture of the same two draws, so Ψ only changes the three component probabilities:
    p_stay -> kappa p_stay, p_xhat -> kappa p_xhat + (1 - kappa) alpha_s, the rest uniform.

    Randomness, in order: a float64 uniform per token (component), a uniform token per token,
    two float64 uniforms per token (the x_hat draw), whatever the component chosen.
    """
    _check_filters(top_k, top_p)
    b, ln, k = logits.shape
    check_tokens(z_t, k, "z_t")
    device = logits.device
    a_s = _level(alpha_s, b, ln, "alpha_s", logits)
    a_t = _level(alpha_t, b, ln, "alpha_t", logits)
    _check_ordered(a_s, a_t)
    kap = None if kappa is None else _flat(_level(kappa, b, ln, "kappa", logits))
    a_s, a_t = _flat(a_s), _flat(a_t)

    n = b * ln
    flat = logits.reshape(n, k)
    z_flat = z_t.reshape(n).to(device)
    u_mix = _uniforms(n, generator, device)
    noise = torch.randint(0, k, (n,), generator=generator, device=device)
    u_block, u_within = _uniforms(n, generator, device), _uniforms(n, generator, device)

    z_s = torch.empty_like(z_flat)
    block = _block_size(k)
    for rows in _row_chunks(n, k, device):
        w = _softmax_weights(flat[rows], exclude=None, top_k=top_k, top_p=top_p)
        law = _ChunkLaw.of(w, block, "logits")
        z = z_flat[rows]
        x_zt = w.gather(1, z.unsqueeze(-1)).squeeze(-1).to(torch.float64) / law.total
        at, as_ = _rows(a_t, rows), _rows(a_s, rows)
        a_ts = _ratio(at, as_)
        w_stay = k * at * x_zt + a_ts - at
        w_xhat = as_ - at
        w_unif = (1 - a_ts) * (1 - as_)
        total = w_stay + w_xhat + w_unif
        safe = torch.where(total > 0, total, 1.0)
        p_stay = torch.where(total > 0, w_stay / safe, 1.0)  # an impossible z_t stays put
        p_xhat = torch.where(total > 0, w_xhat / safe, 0.0)
        if kap is not None:
            kr = _rows(kap, rows)
            p_stay = kr * p_stay
            p_xhat = kr * p_xhat + (1 - kr) * as_
        u = u_mix[rows]
        stay = u < p_stay
        from_xhat = ~stay & (u < p_stay + p_xhat)
        out = torch.where(stay, z, noise[rows])
        picked = from_xhat.nonzero().squeeze(-1)
        out[picked] = law.draw(picked, u_block[rows][picked], u_within[rows][picked])
        z_s[rows] = out
    return z_s.reshape(b, ln)


def _ratio(a_t: float | Tensor, a_s: float | Tensor) -> float | Tensor:
    """alpha_ts = alpha_t / alpha_s, with 0 / 0 = 1 (no time elapses between two pure-noise
    levels; any value gives the same law there since z_t is then uniform)."""
    if isinstance(a_t, float) and isinstance(a_s, float):
        return a_t / a_s if a_s > 0 else 1.0
    a_t, a_s = torch.as_tensor(a_t, dtype=torch.float64), torch.as_tensor(a_s, dtype=torch.float64)
    return torch.where(a_s > 0, a_t / torch.where(a_s > 0, a_s, 1.0), 1.0)


@typechecked
def masked_ancestral_step(
    logits: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    alpha_s: Alpha,
    alpha_t: Alpha,
    *,
    mask_id: int,
    remask: Alpha | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, "b l"]:
    """One reverse step t -> s of the masked (absorbing) process with SUBS and optional ReMDM
    remasking.

    x_hat = softmax(logits) with the mask class removed (SUBS: its logit is -inf), filtered by
    top-k / nucleus and renormalised. Unmasked tokens stay (SUBS carry-over), except that with
    ``remask`` = sigma in [0, sigma_max], sigma_max = min(1, (1 - alpha_s) / alpha_t), each is
    remasked with probability sigma. A masked token unmasks, drawing from x_hat, with probability

        p_unmask = (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t),

    which keeps the marginal: P(unmasked at s) = alpha_t (1 - sigma) + (1 - alpha_t) p_unmask
    = alpha_s. sigma = 0 is MDLM's (alpha_s - alpha_t) / (1 - alpha_t); sigma_max is the
    largest sigma with p_unmask <= 1. ReMDM is the Ψ-sampler of the masked process: mixing the
    posterior with weight kappa and the forward alpha_s x_hat + (1 - alpha_s) m with 1 - kappa
    gives exactly these probabilities with sigma = (1 - kappa)(1 - alpha_s).

    Only the rows that unmask touch the logits. Randomness, in order: three float64 uniforms
    per token (decision, then the two-stage x_hat draw), whatever the decision.
    """
    _check_filters(top_k, top_p)
    b, ln, k = logits.shape
    check_tokens(z_t, k, "z_t")
    if not 0 <= mask_id < k:
        raise ValueError(f"mask_id={mask_id} is outside [0, {k})")
    device = logits.device
    a_s = _level(alpha_s, b, ln, "alpha_s", logits)
    a_t = _level(alpha_t, b, ln, "alpha_t", logits)
    _check_ordered(a_s, a_t)
    a_s, a_t = _flat(a_s), _flat(a_t)
    sigma = 0.0 if remask is None else _flat(_level(remask, b, ln, "remask", logits))
    a_s_t = torch.as_tensor(a_s, dtype=torch.float64, device=device)
    a_t_t = torch.as_tensor(a_t, dtype=torch.float64, device=device)
    sigma_t = torch.as_tensor(sigma, dtype=torch.float64, device=device)
    if remask is not None and checks_enabled():
        sigma_max = torch.where(
            a_t_t > 0, ((1 - a_s_t) / torch.where(a_t_t > 0, a_t_t, 1.0)).clamp(max=1.0), 1.0
        )
        if bool((sigma_t > sigma_max + 1e-12).any()):
            raise ValueError(
                "remask probability sigma exceeds sigma_max = min(1, (1 - alpha_s) / alpha_t): "
                "the unmasking probability would exceed 1"
            )
    one_minus = 1 - a_t_t
    p_unmask = torch.where(
        one_minus > 0,
        (a_s_t - (1 - sigma_t) * a_t_t) / torch.where(one_minus > 0, one_minus, 1.0),
        1.0,
    ).clamp(0.0, 1.0)

    n = b * ln
    flat = logits.reshape(n, k)
    z_flat = z_t.reshape(n).to(device)
    u = _uniforms(n, generator, device)
    u_block, u_within = _uniforms(n, generator, device), _uniforms(n, generator, device)
    masked = z_flat == mask_id
    unmask = masked & (u < p_unmask)
    z_s = z_flat.clone()
    if remask is not None:
        z_s[~masked & (u < sigma_t)] = mask_id
    picked = unmask.nonzero().squeeze(-1)
    z_s[picked] = _draw_rows(flat, picked, u_block, u_within, mask_id, top_k, top_p)
    return z_s.reshape(b, ln)


def _draw_rows(
    flat: Tensor,
    picked: Tensor,
    u_block: Tensor,
    u_within: Tensor,
    exclude: int | None,
    top_k: int | None,
    top_p: float | None,
) -> Tensor:
    """Draw from softmax(flat[picked]) (class ``exclude`` removed, filtered), chunk by chunk."""
    k = flat.shape[1]
    out = torch.empty_like(picked)
    block = _block_size(k)
    for rows in _row_chunks(picked.numel(), k, flat.device):
        idx = picked[rows]
        w = _softmax_weights(flat[idx], exclude=exclude, top_k=top_k, top_p=top_p)
        law = _ChunkLaw.of(w, block, "logits")
        local = torch.arange(idx.numel(), device=flat.device)
        out[rows] = law.draw(local, u_block[idx], u_within[idx])
    return out


def _greedy(logits: Tensor, exclude: int | None, rows: Tensor | None = None) -> Tensor:
    """argmax over the classes of logits (B, L, K), for the ``rows`` of its (B*L, K) view (all
    rows if None), class ``exclude`` left out; raises on NaN / +inf."""
    k = logits.shape[-1]
    flat = logits.reshape(-1, k)
    if rows is None and exclude is None:
        values, best = flat.max(-1)
        _check_row_maxima(values)
        return best
    rows = torch.arange(flat.shape[0], device=flat.device) if rows is None else rows
    out = torch.empty_like(rows)
    for chunk in _row_chunks(rows.numel(), k, flat.device):
        part = flat[rows[chunk]]  # a copy: editing it leaves the model's logits alone
        if exclude is not None:
            part[:, exclude] = -torch.inf
        values, out[chunk] = part.max(-1)
        _check_row_maxima(values)
    return out


def _check_row_maxima(values: Tensor) -> None:
    if not bool(torch.isfinite(values).all()):
        raise ValueError("logits have a row with NaN or +inf values, or with no finite class")


# ----------------------------------------------------------------------------------------------
# kappa (Ψ) and sigma (ReMDM) schedules: callables (t, s) -> float
# ----------------------------------------------------------------------------------------------


def _check_weight_and_window(name: str, value: float, t_on: float, t_off: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if not 0.0 <= t_off <= t_on <= 1.0:
        raise ValueError(f"need 0 <= t_off <= t_on <= 1, got t_off={t_off}, t_on={t_on}")


def _inside(t: float, s: float, t_on: float, t_off: float) -> bool:
    """Whether the step t -> s lies in the window t_off <= s < t <= t_on."""
    return t <= t_on and s >= t_off


def _alpha_at(schedule: Schedule, t: float) -> float:
    # t = 0 is clean by definition (alpha_0 = 1), whatever rounding the schedule has there.
    if t == 0.0:
        return 1.0
    return float(schedule.alpha(torch.tensor(t, dtype=torch.float64)))


@dataclass(frozen=True)
class ConstantKappa:
    """Ψ weight kappa(t, s) = ``value`` for steps inside the window t_off <= s < t <= t_on, and
    1 (plain ancestral) outside it.

    The Ψ mixture puts (1 - kappa)(1 - alpha_s) extra mass on uniform noise per step, a fixed
    fraction 1 - kappa of the noise the forward process has at s: the analogue of ReMDM's
    "rescaled" schedule. Restricting it to a window mimics ReMDM's "loop" (correct only
    during a stretch of time)."""

    value: float
    t_on: float = 1.0
    t_off: float = 0.0

    def __post_init__(self) -> None:
        _check_weight_and_window("kappa", self.value, self.t_on, self.t_off)

    def __call__(self, t: float, s: float) -> float:
        return self.value if _inside(t, s, self.t_on, self.t_off) else 1.0


@dataclass(frozen=True)
class CappedKappa:
    """Ψ weight that renoises at most ``eta_cap`` of the tokens per step (ReMDM's "max-capped").

    The Ψ mixture's extra noise is sigma = (1 - kappa)(1 - alpha_s); this picks
    sigma = min(eta_cap, 1 - alpha_s), i.e. kappa = 1 - min(eta_cap, 1 - alpha_s) / (1 - alpha_s)
    (kappa = 1 when alpha_s = 1), inside the window t_off <= s < t <= t_on, 1 outside."""

    schedule: Schedule
    eta_cap: float
    t_on: float = 1.0
    t_off: float = 0.0

    def __post_init__(self) -> None:
        _check_weight_and_window("eta_cap", self.eta_cap, self.t_on, self.t_off)

    def __call__(self, t: float, s: float) -> float:
        if not _inside(t, s, self.t_on, self.t_off):
            return 1.0
        room = 1.0 - _alpha_at(self.schedule, s)
        if room <= 0.0:
            return 1.0
        return 1.0 - min(self.eta_cap, room) / room


def _sigma_max(schedule: Schedule, t: float, s: float) -> float:
    a_t, a_s = _alpha_at(schedule, t), _alpha_at(schedule, s)
    return 1.0 if a_t <= 0 else min(1.0, (1.0 - a_s) / a_t)


@dataclass(frozen=True)
class CappedRemask:
    """ReMDM "max-capped" remasking: sigma(t, s) = min(eta_cap, sigma_max(t, s)) inside the
    window t_off <= s < t <= t_on, 0 outside; sigma_max = min(1, (1 - alpha_s) / alpha_t)."""

    schedule: Schedule
    eta_cap: float
    t_on: float = 1.0
    t_off: float = 0.0

    def __post_init__(self) -> None:
        _check_weight_and_window("eta_cap", self.eta_cap, self.t_on, self.t_off)

    def __call__(self, t: float, s: float) -> float:
        if not _inside(t, s, self.t_on, self.t_off):
            return 0.0
        return min(self.eta_cap, _sigma_max(self.schedule, t, s))


@dataclass(frozen=True)
class RescaledRemask:
    """ReMDM "rescaled" remasking: sigma(t, s) = eta * sigma_max(t, s) inside the window
    t_off <= s < t <= t_on, 0 outside."""

    schedule: Schedule
    eta: float
    t_on: float = 1.0
    t_off: float = 0.0

    def __post_init__(self) -> None:
        _check_weight_and_window("eta", self.eta, self.t_on, self.t_off)

    def __call__(self, t: float, s: float) -> float:
        if not _inside(t, s, self.t_on, self.t_off):
            return 0.0
        return self.eta * _sigma_max(self.schedule, t, s)


# ----------------------------------------------------------------------------------------------
# Full samplers
# ----------------------------------------------------------------------------------------------


def _time_grid(steps: int, time_grid: Sequence[float] | Tensor | None) -> list[float]:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if time_grid is None:
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    grid = torch.as_tensor(time_grid, dtype=torch.float64).flatten().cpu()
    if grid.numel() != steps + 1:
        raise ValueError(
            f"time_grid has {grid.numel()} points; steps={steps} needs steps + 1 = {steps + 1}"
        )
    if not bool(torch.isfinite(grid).all()) or bool((grid < 0).any() | (grid > 1).any()):
        raise ValueError("time_grid must hold finite times in [0, 1]")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("time_grid must be strictly decreasing (from noise at t=1 to data at t=0)")
    return grid.tolist()


def _resolve_device(device: Any, generator: torch.Generator | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _progress(iterable: range, enabled: bool, desc: str) -> Iterator[int]:
    if not enabled:
        return iter(iterable)
    try:
        from tqdm.auto import tqdm
    except ImportError as err:  # pragma: no cover - tqdm ships with the examples extra
        raise ImportError("progress=True needs tqdm (pip install tqdm)") from err
    return iter(tqdm(iterable, desc=desc))


def _denoise(
    denoiser: Callable[..., Tensor],
    z: Tensor,
    sigma: Tensor,
    cond: dict[str, Any],
    vocab_size: int,
    step: int,
    t: float,
) -> Tensor:
    logits = denoiser(z, sigma, **cond)
    expected = (*z.shape, vocab_size)
    if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"denoiser returned {got} at step {step} (t={t:.6g}); expected logits of shape "
            f"(B, L, K) = {expected}"
        )
    if not logits.dtype.is_floating_point:
        raise ValueError(f"denoiser returned {logits.dtype} logits at step {step}; expected floats")
    return logits


def _with_context(err: ValueError, step: int, t: float) -> ValueError:
    return ValueError(f"denoiser output at step {step} (t={t:.6g}): {err}")


def _kappa_at(kappa: float | Callable[[float, float], float], t: float, s: float) -> float:
    value = float(kappa(t, s)) if callable(kappa) else float(kappa)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"kappa(t={t:.6g}, s={s:.6g}) = {value} is outside [0, 1]")
    return value


@torch.no_grad()
@typechecked
def sample_uniform(
    denoiser: Callable[..., Tensor],
    batch_size: int,
    length: int,
    steps: int,
    *,
    schedule: Schedule,
    vocab_size: int,
    greedy_tail: bool = True,
    top_p: float | None = None,
    top_k: int | None = None,
    kappa: float | Callable[[float, float], float] | None = None,
    time_grid: Sequence[float] | Tensor | None = None,
    callback: Callable[[int, float, Tensor], None] | None = None,
    progress: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    **cond: Any,
) -> Int[Tensor, "b l"]:
    """Sample (batch_size, length) tokens from a uniform-state diffusion model (Duo / UDLM).

    z_1 ~ Uniform(K); then ``steps`` reverse steps along ``time_grid`` (default uniform in t
    from 1 to 0; a user grid must hold steps + 1 strictly decreasing times in [0, 1]), each
    calling ``denoiser(z_t, sigma, **cond)`` once with sigma = -log(alpha_t) as float32 (B,)
    and taking an ancestral step (``uniform_ancestral_step``), or a Ψ step when ``kappa`` is
    given (a float in [0, 1] or a callable kappa(t, s), e.g. ``ConstantKappa``/``CappedKappa``;
    kappa = 1 reproduces ancestral sampling exactly). ``top_k`` / ``top_p`` filter x_hat before
    the posterior. With ``greedy_tail`` the last step returns argmax x_hat instead of sampling.
    alpha at t = 0 is taken as exactly 1 (clean).

    ``callback(step, s, z_s)`` runs after each step; ``progress`` shows a tqdm bar. Randomness
    comes only from ``generator``; tokens live on ``device`` (default: the generator's device).
    Runs under ``torch.no_grad()``. Returns int64 ids (batch_size, length).
    """
    check_vocab_size(vocab_size)
    _check_sizes(batch_size, length)
    _check_filters(top_k, top_p)
    grid = _time_grid(steps, time_grid)
    device = _resolve_device(device, generator)
    z = torch.randint(0, vocab_size, (batch_size, length), generator=generator, device=device)
    for i in _progress(range(steps), progress, "sampling"):
        t, s = grid[i], grid[i + 1]
        alpha_t, alpha_s = _alpha_at(schedule, t), _alpha_at(schedule, s)
        sigma = torch.full(
            (batch_size,),
            -math.log(alpha_t) if alpha_t > 0 else math.inf,
            dtype=torch.float32,
            device=device,
        )
        logits = _denoise(denoiser, z, sigma, cond, vocab_size, i, t)
        try:
            if greedy_tail and i == steps - 1:
                z = _greedy(logits, None).reshape(batch_size, length)
            else:
                kap = None if kappa is None else _kappa_at(kappa, t, s)
                z = uniform_ancestral_step(
                    logits,
                    z,
                    alpha_s,
                    alpha_t,
                    kappa=kap,
                    top_k=top_k,
                    top_p=top_p,
                    generator=generator,
                )
        except ValueError as err:
            if "logits" not in str(err):
                raise
            raise _with_context(err, i, t) from err
        del logits
        if callback is not None:
            callback(i, s, z)
    return z


def _check_sizes(batch_size: int, length: int) -> None:
    for name, value in (("batch_size", batch_size), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@torch.no_grad()
@typechecked
def sample_masked(
    denoiser: Callable[..., Tensor],
    batch_size: int,
    length: int,
    steps: int,
    *,
    schedule: Schedule,
    vocab_size: int,
    mask_id: int,
    cache: bool | None = None,
    time_conditioned: bool = False,
    remask: Callable[[float, float], float] | None = None,
    greedy_tail: bool = True,
    top_p: float | None = None,
    top_k: int | None = None,
    time_grid: Sequence[float] | Tensor | None = None,
    callback: Callable[[int, float, Tensor], None] | None = None,
    progress: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    **cond: Any,
) -> Int[Tensor, "b l"]:
    """Sample (batch_size, length) tokens from a masked diffusion model (MDLM, SUBS).

    z_1 = all ``mask_id``; then ``steps`` reverse steps (``masked_ancestral_step``) along
    ``time_grid`` (as in ``sample_uniform``). ``remask``: a ReMDM schedule sigma(t, s)
    (``CappedRemask``, ``RescaledRemask`` or any callable returning sigma in
    [0, min(1, (1 - alpha_s) / alpha_t)]); None is plain MDLM. With ``greedy_tail`` the last
    step fills every remaining mask with argmax x_hat (mask class excluded).

    ``time_conditioned=False`` (MDLM's default) passes sigma = 0 to the denoiser, which then sees
    only z_t; ``cache`` (default: on exactly when not time-conditioned) then reuses x_hat while
    no token changed, which gives the same samples with fewer denoiser calls. ``cache=True``
    with ``time_conditioned=True`` is an error: the prediction depends on t. With
    ``time_conditioned=True`` sigma = -log(alpha_t) (B,) float32.

    ``callback(step, s, z_s)`` after each step; ``progress`` shows a tqdm bar; randomness only
    from ``generator``. Runs under ``torch.no_grad()``. Returns int64 ids (batch_size, length).
    """
    check_vocab_size(vocab_size)
    _check_sizes(batch_size, length)
    _check_filters(top_k, top_p)
    if isinstance(mask_id, bool) or not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id!r} is outside [0, vocab_size={vocab_size})")
    if cache is None:
        cache = not time_conditioned
    elif cache and time_conditioned:
        raise ValueError(
            "cache=True reuses predictions across noise levels, which is only valid when the "
            "denoiser is not time-conditioned; pass cache=False (or time_conditioned=False)"
        )
    grid = _time_grid(steps, time_grid)
    device = _resolve_device(device, generator)
    z = torch.full((batch_size, length), mask_id, dtype=torch.long, device=device)
    logits: Tensor | None = None
    for i in _progress(range(steps), progress, "sampling"):
        t, s = grid[i], grid[i + 1]
        alpha_t, alpha_s = _alpha_at(schedule, t), _alpha_at(schedule, s)
        if logits is None:
            level = (-math.log(alpha_t) if alpha_t > 0 else math.inf) if time_conditioned else 0.0
            sigma = torch.full((batch_size,), level, dtype=torch.float32, device=device)
            logits = _denoise(denoiser, z, sigma, cond, vocab_size, i, t)
            if checks_enabled() and not bool(torch.isfinite(logits.amax(-1)).all()):
                raise ValueError(
                    f"denoiser output at step {i} (t={t:.6g}): logits have a row with NaN or "
                    "+inf values, or with no finite class"
                )
        try:
            if greedy_tail and i == steps - 1:
                flat = z.reshape(-1)
                rows = (flat == mask_id).nonzero().squeeze(-1)
                z_new = flat.clone()
                z_new[rows] = _greedy(logits, mask_id, rows)
                z_new = z_new.reshape(batch_size, length)
            else:
                sig = None if remask is None else float(remask(t, s))
                z_new = masked_ancestral_step(
                    logits,
                    z,
                    alpha_s,
                    alpha_t,
                    mask_id=mask_id,
                    remask=sig,
                    top_k=top_k,
                    top_p=top_p,
                    generator=generator,
                )
        except ValueError as err:
            if "logits" not in str(err):
                raise
            raise _with_context(err, i, t) from err
        if not cache or not torch.equal(z_new, z):
            logits = None
        z = z_new
        if callback is not None:
            callback(i, s, z)
    return z
