"""Duo's Gaussian latents (Concepts §4): w_t = alpha~_t onehot(x_0) + sigma~_t eps, its argmax,
its relaxation softmax(w_t / tau), and the top-k latent of Duo++ (no (B, L, K) tensor).

``alpha_tilde`` is the Gaussian signal level alpha~_t in [0, 1], (B, 1) or (B, L);
sigma~_t = sqrt(1 - alpha~_t^2). Under the Gaussian latent, z_t = argmax w_t follows the uniform
process with alpha_t = T(alpha~_t) (``discdiff.duality``). Every sampler takes an explicit
``generator`` and never seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff.duality import signal_to_noise
from discdiff.processes._common import LevelTensor, check_tau, float_dtype
from discdiff.typing import check_range, check_tokens, check_vocab_size, typechecked

__all__ = [
    "GaussianLatent",
    "TopKLatent",
    "argmax_pair",
    "gaussian_latent",
    "relax",
    "topk_gaussian_latent",
]


@dataclass(frozen=True)
class GaussianLatent:
    """A Gaussian latent and its argmax.

    w_t: alpha~_t onehot(x_0) + sigma~_t eps, shape (B, L, K).
    z_t: argmax_k w_t[k], shape (B, L), int64; uniform-state distributed with alpha_t = T(alpha~_t).
    """

    w_t: Float[Tensor, "b l k"]
    z_t: Int[Tensor, "b l"]


def _sigma_tilde(alpha_tilde: Tensor) -> Tensor:
    # (1 - a)(1 + a) keeps its relative accuracy near a = 1, where 1 - a^2 cancels.
    return ((1 - alpha_tilde) * (1 + alpha_tilde)).clamp_min(0).sqrt()


@typechecked
def gaussian_latent(
    x_0: Int[Tensor, "b l"],
    alpha_tilde: LevelTensor,
    vocab_size: int,
    *,
    noise: Float[Tensor, "b l k"] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> GaussianLatent:
    """Draw w_t = alpha~ onehot(x_0) + sqrt(1 - alpha~^2) eps and z_t = argmax w_t.

    ``alpha_tilde`` is (B, 1) or (B, L). ``noise`` is eps, (B, L, K): pass the same eps at two
    noise levels for the deterministic (DDIM) pairs of consistency distillation; without it eps is
    drawn from ``generator``. w_t has ``dtype``, by default that of ``alpha_tilde`` (promoted
    with ``noise``'s, at least float32), so float64 in gives float64 out.
    """
    check_vocab_size(vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_tilde, "alpha_tilde", 0.0, 1.0)
    shape = (*x_0.shape, vocab_size)
    if noise is not None and tuple(noise.shape) != shape:
        raise ValueError(
            f"noise must have shape (B, L, vocab_size) = {shape}, got {tuple(noise.shape)}"
        )
    if dtype is None:
        dtype = float_dtype(alpha_tilde.dtype, *(() if noise is None else (noise.dtype,)))
    a = alpha_tilde.to(dtype).expand(x_0.shape)
    sigma = _sigma_tilde(a).unsqueeze(-1)
    if noise is None:
        w_t = torch.randn(shape, generator=generator, device=x_0.device, dtype=dtype).mul_(sigma)
    else:
        w_t = noise.to(dtype) * sigma
    w_t = w_t.scatter_add_(-1, x_0.long().unsqueeze(-1), a.unsqueeze(-1))
    return GaussianLatent(w_t=w_t, z_t=w_t.argmax(dim=-1))


@typechecked
def relax(w_t: Float[Tensor, "b l k"], tau: float | int) -> Float[Tensor, "b l k"]:
    """The curriculum's relaxed input softmax(w_t / tau), shape (B, L, K), dtype of ``w_t``.

    As tau -> 0 it tends to onehot(argmax w_t).
    """
    check_tau(float(tau))
    return torch.softmax(w_t / tau, dim=-1)


# --------------------------------------------------------------------------------------------
# The efficient top-k latent (Duo++): O(B L n) work, no (B, L, K) tensor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopKLatent:
    """The ``top_k`` largest coordinates of a Gaussian latent, as an embedding bag.

    ids: their class ids, distinct, sorted by decreasing w_t, shape (B, L, n), int64.
    weights: softmax(w_t / tau) at those ids over all K coordinates, (B, L, n); they sum to
        ``1 - tail_mass`` (the mass of the other K - n classes is not in the bag).
    z_t: the true argmax of w_t over all K coordinates (= ids[..., 0]), shape (B, L), int64.
    values: w_t at those ids, (B, L, n).
    tail_mass: the softmax mass of the K - n coordinates left out, (B, L) (partly estimated, see
        ``topk_gaussian_latent``).
    """

    ids: Int[Tensor, "b l n"]
    weights: Float[Tensor, "b l n"]
    z_t: Int[Tensor, "b l"]
    values: Float[Tensor, "b l n"]
    tail_mass: Float[Tensor, "b l"]


def _first_occurrences(draws: Tensor) -> Tensor:
    """Mark, along the last axis, each value's first occurrence."""
    ordered, order = draws.sort(dim=-1, stable=True)  # stable: a repeat sorts after its first
    first_sorted = torch.ones_like(ordered, dtype=torch.bool)
    first_sorted[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    return torch.zeros_like(first_sorted).scatter_(-1, order, first_sorted)


def _distinct_uniform(
    m: int, n: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """An ordered n-tuple of distinct ids drawn uniformly from {0, ..., m-1}, shape (*shape, n).

    Exact. For n close to m: the first n of a random permutation (random float64 keys). Otherwise:
    the first n distinct values of an i.i.d. uniform stream, in order of first appearance (each
    new value is uniform over the unseen ones, i.e. sampling without replacement); the stream is
    lengthened for all rows in the rare case some row has fewer than n distinct values.
    """
    if n == 0:
        return torch.zeros(*shape, 0, dtype=torch.long, device=device)
    if m <= max(64, 4 * n):
        keys = torch.rand(*shape, m, generator=generator, device=device, dtype=torch.float64)
        return keys.topk(n, dim=-1).indices
    # Expected repeats among N draws are about N^2 / (2m); draw a margin above that.
    block = n + 2 * (n * n) // m + 8
    draws = torch.randint(m, (*shape, block), generator=generator, device=device)
    first = _first_occurrences(draws)
    while bool((first.sum(-1) < n).any()):
        more = torch.randint(m, (*shape, n // 4 + 8), generator=generator, device=device)
        draws = torch.cat([draws, more], dim=-1)
        first = _first_occurrences(draws)
    position = torch.arange(draws.shape[-1], device=device)
    # First occurrences keep their stream order, repeats go behind all of them.
    key = torch.where(first, position, position + draws.shape[-1])
    take = key.topk(n, dim=-1, largest=False).indices  # sorted ascending by key
    return draws.gather(-1, take)


def _top_normal_order_statistics(
    m: int, n: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """The n largest of m i.i.d. N(0, 1) draws, decreasing, float64, shape (*shape, n).

    With U_(m) >= U_(m-1) >= ... the uniform order statistics, U_(m) = V_1^(1/m) and
    U_(m-i) = U_(m-i+1) V_{i+1}^(1/(m-i)), so S_i = -log U_(m-i+1) = sum_{j<=i} E_j / (m-j+1)
    with E_j ~ Exp(1). The normal value is ndtri(U) = -ndtri(1 - U); 1 - U = -expm1(-S) keeps
    the upper tail accurate, and ndtri(exp(-S)) the lower one.
    """
    e = torch.empty(*shape, n, dtype=torch.float64, device=device).exponential_(generator=generator)
    remaining = m - torch.arange(n, dtype=torch.float64, device=device)
    s = torch.cumsum(e / remaining, dim=-1)
    upper = -torch.expm1(-s)  # 1 - U
    tiny = torch.finfo(torch.float64).tiny
    return torch.where(
        upper < 0.5,
        -torch.special.ndtri(upper.clamp_min(tiny)),
        torch.special.ndtri(torch.exp(-s)),
    )


def _log_ndtr_plus_half_square(y: Tensor) -> Tensor:
    """log Phi(y) + y^2 / 2 without cancellation for y << 0 (log of erfcx(-y / sqrt 2) / 2)."""
    negative = torch.special.erfcx((-y).clamp_min(0) / math.sqrt(2)).mul(0.5).log()
    positive = torch.special.log_ndtr(y.clamp_min(0)) + 0.5 * y.clamp_min(0).square()
    return torch.where(y < 0, negative, positive)


def _log_truncated_exp_moment(z: Tensor, a: Tensor) -> Tensor:
    """log E[exp(a X) | X < z] for X ~ N(0, 1), stable for large a.

    = a^2/2 + log Phi(z - a) - log Phi(z) = a z - z^2/2 + h(z - a) - log Phi(z),
    h(y) = log Phi(y) + y^2/2.
    """
    return a * z - 0.5 * z.square() + _log_ndtr_plus_half_square(z - a) - torch.special.log_ndtr(z)


@typechecked
def topk_gaussian_latent(
    x_0: Int[Tensor, "b l"],
    alpha_tilde: LevelTensor,
    vocab_size: int,
    top_k: int,
    tau: float | int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> TopKLatent:
    """The ``top_k`` largest coordinates of w_t and the true argmax, without a (B, L, K) tensor.

    Exact in law for ids, values and z_t: the clean coordinate is w_x = alpha~ + sigma~ eps_x;
    the K - 1 others are i.i.d. N(0, sigma~^2), of which only the n = min(top_k, K - 1) largest
    are drawn, exactly, as normal order statistics (float64), at n distinct ids drawn uniformly
    without replacement among the non-x classes. The ``top_k`` largest of these n + 1 candidates
    are the ``top_k`` largest of all K coordinates, and z_t = argmax over all K (either x or the
    top noise coordinate; not "x if x is anywhere in the top-k").

    Weights are softmax(w_t / tau) over all K classes at the kept ids. The normaliser counts the
    kept and the dropped candidate exactly, and replaces the sum of exp(w_j / tau) over the
    K - 1 - n undrawn coordinates (all below the n-th order statistic c) by its conditional
    expectation (K - 1 - n) E[exp(w / tau) | w < c] in closed form; so weights sum to
    1 - tail_mass <= 1, exactly 1 when top_k = K. Cost O(B L top_k log top_k).

    Args:
        x_0: clean ids (B, L).
        alpha_tilde: Gaussian signal level (B, 1) or (B, L) in [0, 1].
        top_k: n, the bag size, 1 <= top_k <= K.
        tau: temperature > 0.
        dtype: of ``weights``/``values``; default that of ``alpha_tilde`` (at least float32).

    Returns:
        ``TopKLatent`` with ids, weights, values (B, L, top_k), z_t and tail_mass (B, L).
    """
    check_vocab_size(vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_tilde, "alpha_tilde", 0.0, 1.0)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be an integer in [1, vocab_size={vocab_size}], got {top_k!r}")
    check_tau(float(tau))
    out_dtype = float_dtype(alpha_tilde.dtype) if dtype is None else dtype
    shape, device = tuple(x_0.shape), x_0.device
    m = vocab_size - 1
    n = min(top_k, m)
    x = x_0.long()

    a = alpha_tilde.to(torch.float64).expand(shape)
    sigma = _sigma_tilde(a)
    clean = a + sigma * torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    z = _top_normal_order_statistics(m, n, shape, generator, device)  # standardised, decreasing
    other = _distinct_uniform(m, n, shape, generator, device)
    other = other + (other >= x.unsqueeze(-1)).long()  # skip the clean id

    values = torch.cat([clean.unsqueeze(-1), sigma.unsqueeze(-1) * z], dim=-1)
    ids = torch.cat([x.unsqueeze(-1), other], dim=-1)
    values, order = values.sort(dim=-1, descending=True)
    ids = ids.gather(-1, order)

    logits = values / tau
    undrawn = m - n
    if undrawn > 0:
        c = z[..., -1]
        log_tail = math.log(undrawn) + _log_truncated_exp_moment(c, sigma / tau)
    else:
        log_tail = torch.full(shape, -math.inf, dtype=torch.float64, device=device)
    log_rest = torch.logsumexp(torch.cat([logits[..., top_k:], log_tail.unsqueeze(-1)], -1), -1)
    log_norm = torch.logaddexp(torch.logsumexp(logits[..., :top_k], dim=-1), log_rest)
    weights = torch.exp(logits[..., :top_k] - log_norm.unsqueeze(-1))
    return TopKLatent(
        ids=ids[..., :top_k],
        weights=weights.to(out_dtype),
        z_t=ids[..., 0],
        values=values[..., :top_k].to(out_dtype),
        tail_mass=torch.exp(log_rest - log_norm).to(out_dtype),
    )


@typechecked
def argmax_pair(
    x_0: Int[Tensor, "b l"],
    alpha_tilde_t: Float[Tensor, "b _l"],
    alpha_tilde_s: Float[Tensor, "b _l"],
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Int[Tensor, "b l"], Int[Tensor, "b l"]]:
    """(z_t, z_s) = (argmax w_t, argmax w_s) for w = alpha_tilde onehot(x_0) + sigma_tilde eps with
    one eps ~ N(0, I_K) shared by both levels; ``alpha_tilde_*`` are (B, 1) or (B, L) in [0, 1].

    Exact in law, and O(1) per token instead of O(K): eps is never drawn. Every coordinate but
    the clean one is sigma_tilde eps_k at both levels, so the best rival is the same class j at
    both levels, uniform over the K - 1 others, with value sigma_tilde m, m the maximum of K - 1
    standard normals (drawn by inverting its cdf Phi(m)^(K-1)). The clean coordinate wins at a
    level iff alpha_tilde / sigma_tilde + eps_x > m. Each of z_t, z_s has the uniform-state law
    with alpha = T(alpha_tilde); their joint law is that of ``processes.gaussian_latent`` called
    twice with the same ``noise``. Returns two int64 (B, L) tensors.
    """
    check_vocab_size(vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_tilde_t, "alpha_tilde_t", 0.0, 1.0)
    check_range(alpha_tilde_s, "alpha_tilde_s", 0.0, 1.0)
    for name, a in (("alpha_tilde_t", alpha_tilde_t), ("alpha_tilde_s", alpha_tilde_s)):
        if a.shape[1] not in (1, x_0.shape[1]):
            raise ValueError(
                f"{name} must be (B, 1) or (B, L) = {tuple(x_0.shape)}, got {tuple(a.shape)}"
            )
    shape, device = x_0.shape, x_0.device
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    eps_x = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    offset = torch.randint(1, vocab_size, shape, generator=generator, device=device)
    rival = torch.remainder(x_0.long() + offset, vocab_size)
    # m = Phi^-1(u^(1/(K-1))) through the upper tail: 1 - u^(1/(K-1)) keeps its precision.
    m = -torch.special.ndtri(-torch.expm1(torch.log(u) / (vocab_size - 1)))
    margin = eps_x - m
    z_t = torch.where(signal_to_noise(alpha_tilde_t) + margin > 0, x_0.long(), rival)
    z_s = torch.where(signal_to_noise(alpha_tilde_s) + margin > 0, x_0.long(), rival)
    return z_t, z_s
