"""The lm-evaluation-harness adapter, kept importable under its former name: everything here is
``discdiff.integrations.lm_eval``'s (see that module)."""

from discdiff.integrations.lm_eval import (
    AutoregressiveScorer,
    DiffusionScorer,
    DiscDiffLM,
    Estimate,
    FirstLogits,
    Scorer,
    conditional_nelbo,
    stratified_stderr,
)

__all__ = [
    "AutoregressiveScorer",
    "DiffusionScorer",
    "DiscDiffLM",
    "Estimate",
    "FirstLogits",
    "Scorer",
    "conditional_nelbo",
    "stratified_stderr",
]
