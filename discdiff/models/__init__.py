"""Reference backbones: the DiT of MDLM / Duo and its causal autoregressive twin.

``dit`` the model, ``layers`` its embedding of sigma and output layer, ``config`` its hyper-
parameters, ``attention`` (flash-attn / SDPA, rotary), ``block_mask`` (the attention structure
of block diffusion, SDPA / flex_attention), ``kv_cache``, ``projection`` (output layer, padded
rows), ``accounting`` (sizes, FLOPs), ``persistence`` (save / load), ``reference`` and
``reference_io`` (released checkpoints) and ``decode`` (autoregressive generation with the KV
cache).

Only ``decode`` and this package import ``dit``: the modules the model's methods call take the
model class or its config as an argument, so the imports here form no circle.
"""

from discdiff.models.accounting import ParamCount as ParamCount
from discdiff.models.config import DiTConfig as DiTConfig
from discdiff.models.decode import generate_ar as generate_ar
from discdiff.models.dit import DiT as DiT
from discdiff.models.kv_cache import KVCache as KVCache

__all__ = ["DiT", "DiTConfig", "KVCache", "ParamCount", "generate_ar"]
