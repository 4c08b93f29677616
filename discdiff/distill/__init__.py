"""Distillation of a trained diffusion model into a few-step student (Concepts §6).

Modules: ``base`` (``Distiller``: the teacher's rounds, the loss's checks and divergence,
checkpoints, settings as plain data), ``dcd`` (``DCDistiller``, Discrete Consistency Distillation
of uniform-state Duo models, and its exact shared-noise ``argmax_pair``), ``sdtt``
(``SDTTDistiller``, Self-Distillation Through Time of masked MDLM models). ``token_kl``, the
per-token KL both train on, lives in ``discdiff.losses`` and is re-exported here.
"""

from discdiff.distill.base import Distiller, Divergence
from discdiff.distill.dcd import PAPER_DCD_WINDOW, DCDistiller, argmax_pair
from discdiff.distill.sdtt import SDTTDistiller, SDTTTarget
from discdiff.losses.kl import token_kl

__all__ = [
    "PAPER_DCD_WINDOW",
    "DCDistiller",
    "Distiller",
    "Divergence",
    "SDTTDistiller",
    "SDTTTarget",
    "argmax_pair",
    "token_kl",
]
