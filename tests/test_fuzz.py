"""Bad input, table-driven: every row is one wrong call of the public API or of a CLI, with the
error it must raise and the words its message must contain (the culprit's name).

A row passes when the call raises the expected type and its message (for a CLI: the message and
what it wrote to stderr) names every culprit. ``tests/conftest.py`` prints the count at the end
of the run: how many rows were tried and how many failed clearly. Rows the library still gets
wrong, in files being rewritten elsewhere, are strict expected failures with the reason.

A second table holds inputs that look odd but are right (ints where floats are expected, any
sequence as a time grid): they must be accepted.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import torch

import discdiff
import discdiff.context
from discdiff import (
    AlphaWindow,
    AntitheticTimes,
    CosineSchedule,
    DCDistiller,
    GammaSchedule,
    GaussianArgmaxTransform,
    GaussianCurriculum,
    GeometricSchedule,
    LinearSchedule,
    LogLinearSchedule,
    MaskedDiffusion,
    UniformDiffusion,
    losses,
    processes,
    samplers,
)
from discdiff.metrics import BoundMeter
from discdiff.models import DiT, DiTConfig, generate_ar
from discdiff.timesteps import antithetic_times
from discdiff.typing import Bag
from tests.helpers import AlphaOnlySchedule as AlphaOnly
from tests.helpers import TwoMethodSchedule as TwoMethods

K, B, L = 7, 2, 4
SDTTDistiller = getattr(discdiff, "SDTTDistiller", None)


# ---------------------------------------------------------------------------------------------
# Denoisers and inputs
# ---------------------------------------------------------------------------------------------


class Net(torch.nn.Module):
    """A tiny denoiser with ``k`` logits: ids (B, L), soft (B, L, k) or a Bag in."""

    def __init__(self, k: int = K):
        super().__init__()
        self.emb = torch.nn.Embedding(k, 8)
        self.out = torch.nn.Linear(8, k)

    def forward(self, z_t, sigma, **cond):
        if isinstance(z_t, Bag):
            h = (self.emb(z_t.ids) * z_t.weights.unsqueeze(-1)).sum(-2)
        elif z_t.is_floating_point():
            h = z_t @ self.emb.weight
        else:
            h = self.emb(z_t.clamp(0, self.emb.num_embeddings - 1))
        return self.out(h)


def const(k: int, value: float = 0.0, dtype: torch.dtype = torch.float32):
    """A denoiser returning ``value`` for all ``k`` logits."""
    return lambda z, sigma, **cond: torch.full((z.shape[0], z.shape[1], k), value, dtype=dtype)


def returns(obj: Any):
    return lambda z, sigma, **cond: obj


def x0(b: int = B, length: int = L, k: int = K) -> torch.Tensor:
    return torch.randint(0, k, (b, length), generator=torch.Generator().manual_seed(0))


def logits(b: int = B, length: int = L, k: int = K, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(b, length, k, generator=torch.Generator().manual_seed(1), dtype=dtype)


def nan_at(t: torch.Tensor, value: float = math.nan) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = value
    return t


def ll() -> LogLinearSchedule:
    return LogLinearSchedule()


def sample_u(**kw):
    """sample_uniform with a K-logit denoiser; ``kw`` overrides any argument."""
    args = {"denoiser": Net(), "batch_size": B, "length": L, "steps": 2, "schedule": ll(),
            "vocab_size": K, **kw}  # fmt: skip
    return samplers.sample_uniform(**args)


def sample_m(**kw):
    args = {"denoiser": Net(K + 1), "batch_size": B, "length": L, "steps": 2, "schedule": ll(),
            "vocab_size": K + 1, "mask_id": K, **kw}  # fmt: skip
    return samplers.sample_masked(**args)


def u_nelbo(**kw):
    args = {"logits": logits(), "x_0": x0(), "z_t": x0(), "alpha_t": 0.5, "dalpha_t": -1.0, **kw}
    return losses.uniform_nelbo(**args)


def m_nelbo(**kw):
    z = x0().clone()
    z[:, 0] = K
    args = {"logits": logits(k=K + 1), "x_0": x0(), "z_t": z, "alpha_t": 0.5, "dalpha_t": -1.0,
            "mask_id": K, **kw}  # fmt: skip
    return losses.masked_nelbo(**args)


def dit(**overrides) -> DiT:
    cfg = {"vocab_size": K, "hidden_size": 16, "n_blocks": 1, "n_heads": 2, "cond_dim": 8,
           "frequency_dim": 16, **overrides}  # fmt: skip
    return DiT(DiTConfig(**cfg))


def distiller(**kw) -> DCDistiller:
    return DCDistiller(Net(), K, **{"steps_per_round": 5, "n_rounds": 2, **kw})


# ---------------------------------------------------------------------------------------------
# Files and runs for the CLI rows (built lazily, once per module)
# ---------------------------------------------------------------------------------------------


class Env:
    """Paths the CLI rows need, under one temporary directory."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    @cached_property
    def text_dir(self) -> Path:
        from tests.helpers import make_corpus

        return make_corpus(self.root / "corpus")

    @cached_property
    def binary_file(self) -> Path:
        path = self.root / "weights.bin"
        path.write_bytes(bytes(range(256)) * 64)
        return path

    @cached_property
    def latin1_file(self) -> Path:
        path = self.root / "latin1.txt"
        path.write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1") * 50)
        return path

    @cached_property
    def binary_in_dir(self) -> Path:
        folder = self.root / "mixed"
        folder.mkdir()
        (folder / "a.txt").write_text("some text\n" * 20)
        (folder / "b.txt").write_bytes(b"\x00\x01\x02PK\x03\x04" * 100)
        return folder

    @cached_property
    def empty_dir(self) -> Path:
        folder = self.root / "empty"
        folder.mkdir()
        return folder

    @cached_property
    def bad_jsonl(self) -> Path:
        path = self.root / "docs.jsonl"
        path.write_text('{"text": "one document"}\n{"text": broken\n')
        return path

    def run(self, name: str, objective: str) -> Path:
        """A run directory as examples.train writes it (config, tokenizer, checkpoint), with a
        two-block DiT that was never trained: enough to load it."""
        folder = self.root / name
        if (folder / "checkpoint.pt").is_file():
            return folder
        from examples.checkpoint import save_checkpoint
        from examples.config import save_config
        from examples.tokenizer import build_tokenizer
        from tests.helpers import tiny_config

        cfg = tiny_config(self.text_dir, folder, **{"train.objective": objective})
        tok = build_tokenizer("char", text=["to be or not that is the question"])
        vocab = tok.vocab_size + (objective == "mdlm")
        model = DiT.from_preset("tiny", vocab_size=vocab, hidden_size=16, n_blocks=1, n_heads=2,
                                cond_dim=8, causal=objective == "ar")  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        save_config(cfg, folder / "config.json")
        tok.save(folder)
        state = {k: v.detach() for k, v in model.state_dict().items()}
        meta = {"vocab_size": tok.vocab_size, "model": model.config.to_dict(),
                "objective": objective}  # fmt: skip
        save_checkpoint(folder / "checkpoint.pt", {"step": 0, "meta": meta, "model": state,
                                                   "ema": state})  # fmt: skip
        return folder

    @cached_property
    def duo_run(self) -> Path:
        return self.run("duo", "duo")

    @cached_property
    def ar_run(self) -> Path:
        return self.run("ar", "ar")

    @cached_property
    def mdlm_run(self) -> Path:
        return self.run("mdlm", "mdlm")

    def broken(self, name: str, objective: str, file: str, content: bytes) -> Path:
        """A copy of a good run with ``file`` overwritten by ``content``."""
        import shutil

        folder = self.root / name
        if not folder.exists():
            shutil.copytree(self.run(f"{name}-source", objective), folder)
            (folder / file).write_bytes(content)
        return folder


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    call: Callable[[Env], Any]
    error: type[BaseException] | tuple[type[BaseException], ...]
    names: tuple[str, ...]


ROWS: list[Any] = []


def row(id: str, call: Callable[..., Any], error: Any, *names: str, xfail: str = "") -> None:
    """Add a row; ``call`` takes the Env when its first parameter is ``e``, else nothing."""
    takes_env = call.__code__.co_varnames[:1] == ("e",)
    wrapped = call if takes_env else (lambda env, call=call: call())
    entry = Row(id, wrapped, error, names)
    if xfail:
        ROWS.append(pytest.param(entry, id=id, marks=pytest.mark.xfail(strict=True, reason=xfail)))
    else:
        ROWS.append(pytest.param(entry, id=id))


V, T = ValueError, TypeError
VT = (ValueError, TypeError)

# --- UniformDiffusion: construction -------------------------------------------------------------
for bad in (1, 0, -3, 2.5, "7", True, None):
    row(f"uniform-vocab-{bad!r}", lambda bad=bad: UniformDiffusion(bad), VT, "vocab_size")
for bad in (0.0, 1.0, -0.1, math.nan, "1e-3"):
    row(f"uniform-eps-{bad!r}", lambda bad=bad: UniformDiffusion(K, eps=bad), VT, "eps")
