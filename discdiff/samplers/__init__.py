"""Samplers for uniform-state (Duo) and masked (MDLM) diffusion, in four layers:

- ``categorical``: exact categorical draws over large vocabularies (float64 law, no (B, L, K)
  float64 tensor), with top-k / nucleus filtering;
- ``posterior``: the reverse-process laws as the paper writes them (explicit, the reference);
- ``steps``: one reverse step of each process (the uniform one a three-part mixture, with the
  Ψ corrector);
- ``tails``: the tails that end a sample (greedy, MAP) on the filtered, guided x_hat;
- ``correctors``: Ψ weights kappa(t, s) and ReMDM remasking schedules sigma(t, s);
- ``guidance``: classifier-free guidance, the per-token geometric mixture of two transitions;
- ``grid``: the time grid of a run and its tail (greedy, MAP, none), NFE;
- ``loops``: the loops over a time grid, and ``sample_uniform`` / ``sample_masked``;
- ``streams``: ``RowStream``, counter-based randomness keyed by (seed, row), so that a row's
  sample does not depend on the batch it was drawn in (``seed=`` of the samplers).
"""

from discdiff.samplers.categorical import sample_categorical, sample_categorical_logits
from discdiff.samplers.correctors import CappedKappa, CappedRemask, ConstantKappa, RescaledRemask
from discdiff.samplers.grid import T_MIN, Tail, TimeGrid, nfe
from discdiff.samplers.guidance import guided_logits, guided_masked_step, guided_uniform_step
from discdiff.samplers.loops import (
    StepRecord,
    masked_loop,
    sample_masked,
    sample_uniform,
    uniform_loop,
)
from discdiff.samplers.posterior import denoising_posterior, psi_posterior, uniform_posterior
from discdiff.samplers.steps import masked_ancestral_step, uniform_ancestral_step
from discdiff.samplers.streams import RowStream
from discdiff.samplers.tails import greedy_tail, map_tail

__all__ = [
    "T_MIN",
    "CappedKappa",
    "CappedRemask",
    "ConstantKappa",
    "RescaledRemask",
    "RowStream",
    "StepRecord",
    "Tail",
    "TimeGrid",
    "denoising_posterior",
    "greedy_tail",
    "guided_logits",
    "guided_masked_step",
    "guided_uniform_step",
    "map_tail",
    "masked_ancestral_step",
    "masked_loop",
    "nfe",
    "psi_posterior",
    "sample_categorical",
    "sample_categorical_logits",
    "sample_masked",
    "sample_uniform",
    "uniform_ancestral_step",
    "uniform_loop",
    "uniform_posterior",
]
