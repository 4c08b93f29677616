"""discdiff.testing: its two exact denoisers of each process agree (forward-backward against
enumeration), its statistics against independent computations, and its errors name the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from discdiff.samplers import TimeGrid
from discdiff.schedules import LogLinearSchedule
from discdiff.testing import (
    ExactMaskedDenoiser,
    MarkovChain,
    MaskedOracle,
    UniformOracle,
    all_sequences,
    chi_square_p,
    conditional,
    gradient_variances,
    markov_joint,
    random_law,
    sample_metrics,
    sequence_ids,
    total_variation,
    uniform_chain,
)

F64 = torch.float64


def test_the_masked_forward_backward_is_the_enumerated_oracle():
    chain = MarkovChain.peaked(3, seed=4)
    joint = markov_joint(chain, 3)
    assert float(joint.sum()) == pytest.approx(1.0, abs=1e-12)
    z = torch.tensor([[3, 1, 3], [0, 3, 2], [3, 3, 3]])  # mask id K = 3
    fb = torch.softmax(ExactMaskedDenoiser(chain)(z, torch.zeros(3))[..., :3].to(F64), -1)
    enum = torch.softmax(MaskedOracle(joint)(z, torch.zeros(3))[..., :3], -1)
    torch.testing.assert_close(fb, enum, rtol=0, atol=1e-6)


def test_the_chains_statistics_are_its_joint_laws():
    """markov_joint (products of the tables) against nll (a sum of logs per sequence), and the
    entropy against the joint."""
    chain = MarkovChain.peaked(3, seed=4)
    joint = markov_joint(chain, 3)
    entropy = -float((joint * joint.log()).sum())
    assert chain.entropy(3) == pytest.approx(entropy, abs=1e-12)
    x = all_sequences(3, 3)
    torch.testing.assert_close(chain.nll(x), -joint.flatten().log(), rtol=0, atol=1e-12)
    # every sequence once: the metrics' NLL is the mean NLL over K^L sequences
    assert sample_metrics(x, chain)["distinct"] == 1.0
    assert int(sequence_ids(x, 3)[5]) == 5


def test_uniform_chain_with_one_free_position_is_the_conditional():
    law = random_law(3, 2, seed=3)
    mask, prompt = torch.tensor([True, False]), torch.tensor([2, 0])
    grid = TimeGrid.build(LogLinearSchedule(), 5, tail="none")
    got = uniform_chain(UniformOracle(law), grid, prompt=prompt, mask=mask)
    # exact but for the prior: z_1 is uniform while alpha_1 = 1e-3 on this schedule (measured
    # 1.1e-7)
    assert total_variation(got, conditional(law, prompt, mask)) < 1e-6
    torch.testing.assert_close(conditional(law, prompt, mask), law[2] / law[2].sum())


def test_chi_square_p_accepts_the_law_and_rejects_another():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    x = torch.multinomial(p, 5000, replacement=True, generator=g)
    assert chi_square_p(x, p) > 1e-3
    assert chi_square_p(x, torch.tensor([0.4, 0.4, 0.2])) < 1e-6


def test_errors_name_the_argument_and_the_fix():
    with pytest.raises(ValueError, match="outside the law's support"):
        chi_square_p(torch.tensor([0, 3]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="probability zero"):
        chi_square_p(torch.tensor([0, 1]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="vocab_size=2 must exceed"):
        MarkovChain.peaked(2)
    with pytest.raises(ValueError, match="sum to less than 1"):
        MarkovChain.peaked(4, successors=(0.7, 0.4))
    grid = TimeGrid.build(LogLinearSchedule(), 2, tail="none")
    oracle = UniformOracle(random_law(2, 2, seed=0))
    with pytest.raises(ValueError, match="renoise='psi'"):
        uniform_chain(oracle, grid, kappa=0.5, renoise="psi")
    with pytest.raises(ValueError, match="mask is given without prompt"):
        uniform_chain(oracle, grid, mask=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="draws=1"):
        gradient_variances(torch.nn.Linear(1, 1), torch.zeros(1, 1), torch.zeros(1), None,
                           tau=1.0, draws=1)  # fmt: skip


def test_importing_the_kit_imports_neither_hypothesis_nor_scipy():
    code = ("import sys, discdiff.testing; "
            "print(sorted({'hypothesis', 'scipy'} & set(sys.modules)))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