row("uniform-schedule-string", lambda: UniformDiffusion(K, schedule="cosine"), T, "schedule")
row("uniform-schedule-class", lambda: UniformDiffusion(K, schedule=CosineSchedule), T, "schedule")
row("uniform-curriculum-bool", lambda: UniformDiffusion(K, curriculum=True), T, "curriculum")

# --- the clean tokens x_0, at every public entry point -------------------------------------------
X0_BAD = {
    "1d": (lambda: x0()[0], V),
    "3d": (lambda: x0().unsqueeze(-1), V),
    "float": (lambda: x0().float(), T),
    "bool": (lambda: x0() > 3, T),
    "too-big": (lambda: x0() + K, V),
    "negative": (lambda: x0() - K, V),
    "list": (lambda: x0().tolist(), V),
    "empty-batch": (lambda: x0()[:0], V),
    "empty-length": (lambda: x0()[:, :0], V),
}
ENTRY_POINTS = {
    "uniform.loss": lambda x: UniformDiffusion(K).loss(Net(), x),
    "uniform.nelbo": lambda x: UniformDiffusion(K).nelbo(Net(), x),
    "uniform.discrete_loss": lambda x: UniformDiffusion(K).discrete_loss(
        Net(), x, torch.full((B,), 0.5)
    ),
    "masked.loss": lambda x: MaskedDiffusion(K).loss(Net(K + 1), x),
    "masked.nelbo": lambda x: MaskedDiffusion(K).nelbo(Net(K + 1), x),
    "dcd.loss": lambda x: distiller().loss(Net(), x, 0),
}
if SDTTDistiller is not None:
    ENTRY_POINTS["sdtt.loss"] = lambda x: SDTTDistiller(Net(K + 1), K).loss(Net(K + 1), x, 0)
for entry, fn in ENTRY_POINTS.items():
    for kind, (make, err) in X0_BAD.items():
        if entry.startswith("uniform.discrete") and kind not in ("1d", "float", "empty-batch"):
            continue
        row(f"{entry}-x0-{kind}", lambda fn=fn, make=make: fn(make()), err, "x_0")

# --- UniformDiffusion.loss: the other arguments ---------------------------------------------------
for bad in (-1, 1.5, "3", True, None):
    row(f"uniform.loss-step-{bad!r}", lambda bad=bad: UniformDiffusion(K).loss(Net(), x0(),
        step=bad), V, "step")  # fmt: skip
row("masked.loss-step-negative", lambda: MaskedDiffusion(K).loss(Net(K + 1), x0(), step=-1),
    V, "step")
T_BAD = {
    "shape": torch.full((B + 1,), 0.5),
    "2d": torch.full((B, 1), 0.5),
    "int": torch.ones(B, dtype=torch.long),
    "above-1": torch.full((B,), 2.0),
    "negative": torch.full((B,), -0.5),
    "nan": torch.full((B,), math.nan),
    "list": [0.5] * B,
}
for kind, bad in T_BAD.items():
    row(f"uniform.loss-t-{kind}", lambda bad=bad: UniformDiffusion(K).loss(Net(), x0(), t=bad),
        V, "t")
    row(f"masked.nelbo-t-{kind}", lambda bad=bad: MaskedDiffusion(K).nelbo(Net(K + 1), x0(),
        t=bad), V, "t")  # fmt: skip

# --- the denoiser and what it returns ----------------------------------------------------------
DENOISER_BAD = {
    "string": ("model", T, ("denoiser",)),
    "none": (None, T, ("denoiser",)),
    "k-plus-5": (const(K + 5), V, ("vocab_size", "12")),
    "k-minus-1": (const(K - 1), V, ("vocab_size", "6")),
    "2d": (lambda z, s, **c: torch.zeros(z.shape[0], z.shape[1]), V, ("denoiser", "(B, L, K)")),
    "tuple": (returns((1, 2)), V, ("denoiser", "tuple")),
    "int-logits": (const(K, 0, torch.long), V, ("denoiser", "float")),
    "nan": (const(K, math.nan), V, ("denoiser", "NaN")),
    "plus-inf": (const(K, math.inf), V, ("denoiser", "inf")),
    "all-minus-inf": (const(K, -math.inf), V, ("denoiser", "no finite class")),
}
for kind, (den, err, names) in DENOISER_BAD.items():
    row(f"uniform.loss-denoiser-{kind}", lambda den=den: UniformDiffusion(K).loss(den, x0()),
        err, *names)
for kind in ("string", "k-plus-5", "nan"):
    den, err, names = DENOISER_BAD[kind]
    row(f"sample_uniform-denoiser-{kind}", lambda den=den: sample_u(denoiser=den), err, *names)
    student = tuple("student" if n == "denoiser" else n for n in names)
    row(f"dcd.loss-student-{kind}", lambda den=den: distiller().loss(den, x0(), 0), err,
        *student)
row("masked.loss-uniform-model", lambda: MaskedDiffusion(K).loss(Net(K), x0()), V, "vocab_size",
    str(K + 1))
row("uniform.loss-masked-model", lambda: UniformDiffusion(K).loss(Net(K + 1), x0()), V,
    "vocab_size", str(K + 1))
row("dcd-teacher-wrong-k", lambda: DCDistiller(Net(K + 5), K, steps_per_round=5,
    n_rounds=2).loss(Net(), x0(), 0), V, "teacher", "vocab_size")  # fmt: skip
row("uniform.loss-cond-list", lambda: UniformDiffusion(K).loss(Net(), x0(), cond=[1]), T, "cond")
row("uniform.loss-cond-unknown-key", lambda: UniformDiffusion(K).loss(
    lambda z, sigma: Net()(z, sigma), x0(), cond={"label": 1}), T, "label")  # fmt: skip
row("uniform.loss-unknown-option", lambda: UniformDiffusion(K).loss(Net(), x0(), steps=3), T,
    "steps")
row("uniform.nelbo-unknown-option", lambda: UniformDiffusion(K).nelbo(Net(), x0(), step=3), T,
    "step")

# --- MaskedDiffusion ---------------------------------------------------------------------------
for bad in (1, 0, 2.5, None):
    row(f"masked-vocab-{bad!r}", lambda bad=bad: MaskedDiffusion(bad), VT, "vocab_size")
row("masked-eps", lambda: MaskedDiffusion(K, eps=1.5), V, "eps")
row("masked-schedule-string", lambda: MaskedDiffusion(K, schedule="loglinear"), T, "schedule")
row("masked.loss-x0-holds-mask-id", lambda: MaskedDiffusion(K).loss(Net(K + 1),
    torch.full((B, L), K)), V, "x_0")  # fmt: skip

# --- DCDistiller ------------------------------------------------------------------------------
DCD_BAD = {
    "teacher-string": ({"teacher": "run"}, T, ("teacher",)),
    "vocab-1": ({"vocab_size": 1}, V, ("vocab_size",)),
    "initial_steps-0": ({"initial_steps": 0}, V, ("initial_steps",)),
    "initial_steps-float": ({"initial_steps": 512.0}, V, ("initial_steps",)),
    "steps_per_round-negative": ({"steps_per_round": -1}, V, ("steps_per_round",)),
    "n_rounds-0": ({"n_rounds": 0}, V, ("n_rounds",)),
    "divergence": ({"divergence": "kl"}, V, ("divergence",)),
    "refresh_from": ({"refresh_from": "teacher"}, V, ("refresh_from",)),
    "kl_dtype": ({"kl_dtype": torch.float16}, V, ("kl_dtype",)),
    "eps": ({"eps": 1.5}, V, ("eps",)),
    "window": ({"window": (-4, -1)}, T, ("window",)),
    "dt-too-big": ({"initial_steps": 4, "n_rounds": 4}, V, ("initial_steps", "n_rounds")),
}
for kind, (kw, err, names) in DCD_BAD.items():
    def make_dcd(kw=kw):
        args = {"teacher": Net(), "vocab_size": K, "steps_per_round": 5, "n_rounds": 2, **kw}
        return DCDistiller(args.pop("teacher"), args.pop("vocab_size"), **args)

    row(f"dcd-{kind}", make_dcd, err, *names)
for bad in (-1, 2.5, "0", None):
    row(f"dcd.loss-step-{bad!r}", lambda bad=bad: distiller().loss(Net(), x0(), bad), V, "step")
row("dcd.loss-step-of-a-later-round", lambda: distiller().loss(Net(), x0(), 7), V, "round",
    "maybe_refresh")
row("dcd.maybe_refresh-ema-missing", lambda: distiller(refresh_from="ema").maybe_refresh(4,
    Net()), V, "ema")  # fmt: skip
row("dcd.load_state_dict-garbage", lambda: distiller().load_state_dict({"round": 0}), V,
    "state dict")
row("dcd.load_state_dict-other-settings", lambda: distiller().load_state_dict(
    distiller(n_rounds=3).state_dict()), V, "n_rounds")  # fmt: skip
