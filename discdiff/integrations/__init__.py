"""Adapters from discdiff models to other libraries' interfaces.

``lm_eval``: an EleutherAI lm-evaluation-harness model (``pip install discdiff[eval]``).
"""
