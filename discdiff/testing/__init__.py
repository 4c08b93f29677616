"""Toys whose truth is known, and checks that compare a component with it: a kit for testing a
discrete diffusion model, schedule or sampler exactly (docs: "Test your own component").

- ``toys``: laws (``MarkovChain``, ``random_law``, ``markov_joint``, the class-conditional
  ``Toy``) and their exact denoisers for both processes (``ExactDenoiser``,
  ``ExactMaskedDenoiser``, ``UniformOracle``, ``MaskedOracle``, ``Toy.denoiser``), as x_hat or
  as the posterior p(x^l | z_t) (``posterior_denoiser``);
- ``exact``: the exact law of a sampler run by enumeration through its steps, tail and filters
  (``exact_law`` of an ``Options`` combination), ``exact_tv``, the reference filters
  (``filtered_law``, ``guided_law``);
- ``laws``: ``uniform_chain``, ``conditional``, and samples vs a law (``assert_samples_follow``
  with its chi-square, exact-TV bound and stated power; ``chi_square_p``, ``total_variation``,
  ``sample_metrics``, ...);
- ``contracts``: ``check_schedule``, ``check_denoiser``, ``check_sampler`` (SPEC §9), each
  raising AssertionError with a message saying what is wrong;
- ``strategies``: hypothesis strategies (imported on use: ``discdiff.testing.strategies``);
- ``training``: small trainable denoisers and their training / distillation loops;
- ``blocks``: an exact block model of a known law (``BlockOracle``), the exact law of the block
  sampler on it (``block_chain``) and the exact expectation of the block NELBO
  (``exact_block_nelbo``);
- ``gradients``: the curriculum's gradient-variance measurement;
- ``machine``: the machine a measurement ran on.

Plain torch at import time; the statistics need scipy and the strategies hypothesis
(``pip install 'discdiff[testing]'``).
"""

from discdiff.testing.blocks import BlockOracle, block_chain, exact_block_nelbo
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
    "BlockOracle",
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
    "block_chain",
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
    "exact_block_nelbo",
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