row("dcd.sample-typo", lambda: distiller().sample(Net(), B, L, 2, topp=0.9), T, "topp")
row("dcd.sample-steps-0", lambda: distiller().sample(Net(), B, L, 0), V, "steps")
row("dcd.sample-vocab-mismatch", lambda: distiller().sample(Net(K + 5), B, L, 2), V,
    "vocab_size")

# --- samplers: sample_uniform ------------------------------------------------------------------
SAMPLE_BAD = {
    "batch_size-0": ({"batch_size": 0}, V, ("batch_size",)),
    "batch_size-float": ({"batch_size": 2.0}, V, ("batch_size",)),
    "length-0": ({"length": 0}, V, ("length",)),
    "steps-0": ({"steps": 0}, V, ("steps",)),
    "steps-negative": ({"steps": -4}, V, ("steps",)),
    "steps-float": ({"steps": 2.5}, V, ("steps",)),
    "vocab_size-plus-5": ({"vocab_size": K + 5}, V, ("vocab_size",)),
    "vocab_size-1": ({"vocab_size": 1}, V, ("vocab_size",)),
    "tail": ({"tail": "greedyy"}, V, ("tail",)),
    "kappa-above-1": ({"kappa": 1.5}, V, ("kappa",)),
    "kappa-negative": ({"kappa": -0.1}, V, ("kappa",)),
    "kappa-nan": ({"kappa": math.nan}, V, ("kappa",)),
    "kappa-string": ({"kappa": "0.5"}, V, ("kappa",)),
    "kappa-callable-out-of-range": ({"kappa": lambda t, s: 2.0}, V, ("kappa",)),
    "top_p-0": ({"top_p": 0.0}, V, ("top_p",)),
    "top_p-above-1": ({"top_p": 1.5}, V, ("top_p",)),
    "top_p-nan": ({"top_p": math.nan}, V, ("top_p",)),
    "top_p-string": ({"top_p": "0.9"}, V, ("top_p",)),
    "top_k-0": ({"top_k": 0}, V, ("top_k",)),
    "top_k-float": ({"top_k": 2.5}, V, ("top_k",)),
    "time_grid-length": ({"time_grid": [1.0, 0.5, 0.0, 0.0]}, V, ("time_grid",)),
    "time_grid-increasing": ({"time_grid": [0.0, 0.5, 1.0]}, V, ("time_grid",)),
    "time_grid-above-1": ({"time_grid": [2.0, 1.0, 0.0]}, V, ("time_grid",)),
    "time_grid-nan": ({"time_grid": [1.0, math.nan, 0.0]}, V, ("time_grid",)),
    "time_grid-string": ({"time_grid": "1,0.5,0"}, V, ("time_grid",)),
    "time_grid-number": ({"time_grid": 0.5}, V, ("time_grid",)),
    "prompt-shape": ({"prompt": x0(B, L + 1)}, V, ("prompt",)),
    "prompt-out-of-range": ({"prompt": x0() + K}, V, ("prompt",)),
    "prompt-float": ({"prompt": x0().float()}, T, ("prompt",)),
    "prompt_mask-alone": ({"prompt_mask": torch.ones(B, L, dtype=torch.bool)}, V,
                          ("prompt_mask",)),
    "prompt_mask-int": ({"prompt": x0(), "prompt_mask": torch.ones(B, L, dtype=torch.long)}, V,
                        ("prompt_mask",)),
    "prompt_mask-shape": ({"prompt": x0(), "prompt_mask": torch.ones(B, dtype=torch.bool)}, V,
                          ("prompt_mask",)),
    "typo-topp": ({"topp": 0.9}, T, ("topp",)),
    "typo-top_P": ({"top_P": 0.9}, T, ("top_P",)),
    "model-kwarg-at-top-level": ({"label": 3}, T, ("label",)),
    "cond-list": ({"cond": [1]}, T, ("cond",)),
    "guidance-without-uncond": ({"guidance_scale": 2.0}, V, ("uncond",)),
    "guidance-negative": ({"guidance_scale": -1.0, "uncond": {}}, V, ("guidance_scale",)),
    "uncond-without-guidance": ({"uncond": {}}, V, ("guidance_scale",)),
    "schedule-missing": ({"schedule": None}, VT, ("schedule",)),
}
for kind, (kw, err, names) in SAMPLE_BAD.items():
    row(f"sample_uniform-{kind}", lambda kw=kw: sample_u(**kw), err, *names)

# --- samplers: sample_masked -------------------------------------------------------------------
MASKED_BAD = {
    "mask_id-out-of-range": ({"mask_id": K + 1}, V, ("mask_id",)),
    "mask_id-negative": ({"mask_id": -1}, V, ("mask_id",)),
    "vocab-mismatch": ({"vocab_size": K + 3}, V, ("vocab_size",)),
    "remask-out-of-range": ({"remask": lambda t, s: 5.0}, V, ("remask",)),
    "steps-0": ({"steps": 0}, V, ("steps",)),
    "tail": ({"tail": "best"}, V, ("tail",)),
    "typo": ({"topp": 0.5}, T, ("topp",)),
    "prompt-holds-mask": ({"prompt": torch.full((B, L), K)}, V, ("prompt",)),
}
for kind, (kw, err, names) in MASKED_BAD.items():
    row(f"sample_masked-{kind}", lambda kw=kw: sample_m(**kw), err, *names)

# --- samplers: laws and steps ------------------------------------------------------------------
probs = lambda: torch.softmax(logits(), -1)  # noqa: E731
row("uniform_posterior-z_t-range", lambda: samplers.uniform_posterior(probs(), x0() + K, 0.6,
    0.5), V, "z_t")  # fmt: skip
row("uniform_posterior-order", lambda: samplers.uniform_posterior(probs(), x0(), 0.4, 0.5), V,
    "alpha_s", "alpha_t")
row("uniform_posterior-alpha-range", lambda: samplers.uniform_posterior(probs(), x0(), 1.5, 0.5),
    V, "alpha_s")
row("uniform_posterior-2d-probs", lambda: samplers.uniform_posterior(probs()[0], x0(), 0.6, 0.5),
    T, "probs_x0")
row("psi_posterior-kappa", lambda: samplers.psi_posterior(probs(), x0(), 0.6, 0.5, 1.5), V,
    "kappa")
row("sample_categorical-negative", lambda: samplers.sample_categorical(nan_at(probs(), -1.0)), V,
    "probs")
row("sample_categorical-nan", lambda: samplers.sample_categorical(nan_at(probs())), V, "probs")
row("sample_categorical-ints", lambda: samplers.sample_categorical(torch.ones(3, 4,
    dtype=torch.long)), T, "probs")  # fmt: skip
row("sample_categorical_logits-top_k", lambda: samplers.sample_categorical_logits(logits(),
    top_k=0), V, "top_k")  # fmt: skip
row("greedy_tail-1d", lambda: samplers.greedy_tail(logits()[0, 0]), VT, "logits")
row("map_tail-alpha", lambda: samplers.map_tail(logits(), x0(), 1.5), V, "alpha_t")
row("uniform_ancestral_step-order", lambda: samplers.uniform_ancestral_step(logits(), x0(), 0.2,
    0.5), V, "alpha_s")  # fmt: skip
row("masked_ancestral_step-mask_id", lambda: samplers.masked_ancestral_step(logits(k=K + 1),
    x0(), 0.6, 0.5, mask_id=K + 4), V, "mask_id")  # fmt: skip
row("ConstantKappa-range", lambda: samplers.ConstantKappa(2.0), V, "kappa")
row("nfe-tail", lambda: samplers.nfe(4, "best"), V, "tail")
row("TimeGrid.build-t_min", lambda: samplers.TimeGrid.build(ll(), 4, t_min=0.0), V, "t_min")

# --- losses ----------------------------------------------------------------------------------
LOSS_BAD = {
    "logits-2d": ({"logits": logits()[0]}, T, ("logits",)),
    "logits-int": ({"logits": logits().long()}, T, ("logits",)),
    "logits-nan": ({"logits": nan_at(logits())}, V, ("logits", "NaN")),
    "logits-plus-inf": ({"logits": nan_at(logits(), math.inf)}, V, ("logits",)),
    "logits-k-1": ({"logits": logits(k=1), "x_0": torch.zeros(B, L, dtype=torch.long),
                    "z_t": torch.zeros(B, L, dtype=torch.long)}, V, ("vocab",)),
    "x_0-shape": ({"x_0": x0(B, L + 1)}, T, ("x_0",)),
    "x_0-range": ({"x_0": x0() + K}, V, ("x_0",)),
    "x_0-float": ({"x_0": x0().float()}, T, ("x_0",)),
    "z_t-range": ({"z_t": x0() - K}, V, ("z_t",)),
    "z_t-shape": ({"z_t": x0(B + 1)}, T, ("z_t",)),
    "alpha_t-0": ({"alpha_t": 0.0}, V, ("alpha_t",)),
    "alpha_t-above-1": ({"alpha_t": 1.5}, V, ("alpha_t",)),
    "alpha_t-nan": ({"alpha_t": math.nan}, V, ("alpha_t",)),
    "alpha_t-tensor-shape": ({"alpha_t": torch.full((B, L + 1), 0.5)}, T, ("alpha_t",)),
    "alpha_t-string": ({"alpha_t": "0.5"}, T, ("alpha_t",)),
    "dalpha_t-positive": ({"dalpha_t": 1.0}, V, ("dalpha_t",)),
    "dalpha_t-nan": ({"dalpha_t": math.nan}, V, ("dalpha_t",)),
    "dalpha_t-inf": ({"dalpha_t": -math.inf}, V, ("dalpha_t",)),
}
for kind, (kw, err, names) in LOSS_BAD.items():
    row(f"uniform_nelbo-{kind}", lambda kw=kw: u_nelbo(**kw), err, *names)
