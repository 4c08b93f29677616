"""Adapters from discdiff models to other libraries' interfaces.

``lm_eval``: an EleutherAI lm-evaluation-harness model (``pip install discdiff[eval]``),
imported on its own (``discdiff.integrations.lm_eval``) since it needs that extra.
"""

__all__: list[str] = []  # the adapters are modules, each imported by name
