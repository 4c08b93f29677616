"""Self-distillation through time for masked models: ``discdiff.distill.sdtt``, also here."""

from discdiff.distill.sdtt import SDTTDistiller, SDTTTarget

__all__ = ["SDTTDistiller", "SDTTTarget"]