for kind in ("logits-nan", "x_0-range", "z_t-range", "alpha_t-above-1", "dalpha_t-positive"):
    kw, err, names = LOSS_BAD[kind]
    if "logits" in kw:
        kw = {"logits": nan_at(logits(k=K + 1))}
    row(f"masked_nelbo-{kind}", lambda kw=kw: m_nelbo(**kw), err, *names)
row("uniform_nelbo-alpha-requires-grad", lambda: u_nelbo(alpha_t=torch.full((B, 1), 0.5,
    requires_grad=True)), V, "alpha_t")  # fmt: skip
row("uniform_nelbo-impossible-at-alpha-1", lambda: u_nelbo(alpha_t=1.0, z_t=(x0() + 1) % K), V,
    "alpha_t", "z_t")
row("uniform_nelbo-chunk_rows-0", lambda: u_nelbo(chunk_rows=0), V, "chunk_rows")
for bad in (K + 1, -1, 1.5, True):
    row(f"masked_nelbo-mask_id-{bad!r}", lambda bad=bad: m_nelbo(mask_id=bad), VT, "mask_id")
row("masked_nelbo-x_0-holds-mask", lambda: m_nelbo(x_0=torch.full((B, L), K)), V, "x_0")
row("ar_loss-shapes", lambda: losses.ar_loss(logits(), x0(B, L + 1)), T, "targets")
row("ar_loss-range", lambda: losses.ar_loss(logits(), x0() + K), V, "targets")
row("uniform_prior_kl-alpha", lambda: losses.uniform_prior_kl(x0(), 1.5, K), V, "alpha")
row("uniform_prior_kl-vocab", lambda: losses.uniform_prior_kl(x0(), 0.1, 1), V, "vocab_size")
row("masked_prior_kl-vocab", lambda: losses.masked_prior_kl(x0(), 0.1, 1), V, "vocab_size")
row("masked_prior_kl-x_0-range", lambda: losses.masked_prior_kl(x0() + K, 0.1, K), V, "x_0")
row("uniform_reconstruction-alpha", lambda: losses.uniform_reconstruction(logits(), x0(), x0(),
    0.0), V, "alpha")  # fmt: skip
row("masked_reconstruction-mask_id", lambda: losses.masked_reconstruction(logits(k=K + 1), x0(),
    x0(), K + 3), V, "mask_id")  # fmt: skip

# --- processes ---------------------------------------------------------------------------------
col = lambda v: torch.full((B, 1), float(v))  # noqa: E731
PROC_BAD = {
    "uniform_corrupt-alpha-above-1": (lambda: processes.uniform_corrupt(x0(), col(1.5), K), V,
                                      ("alpha_t",)),
    "uniform_corrupt-alpha-nan": (lambda: processes.uniform_corrupt(x0(), col(math.nan), K), V,
                                  ("alpha_t",)),
    "uniform_corrupt-alpha-float": (lambda: processes.uniform_corrupt(x0(), 0.5, K), T,
                                    ("alpha_t",)),
    "uniform_corrupt-alpha-shape": (lambda: processes.uniform_corrupt(x0(), torch.full(
        (B, L + 1), 0.5), K), T, ("alpha_t",)),
    "uniform_corrupt-vocab": (lambda: processes.uniform_corrupt(x0(), col(0.5), 1), V,
                              ("vocab_size",)),
    "uniform_corrupt-x0-range": (lambda: processes.uniform_corrupt(x0() + K, col(0.5), K), V,
                                 ("x_0",)),
    "uniform_marginal-x0-float": (lambda: processes.uniform_marginal(x0().float(), col(0.5), K),
                                  T, ("x_0",)),
    "masked_corrupt-mask-in-data": (lambda: processes.masked_corrupt(x0(), col(0.5), 3,
                                    vocab_size=K), V, ("mask_id",)),
    "masked_corrupt-alpha-negative": (lambda: processes.masked_corrupt(x0(), col(-0.5), K), V,
                                      ("alpha_t",)),
    "gaussian_latent-alpha": (lambda: processes.gaussian_latent(x0(), col(1.5), K), V,
                              ("alpha_tilde",)),
    "gaussian_latent-noise-shape": (lambda: processes.gaussian_latent(x0(), col(0.5), K,
                                    noise=torch.randn(B, L, K + 1)), VT, ("noise",)),
    "relax-tau-0": (lambda: processes.relax(logits(), 0.0), V, ("tau",)),
    "relax-tau-nan": (lambda: processes.relax(logits(), math.nan), V, ("tau",)),
    "relax-w_t-2d": (lambda: processes.relax(logits()[0], 1.0), T, ("w_t",)),
    "topk-top_k-0": (lambda: processes.topk_gaussian_latent(x0(), col(0.5), K, 0, 1e-3), V,
                     ("top_k",)),
    "topk-top_k-above-K": (lambda: processes.topk_gaussian_latent(x0(), col(0.5), K, K + 1,
                           1e-3), V, ("top_k",)),
    "topk-tau-negative": (lambda: processes.topk_gaussian_latent(x0(), col(0.5), K, 2, -1.0), V,
                          ("tau",)),
}
for kind, (fn, err, names) in PROC_BAD.items():
    row(kind, fn, err, *names)

# --- the transform T, schedules, windows ------------------------------------------------------
for bad in (1, 0, 2.5, "50257", None, True):
    row(f"T-vocab-{bad!r}", lambda bad=bad: GaussianArgmaxTransform(bad), VT, "vocab_size")
TRANSFORM_BAD = {
    "above-1": (torch.tensor([1.5]), V),
    "negative": (torch.tensor([-0.1]), V),
    "nan": (torch.tensor([math.nan]), V),
    "int": (torch.tensor([1]), T),
    "float": (0.5, T),
}
for kind, (bad, err) in TRANSFORM_BAD.items():
    row(f"T-call-{kind}", lambda bad=bad: GaussianArgmaxTransform(K)(bad), err, "alpha_tilde")
    row(f"T-derivative-{kind}", lambda bad=bad: GaussianArgmaxTransform(K).derivative(bad), err,
        "alpha_tilde")
    row(f"T-inverse-{kind}", lambda bad=bad: GaussianArgmaxTransform(K).inverse(bad), err, "alpha")
SCHEDULE_BAD = {
    "loglinear-eps-above-1": (lambda: LogLinearSchedule(eps=2.0), ("eps",)),
    "loglinear-eps-1": (lambda: LogLinearSchedule(eps=1.0), ("eps",)),
    "loglinear-eps-negative": (lambda: LogLinearSchedule(eps=-0.5), ("eps",)),
    "loglinear-eps-nan": (lambda: LogLinearSchedule(eps=math.nan), ("eps",)),
    "loglinear-eps-string": (lambda: LogLinearSchedule(eps="1e-3"), ("eps",)),
    "cosine-eps": (lambda: CosineSchedule(eps=1.5), ("eps",)),
    "linear-order": (lambda: LinearSchedule(sigma_min=5.0, sigma_max=1.0), ("sigma_min",)),
    "linear-negative": (lambda: LinearSchedule(sigma_min=-1.0), ("sigma_min",)),
    "linear-inf": (lambda: LinearSchedule(sigma_max=math.inf), ("sigma_max",)),
    "geometric-zero": (lambda: GeometricSchedule(sigma_min=0.0), ("sigma_min",)),
    "geometric-order": (lambda: GeometricSchedule(sigma_min=30.0, sigma_max=20.0),
                        ("sigma_min",)),
    "gamma-order": (lambda: GammaSchedule(1.0, -1.0), ("gamma_min", "gamma_max")),
    "gamma-nan": (lambda: GammaSchedule(math.nan, 1.0), ("gamma_min",)),
    "gamma-string": (lambda: GammaSchedule("-4", -1.0), ("gamma_min",)),
    "window-order": (lambda: AlphaWindow(0.1, 0.9), ("alpha_start", "alpha_end")),
    "window-range": (lambda: AlphaWindow(1.5, 0.1), ("alpha_start",)),
    "window-from_gamma-vocab": (lambda: AlphaWindow.from_gamma(-4.0, -1.0, 1), ("vocab_size",)),
}
for kind, (fn, names) in SCHEDULE_BAD.items():
    row(kind, fn, V, *names)

