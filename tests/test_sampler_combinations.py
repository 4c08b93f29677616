"""A property test over the samplers' option combinations: process x tail x filter x kappa /
remasking x guidance x prompt x steps, each drawn combination's samples checked against its
exact law on a class-conditional toy; and process x block size x prompt x steps for block
diffusion, against the exact law of the block sampler (``discdiff.testing.blocks``).

The silent errors of a sampler sit where two options meet (a filter in the MAP tail, guidance
over disjoint nuclei, a prompt under Ψ); ``discdiff.testing.check_sampler`` compares the
library's own ``sample_uniform`` / ``sample_masked`` with ``exact_law`` (an enumeration that
builds every transition by Bayes with explicit matrices) for each combination hypothesis draws.
Sized for a 2-core machine: ``COMBINATIONS`` draws, each with the rows that reject a law at TV
>= ``TV`` with probability 0.99 at alpha = 1e-4 (a few thousand), well under a minute in all.

    python -m tests.test_sampler_combinations   # runs the property and prints the count
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discdiff import MaskedDiffusion, UniformDiffusion
from discdiff.samplers import TimeGrid, sample_masked, sample_uniform
from discdiff.testing import (
    Options,
    Toy,
    assert_samples_follow,
    check_sampler,
    random_law,
    samples_needed,
    sequence_ids,
)
from discdiff.testing.blocks import BlockOracle, block_chain
from discdiff.testing.strategies import sampler_options

TOY = Toy.random(3, 2, classes=2, seed=3)  # K = 3, L = 2, two classes: 9 outcomes, 16 states
COMBINATIONS = 24
TV = 0.06
CHECKED: list[Options] = []

# One-block runs here; block sizes b < L are drawn by ``check_one_block_combination`` below,
# against ``block_chain`` (the exact law of the block sampler, tail "none").
BLOCK_SIZES = st.just(None)
BLOCK_LAW = random_law(3, 4, seed=5)  # K = 3, L = 4: 81 outcomes
BLOCK_COMBINATIONS = 8
BLOCKS_CHECKED: list[tuple[str, int, int, int]] = []


@settings(max_examples=COMBINATIONS, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(options=sampler_options(TOY.vocab_size, TOY.length, classes=TOY.classes, max_steps=3),
       block_size=BLOCK_SIZES)  # fmt: skip
def check_one_combination(options: Options, block_size: int | None) -> None:
    options = options.with_(block_size=block_size)
    sampler = sample_uniform if options.process == "uniform" else sample_masked
    check_sampler(sampler, TOY, options, tv=TV, seed=len(CHECKED))
    CHECKED.append(options)


@settings(max_examples=BLOCK_COMBINATIONS, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(process=st.sampled_from(["uniform", "masked"]), block_size=st.sampled_from([1, 2]),
       prompt=st.integers(0, 3), steps=st.integers(1, 3))  # fmt: skip
def check_one_block_combination(process: str, block_size: int, prompt: int, steps: int) -> None:
    masked = process == "masked"
    diffusion = (MaskedDiffusion if masked else UniformDiffusion)(3, block_size=block_size)
    oracle = BlockOracle(BLOCK_LAW, block_size, masked=masked)
    given = torch.tensor([2, 0, 1][:prompt], dtype=torch.long)
    law = block_chain(oracle, TimeGrid.build(diffusion.schedule, steps, tail="none"), given)
    n = samples_needed(law, TV, 1e-4, 0.99)
    options = {"prompt": given.expand(n, -1)} if prompt else {}
    x = diffusion.sample(oracle, n, 4, steps, tail="none", seed=len(BLOCKS_CHECKED), **options)
    what = f"{process} b={block_size} prompt={prompt} steps={steps}"
    assert_samples_follow(sequence_ids(x[:, prompt:], 3), law, what=what)
    BLOCKS_CHECKED.append((process, block_size, prompt, steps))


def test_each_drawn_block_combination_follows_its_exact_law(record_property):
    BLOCKS_CHECKED.clear()
    check_one_block_combination()
    record_property("block_combinations", len(BLOCKS_CHECKED))
    assert len(BLOCKS_CHECKED) == BLOCK_COMBINATIONS


def test_each_drawn_combination_follows_its_exact_law(record_property):
    CHECKED.clear()
    torch.manual_seed(0)
    check_one_combination()
    record_property("sampler_combinations", len(CHECKED))
    assert len(CHECKED) == COMBINATIONS, f"checked {len(CHECKED)} of {COMBINATIONS} combinations"


def test_the_draws_cover_every_dimension():
    """The strategy reaches every value of each dimension (so the property is not vacuous)."""
    seen: dict[str, set] = {}

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(options=sampler_options(3, 2, classes=2))
    def collect(options: Options) -> None:
        for name in ("process", "tail", "kappa", "remask", "guidance_scale"):
            seen.setdefault(name, set()).add(getattr(options, name))
        seen.setdefault("filter", set()).add((options.top_k is None, options.top_p is None))
        seen.setdefault("prompt", set()).add(options.prompt is None)

    collect()
    assert seen["process"] == {"uniform", "masked"}
    assert seen["tail"] == {"none", "greedy", "map"}
    assert {None, 0.0, 1.0} <= seen["kappa"] and {None, 0.3} <= seen["remask"]
    assert {None, 0.0, 2.0} <= seen["guidance_scale"]
    assert len(seen["filter"]) == 4 and seen["prompt"] == {True, False}


def _report() -> None:  # pragma: no cover - run by hand
    """Run the property and print how many combinations it checked, and which."""
    CHECKED.clear()
    check_one_combination()
    for options in CHECKED:
        print(f"  {options.describe()}")
    print(f"sampler combinations checked against their exact laws: {len(CHECKED)}")
    BLOCKS_CHECKED.clear()
    check_one_block_combination()
    for combination in BLOCKS_CHECKED:
        print("  process={} block_size={} prompt={} steps={}".format(*combination))
    print(f"block-diffusion combinations checked against their exact laws: {len(BLOCKS_CHECKED)}")


if __name__ == "__main__":  # pragma: no cover
    _report()
