"""Per-token training losses and the terms that close the variational bound.

Notation (Concepts §3): K vocabulary size (read from the last axis of ``logits``), ``x_0`` the clean
token x, ``z_t`` the noisy token i, ``alpha_t`` = α_t in (0, 1], ``dalpha_t`` = α'_t = dα_t/dt <= 0,
x̂ = softmax(logits) the denoiser's estimate of the one-hot **x**. Every loss takes ``mask``
(B, L), True at the tokens that count (None: all), and ``reduction``: "none" (the default, per
token (B, L), 0 at the ignored tokens), "sum" or "mean" over the tokens that count. ``alpha_t`` and
``dalpha_t`` are python floats, 0-d tensors, or tensors that broadcast as (B, 1) or (B, L).

Modules: ``uniform`` (the memory-lean uniform-state NELBO), ``masked`` (the masked NELBO),
``bounds`` (prior KL and reconstruction terms, which terms make a true bound, the AR loss, the
cross-entropy objective of posterior-parameterized uniform models, which is not a bound),
``reference`` (both NELBOs exactly as Concepts §3 writes them, the readable formulas that the tests
and benchmarks hold the fast paths to), ``fused`` (the losses from the last hidden state and the
output projection), ``dispatch`` (when the diffusions take the fused head), ``kl``
(``token_kl``, the per-token KL between two softmaxes that the distillers train on).
"""

from discdiff.losses.bounds import (
    ar_loss,
    masked_prior_kl,
    masked_reconstruction,
    posterior_cross_entropy,
    uniform_prior_kl,
    uniform_reconstruction,
)
from discdiff.losses.fused import (
    fused_linear_cross_entropy,
    fused_linear_masked_nelbo,
    fused_linear_uniform_nelbo,
)
from discdiff.losses.kl import token_kl
from discdiff.losses.masked import masked_nelbo
from discdiff.losses.reference import masked_nelbo_reference, uniform_nelbo_reference
from discdiff.losses.uniform import uniform_nelbo

__all__ = [
    "ar_loss",
    "fused_linear_cross_entropy",
    "fused_linear_masked_nelbo",
    "fused_linear_uniform_nelbo",
    "masked_nelbo",
    "masked_nelbo_reference",
    "masked_prior_kl",
    "masked_reconstruction",
    "posterior_cross_entropy",
    "token_kl",
    "uniform_nelbo",
    "uniform_nelbo_reference",
    "uniform_prior_kl",
    "uniform_reconstruction",
]