# --- curriculum, times, metrics ----------------------------------------------------------------
CURRICULUM_BAD = {
    "tau-0": ({"tau": 0.0}, V, ("tau",)),
    "tau-negative": ({"tau": -1.0}, V, ("tau",)),
    "tau_end-0": ({"tau_end": 0.0}, V, ("tau",)),
    "end_step-negative": ({"end_step": -1}, V, ("end_step",)),
    "end_step-float": ({"end_step": 1.5}, V, ("end_step",)),
    "top_k-0": ({"top_k": 0}, V, ("top_k",)),
    "window-string": ({"window": "paper"}, T, ("window",)),
}
for kind, (kw, err, names) in CURRICULUM_BAD.items():
    row(f"curriculum-{kind}", lambda kw=kw: GaussianCurriculum(**kw), err, *names)
row("curriculum-top_k-above-K", lambda: UniformDiffusion(K, curriculum=GaussianCurriculum(
    top_k=K + 2)).loss(Net(), x0()), V, "top_k")  # fmt: skip
TIMES_BAD = {
    "batch_size-0": ({"batch_size": 0}, V, ("batch_size",)),
    "eps-1": ({"eps": 1.0}, V, ("eps",)),
    "rank": ({"world_size": 2, "rank": 2}, V, ("rank",)),
    "accum_index": ({"accum_steps": 2, "accum_index": -1}, V, ("accum_index",)),
    "u-above-1": ({"u": 1.5}, V, ("u",)),
    "dtype-int": ({"dtype": torch.int64}, V, ("dtype",)),
}
for kind, (kw, err, names) in TIMES_BAD.items():
    row(f"antithetic_times-{kind}", lambda kw=kw: antithetic_times(**{"batch_size": B, **kw}),
        err, *names)
row("AntitheticTimes-seed", lambda: AntitheticTimes(seed=-1), V, "seed")
row("AntitheticTimes-step", lambda: AntitheticTimes()(B, step=-1), V, "step")
row("BoundMeter-mask-shape", lambda: BoundMeter().update(torch.ones(B, L),
    mask=torch.ones(B, L + 1)), V, "mask")  # fmt: skip
row("BoundMeter-reserved-name", lambda: BoundMeter().update({"ppl": torch.ones(B, L)}), V, "ppl")
row("BoundMeter-string", lambda: BoundMeter().update("nelbo"), T, "per_token_terms")
row("BoundMeter-compute-empty", lambda: BoundMeter().compute(), V, "update")

# --- DiT and AR decoding -----------------------------------------------------------------------
row("DiT-preset", lambda: DiT.from_preset("huge", vocab_size=K), V, "preset")
row("DiT-vocab-0", lambda: DiT.from_preset("tiny", vocab_size=0), V, "vocab_size")
row("DiT-heads", lambda: dit(hidden_size=18, n_heads=4), V, "n_heads")
row("DiT-unknown-override", lambda: DiT.from_preset("tiny", vocab_size=K, hiden_size=64), T,
    "hiden_size")
row("DiT-dropout", lambda: dit(dropout=1.5), V, "dropout")
row("DiTConfig.from_dict-unknown", lambda: DiTConfig.from_dict({"vocab_size": K, "width": 3}),
    V, "width")
row("DiT-backend", lambda: dit().set_attention_backend("cuda"), V, "backend")
DIT_BAD = {
    "z_t-range": (lambda m: m(x0() + K, torch.zeros(B)), V, ("z_t",)),
    "z_t-1d": (lambda m: m(x0()[0], torch.zeros(B)), VT, ("z_t",)),
    "soft-wrong-k": (lambda m: m(torch.rand(B, L, K + 1), torch.zeros(B)), V, ("z_t",)),
    "sigma-missing": (lambda m: m(x0()), V, ("sigma",)),
    "sigma-shape": (lambda m: m(x0(), torch.zeros(B + 1)), VT, ("sigma",)),
    "sigma-nan": (lambda m: m(x0(), torch.full((B,), math.nan)), V, ("sigma",)),
    "sigma-int": (lambda m: m(x0(), torch.zeros(B, dtype=torch.long)), T, ("sigma",)),
    "bag-shapes": (lambda m: m(Bag(torch.zeros(B, L, 2, dtype=torch.long), torch.ones(B, L, 3)),
                               torch.zeros(B)), V, ("bag",)),
    "padding_mask-int": (lambda m: m(x0(), torch.zeros(B), padding_mask=torch.ones(B, L)), T,
                         ("padding_mask",)),
}
for kind, (fn, err, names) in DIT_BAD.items():
    row(f"DiT.forward-{kind}", lambda fn=fn: fn(dit()), err, *names)
row("DiT.kv_cache-non-causal", lambda: dit().new_kv_cache(), V, "causal")
AR_BAD = {
    "prompt-1d": ({"prompt": x0()[0]}, V, ("prompt",)),
    "prompt-empty": ({"prompt": x0()[:, :0]}, V, ("prompt",)),
    "prompt-range": ({"prompt": x0() + K}, V, ("prompt",)),
    "prompt-float": ({"prompt": x0().float()}, T, ("prompt",)),
    "max_new_tokens-negative": ({"max_new_tokens": -1}, V, ("max_new_tokens",)),
    "temperature-0": ({"temperature": 0.0}, V, ("temperature",)),
    "top_k-0": ({"top_k": 0}, V, ("top_k",)),
    "top_p-0": ({"top_p": 0.0}, V, ("top_p",)),
    "non-causal": ({"model": "diffusion"}, V, ("causal",)),
}
for kind, (kw, err, names) in AR_BAD.items():
    def run_ar(kw=kw):
        args = {"model": dit(causal=True), "prompt": x0(), "max_new_tokens": 2, **kw}
        if args["model"] == "diffusion":
            args["model"] = dit()
        return generate_ar(args.pop("model"), args.pop("prompt"), args.pop("max_new_tokens"),
                           **args)

    row(f"generate_ar-{kind}", run_ar, err, *names)

# --- SDTTDistiller ----------------------------------------------------------------------------
if SDTTDistiller is not None:
    row("sdtt-teacher-uniform-model", lambda: SDTTDistiller(Net(K), K).loss(Net(K + 1), x0(), 0),
        V, "teacher")
    row("sdtt-student-uniform-model", lambda: SDTTDistiller(Net(K + 1), K).loss(Net(K), x0(), 0),
        V, "student")
    row("sdtt-step-negative", lambda: SDTTDistiller(Net(K + 1), K).loss(Net(K + 1), x0(), -1), V,
        "step")
    row("sdtt-sample-typo", lambda: SDTTDistiller(Net(K + 1), K).sample(Net(K + 1), B, L, 2,
        topp=0.5), T, "topp")  # fmt: skip


# --- checks per thread; nothing silent at the denoiser seam --------------------------------------
# Each bad call of the first group runs while another thread sits inside sample_uniform (under
# ``trusted()``, in its denoiser): the checks are per thread, so the call still fails clearly.
NOTES = sys.version_info >= (3, 11)  # a denoiser's error carries its inputs in a note


def while_sampling(call: Callable[[], Any]) -> Any:
    """Run ``call`` here while another thread is inside ``sample_uniform``'s denoiser."""
    inside, release = threading.Event(), threading.Event()

    def blocking(z, sigma, **cond):
        inside.set()
        release.wait(30)
        return torch.zeros(z.shape[0], z.shape[1], K)

    thread = threading.Thread(target=lambda: sample_u(denoiser=blocking, steps=1))
    thread.start()
    try:
        inside.wait(30)
        return call()
    finally:
        release.set()
        thread.join(30)


def after_overlapping_samplers(call: Callable[[], Any]) -> Any:
    """Two samplers in two threads, A enters, B enters, A leaves, B leaves; then ``call``."""
    gates = [(threading.Event(), threading.Event()) for _ in range(2)]

    def blocking(gate):
        def den(z, sigma, **cond):
            if not gate[0].is_set():
                gate[0].set()
                gate[1].wait(30)
            return torch.zeros(z.shape[0], z.shape[1], K)
        return den

    threads = [threading.Thread(target=lambda g=g: sample_u(denoiser=blocking(g))) for g in gates]
    for thread, gate in zip(threads, gates, strict=True):
        thread.start()
        gate[0].wait(30)
    for thread, gate in zip(threads, gates, strict=True):
        gate[1].set()
        thread.join(30)
    return call()


