"""Toys whose truth is known, for testing a discrete diffusion model or sampler exactly.

- ``toys``: laws (``MarkovChain``, ``random_law``) and their exact denoisers for both processes
  (``ExactDenoiser``, ``ExactMaskedDenoiser``, ``UniformOracle``, ``MaskedOracle``);
- ``laws``: the exact law of a sampler run by enumeration (``uniform_chain``), ``conditional``,
  and samples vs a law (``chi_square_p``, ``total_variation``, ``sample_metrics``, ...);
- ``training``: small trainable denoisers and their training / distillation loops;
- ``gradients``: the curriculum's gradient-variance measurement;
- ``machine``: the machine a measurement ran on.

Plain torch at import time; ``chi_square_p`` needs scipy (``pip install 'discdiff[testing]'``).
"""

from discdiff.testing.contracts import (
    check_denoiser,
    check_sampler,
    check_schedule,
    samples_needed,
)
from discdiff.testing.exact import Options, exact_law, exact_tv, filtered_law, guided_law
from discdiff.testing.gradients import gradient_variances, small_dit
from discdiff.testing.laws import (
    Agreement,
    assert_samples_follow,
    chi_square_p,
    conditional,
    detectable_tv,
    frequencies,
    sample_metrics,
    sequence_ids,
    total_variation,
    tv_bound,
    uniform_chain,
)
from discdiff.testing.machine import machine_info
from discdiff.testing.toys import (
    ClassOracle,
    ExactDenoiser,
    ExactMaskedDenoiser,
    MarkovChain,
    MaskedOracle,
    Toy,
    UniformOracle,
    all_sequences,
    markov_joint,
    posterior_denoiser,
    posterior_logits,
    random_law,
)
from discdiff.testing.training import (
    Corrected,
    ToyDenoiser,
    cosine_warmup,
    distill,
    evaluate_masked,
    evaluate_uniform,
    train_duo,
    train_mdlm,
)

__all__ = [
    "Agreement",
    "ClassOracle",
    "Corrected",
    "ExactDenoiser",
    "ExactMaskedDenoiser",
    "MarkovChain",
    "MaskedOracle",
    "Options",
    "Toy",
    "ToyDenoiser",
    "UniformOracle",
    "all_sequences",
    "assert_samples_follow",
    "check_denoiser",
    "check_sampler",
    "check_schedule",
    "chi_square_p",
    "conditional",
    "cosine_warmup",
    "detectable_tv",
    "distill",
    "evaluate_masked",
    "evaluate_uniform",
    "exact_law",
    "exact_tv",
    "filtered_law",
    "frequencies",
    "gradient_variances",
    "guided_law",
    "machine_info",
    "markov_joint",
    "posterior_denoiser",
    "posterior_logits",
    "random_law",
    "sample_metrics",
    "samples_needed",
    "sequence_ids",
    "small_dit",
    "total_variation",
    "train_duo",
    "train_mdlm",
    "tv_bound",
    "uniform_chain",
]
