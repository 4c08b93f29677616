"""The lm-evaluation-harness adapter, kept importable under its former name: everything here is
``discdiff.integrations.lm_eval``'s (see that module)."""

from discdiff.integrations import lm_eval as _lm_eval

__all__ = list(_lm_eval.__all__)
globals().update({name: getattr(_lm_eval, name) for name in __all__})
