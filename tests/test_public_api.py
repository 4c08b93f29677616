"""Every exported name resolves, and the Concepts §9 contract works with its documented signatures:
the right shapes and dtypes on tiny inputs, float64 in giving float64 out."""

from __future__ import annotations

import importlib
import math
import pkgutil

import pytest
import torch

import discdiff

K, B, L = 5, 2, 3


# The documented modules (README's map): each states its public names in a non-empty __all__.
DOCUMENTED = [
    "discdiff",
    "discdiff.typing",
    "discdiff.schedules",
    "discdiff.duality",
    "discdiff.processes",
    "discdiff.losses",
    "discdiff.diffusion",
    "discdiff.samplers",
    "discdiff.distill",
    "discdiff.models",
    "discdiff.metrics",
    "discdiff.labels",
    "discdiff.testing",
]


def public_modules() -> list[str]:
    """Every module of the package whose dotted name has no part starting with ``_``."""
    names = {"discdiff"}
    for info in pkgutil.walk_packages(discdiff.__path__, "discdiff."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.add(info.name)
    return sorted(names)


def test_the_package_walk_finds_the_documented_modules():
    assert set(DOCUMENTED) <= set(public_modules())


@pytest.mark.parametrize("name", DOCUMENTED)
def test_documented_modules_declare_their_names(name):
    exported = getattr(importlib.import_module(name), "__all__", None)
    assert exported, f"{name} has no __all__ (or an empty one)"


@pytest.mark.parametrize("name", public_modules())
def test_every_exported_name_resolves(name):
    module = importlib.import_module(name)
    exported = list(getattr(module, "__all__", []))
    assert all(isinstance(attr, str) for attr in exported), f"{name}.__all__ holds a non-string"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [attr for attr in exported if not hasattr(module, attr)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_top_level_names_are_the_submodules_objects():
    from discdiff import diffusion, distill, duality, labels, metrics, schedules

    for home in (diffusion, distill, duality, labels, metrics, schedules):
        for attr in home.__all__:
            if attr in discdiff.__all__:
                assert getattr(discdiff, attr) is getattr(home, attr), attr
    assert discdiff.__version__


def test_label_dropout_and_sample_entropy_are_exported():
    assert {"LabelDropout", "sample_entropy"} <= set(discdiff.__all__)
    labels = torch.tensor([0, 1, 2])
    dropped = discdiff.LabelDropout(num_classes=3, p=1.0)(labels)
    assert dropped.shape == (3,) and dropped.dtype == torch.int64 and bool((dropped == 3).all())
    assert discdiff.sample_entropy(torch.tensor([[0, 1], [2, 2]])) == math.log(2) / 2


def tokens(seed: int) -> torch.Tensor:
    return torch.randint(0, K, (B, L), generator=torch.Generator().manual_seed(seed))


def logits_of(dtype: torch.dtype, seed: int = 0, k: int = K) -> torch.Tensor:
    return torch.randn(B, L, k, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------- the transform
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_argmax_transform_contract(dtype):
    from discdiff import GaussianArgmaxTransform

    T = GaussianArgmaxTransform(vocab_size=2)
    assert T.vocab_size == 2
    values = torch.tensor([0.0, 0.3, 0.7, 0.95], dtype=torch.float64)
    a = values.to(dtype).reshape(2, 2)
    for out in (T(a), T.derivative(a), T.inverse(a)):
        assert out.shape == a.shape and out.dtype == dtype
    # K = 2 has a closed form: T = 2 Phi(nu / sqrt 2) - 1 = erf(nu / 2), nu = a / sqrt(1 - a^2).
    closed = torch.erf(values / (1 - values.square()).sqrt() / 2).reshape(2, 2)
    torch.testing.assert_close(T(a).double(), closed, rtol=1e-5, atol=1e-6)
    assert (T.derivative(a) > 0).all()
    torch.testing.assert_close(T.inverse(T(a)), a, rtol=1e-4, atol=1e-5)
    ends = GaussianArgmaxTransform(vocab_size=K)(torch.tensor([0.0, 1.0], dtype=dtype))
    torch.testing.assert_close(ends, torch.tensor([0.0, 1.0], dtype=dtype))


# ------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("level_shape", ["scalar", "b1", "bl"])
def test_uniform_nelbo_contract(dtype, level_shape):
    from discdiff.losses import uniform_nelbo

    x0, z_t, logits = tokens(1), tokens(2), logits_of(dtype)
    alpha, dalpha = {
        "scalar": (0.6, -1.0),
        "b1": (torch.full((B, 1), 0.6, dtype=dtype), torch.full((B, 1), -1.0, dtype=dtype)),
        "bl": (torch.full((B, L), 0.6, dtype=dtype), torch.full((B, L), -1.0, dtype=dtype)),
    }[level_shape]
    loss = uniform_nelbo(logits, x0, z_t, alpha, dalpha)
    assert loss.shape == (B, L) and loss.dtype == dtype
    assert (loss > 0).all()  # random logits are not the one-hot of x_0
    perfect = torch.full((B, L, K), -math.inf, dtype=dtype).scatter(-1, x0[..., None], 0.0)
    exact = uniform_nelbo(perfect, x0, z_t, alpha, dalpha)
    torch.testing.assert_close(exact, torch.zeros(B, L, dtype=dtype), rtol=0, atol=1e-6)


def test_uniform_nelbo_float64_levels_promote_float32_logits():
    from discdiff.losses import uniform_nelbo

    alpha = torch.full((B, 1), 0.5, dtype=torch.float64)
    loss = uniform_nelbo(logits_of(torch.float32), tokens(1), tokens(2), alpha, -alpha)
    assert loss.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_nelbo_contract(dtype):
    from discdiff.losses import masked_nelbo

    mask_id = K - 1
    x0 = tokens(1) % mask_id  # clean tokens never hold the mask id
    z_t = x0.clone()
    z_t[:, 0] = mask_id
    alpha = torch.full((B, 1), 0.4, dtype=dtype)
    loss = masked_nelbo(logits_of(dtype), x0, z_t, alpha, -torch.ones_like(alpha), mask_id)
    assert loss.shape == (B, L) and loss.dtype == dtype
    assert (loss[:, 0] > 0).all()
    assert (loss[:, 1:] == 0).all()  # SUBS: unmasked positions cost nothing


# ---------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_posterior_contract_is_bayes_rule(dtype):
    from discdiff.samplers import uniform_posterior

    probs = logits_of(dtype).softmax(-1)
    z_t = tokens(3)
    alpha_s, alpha_t = 0.7, 0.3
    q = uniform_posterior(probs, z_t, alpha_s, alpha_t)
    assert q.shape == (B, L, K) and q.dtype == dtype
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(B, L, dtype=dtype))
    # q(z_s | z_t, x) ∝ q(z_t | z_s) q(z_s | x), both uniform-state transitions (Concepts §1, §5).
    alpha_ts = alpha_t / alpha_s
    likelihood = alpha_ts * torch.nn.functional.one_hot(z_t, K).to(dtype) + (1 - alpha_ts) / K
    prior = alpha_s * probs + (1 - alpha_s) / K
    bayes = likelihood * prior
    torch.testing.assert_close(q, bayes / bayes.sum(-1, keepdim=True))


# ------------------------------------------------------------------------------------ model
def test_dit_from_preset_contract():
    from discdiff.models import DiT

    model = DiT.from_preset("tiny", vocab_size=K)
    assert isinstance(model, torch.nn.Module)
    assert (model.config.hidden_size, model.config.n_blocks, model.config.n_heads) == (256, 8, 8)
    out = model.eval()(tokens(4), torch.rand(B))
    assert out.shape == (B, L, K) and out.dtype == torch.float32
    custom = DiT.from_preset("tiny", vocab_size=K, n_blocks=1, hidden_size=32, n_heads=2)
    assert (custom.config.n_blocks, custom.config.hidden_size) == (1, 32)
    with pytest.raises(ValueError, match="huge"):
        DiT.from_preset("huge", vocab_size=K)


@pytest.mark.parametrize(
    "name, sizes", [("small", (768, 12, 12)), ("medium", (1024, 24, 16))]
)
def test_dit_larger_presets_have_the_papers_sizes(name, sizes):
    from discdiff.models import DiT

    with torch.device("meta"):  # no memory, no initialisation
        model = DiT.from_preset(name, vocab_size=K)
    assert (model.config.hidden_size, model.config.n_blocks, model.config.n_heads) == sizes


# ------------------------------------------------------------------------ diffusion objects
def test_uniform_diffusion_contract(constant_denoiser, generator):
    from discdiff import UniformDiffusion

    diffusion = UniformDiffusion(vocab_size=K)
    model = constant_denoiser(K)
    loss = diffusion.loss(model, tokens(5), generator=generator)
    assert loss.shape == (B, L) and loss.dtype.is_floating_point
    loss.mean().backward()
    assert model.logits.grad is not None and model.logits.grad.abs().sum() > 0
    sample = diffusion.sample(model, B, L, 3, generator=generator)
    assert sample.shape == (B, L) and not sample.dtype.is_floating_point
    assert ((sample >= 0) & (sample < K)).all()


def test_masked_diffusion_contract(constant_denoiser, generator):
    from discdiff import MaskedDiffusion

    diffusion = MaskedDiffusion(vocab_size=K)
    model = constant_denoiser(K + 1)  # K tokens and the mask
    loss = diffusion.loss(model, tokens(6), generator=generator)
    assert loss.shape == (B, L) and loss.dtype.is_floating_point
    sample = diffusion.sample(model, B, L, 3, generator=generator)
    assert sample.shape == (B, L)
    assert ((sample >= 0) & (sample < K)).all()  # no mask left after the last step


def test_dc_distiller_contract(constant_denoiser, generator):
    from discdiff import DCDistiller

    teacher = constant_denoiser(K)
    distiller = DCDistiller(teacher, K, initial_steps=8, steps_per_round=2, n_rounds=2)
    student = constant_denoiser(K, torch.linspace(-1.0, 1.0, K))
    loss = distiller.loss(student, tokens(7), 0, generator=generator)
    assert loss.shape == (B, L)
    assert (loss > 0).all()  # the student's constant law differs from the teacher's uniform one
    assert distiller.teacher is not teacher  # a frozen copy; the caller's module is untouched


def test_importing_discdiff_does_not_import_flash_attn():
    import subprocess
    import sys

    code = "import sys, discdiff, discdiff.models; print('flash_attn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
