"""Forward processes: corrupting clean tokens, their marginals, the terms of their bounds, and
Duo's Gaussian latents.

Notation (Concepts §1, §2, §4):

=================  ==========================================================================
``x_0``            clean token ids x, (B, L)
``alpha_t``        discrete signal level alpha_t in [0, 1], (B, 1) or (B, L)
``vocab_size``     K, the number of classes (the mask id included for the masked process)
``alpha_tilde``    Gaussian signal level alpha~_t in [0, 1]; sigma~_t = sqrt(1 - alpha~_t^2)
``w_t``            Gaussian latent alpha~_t onehot(x) + sigma~_t eps, eps ~ N(0, I_K), (B, L, K)
``z_t``            noisy token ids, (B, L); for the Gaussian latent z_t = argmax_k w_t[k]
``tau``            temperature of the relaxation softmax(w_t / tau)
=================  ==========================================================================

Uniform state (``uniform``): q(z_t | x) = Cat(alpha_t x + (1 - alpha_t) / K). Masked
(``masked``): q(z_t | x) = Cat(alpha_t x + (1 - alpha_t) m). Each is also a ``Process``
(``UniformProcess``, ``MaskedProcess``; the interface in ``base``): corrupt, prior, the per-token
NELBO terms, and the NELBO conditional on clean positions. Under the Gaussian latent
(``gaussian``), z_t = argmax w_t follows the uniform process with alpha_t = T(alpha~_t)
(``discdiff.duality``).

Every sampler takes an explicit ``generator`` (on the tensors' device) and never seeds.
"""

from discdiff.processes.base import NELBO, Process
from discdiff.processes.gaussian import (
    GaussianLatent,
    TopKLatent,
    argmax_pair,
    gaussian_latent,
    relax,
    topk_gaussian_latent,
)
from discdiff.processes.masked import MaskedProcess, masked_corrupt, masked_marginal
from discdiff.processes.uniform import UniformProcess, uniform_corrupt, uniform_marginal

__all__ = [
    "NELBO",
    "GaussianLatent",
    "MaskedProcess",
    "Process",
    "TopKLatent",
    "UniformProcess",
    "argmax_pair",
    "gaussian_latent",
    "masked_corrupt",
    "masked_marginal",
    "relax",
    "topk_gaussian_latent",
    "uniform_corrupt",
    "uniform_marginal",
]
