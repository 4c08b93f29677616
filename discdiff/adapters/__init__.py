"""Models users already have, as discdiff denoisers.

``as_denoiser`` wraps any callable, ``nn.Module`` or transformers model behind the denoiser seam
``denoiser(z_t, sigma, **cond) -> logits (B, L, K)`` (SPEC §9): ids or embeddings in (the
curriculum's soft and top-k inputs through the model's input embeddings, in its dtype), keyword
arguments by name, logits out of whatever the model returns, the meaning of its logits declared
(``parameterization``: "x_hat" or "posterior", SPEC §11), a mask id inside its vocabulary.
``NoiseLevelEmbedding`` gives a time-blind backbone the noise level. ``DiffusionGemmaDenoiser``
puts the transformers library's uniform-state block model (``DiffusionGemmaForBlockDiffusion``)
behind the block-denoiser protocol, so discdiff's block sampler, steps and policies drive it.
"""

from discdiff.adapters.denoiser import ModelDenoiser, as_denoiser
from discdiff.adapters.diffusion_gemma import DiffusionGemmaCache, DiffusionGemmaDenoiser
from discdiff.adapters.level import NoiseLevelEmbedding

__all__ = [
    "DiffusionGemmaCache",
    "DiffusionGemmaDenoiser",
    "ModelDenoiser",
    "NoiseLevelEmbedding",
    "as_denoiser",
]
