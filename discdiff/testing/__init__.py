"""Toys whose truth is known, for testing a discrete diffusion model or sampler exactly.

- ``toys``: laws (``MarkovChain``, ``random_law``) and their exact denoisers for both processes
  (``ExactDenoiser``, ``ExactMaskedDenoiser``, ``UniformOracle``, ``MaskedOracle``);
- ``laws``: the exact law of a sampler run by enumeration (``uniform_chain``), ``conditional``,
  and samples vs a law (``chi_square_p``, ``total_variation``, ``sample_metrics``, ...);
- ``training``: small trainable denoisers and their training / distillation loops;
- ``blocks``: an exact block model of a known law (``BlockOracle``), the exact law of the block
  sampler on it (``block_chain``) and the exact expectation of the block NELBO
  (``exact_block_nelbo``);
- ``gradients``: the curriculum's gradient-variance measurement;
- ``machine``: the machine a measurement ran on.

Plain torch at import time; ``chi_square_p`` needs scipy (``pip install 'discdiff[testing]'``).
"""

from discdiff.testing.blocks import BlockOracle, block_chain, exact_block_nelbo
from discdiff.testing.gradients import gradient_variances, small_dit
from discdiff.testing.laws import (
    chi_square_p,
    conditional,
    frequencies,
    sample_metrics,
    sequence_ids,
    total_variation,
    uniform_chain,
)
from discdiff.testing.machine import machine_info
from discdiff.testing.toys import (
    ExactDenoiser,
    ExactMaskedDenoiser,
    MarkovChain,
    MaskedOracle,
    UniformOracle,
    all_sequences,
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
    "Corrected",
    "ExactDenoiser",
    "ExactMaskedDenoiser",
    "MarkovChain",
    "MaskedOracle",
    "ToyDenoiser",
    "UniformOracle",
    "all_sequences",
    "block_chain",
    "chi_square_p",
    "conditional",
    "cosine_warmup",
    "distill",
    "evaluate_masked",
    "evaluate_uniform",
    "exact_block_nelbo",
    "frequencies",
    "gradient_variances",
    "machine_info",
    "random_law",
    "sample_metrics",
    "sequence_ids",
    "small_dit",
    "total_variation",
    "train_duo",
    "train_mdlm",
    "uniform_chain",
]
