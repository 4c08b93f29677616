"""Reference backbones: the DiT of MDLM / Duo and its causal autoregressive twin."""

from discdiff.models.dit import DiT as DiT
from discdiff.models.dit import DiTConfig as DiTConfig
from discdiff.models.dit import KVCache as KVCache
from discdiff.models.dit import ParamCount as ParamCount

__all__ = ["DiT", "DiTConfig", "KVCache", "ParamCount"]
