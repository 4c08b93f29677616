"""The gradient-variance measurement (discdiff.testing.gradient_variances) behind
benchmarks/bench_curriculum.py, at small scale."""

import torch

from discdiff.duality import DualSchedule, GaussianArgmaxTransform
from discdiff.schedules import GammaSchedule
from discdiff.testing import gradient_variances
from discdiff.testing import small_dit as make_model
from discdiff.timesteps import antithetic_times


def _setup(vocab_size: int = 32):
    schedule = DualSchedule(GammaSchedule(-3.55, -1.85), GaussianArgmaxTransform(vocab_size))
    x_0 = torch.randint(0, vocab_size, (4, 8), generator=torch.Generator().manual_seed(0))
    return make_model(vocab_size), x_0, antithetic_times(4, u=0.5), schedule


def test_relaxation_at_vanishing_temperature_matches_the_discrete_gradient_variance():
    model, x_0, t, schedule = _setup()
    relaxed, discrete = gradient_variances(model, x_0, t, schedule, tau=1e-6, draws=8)
    assert discrete > 0
    assert abs(relaxed / discrete - 1) < 1e-4


def test_a_warm_relaxation_changes_the_gradient_variance():
    model, x_0, t, schedule = _setup()
    relaxed, discrete = gradient_variances(model, x_0, t, schedule, tau=1.0, draws=8)
    assert abs(relaxed / discrete - 1) > 0.05


def test_the_default_window_is_the_papers_at_its_vocabulary_and_the_same_alpha_elsewhere():
    from discdiff import AlphaWindow, GaussianCurriculum
    from discdiff.curriculum import PAPER_CURRICULUM_WINDOW

    assert AlphaWindow.from_gamma(-3.55, -1.85, 50257) == PAPER_CURRICULUM_WINDOW
    gamma = GaussianCurriculum().gamma_window(50257)
    assert abs(gamma.gamma_min + 3.55) < 1e-9 and abs(gamma.gamma_max + 1.85) < 1e-9
    for k in (30, 85, 300):
        window = GaussianCurriculum().gamma_window(k)
        t = torch.tensor([0.0, 1.0], dtype=torch.float64)
        alpha = GaussianArgmaxTransform(k)(window.alpha_tilde(t))
        expected = [PAPER_CURRICULUM_WINDOW.alpha_start, PAPER_CURRICULUM_WINDOW.alpha_end]
        torch.testing.assert_close(alpha, torch.tensor(expected, dtype=torch.float64),
                                   atol=1e-9, rtol=0)