THREAD_BAD = {
    "uniform_ancestral_step-order": (lambda: samplers.uniform_ancestral_step(logits(), x0(), 0.2,
                                     0.5), "alpha_s"),
    "uniform_ancestral_step-alpha_s-1.7": (lambda: samplers.uniform_ancestral_step(logits(), x0(),
                                           1.7, 0.5), "alpha_s"),
    "uniform_ancestral_step-kappa-3": (lambda: samplers.uniform_ancestral_step(logits(), x0(),
                                       0.6, 0.5, kappa=3.0), "kappa"),
    "masked_ancestral_step-remask-above-max": (lambda: samplers.masked_ancestral_step(
        logits(k=K + 1), x0(), 0.6, 0.5, mask_id=K, remask=0.9), "remask"),
    "sample_categorical-negative": (lambda: samplers.sample_categorical(nan_at(probs(), -1.0)),
                                    "probs"),
    "uniform_nelbo-alpha-2": (lambda: u_nelbo(alpha_t=2.0), "alpha_t"),
}  # fmt: skip
for kind, (fn, name) in THREAD_BAD.items():
    row(f"while-sampling-in-another-thread-{kind}", lambda fn=fn: while_sampling(fn), V, name)
    row(f"after-overlapping-samplers-{kind}", lambda fn=fn: after_overlapping_samplers(fn), V,
        name)


