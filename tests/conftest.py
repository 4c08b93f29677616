"""Shared fixtures and hypothesis settings for the test suite."""

from __future__ import annotations

import os

# The Triton kernels' tests run them in the CPU interpreter, which must be on before triton is
# first imported, and other test files import it first (transformers does): set it for all.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from hypothesis import HealthCheck, settings

# Two cores: keep torch from oversubscribing them when pytest-xdist runs two workers.
torch.set_num_threads(1)

settings.register_profile(
    "default",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("default")


class ConstantDenoiser(torch.nn.Module):
    """A denoiser that ignores its input and returns the same logits everywhere.

    Accepts ids (B, L), soft inputs (B, L, K) or a ``Bag``; returns (B, L, K).
    """

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, z_t, sigma, **cond):
        b, l = z_t.shape[:2]
        return self.logits.expand(b, l, -1)


@pytest.fixture
def constant_denoiser():
    def make(vocab_size: int, logits: torch.Tensor | None = None) -> ConstantDenoiser:
        return ConstantDenoiser(torch.zeros(vocab_size) if logits is None else logits)

    return make


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    """After a run that included tests/test_fuzz.py: how many bad inputs were tried, and how many
    failed clearly (the right error type, the culprit named); after one that included
    tests/test_sampler_combinations.py: how many option combinations it checked. Counted from
    the reports, so it also works under pytest-xdist."""
    tried = clear = combinations = 0
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            properties = dict(getattr(report, "user_properties", ()))
            combinations += properties.get("sampler_combinations", 0)
            if "fuzz" in properties:
                tried += 1
                clear += "fuzz_clear" in properties
    if combinations:  # tests/test_sampler_combinations.py
        terminalreporter.write_line(
            f"sampler combinations: {combinations} checked against their exact laws"
        )
    if tried:
        terminalreporter.write_line(
            f"fuzz: {tried} bad inputs tried, {clear} failed clearly "
            f"(right error type, culprit named), {tried - clear} not"
        )
