"""Samplers for uniform-state (Duo) and masked (MDLM) diffusion: one loop around small parts.

The parts (k-diffusion / diffusers style): a ``Predictor`` calls the denoiser (guidance and the
masked cache live there), a step object per process (``UniformStep(kappa=...)``,
``MaskedStep(mask_id, remask=...)``), ``Filter`` / ``Prompt`` / ``Guidance`` / ``Finish`` for
what the samplers' keywords carry, and ``run(predict, step, grid, z, ...)``, the one loop.
``sample_uniform`` / ``sample_masked`` are the keyword layer that builds the parts and calls it.
The modules:

- ``categorical``: exact categorical draws over large vocabularies (float64 law, no (B, L, K)
  float64 tensor), with top-k / nucleus filtering;
- ``posterior``: the reverse-process laws as the paper writes them (explicit, the reference);
- ``steps``: one reverse step of each process, as checked functions (the uniform one a
  three-part mixture);
- ``psi``: the Ψ corrector: kappa (a number or a schedule) and the Ψ mixture;
- ``uniform`` / ``masked``: the step objects ``UniformStep`` and ``MaskedStep``;
- ``parts``: ``Filter``, ``Prompt``, ``Guidance``, ``Finish`` (the tail call);
- ``predict``: ``Predictor`` and the ``Prediction`` it gives a step;
- ``loop``: ``run`` and ``StepRecord``;
- ``tails``: the tails that end a sample (greedy, MAP) on the filtered, guided x_hat;
- ``correctors``: Ψ weights kappa(t, s) and ReMDM remasking schedules sigma(t, s);
- ``guidance``: classifier-free guidance, the per-token geometric mixture of two transitions;
- ``grid``: the time grid of a run and its tail (greedy, MAP, none), NFE;
- ``loops``: the keyword layer: ``sample_uniform`` / ``sample_masked``, ``uniform_loop`` /
  ``masked_loop``;
- ``blocks``: block-by-block sampling of a block model over a cache of the clean blocks
  (``run_blocks``, ``sample_uniform_blocks``, ``sample_masked_blocks``);
- ``streams``: ``RowStream``, counter-based randomness keyed by (seed, row), so that a row's
  sample does not depend on the batch it was drawn in (``seed=`` of the samplers);
- ``policies``: decoding heuristics as step objects (``EntropyBoundStep``, ``ConfidenceStep``,
  ``LowConfidenceStep``), which do not sample the model's law.
"""

from discdiff.samplers.blocks import (
    BlockPlan,
    BlockSample,
    run_blocks,
    sample_masked_blocks,
    sample_uniform_blocks,
)
from discdiff.samplers.categorical import sample_categorical, sample_categorical_logits
from discdiff.samplers.correctors import CappedKappa, CappedRemask, ConstantKappa, RescaledRemask
from discdiff.samplers.grid import T_MIN, Interval, Tail, TimeGrid, nfe
from discdiff.samplers.guidance import guided_logits, guided_masked_step, guided_uniform_step
from discdiff.samplers.loop import Step, StepRecord, run
from discdiff.samplers.loops import masked_loop, sample_masked, sample_uniform, uniform_loop
from discdiff.samplers.masked import MaskedStep
from discdiff.samplers.parts import Filter, Finish, Guidance, Prompt
from discdiff.samplers.policies import ConfidenceStep, EntropyBoundStep, LowConfidenceStep, Tally
from discdiff.samplers.posterior import denoising_posterior, psi_posterior, uniform_posterior
from discdiff.samplers.predict import Prediction, Predictor
from discdiff.samplers.steps import masked_ancestral_step, uniform_ancestral_step
from discdiff.samplers.streams import RowStream
from discdiff.samplers.tails import greedy_tail, map_tail
from discdiff.samplers.uniform import UniformStep

__all__ = [
    "T_MIN",
    "BlockPlan",
    "BlockSample",
    "CappedKappa",
    "CappedRemask",
    "ConfidenceStep",
    "ConstantKappa",
    "EntropyBoundStep",
    "Filter",
    "Finish",
    "Guidance",
    "Interval",
    "LowConfidenceStep",
    "MaskedStep",
    "Prediction",
    "Predictor",
    "Prompt",
    "RescaledRemask",
    "RowStream",
    "Step",
    "StepRecord",
    "Tail",
    "Tally",
    "TimeGrid",
    "UniformStep",
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
    "run",
    "run_blocks",
    "sample_categorical",
    "sample_categorical_logits",
    "sample_masked",
    "sample_masked_blocks",
    "sample_uniform",
    "sample_uniform_blocks",
    "uniform_ancestral_step",
    "uniform_loop",
    "uniform_posterior",
]