class NanoGPT(torch.nn.Module):
    """nanoGPT's forward as is (``b, t = idx.size()``), with a sigma argument."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.emb = torch.nn.Embedding(K, 8, dtype=dtype)
        self.out = torch.nn.Linear(8, K, dtype=dtype)

    def forward(self, idx, sigma):
        if idx.is_floating_point() and idx.dtype != self.emb.weight.dtype:
            return self.out(idx @ self.emb.weight)  # a bf16 model fed float32 probabilities
        b, t = idx.size()
        return self.out(self.emb(idx))


class ModelOutput:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


def no_sigma(z):
    return torch.zeros(z.shape[0], z.shape[1], K)


curriculum_loss = lambda model, **kw: UniformDiffusion(K, curriculum=GaussianCurriculum(  # noqa: E731
    end_step=10, **kw)).loss(model, x0(), fused=False)  # fmt: skip
note = lambda *names: names if NOTES else ()  # noqa: E731 - names only a note holds
SEAM_BAD = {
    "sample-dit-smaller-than-vocab": (lambda: UniformDiffusion(55).sample(
        dit(vocab_size=50).eval(), 4, 64, 2, generator=torch.Generator().manual_seed(0)), V,
        ("vocab_size=50", *note("vocab_size=55"))),
    "loss-dit-smaller-than-vocab": (lambda: UniformDiffusion(K + 3).loss(dit(),
        torch.full((B, L), K + 2)), V, (f"vocab_size={K}", *note(f"vocab_size={K + 3}"))),
    "denoiser-model-output": (returns(ModelOutput(logits())), V, (".logits",)),
    "denoiser-tuple-of-logits": (returns((logits(),)), V, (".logits", "output[0]")),
    "denoiser-without-sigma": (lambda: sample_u(denoiser=no_sigma), T,
                               ("denoiser(z_t, sigma, **cond)",)),
    "curriculum-nanogpt": (lambda: curriculum_loss(NanoGPT()), V,
                           note("relaxed", "(B, L, K)")),
    "curriculum-top_k-nanogpt": (lambda: curriculum_loss(NanoGPT(), top_k=3), AttributeError,
                                 note("relaxed", "Bag")),
    "curriculum-bf16-model-asks-float32": (lambda: curriculum_loss(NanoGPT(torch.bfloat16),
        dtype=torch.float32), RuntimeError, note("relaxed", "GaussianCurriculum(dtype=")),
    "curriculum-dtype-int8": (lambda: GaussianCurriculum(dtype="int8"), V, ("dtype",)),
    "sample_uniform-generator-int": (lambda: sample_u(generator=0), T, ("generator",
                                                                       "manual_seed(0)")),
    "sample_masked-generator-int": (lambda: sample_m(generator=0), T, ("manual_seed(0)",)),
    "uniform.loss-generator-int": (lambda: UniformDiffusion(K).loss(Net(), x0(), generator=0), T,
                                   ("generator", "manual_seed(0)")),
    "dcd.loss-generator-int": (lambda: distiller().loss(Net(), x0(), 0, generator=0), T,
                               ("generator", "manual_seed(0)")),
    "kernels.uniform_nelbo-backend-cuda": (lambda: discdiff.kernels.uniform_nelbo(logits(), x0(),
        x0(), 0.5, -1.0, backend="cuda"), T, ("backend", "must be one of 'auto', 'triton'")),
    "kernels.uniform_ancestral_step-backend-cuda": (lambda: discdiff.kernels
        .uniform_ancestral_step(logits(), x0(), 0.6, 0.5, backend="cuda"), T, ("backend",
        "must be one of 'auto', 'triton'")),
    "fused_linear_uniform_nelbo-backend-cuda": (lambda: losses.fused_linear_uniform_nelbo(
        torch.randn(B, L, 8), torch.randn(K, 8), x0(), x0(), 0.5, -1.0, backend="cuda"), T,
        ("backend", "must be one of 'auto'")),
    "dit-cond-padding_mask-batch": (lambda: sample_u(denoiser=dit().eval(), cond={
        "padding_mask": torch.ones(B + 1, L, dtype=torch.bool)}), T, ("padding_mask' must be",
        f"b={B}")),
    "uniform-schedule-without-dalpha_dt": (lambda: UniformDiffusion(K, schedule=AlphaOnly()), T,
                                           ("schedule", "without dalpha_dt")),
    "sample_uniform-schedule-without-dalpha_dt": (lambda: sample_u(schedule=AlphaOnly()), T,
                                                  ("schedule", "without dalpha_dt")),
    "sample_uniform-schedule-class": (lambda: sample_u(schedule=LogLinearSchedule), T,
                                      ("schedule", "LogLinearSchedule()")),
}  # fmt: skip
if SDTTDistiller is not None:
    SEAM_BAD["sdtt-schedule-without-dalpha_dt"] = (lambda: SDTTDistiller(Net(K + 1), K,
        schedule=AlphaOnly()), T, ("schedule", "without dalpha_dt"))  # fmt: skip
    SEAM_BAD["sdtt.loss-generator-int"] = (lambda: SDTTDistiller(Net(K + 1), K).loss(Net(K + 1),
        x0(), 0, generator=0), T, ("generator", "manual_seed(0)"))  # fmt: skip
for kind, (fn, err, names) in SEAM_BAD.items():
    if kind.startswith("denoiser-"):
        row(f"uniform.loss-{kind}", lambda fn=fn: UniformDiffusion(K).loss(fn, x0()), err, *names)
        row(f"sample_uniform-{kind}", lambda fn=fn: sample_u(denoiser=fn), err, *names)
    else:
        row(kind, fn, err, *names)


# --- the training CLI: python -m examples.train ------------------------------------------------


def train_cli(*argv: Any):
    from examples.train import main

    return main([str(a) for a in argv])


def tiny_args(env: Env, out: str = "out") -> list[Any]:
    return ["--data.source", env.text_dir, "--data.seq_len", 16, "--model.hidden", 16,
            "--model.blocks", 1, "--model.heads", 2, "--model.cond_dim", 8, "--train.steps", 1,
            "--train.batch_size", 2, "--train.progress", "false", "--train.tensorboard", "false",
            "--train.out_dir", env.path(out)]  # fmt: skip


SE = SystemExit
TRAIN_BAD = {
    "objective": (lambda e: train_cli("--train.objective", "diffusion"), SE, ("train.objective",)),
    "steps-0": (lambda e: train_cli("--train.steps", 0), SE, ("train.steps",)),
    "steps-text": (lambda e: train_cli("--train.steps", "many"), SE, ("--train.steps",)),
    "lr-text": (lambda e: train_cli("--train.lr", "fast"), SE, ("--train.lr",)),
    "abbreviated-flag": (lambda e: train_cli("--train.lr_sched", "cosine"), SE,
                         ("--train.lr_sched",)),
    "bool-text": (lambda e: train_cli("--train.compile", "maybe"), SE, ("--train.compile",)),
    "preset": (lambda e: train_cli("--preset", "gpt5"), SE, ("preset", "gpt5")),
    "preset-and-config": (lambda e: train_cli("--preset", "owt", "--config", e.path("c.json")),
                          SE, ("--preset", "--config")),
    "config-missing": (lambda e: train_cli("--config", e.path("nowhere.json")), SE,
                       ("nowhere.json",)),
    "config-corrupt": (lambda e: train_cli("--config", e.broken("corrupt-config", "duo",
                       "config.json", b"{not json") / "config.json"), SE, ("config.json",)),
    "config-unknown-key": (lambda e: train_cli("--config", e.broken("unknown-key", "duo",
                           "config.json", b'{"train": {"stepz": 3}}') / "config.json"), SE,
                           ("stepz",)),
    "unknown-flag": (lambda e: train_cli("--train.stepz", 3), SE, ("--train.stepz",)),
    "micro_batch": (lambda e: train_cli("--train.batch_size", 32, "--train.micro_batch", 5), SE,
                    ("micro_batch",)),
    "precision": (lambda e: train_cli("--train.precision", "fp16"), SE, ("train.precision",)),
    "lr_schedule": (lambda e: train_cli("--train.lr_schedule", "linear"), SE,
                    ("train.lr_schedule",)),
    "seq_len-1": (lambda e: train_cli("--data.seq_len", 1), SE, ("data.seq_len",)),
    "divergence": (lambda e: train_cli("--dcd.divergence", "js"), SE, ("dcd.divergence",)),
    "num_samples-0": (lambda e: train_cli("--sample.num_samples", 0), SE,
                      ("sample.num_samples",)),
    "sample-steps-0": (lambda e: train_cli("--sample.steps", "8,0"), SE, ("sample.steps",)),
    "dcd-without-teacher": (lambda e: train_cli("--train.objective", "dcd"), SE,
                            ("--dcd.teacher",)),
    "dcd-teacher-missing": (lambda e: train_cli("--train.objective", "dcd", "--dcd.teacher",
                            e.path("no-such-run")), SE, ("--dcd.teacher", "no-such-run")),
    "dcd-teacher-ar": (lambda e: train_cli("--train.objective", "dcd", "--dcd.teacher",
                       e.ar_run), SE, ("--dcd.teacher", "objective 'ar'")),
    "dcd-teacher-mdlm": (lambda e: train_cli("--train.objective", "dcd", "--dcd.teacher",
                         e.mdlm_run), SE, ("--dcd.teacher", "objective 'mdlm'")),
    "dcd-teacher-corrupt-config": (lambda e: train_cli("--train.objective", "dcd",
                                   "--dcd.teacher", e.broken("teacher-corrupt", "duo",
                                   "config.json", b"\x00\x01")), SE, ("--dcd.teacher",
                                   "config.json")),
    "dcd-fsdp": (lambda e: train_cli("--train.objective", "dcd", "--dcd.teacher", e.duo_run,
                 "--train.fsdp", "true"), SE, ("FSDP",)),
    "resume-nowhere": (lambda e: train_cli("--train.out_dir", e.path("typo"), "--train.resume",
                       "true"), FileNotFoundError, ("typo", "--train.resume")),
    "resume-corrupt-checkpoint": (lambda e: train_cli(*tiny_args(e, "corrupt-ckpt"),
                                  "--train.resume", "true", "--train.out_dir",
                                  e.broken("corrupt-ckpt", "duo", "checkpoint.pt", b"garbage")),
                                  ValueError, ("checkpoint.pt",)),
    "out_dir-holds-a-run": (lambda e: train_cli(*tiny_args(e), "--train.out_dir", e.duo_run),
                            FileExistsError, ("--train.resume", "--train.overwrite")),
    "data-missing": (lambda e: train_cli(*tiny_args(e), "--data.source", e.path("no.txt")),
                     FileNotFoundError, ("no.txt",)),
    "data-binary-file": (lambda e: train_cli(*tiny_args(e), "--data.source", e.binary_file),
                         ValueError, ("weights.bin", "text")),
    "data-latin1-file": (lambda e: train_cli(*tiny_args(e), "--data.source", e.latin1_file),
                         ValueError, ("latin1.txt", "UTF-8")),
    "data-binary-in-dir": (lambda e: train_cli(*tiny_args(e), "--data.source", e.binary_in_dir),
                           ValueError, ("b.txt", "text")),
    "data-empty-dir": (lambda e: train_cli(*tiny_args(e), "--data.source", e.empty_dir),
                       ValueError, ("empty",)),
    "data-bad-jsonl": (lambda e: train_cli(*tiny_args(e), "--data.source", e.bad_jsonl),
                       ValueError, ("docs.jsonl", "2")),
    "data-char-on-hf": (lambda e: train_cli(*tiny_args(e), "--data.source", "hf:openwebtext"),
                        ValueError, ("char",)),
    "bf16-on-cpu": (lambda e: train_cli(*tiny_args(e), "--train.precision", "bf16"), ValueError,
                    ("bf16", "--train.precision")),
}
for kind, (fn, err, names) in TRAIN_BAD.items():
    row(f"cli-train-{kind}", fn, err, *names)


# --- the evaluation CLI: python -m examples.evaluate --------------------------------------------


def eval_cli(*argv: Any):
    from examples.evaluate import main

    return main([str(a) for a in argv])


EVAL_BAD = {
    "run-missing": (lambda e: eval_cli(e.path("no-run")), FileNotFoundError, ("no-run",)),
    "run-without-checkpoint": (lambda e: eval_cli(e.text_dir), FileNotFoundError,
                               ("checkpoint",)),
    "checkpoint-corrupt": (lambda e: eval_cli(e.broken("eval-corrupt", "duo", "checkpoint.pt",
                           b"\x00" * 64)), ValueError, ("checkpoint.pt",)),
    "checkpoint-foreign": (lambda e: eval_cli(e.broken("eval-foreign", "duo", "checkpoint.pt",
                           _torch_bytes([1, 2, 3]))), ValueError, ("checkpoint.pt", "discdiff")),
    "config-corrupt": (lambda e: eval_cli(e.broken("eval-config", "duo", "config.json",
                       b"{")), ValueError, ("config.json",)),
    "tokenizer-corrupt": (lambda e: eval_cli(e.broken("eval-tokenizer", "duo",
                          "tokenizer_spec.json", b"{}")), ValueError, ("tokenizer_spec.json",)),
    "num-samples-0": (lambda e: eval_cli(e.duo_run, "--num-samples", 0), SE, ("--num-samples",)),
    "num-samples-negative": (lambda e: eval_cli(e.duo_run, "--num-samples", -3), SE,
                             ("--num-samples",)),
    "steps-text": (lambda e: eval_cli(e.duo_run, "--steps", "a,b"), SE, ("--steps",)),
    "steps-0": (lambda e: eval_cli(e.duo_run, "--steps", "8,0"), SE, ("--steps",)),
    "tail": (lambda e: eval_cli(e.duo_run, "--tail", "best"), SE, ("--tail",)),
    "weights": (lambda e: eval_cli(e.duo_run, "--weights", "final"), SE, ("--weights",)),
    "batch-size-0": (lambda e: eval_cli(e.duo_run, "--batch-size", 0), SE, ("--batch-size",)),
    "top-p": (lambda e: eval_cli(e.duo_run, "--no-val", "--zero-shot", "", "--gen-ppl",
              "--evaluator", e.ar_run, "--top-p", 2), ValueError, ("top_p",)),
    "gen-ppl-without-evaluator": (lambda e: eval_cli(e.duo_run, "--no-val", "--gen-ppl"), SE,
                                  ("--evaluator",)),
    "evaluator-not-ar": (lambda e: eval_cli(e.duo_run, "--no-val", "--gen-ppl", "--evaluator",
                         e.mdlm_run), ValueError, ("evaluator", "objective ar")),
    "zero-shot-missing": (lambda e: eval_cli(e.duo_run, "--no-val", "--zero-shot",
                          e.path("nope.txt")), FileNotFoundError, ("nope.txt",)),
    "zero-shot-binary": (lambda e: eval_cli(e.duo_run, "--no-val", "--zero-shot",
                         e.binary_file), ValueError, ("weights.bin",)),
    "unknown-flag": (lambda e: eval_cli(e.duo_run, "--num-sample", 3), SE, ("--num-sample",)),
}


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


for kind, (fn, err, names) in EVAL_BAD.items():
    row(f"cli-evaluate-{kind}", fn, err, *names)


# --- where options meet: prompts, clean context, seeds, tails, reductions, sampler parts ------


class Blind(Net):
    """A denoiser that reads one noise level per sequence (no ``reads_token_levels``)."""


class Told(Net):
    reads_token_levels = True


def prompt_pair(b: int = B, length: int = L) -> dict:
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[:, 0] = True
    return {"prompt": x0(b, length), "prompt_mask": mask}


def clean(b: int = B, length: int = L) -> torch.Tensor:
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[:, :2] = True
    return mask


row("sample_uniform-prompt-blind-denoiser", lambda: sample_u(denoiser=Blind(), **prompt_pair()),
    V, "prompt", "per-token noise levels", "clamp_prompt=True")
row("uniform.sample-prompt-blind-denoiser", lambda: UniformDiffusion(K).sample(
    Blind(), B, L, 2, **prompt_pair()), V, "prompt", "reads_token_levels")
row("dcd.sample-prompt-blind-student", lambda: distiller().sample(Blind(), B, L, 2,
    **prompt_pair()), V, "prompt", "clamp_prompt")  # fmt: skip
row("uniform.loss-clean_mask-blind", lambda: UniformDiffusion(K).loss(Blind(), x0(),
    clean_mask=clean()), V, "clean_mask", "per-token noise levels")  # fmt: skip
row("uniform.loss-clean_mask-int", lambda: UniformDiffusion(K).loss(Told(), x0(),
    clean_mask=clean().long()), V, "clean_mask", "bool")  # fmt: skip
row("uniform.loss-clean_mask-shape", lambda: UniformDiffusion(K).loss(Told(), x0(),
    clean_mask=clean()[:, :2]), V, "clean_mask", "(B, L)")  # fmt: skip
row("uniform.loss-mask-float", lambda: UniformDiffusion(K).loss(Net(), x0(),
    mask=torch.ones(B, L)), V, "mask", "bool")  # fmt: skip
row("uniform.loss-mask-shape", lambda: UniformDiffusion(K).loss(Net(), x0(),
    mask=torch.ones(B, L + 1, dtype=torch.bool)), V, "mask", "(B, L)")  # fmt: skip
row("uniform.loss-reduction-avg", lambda: UniformDiffusion(K).loss(Net(), x0(),
    reduction="avg"), V, "reduction")  # fmt: skip
row("masked.loss-reduction-None", lambda: MaskedDiffusion(K).loss(Net(K + 1), x0(),
    reduction=None), V, "reduction")  # fmt: skip
row("dcd.loss-reduction-max", lambda: distiller().loss(Net(), x0(), 0, reduction="max"), V,
    "reduction")
row("uniform_nelbo-mask-int", lambda: u_nelbo(mask=torch.ones(B, L, dtype=torch.long)), VT,
    "mask")
for bad in (-1, 2**64, 1.5, "7", True):
    row(f"sample_uniform-seed-{bad!r}", lambda bad=bad: sample_u(seed=bad), VT, "seed")
row("sample_uniform-seed-and-generator", lambda: sample_u(seed=0,
    generator=torch.Generator().manual_seed(0)), V, "seed", "generator")  # fmt: skip
row("sample_masked-seed-string", lambda: sample_m(seed="0"), VT, "seed")
row("sample_categorical-seed-float", lambda: samplers.sample_categorical(
    torch.ones(B, K), seed=0.5), VT, "seed")  # fmt: skip
row("greedy_tail-uncond-without-scale", lambda: samplers.greedy_tail(logits(),
    uncond=logits()), V, "guidance_scale")  # fmt: skip
row("map_tail-top_k-zero", lambda: samplers.map_tail(logits(), x0(), 0.5, top_k=0), VT, "top_k")
row("map_tail-uncond-shape", lambda: samplers.map_tail(logits(), x0(), 0.5,
    uncond=logits(length=L + 1), guidance_scale=1.0), VT, "uncond")  # fmt: skip
row("greedy_tail-guidance-negative", lambda: samplers.greedy_tail(logits(), uncond=logits(),
    guidance_scale=-1.0), V, "guidance_scale")  # fmt: skip
row("Filter-top_p-zero", lambda: samplers.Filter(top_p=0.0), VT, "top_p")
row("Filter-top_k-float", lambda: samplers.Filter(top_k=2.5), VT, "top_k")
row("UniformStep-kappa-two", lambda: samplers.UniformStep(kappa=2.0), VT, "kappa")
row("MaskedStep-mask_id-negative", lambda: samplers.MaskedStep(mask_id=-1), VT, "mask_id")
row("Guidance-scale-nan", lambda: samplers.Guidance(scale=math.nan, uncond={}), VT,
    "guidance_scale")
row("random_clean_mask-share", lambda: discdiff.context.random_clean_mask(B, L, share=1.5), VT,
    "share")
row("random_clean_mask-length", lambda: discdiff.context.random_clean_mask(B, 0), VT, "length")
row("dit-sigma-per-token-shape", lambda: dit()(x0(), torch.zeros(B, L + 1)), VT, "sigma")
row("dit-ids-beyond-vocab", lambda: UniformDiffusion(K + 3).sample(dit().eval(), B, L, 2,
    seed=0), V, "vocab", str(K))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Running the table
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return Env(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # A CLI row must fail before any download: the default corpus is never fetched here.
    monkeypatch.setenv("DISCDIFF_CACHE", "/nonexistent/discdiff-fuzz-cache")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.parametrize("entry", ROWS)
def test_bad_input_fails_clearly(entry: Row, env: Env, record_property):
    record_property("fuzz", entry.id)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            result = entry.call(env)
        except BaseException as err:  # noqa: BLE001 - the row says which type it must be
            caught = err
        else:
            pytest.fail(f"no error; returned {type(result).__name__}")
    if not isinstance(caught, entry.error):
        raise AssertionError(f"raised {type(caught).__name__}: {caught}") from caught
    notes = "\n".join(getattr(caught, "__notes__", []))  # shown with the traceback
    message = f"{caught}\n{notes}\n{stderr.getvalue()}"
    missing = [name for name in entry.names if name not in message]
    assert not missing, f"the message does not name {missing}:\n{message}"
    record_property("fuzz_clear", True)


def test_the_table_is_large_enough():
    # 445 rows since the per-thread checks and the denoiser seam's rows, 478 since the rows
    # where options meet (prompts, clean context, seeds, tails, reductions, sampler parts);
    # GOOD holds 25 calls.
    assert len(ROWS) >= 478 and len(GOOD) >= 25


# ---------------------------------------------------------------------------------------------
# Odd but right: the numeric tower, any sequence as a time grid
# ---------------------------------------------------------------------------------------------

GOOD = {
    "kappa-int-1": lambda: sample_u(kappa=1),
    "kappa-int-0": lambda: sample_u(kappa=0),
    "top_p-int-1": lambda: sample_u(top_p=1),
    "top_k-int": lambda: sample_u(top_k=3),
    "time_grid-ints-and-floats": lambda: sample_u(steps=4, time_grid=[1, 0.75, 0.5, 0.25, 0]),
    "time_grid-tuple": lambda: sample_u(steps=2, time_grid=(1, 0.5, 0)),
    "time_grid-tensor": lambda: sample_u(steps=2, time_grid=torch.tensor([1.0, 0.5, 0.0])),
    "time_grid-range-like": lambda: sample_u(steps=1, time_grid=range(1, -1, -1)),
    "masked-time_grid-ints": lambda: sample_m(steps=2, time_grid=[1, 0.5, 0], top_p=1),
    "uniform_nelbo-int-levels": lambda: u_nelbo(alpha_t=1, z_t=x0(), dalpha_t=-1),
    "uniform_nelbo-0d-tensors": lambda: u_nelbo(alpha_t=torch.tensor(0.5),
                                                dalpha_t=torch.tensor(-1.0)),
    "masked_nelbo-int-dalpha": lambda: m_nelbo(dalpha_t=-1),
    "relax-int-tau": lambda: processes.relax(logits(), 1),
    "curriculum-int-tau": lambda: GaussianCurriculum(tau=1, end_step=3),
    "loss-int32-tokens": lambda: UniformDiffusion(K).loss(Net(), x0().int()),
    "dcd-int-eps": lambda: DCDistiller(Net(), K, eps=0, steps_per_round=5, n_rounds=2),
    "generate_ar-int-temperature": lambda: generate_ar(dit(causal=True), x0(), 1, temperature=1),
    "sample_uniform-numpy-like-int": lambda: sample_u(batch_size=torch.tensor(2).item()),
    "loss-uint8-tokens": lambda: UniformDiffusion(K).loss(Net(), x0().to(torch.uint8)),
    "masked.loss-uint8-tokens": lambda: MaskedDiffusion(K).loss(Net(K + 1), x0().to(torch.uint8)),
    "nelbo-int16-tokens": lambda: UniformDiffusion(K).nelbo(Net(), x0().to(torch.int16)),
    "dcd.loss-uint8-tokens": lambda: distiller().loss(Net(), x0().to(torch.uint8), 0),
    "sample_uniform-schedule-without-inverse": lambda: sample_u(schedule=TwoMethods()),
    "curriculum-bf16-model": lambda: curriculum_loss(Net().to(torch.bfloat16)),
}
if SDTTDistiller is not None:
    GOOD["sdtt.loss-int8-tokens"] = lambda: SDTTDistiller(Net(K + 1), K).loss(Net(K + 1),
                                                                            x0().to(torch.int8), 0)


@pytest.mark.parametrize("call", list(GOOD.values()), ids=list(GOOD))
def test_odd_but_right_inputs_are_accepted(call):
    call()


# ---------------------------------------------------------------------------------------------
# Importing discdiff without NumPy is quiet
# ---------------------------------------------------------------------------------------------


def test_import_without_numpy_prints_no_warning(tmp_path):
    """discdiff does not need NumPy; torch warns at import when NumPy is missing. Run
    ``import discdiff`` in a fresh interpreter whose import path holds every installed package
    but NumPy, with warnings turned into errors."""
    import os
    import site
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    hidden = tmp_path / "site-packages"
    hidden.mkdir()
    for base in site.getsitepackages():
        for entry in Path(base).iterdir():
            if entry.name.split("-")[0].split(".")[0] == "numpy" or (hidden / entry.name).exists():
                continue
            (hidden / entry.name).symlink_to(entry)
    code = "import discdiff, importlib.util; assert importlib.util.find_spec('numpy') is None"
    proc = subprocess.run(
        [sys.executable, "-S", "-W", "error", "-c", code], cwd=root, capture_output=True,
        text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": f"{hidden}{os.pathsep}{root}", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr[-3000:]
