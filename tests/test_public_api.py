"""Every exported name exists and the SPEC's public contract imports."""

import importlib

import pytest

import discdiff

MODULES = [
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
]


@pytest.mark.parametrize("name", MODULES)
def test_every_exported_name_exists(name):
    module = importlib.import_module(name)
    assert module.__all__, f"{name} exports nothing"
    for attr in module.__all__:
        assert getattr(module, attr) is not None, f"{name}.{attr}"


def test_spec_contract_names():
    from discdiff import DCDistiller, GaussianArgmaxTransform, MaskedDiffusion, UniformDiffusion
    from discdiff.losses import masked_nelbo, uniform_nelbo
    from discdiff.models import DiT
    from discdiff.samplers import uniform_posterior

    assert all(
        callable(x)
        for x in (
            DCDistiller,
            GaussianArgmaxTransform,
            MaskedDiffusion,
            UniformDiffusion,
            masked_nelbo,
            uniform_nelbo,
            uniform_posterior,
            DiT.from_preset,
        )
    )
    assert discdiff.__version__


def test_importing_discdiff_does_not_import_flash_attn():
    import subprocess
    import sys

    code = "import sys, discdiff, discdiff.models; print('flash_attn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
