"""An exact block model of an explicit law, and the exact law of the block sampler run on it.

``BlockOracle(law, block_size)`` is the block-optimal denoiser of a joint law (K,) * L (K <= 4,
L <= 6 keep every table small) for either process, implementing the block-model protocol of
``discdiff.samplers.blocks`` (its "cache" holds the clean tokens themselves). For block k it
returns x_hat of the block's tokens given the clean prefix x^{<k} and the noisy block z^k, the
future blocks marginalised out:

- uniform process: the leave-one-out law x_hat^l = p(x^l | x^{<k}, z^{k, -l}) with the
  likelihood q(z^m | x^m) = alpha_m [z^m = x^m] + (1 - alpha_m) / K at the block's per-token
  levels (alpha_m = 1, sigma = 0, at clean context): the plug-in posterior is then the true
  reverse process of the block given its prefix (``discdiff.testing.toys`` says why);
- masked process (``masked=True``): x_hat^l = p(x^l | x^{<k}, the unmasked tokens of z^{k,-l})
  whatever the level (SUBS; the mask is id K and its logit is ignored by the samplers and
  losses). With b = 1 that is the autoregressive conditional p(x^k | x^{<k}).

``block_chain`` is the exact law of ``sample_*_blocks`` with the "none" tail on such a model:
per block, one transition matrix per step over the block's states, for every prefix.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from discdiff.samplers import TimeGrid, uniform_posterior
from discdiff.testing.laws import sequence_ids
from discdiff.testing.toys import all_sequences

__all__ = ["BlockOracle", "ToyBlockCache", "block_chain", "exact_block_nelbo"]

F64 = torch.float64


class ToyBlockCache:
    """The toy's cache: the clean tokens themselves, (B, length). ``length``, ``crop(n)`` and
    ``reset()`` as the DiT's cache; the model's ``prefill`` appends."""

    def __init__(self, max_len: int | None = None) -> None:
        self.max_len = max_len
        self.tokens: Tensor | None = None
        self.length = 0

    def held(self, batch_size: int) -> Tensor:
        """The cached tokens (B, length) (an empty (B, 0) before the first prefill)."""
        if self.tokens is None:
            return torch.zeros(batch_size, 0, dtype=torch.long)
        return self.tokens[:, : self.length]

    def append(self, x: Tensor) -> None:
        held = self.held(x.shape[0])
        if held.shape[0] != x.shape[0]:
            raise ValueError(f"the cache holds {held.shape[0]} rows, the tokens {x.shape[0]}")
        self.tokens = torch.cat([held, x.long().cpu()], 1)
        self.length = self.tokens.shape[1]
        if self.max_len is not None and self.length > self.max_len:
            raise ValueError(f"the cache holds {self.length} > max_len={self.max_len} tokens")

    def crop(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self.length = length

    def reset(self) -> None:
        self.length = 0


class BlockOracle:
    """The block-optimal denoiser of a law (K,) * L with blocks of ``block_size`` (module
    docstring). A block model: ``block_size``, ``reads_token_levels``, ``training_length`` = L
    (the most positions it knows: a longer sample slides its window). Calls:

    - ``model(z, sigma, x_0=x_0)``: z (B, L') with L' <= L a multiple of b, sigma (B, L') or
      (B,), x_0 (B, L') of which only the blocks before each block are read;
    - ``model(z, sigma, kv_cache=cache)``: z (B, n), n <= b, the positions right after the
      cached tokens;
    - ``model(z, sigma)`` without either: z (B, n), n <= b, the first block;
    - ``prefill(x, cache)``, ``new_kv_cache(max_len)``.

    Returns float64 log-probabilities (B, n, K) (masked: with a mask column at a large finite
    logit, (B, n, K + 1)). Relaxed (B, n, K) inputs are read at their argmax. ``calls`` counts
    the denoising calls, ``prefills`` the prefill calls, ``positions`` the largest position
    seen (checks that a sliding sample stays within the window).
    """

    reads_token_levels = True
    MASK_LOGIT = 5.0

    def __init__(self, law: Tensor, block_size: int, *, masked: bool = False) -> None:
        self.law, self.k, self.length = law.to(F64), law.shape[0], law.ndim
        if self.length % block_size:
            raise ValueError(f"block_size={block_size} must divide the law's L = {self.length}")
        self.block_size, self.masked = block_size, masked
        self.training_length = self.length
        self.calls = self.prefills = 0
        self.positions = 0

    def new_kv_cache(self, max_len: int | None = None) -> ToyBlockCache:
        return ToyBlockCache(max_len)

    def prefill(self, x: Tensor, cache: ToyBlockCache, **cond: Any) -> None:
        self.prefills += 1
        cache.append(x)

    def __call__(self, z: Tensor, sigma: Tensor, *, x_0: Tensor | None = None,
                 kv_cache: ToyBlockCache | None = None, **cond: Any) -> Tensor:  # fmt: skip
        self.calls += 1
        if z.is_floating_point():  # the curriculum's relaxed input
            z = z.argmax(-1)
        z = z.long().cpu()
        sigma = sigma.to(F64).cpu()
        sigma = sigma.unsqueeze(-1).expand(z.shape) if sigma.ndim == 1 else sigma
        b = self.block_size
        if x_0 is None:
            if z.shape[1] > b:
                raise ValueError(f"z holds {z.shape[1]} > block_size={b} tokens: pass x_0 "
                                 "(the training call) or kv_cache")  # fmt: skip
            prefix = kv_cache.held(z.shape[0]) if kv_cache is not None else z[:, :0]
            return self.block_logits(prefix, z, sigma)
        if z.shape[1] % b:
            raise ValueError(f"z holds L = {z.shape[1]} tokens, not a multiple of b = {b}")
        parts = [
            self.block_logits(x_0[:, :i].long().cpu(), z[:, i : i + b], sigma[:, i : i + b])
            for i in range(0, z.shape[1], b)
        ]
        return torch.cat(parts, 1)

    def next_law(self, prefix: Tensor, n: int) -> Tensor:
        """p(x^{c..c+n} | x^{<c} = prefix) for prefixes (B, c): (B, K^n) in ``all_sequences``
        order, the positions after c + n summed out."""
        c = prefix.shape[1]
        if c + n > self.length:
            raise ValueError(f"positions [{c}, {c + n}) lie beyond the model's L = {self.length}")
        self.positions = max(self.positions, c + n)
        head = self.law.sum(dim=tuple(range(c + n, self.length))) if c + n < self.length else (
            self.law)  # fmt: skip
        table = head.reshape(self.k**c, self.k**n)
        rows = table[sequence_ids(prefix, self.k)] if c else table.expand(prefix.shape[0], -1)
        return rows / rows.sum(-1, keepdim=True)

    def likelihood(self, z: Tensor, sigma: Tensor, states: Tensor) -> Tensor:
        """The evidence of each noisy token of z (B, n) about each block state (S, n): (B, S, n)."""
        same = (z[:, None, :] == states[None]).to(F64)
        if self.masked:
            return torch.where(z[:, None, :] == self.k, 1.0, same)
        alpha = torch.exp(-sigma)[:, None, :]
        return alpha * same + (1 - alpha) / self.k

    def block_probs(self, prefix: Tensor, z: Tensor, sigma: Tensor) -> Tensor:
        """x_hat (B, n, K) float64 of the block z (B, n) at levels sigma (B, n) after the clean
        ``prefix`` (B, c): each position's law given the prefix and the block's other tokens."""
        n = z.shape[1]
        states = all_sequences(self.k, n)  # (S, n)
        weight = self.next_law(prefix, n)  # (B, S)
        like = self.likelihood(z, sigma, states)
        onehot = F.one_hot(states, self.k).to(F64)  # (S, n, K)
        rows = []
        for pos in range(n):
            others = [m for m in range(n) if m != pos]
            w = weight * like[..., others].prod(-1) if others else weight
            rows.append(w @ onehot[:, pos])
        x_hat = torch.stack(rows, 1)
        return x_hat / x_hat.sum(-1, keepdim=True)

    def block_logits(self, prefix: Tensor, z: Tensor, sigma: Tensor) -> Tensor:
        logits = self.block_probs(prefix, z, sigma).log()
        if not self.masked:
            return logits
        return torch.cat([logits, logits.new_full((*z.shape, 1), self.MASK_LOGIT)], -1)


def _step_laws(oracle: BlockOracle, prefix: Tensor, z: Tensor, held: Tensor, a_t: float,
               a_s: float) -> Tensor:  # fmt: skip
    """The per-position law of z_s (R, b, K') given z (R, b) after ``prefix`` (R, c); ``held``
    (b,) True at a prompt's clean positions (level 0, never moved)."""
    sigma = torch.full(z.shape, -torch.log(torch.tensor(a_t, dtype=F64)).item(), dtype=F64)
    sigma[:, held] = 0.0
    x_hat = oracle.block_probs(prefix, z, sigma)
    if not oracle.masked:
        return uniform_posterior(x_hat, z, a_s, a_t)
    k = oracle.k
    masked = (z == k).unsqueeze(-1)
    stay = F.one_hot(z, k + 1).to(F64)
    unmask = (a_s - a_t) / (1 - a_t)
    from_mask = torch.cat([unmask * x_hat, torch.full((*z.shape, 1), 1 - unmask, dtype=F64)], -1)
    return torch.where(masked, from_mask, stay)


def _block_transitions(oracle: BlockOracle, prefixes: Tensor, given: Tensor, grid: TimeGrid
                       ) -> Tensor:  # fmt: skip
    """The law (R, K^f) of a block's f free tokens after each prefix (R, c), ``given`` (r,)
    prompt tokens at its start, sampled on ``grid`` with the "none" tail."""
    b, r, k = oracle.block_size, given.numel(), oracle.k
    n_rows = prefixes.shape[0]
    values = k + 1 if oracle.masked else k
    states = all_sequences(values, b - r)  # (S, f)
    s = states.shape[0]
    z = torch.cat([given.expand(s, r), states], 1)  # (S, b)
    held = torch.arange(b) < r
    law = torch.zeros(n_rows, s, dtype=F64)
    start = torch.full((b - r,), k, dtype=torch.long) if oracle.masked else None
    if start is None:
        law[:] = 1.0 / s
    else:
        law[:, int(sequence_ids(start[None], values))] = 1.0
    rows_prefix = prefixes.repeat_interleave(s, 0)
    rows_z = z.repeat(n_rows, 1)
    for i in range(grid.steps):
        post = _step_laws(oracle, rows_prefix, rows_z, held, grid.alpha[i], grid.alpha[i + 1])
        post = post.view(n_rows, s, b, values)[:, :, r:]  # (R, S, f, V)
        step = torch.ones(n_rows, s, s, dtype=F64)
        for j in range(b - r):
            step = step * post[:, :, j, :][:, :, states[:, j]]
        law = torch.bmm(law.unsqueeze(1), step).squeeze(1)
    # The last step goes to t = 0: every state left holds clean tokens only.
    clean = (states < k).all(-1)
    law = law[:, clean]
    return law / law.sum(-1, keepdim=True)


def block_chain(oracle: BlockOracle, grid: TimeGrid, prompt: Tensor | None = None) -> Tensor:
    """The exact law of the block sampler on ``oracle`` with the "none" tail on ``grid`` (its
    steps per block), over the L - P tokens after the ``prompt`` (P,) (none: all L): float64
    (K^(L-P),) in ``sequence_ids`` order. Block by block, for every prefix of clean tokens, the
    block's law is the product of its steps' transition matrices (the positions of one step
    drawn independently, as the sampler draws them)."""
    if grid.alpha[-1] != 1.0:
        raise ValueError("block_chain needs a grid that ends at t = 0 (the 'none' tail)")
    k, b, length = oracle.k, oracle.block_size, oracle.length
    prompt = torch.zeros(0, dtype=torch.long) if prompt is None else prompt.long()
    p = prompt.numel()
    prefixes = prompt.view(1, p)
    probs = torch.ones(1, dtype=F64)
    for start in range(p - p % b, length, b):
        given = prefixes[0, start:]  # a prompt's partial block (the same for every prefix)
        block = _block_transitions(oracle, prefixes[:, :start], given, grid)  # (R, K^f)
        f = b - given.numel()
        probs = (probs.unsqueeze(-1) * block).reshape(-1)
        tails = all_sequences(k, f)
        prefixes = torch.cat([prefixes.repeat_interleave(tails.shape[0], 0),
                              tails.repeat(prefixes.shape[0], 1)], 1)  # fmt: skip
    return probs


def _block_states(process: Any, x_block: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """Every noisy version of the clean blocks x_block (R, b) at levels alpha (T,) and its
    probability: z (R, T, S, b) and q(z | x) (R, T, S)."""
    r, b = x_block.shape
    alpha = alpha.view(1, -1, 1, 1)
    if process.model_vocab_size == process.vocab_size:  # uniform: any of the K^b blocks
        states = all_sequences(process.vocab_size, b)  # (S, b)
        same = (states[None] == x_block[:, None]).to(F64)[:, None]  # (R, 1, S, b)
        q = (alpha * same + (1 - alpha) / process.vocab_size).prod(-1)
        z = states.expand(r, alpha.shape[1], -1, -1)
    else:  # masked: each token kept or masked
        hidden = all_sequences(2, b).bool()  # (S, b), True = masked
        q = torch.where(hidden[None, None], 1 - alpha, alpha).prod(-1).expand(r, -1, -1)
        z = torch.where(hidden[None], process.mask_id, x_block[:, None]).unsqueeze(1)
        z = z.expand(r, alpha.shape[1], -1, -1)
    return z, q


def exact_block_nelbo(diffusion: Any, model: Any, x_0: Tensor, nodes: int = 64) -> Tensor:
    """The block NELBO of ``diffusion`` (built with ``block_size``) on ``model``, its Monte
    Carlo draws replaced by their expectations: per row of x_0 (R, L), float64 (R,).

    The diffusion term of block k is (1 - eps) E_t E_{z^k} loss_k with t ~ U[eps, 1]: the
    z^k expectation by enumerating the block's noisy states (K^b for the uniform process, the
    2^b mask patterns for the masked one; block k's loss reads no other noisy block), the t
    integral by Gauss-Legendre quadrature on ``nodes`` points; the reconstruction term likewise
    at t = eps, the prior term exact. What ``diffusion.nelbo`` estimates with one draw."""
    import numpy as np

    from discdiff.blocks import block_integrand, block_logits

    process, schedule, eps, b = diffusion.process, diffusion.schedule, diffusion.eps, (
        diffusion.block_size)  # fmt: skip
    rows, length = x_0.shape
    # Gauss-Legendre in v = log t on [log eps, 0] (dt = t dv): the integrands vary on the
    # scale of t itself near t = eps, where a grid uniform in t would resolve them poorly.
    u, w = np.polynomial.legendre.leggauss(nodes)
    v = torch.tensor(math.log(eps) * (1 - u) / 2, dtype=F64)
    t = torch.exp(v)
    weights = torch.tensor(w * -math.log(eps) / 2, dtype=F64) * t
    one = torch.ones(1, dtype=F64)
    total = process.prior(x_0, schedule.alpha(one).view(1, 1).expand(rows, 1)).sum(-1).to(F64)
    for k in range(0, length, b):
        for times, wt, term in ((t, weights, "diffusion"), (one * eps, one, "reconstruction")):
            alpha = schedule.alpha(times)
            z_k, q = _block_states(process, x_0[:, k : k + b], alpha)  # (R, T, S, b), (R, T, S)
            n_t, n_s = z_k.shape[1], z_k.shape[2]
            x_rep = x_0[:, None, None].expand(rows, n_t, n_s, length).reshape(-1, length)
            z = x_rep.clone()
            z[:, k : k + b] = z_k.reshape(-1, b)
            a_tok = alpha.view(1, -1, 1, 1).expand(rows, n_t, n_s, length).reshape(-1, length)
            if term == "diffusion":
                da = schedule.dalpha_dt(times).view(1, -1, 1, 1)
                da = da.expand(rows, n_t, n_s, length).reshape(-1, length)
                loss = block_integrand(process, model, z, x_rep, z, a_tok, da, None,
                                       fused=False, mask=None, reduction="none")  # fmt: skip
            else:
                logits = block_logits(process, model, z, x_rep, a_tok, None)
                loss = process.reconstruction(logits, x_rep, z, a_tok[:, :1])
            per = loss[:, k : k + b].sum(-1).to(F64).view(rows, n_t, n_s)
            total = total + ((per * q).sum(-1) * wt).sum(-1)
    return total
