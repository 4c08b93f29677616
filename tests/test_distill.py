"""Discrete Consistency Distillation (Concepts §6): the shared-noise argmax pair, the per-token KL,
the round schedule, teacher refresh and checkpoints, bad input, and, on a Markov chain whose
law is known exactly, that distillation makes few-step samples closer to the data law.

Statistical checks use fixed seeds and 5-sigma binomial bounds, so they fail only on a real
error; the end-to-end check's margins hold over several seeds (see its docstring).
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import discdiff.losses.kl as kl_module
from discdiff.distill import (
    PAPER_DCD_WINDOW,
    DCDistiller,
    Distiller,
    SDTTDistiller,
    argmax_pair,
    token_kl,
)
from discdiff.duality import AlphaWindow, GaussianArgmaxTransform
from discdiff.processes import gaussian_latent
from discdiff.schedules import GammaSchedule, LogLinearSchedule


def assert_binomial(hits: int, n: int, p: float, sigmas: float = 5.0) -> None:
    bound = sigmas * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1.0 / n
    assert abs(hits / n - p) <= bound, f"frequency {hits / n:.5f} vs probability {p:.5f}"


class Recorder(nn.Module):
    """A small trainable denoiser that records its inputs: ids only, optional conditioning."""

    def __init__(self, vocab_size: int, hidden: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab_size, hidden)
        self.scale = nn.Linear(1, hidden)
        self.out = nn.Linear(hidden, vocab_size)
        self.calls: list = []

    def forward(self, z_t, sigma, **cond):
        self.calls.append((z_t, sigma, cond))
        h = self.emb(z_t) + self.scale(sigma.view(-1, 1, 1).float())
        if "shift" in cond:
            h = h + cond["shift"]
        return self.out(h)


def make(teacher, vocab_size=6, **kw) -> DCDistiller:
    settings = {"initial_steps": 8, "steps_per_round": 3, "n_rounds": 3,
                "window": GammaSchedule(-4.0, 3.0), "refresh_from": "student"}
    settings.update(kw)
    return DCDistiller(teacher, vocab_size, **settings)


# ----------------------------------------------------------------------------------------------
# The argmax pair
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [2, 5, 1000])
def test_argmax_pair_has_the_law_of_shared_noise_latents(vocab_size):
    """Same joint law of (z_t, z_s) as two gaussian_latent calls with one shared eps."""
    n, k = 200_000, vocab_size
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, k, (n, 1), generator=g)
    a_t, a_s = torch.full((n, 1), 0.3), torch.full((n, 1), 0.7)
    z_t, z_s = argmax_pair(x, a_t, a_s, k, generator=g)
    # P(z = x) = alpha + (1 - alpha) / K with alpha = T(alpha_tilde) (Concepts §2)
    alpha = GaussianArgmaxTransform(k)(torch.tensor([0.3, 0.7], dtype=torch.float64))
    for z, a in ((z_t, alpha[0]), (z_s, alpha[1])):
        assert_binomial(int((z == x).sum()), n, float(a + (1 - a) / k))
    # Joint events, against the dense construction with a shared eps (its own draws).
    m = 20_000 if k == 1000 else n
    noise = torch.randn(m, 1, k, generator=g)
    ref_t = gaussian_latent(x[:m], a_t[:m], k, noise=noise).z_t
    ref_s = gaussian_latent(x[:m], a_s[:m], k, noise=noise).z_t
    for ours, ref in (
        ((z_t == z_s), (ref_t == ref_s)),
        ((z_t == x) & (z_s != x), (ref_t == x[:m]) & (ref_s != x[:m])),
        ((z_t != x) & (z_s == x), (ref_t != x[:m]) & (ref_s == x[:m])),
    ):
        p_ref = ref.double().mean().item()
        bound = 5 * math.sqrt(max(p_ref * (1 - p_ref), 1e-12) * (1 / n + 1 / m)) + 2 / m
        assert abs(ours.double().mean().item() - p_ref) <= bound
    # A wrong token is uniform over the K - 1 others, and the same at both levels.
    wrong = z_t != x
    offsets = torch.remainder(z_t[wrong] - x[wrong], k)
    if k <= 5:
        counts = torch.bincount(offsets, minlength=k)
        assert counts[0] == 0
        for c in counts[1:]:
            assert_binomial(int(c), int(wrong.sum()), 1 / (k - 1))


@given(
    seed=st.integers(0, 2**16),
    vocab=st.integers(2, 50),
    a_t=st.floats(0.0, 1.0),
    gap=st.floats(0.0, 1.0),
)
def test_argmax_pair_is_monotone(seed, vocab, a_t, gap):
    """Less noise never loses the clean token, and a wrong token at s is the one at t."""
    a_s = a_t + gap * (1 - a_t)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (4, 7), generator=g)
    z_t, z_s = argmax_pair(x, torch.full((4, 1), a_t), torch.full((4, 1), a_s), vocab, generator=g)
    assert z_t.dtype == z_s.dtype == torch.long and z_t.shape == x.shape
    assert ((z_t == x) <= (z_s == x)).all()
    assert ((z_s == x) | (z_s == z_t)).all()
    assert ((z_t >= 0) & (z_t < vocab)).all()
    if a_s == 1.0:
        assert (z_s == x).all()


def test_argmax_pair_per_position_levels_and_bad_shapes():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 7, (3, 4), generator=g)
    ones, zeros = torch.ones(3, 4), torch.zeros(3, 4)
    z_t, z_s = argmax_pair(x, zeros, ones, 7, generator=g)
    assert (z_s == x).all()
    with pytest.raises(ValueError, match="alpha_tilde_t"):
        argmax_pair(x, torch.zeros(3, 2), ones, 7)
    with pytest.raises(ValueError, match="alpha_tilde_s"):
        argmax_pair(x, zeros, ones * 1.5, 7)
    with pytest.raises(ValueError, match="x_0"):
        argmax_pair(x + 7, zeros, ones, 7)


# ----------------------------------------------------------------------------------------------
# The per-token KL
# ----------------------------------------------------------------------------------------------


def naive_kl(p_logits, q_logits):
    lp, lq = p_logits.double().log_softmax(-1), q_logits.double().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_kl_matches_the_definition(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 11, generator=g) * 4, torch.randn(3, 5, 11, generator=g) * 4
    kl = token_kl(a, b, dtype=dtype)
    assert kl.shape == (3, 5) and kl.dtype == dtype
    torch.testing.assert_close(kl.double(), naive_kl(a, b), rtol=1e-5, atol=1e-6)
    assert (kl >= 0).all()
    assert token_kl(a, a.clone(), dtype=dtype).abs().max() <= 1e-6


def test_token_kl_gradients_are_exact():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: token_kl(a, b, dtype=torch.float64), (a, b))
    # float32 logits: gradients agree with autograd through the naive formula
    a32, b32 = a.detach().float().requires_grad_(), b.detach().float().requires_grad_()
    w = torch.randn(2, 3, generator=g)
    (token_kl(a32, b32) * w).sum().backward()
    a64, b64 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    (naive_kl(a64, b64) * w.double()).sum().backward()
    torch.testing.assert_close(a32.grad.double(), a64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b32.grad.double(), b64.grad, rtol=1e-4, atol=1e-6)


def test_token_kl_chunks_and_masked_classes(monkeypatch):
    monkeypatch.setattr(kl_module, "_chunk_rows", lambda k, device: 2)  # many chunks
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 7, 8, generator=g)
    b = torch.randn(3, 7, 8, generator=g)
    a[..., :3] = -math.inf  # p = 0 on three classes: they contribute 0, not NaN
    a.requires_grad_()
    kl = token_kl(a, b)
    ref = naive_kl(a.detach()[..., 3:], b[..., 3:]) + (
        b.double().logsumexp(-1) - b[..., 3:].double().logsumexp(-1)
    )
    torch.testing.assert_close(kl.double(), ref, rtol=1e-5, atol=1e-6)
    kl.sum().backward()
    assert torch.isfinite(a.grad).all() and (a.grad[..., :3] == 0).all()


def test_token_kl_rejects_mismatched_inputs():
    with pytest.raises((TypeError, ValueError)):  # jaxtyping names the mismatched axis
        token_kl(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="dtype"):
        token_kl(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), dtype=torch.float16)


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------


def test_loss_runs_student_at_t_and_frozen_teacher_at_s():
    k = 6
    teacher, student = Recorder(k, seed=0), Recorder(k, seed=1)
    distiller = make(teacher, k)
    g = torch.Generator().manual_seed(0)
    x_0 = torch.randint(0, k, (16, 5), generator=g)
    loss = distiller.loss(student, x_0, 0, generator=g)
    assert loss.shape == (16, 5) and loss.dtype == torch.float32
    assert torch.isfinite(loss).all() and (loss >= 0).all()
    assert teacher.calls == []  # the distiller runs its own copy
    (z_s, sigma_s, _), = distiller.teacher.calls
    (z_t, sigma_t, _), = student.calls
    assert z_t.shape == z_s.shape == (16, 5) and sigma_t.shape == sigma_s.shape == (16,)
    assert sigma_t.dtype == sigma_s.dtype == torch.float32
    assert (sigma_t > sigma_s).all()  # the teacher sees less noise
    assert ((z_t == x_0) <= (z_s == x_0)).all()
    # sigma = -log T(alpha_tilde(t)): recover t and s, check s = t - dt and t in [dt + eps, 1]
    schedule = distiller.schedule
    t = schedule.inverse(torch.exp(-sigma_t.double()))
    s = schedule.inverse(torch.exp(-sigma_s.double()))
    torch.testing.assert_close(t - s, torch.full_like(t, distiller.dt(0)), atol=1e-4, rtol=0)
    assert (t >= distiller.dt(0) + distiller.eps - 1e-4).all() and (t <= 1 + 1e-4).all()
    # gradients reach the student only
    loss.mean().backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())


@pytest.mark.parametrize("divergence", ["kl_student_teacher", "kl_teacher_student"])
@pytest.mark.parametrize("kl_dtype", [torch.float32, torch.float64])
def test_loss_is_the_chosen_kl(constant_denoiser, divergence, kl_dtype):
    k = 5
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(k, generator=g), torch.randn(k, generator=g)
    distiller = make(constant_denoiser(k, b), k, divergence=divergence, kl_dtype=kl_dtype)
    x_0 = torch.randint(0, k, (4, 3), generator=g)
    loss = distiller.loss(constant_denoiser(k, a), x_0, 0, generator=g)
    assert loss.dtype == kl_dtype
    p, q = (a, b) if divergence == "kl_student_teacher" else (b, a)
    expected = naive_kl(p.view(1, 1, k), q.view(1, 1, k)).expand(4, 3)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-7)
    same = distiller.loss(constant_denoiser(k, b), x_0, 0, generator=g)
    assert same.abs().max() <= 1e-6


def test_loss_is_reproducible_and_passes_conditioning():
    k = 6
    distiller = make(Recorder(k), k)
    student = Recorder(k, seed=1)
    x_0 = torch.randint(0, k, (8, 4), generator=torch.Generator().manual_seed(3))
    shift = torch.ones(8, 1, 8)
    one = distiller.loss(student, x_0, 1, generator=torch.Generator().manual_seed(5),
                         cond={"shift": shift})
    two = distiller.loss(student, x_0, 1, generator=torch.Generator().manual_seed(5),
                         cond={"shift": shift})
    torch.testing.assert_close(one, two)
    assert student.calls[-1][2]["shift"] is shift
    assert distiller.teacher.calls[-1][2]["shift"] is shift


def test_teacher_is_a_frozen_copy_and_the_user_module_is_untouched():
    k = 6
    teacher = Recorder(k).train()
    before = copy.deepcopy(teacher.state_dict())
    distiller = make(teacher, k)
    assert distiller.teacher is not teacher
    assert not distiller.teacher.training
    assert all(not p.requires_grad for p in distiller.teacher.parameters())
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    student = Recorder(k, seed=1)
    for step in range(4):
        distiller.loss(student, torch.randint(0, k, (2, 3)), step).mean().backward()
        distiller.maybe_refresh(step, student)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key])
    # dropout stays off in the teacher even if someone flips it back to training mode
    drop = nn.Sequential(nn.Embedding(k, k), nn.Dropout(0.9))
    d2 = make(lambda z, s: drop(z), k)  # a plain callable is used as is
    drop.train()
    out = d2.loss(lambda z, s: torch.zeros(*z.shape, k), torch.zeros(2, 3, dtype=torch.long), 0)
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------
# Rounds, refresh, checkpoints
# ----------------------------------------------------------------------------------------------


def test_defaults_follow_the_paper():
    d = DCDistiller(Recorder(6), 6)
    assert (d.initial_steps, d.steps_per_round, d.n_rounds) == (512, 10_000, 5)
    assert d.divergence == "kl_student_teacher" and d.refresh_from == "student"
    assert d.window == PAPER_DCD_WINDOW
    paper = DCDistiller(Recorder(6), 50257).schedule.gamma  # the paper's window at its K
    assert paper.gamma_min == pytest.approx(-4.0, abs=1e-9)
    assert paper.gamma_max == pytest.approx(-1.0, abs=1e-9)
    assert AlphaWindow.from_gamma(-4.0, -1.0, 50257) == pytest.approx(PAPER_DCD_WINDOW)
    assert d.schedule.transform.vocab_size == 6 and d.round == 0
    assert "round=0" in repr(d)


def test_round_schedule():
    d = make(Recorder(6), 6, initial_steps=16, steps_per_round=10, n_rounds=4)
    assert [d.round_at(s) for s in (0, 9, 10, 29, 30, 39, 40, 10**6)] == [0, 0, 1, 2, 3, 3, 3, 3]
    assert [d.dt(r) for r in range(4)] == [1 / 16, 2 / 16, 4 / 16, 8 / 16]
    assert [s for s in range(60) if d.end_of_round(s)] == [9, 19, 29]
    with pytest.raises(ValueError, match="step"):
        d.round_at(-1)
    with pytest.raises(ValueError, match="round"):
        d.dt(4)


def test_maybe_refresh_copies_the_student_at_round_boundaries():
    k = 6
    distiller = make(Recorder(k, seed=0), k, steps_per_round=3, n_rounds=3)
    student = Recorder(k, seed=1)
    refreshed = []
    for step in range(12):
        distiller.loss(student, torch.randint(0, k, (2, 3)), step)
        with torch.no_grad():
            student.out.bias.add_(1.0)  # stands in for an optimiser step
        refreshed.append(distiller.maybe_refresh(step, student))
        if refreshed[-1]:
            torch.testing.assert_close(distiller.teacher.out.bias, student.out.bias)
            assert distiller.teacher.out.bias is not student.out.bias
        assert distiller.maybe_refresh(step, student) is False  # idempotent
    assert [s for s, r in enumerate(refreshed) if r] == [2, 5]
    assert distiller.round == 2
    assert all(not p.requires_grad for p in distiller.teacher.parameters())


def test_maybe_refresh_from_the_ema():
    k = 6
    student = Recorder(k, seed=1)
    ema = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(0.5))
    distiller = make(Recorder(k), k, steps_per_round=2, refresh_from="ema")
    with pytest.raises(ValueError, match="ema"):
        distiller.maybe_refresh(1, student)
    ema.update_parameters(student)  # the first update copies the student
    with torch.no_grad():
        student.out.bias.add_(4.0)
    ema.update_parameters(student)  # then ema = (ema + student) / 2
    assert distiller.maybe_refresh(1, student, ema)
    torch.testing.assert_close(distiller.teacher.out.bias, ema.module.out.bias)
    assert not torch.equal(distiller.teacher.out.bias, student.out.bias)
    # a state dict works too
    state = {key: v + 1 for key, v in student.state_dict().items()}
    assert distiller.maybe_refresh(3, student, state)
    torch.testing.assert_close(distiller.teacher.out.bias, student.out.bias + 1)


def test_a_stale_teacher_is_an_error():
    distiller = make(Recorder(6), 6, steps_per_round=3)
    with pytest.raises(ValueError, match="maybe_refresh"):
        distiller.loss(Recorder(6), torch.zeros(2, 3, dtype=torch.long), 3)


def test_checkpoint_resumes_the_same_round():
    k = 6
    teacher, student = Recorder(k, seed=0), Recorder(k, seed=1)
    distiller = make(teacher, k, steps_per_round=2, n_rounds=3)
    for step in range(5):  # steps 0..4: refreshed at 1 and 3, now in round 2
        with torch.no_grad():
            student.out.bias.add_(1.0)
        distiller.maybe_refresh(step, student)
    assert distiller.round == 2
    buffer = io.BytesIO()
    torch.save(distiller.state_dict(), buffer)
    buffer.seek(0)
    resumed = make(teacher, k, steps_per_round=2, n_rounds=3)
    with pytest.raises(ValueError, match="load_state_dict"):
        resumed.loss(student, torch.zeros(2, 3, dtype=torch.long), 5)
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.round == 2
    for key, value in distiller.teacher.state_dict().items():
        assert torch.equal(resumed.teacher.state_dict()[key], value)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x_0 = torch.randint(0, k, (4, 3), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        resumed.loss(student, x_0, 5, generator=g1), distiller.loss(student, x_0, 5, generator=g2)
    )
    other = make(teacher, k, steps_per_round=4, n_rounds=3)
    with pytest.raises(ValueError, match="steps_per_round"):
        other.load_state_dict(distiller.state_dict())


def test_a_plain_callable_teacher_is_replaced_by_the_student_at_refresh():
    k = 5
    distiller = make(lambda z, s: torch.zeros(*z.shape, k), k, steps_per_round=1)
    student = Recorder(k, seed=2)
    loss = distiller.loss(student, torch.zeros(2, 3, dtype=torch.long), 0)
    assert torch.isfinite(loss).all()
    assert distiller.state_dict()["teacher"] is None
    assert distiller.maybe_refresh(0, student)
    assert isinstance(distiller.teacher, Recorder) and distiller.teacher is not student
    assert distiller.state_dict()["teacher"] is not None


# ----------------------------------------------------------------------------------------------
# The Distiller base: what a new distiller inherits
# ----------------------------------------------------------------------------------------------


class SameTimeDistiller(Distiller):
    """A distiller of the base's contract only: student and teacher both see the clean x_0 at
    sigma = 0, so its per-token loss is the KL between their logits there, nothing random."""

    _SETTINGS = ("vocab_size", "initial_steps", "steps_per_round", "n_rounds", "divergence",
                 "refresh_from", "kl_dtype", "eps")  # fmt: skip
    _growth = 3

    def __init__(self, teacher, vocab_size, *, initial_steps=27, steps_per_round=2, n_rounds=3,
                 divergence="kl_student_teacher", refresh_from="student",
                 kl_dtype=torch.float64, eps=0.0):  # fmt: skip
        super().__init__(
            teacher, vocab_size, initial_steps=initial_steps, steps_per_round=steps_per_round,
            n_rounds=n_rounds, divergence=divergence, refresh_from=refresh_from,
            kl_dtype=kl_dtype, eps=eps,
        )  # fmt: skip

    def _token_loss(self, student, x_0, round, *, generator, cond, mask):
        sigma = torch.zeros(x_0.shape[0])
        with torch.no_grad():
            teacher_logits = self.teacher(x_0, sigma)
        return self._divergence(student(x_0, sigma), teacher_logits)

    def sample(self, student, batch_size, length, steps, **options):
        return torch.zeros(batch_size, length, dtype=torch.long)

    def _own_config(self):
        return {"growth": self._growth}

    def _repr_extra(self):
        return [f"growth={self._growth}"]


def test_both_distillers_share_the_base_and_every_import_path_holds():
    import discdiff
    import discdiff.losses
    import discdiff.sdtt

    assert issubclass(DCDistiller, Distiller) and issubclass(SDTTDistiller, Distiller)
    assert discdiff.DCDistiller is DCDistiller and discdiff.SDTTDistiller is SDTTDistiller
    assert discdiff.sdtt.SDTTDistiller is SDTTDistiller
    assert discdiff.losses.token_kl is token_kl is kl_module.token_kl
    with pytest.raises(TypeError, match="abstract"):
        Distiller(Recorder(6), 6, initial_steps=8, steps_per_round=1, n_rounds=1,  # type: ignore[abstract]
                  divergence="kl_student_teacher", refresh_from="student",
                  kl_dtype=torch.float32, eps=0.0)  # fmt: skip


@pytest.mark.parametrize("divergence", ["kl_student_teacher", "kl_teacher_student"])
def test_a_new_distiller_gets_the_loss_convention_from_the_base(divergence):
    k = 5
    teacher, student = Recorder(k, seed=0), Recorder(k, seed=1)
    d = SameTimeDistiller(teacher, k, divergence=divergence)
    x_0 = torch.randint(0, k, (3, 4), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True, False, True, True]] * 3)
    sigma = torch.zeros(3)
    s64, t64 = student(x_0, sigma).double(), teacher(x_0, sigma).double()
    p, q = (s64, t64) if divergence == "kl_student_teacher" else (t64, s64)
    want = naive_kl(p, q)  # the definition, in float64 with explicit softmaxes
    got = d.loss(student, x_0, 0, mask=mask)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.where(mask, want, 0.0), rtol=1e-12, atol=1e-12)
    total = d.loss(student, x_0, 0, mask=mask, reduction="sum")
    torch.testing.assert_close(total, want[mask].sum(), rtol=1e-12, atol=1e-12)
    mean = d.loss(student, x_0, 0, mask=mask, reduction="mean")
    torch.testing.assert_close(mean, want[mask].mean(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="x_0"):
        d.loss(student, torch.full((2, 3), k), 0)
    with pytest.raises(TypeError, match="student"):
        d.loss(None, x_0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        d.loss(student, x_0, 0, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maybe_refresh"):
        d.loss(student, x_0, 2)


def test_a_new_distiller_gets_rounds_checkpoints_and_settings_from_the_base():
    k = 5
    teacher, student = Recorder(k, seed=0), Recorder(k, seed=1)
    d = SameTimeDistiller(teacher, k)
    assert [d.dt(r) for r in range(3)] == [1 / 27, 3 / 27, 9 / 27]  # growth^r / initial_steps
    assert [d.round_at(s) for s in range(7)] == [0, 0, 1, 1, 2, 2, 2]
    assert [d.end_of_round(s) for s in range(5)] == [False, True, False, True, False]
    assert not d.maybe_refresh(0, student) and d.maybe_refresh(1, student) and d.round == 1
    assert torch.equal(d.teacher.out.weight, student.out.weight)
    state = d.state_dict()
    assert set(state) == {"round", "teacher", "config"}
    assert list(state["config"]) == ["vocab_size", "growth", "initial_steps", "steps_per_round",
                                      "n_rounds", "divergence", "eps"]  # fmt: skip
    resumed = SameTimeDistiller.from_dict(d.to_dict(), teacher=teacher)
    assert type(resumed) is SameTimeDistiller and resumed.to_dict() == d.to_dict()
    assert resumed.to_dict()["kl_dtype"] == "float64" and resumed.round == 0
    resumed.load_state_dict(state)
    assert resumed.round == 1 and torch.equal(resumed.teacher.out.weight, student.out.weight)
    with pytest.raises(ValueError, match="n_rounds"):
        SameTimeDistiller(teacher, k, n_rounds=4).load_state_dict(state)
    with pytest.raises(ValueError, match="not a SameTimeDistiller state dict"):
        resumed.load_state_dict({"round": 0})
    assert repr(d) == (
        "SameTimeDistiller(vocab_size=5, initial_steps=27, steps_per_round=2, n_rounds=3, "
        "divergence='kl_student_teacher', refresh_from='student', kl_dtype=torch.float64, "
        "eps=0.0, growth=3, round=1)"
    )


def test_dcd_refuses_a_student_that_is_not_a_denoiser():
    with pytest.raises(TypeError, match="student must be a denoiser"):
        make(Recorder(6), 6).loss("model", torch.zeros(2, 3, dtype=torch.long), 0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_teacher_with_another_vocabulary_is_named(constant_denoiser):
    distiller = make(constant_denoiser(9), 6)
    with pytest.raises(ValueError, match=r"teacher.*vocab_size=6"):
        distiller.loss(constant_denoiser(6), torch.zeros(2, 3, dtype=torch.long), 0)


def test_student_with_the_wrong_shape_is_named(constant_denoiser):
    distiller = make(constant_denoiser(6), 6)
    with pytest.raises(ValueError, match=r"student.*\(2, 3, 6\)"):
        distiller.loss(constant_denoiser(5), torch.zeros(2, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="student"):
        distiller.loss(lambda z, s: torch.zeros(2, 6), torch.zeros(2, 3, dtype=torch.long), 0)


def test_a_round_schedule_past_t_equals_one_is_refused():
    with pytest.raises(ValueError, match=r"dt = 2\*\*\(n_rounds - 1\) / initial_steps"):
        DCDistiller(Recorder(6), 6, initial_steps=8, n_rounds=5)  # last dt = 2
    with pytest.raises(ValueError, match="dt"):
        DCDistiller(Recorder(6), 6, initial_steps=16, n_rounds=5)  # last dt = 1
    DCDistiller(Recorder(6), 6, initial_steps=32, n_rounds=5)  # last dt = 1/2: fine


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"divergence": "kl"}, "divergence"),
        ({"refresh_from": "teacher"}, "refresh_from"),
        ({"kl_dtype": torch.float16}, "kl_dtype"),
        ({"eps": 1.0}, "eps"),
        ({"initial_steps": 0}, "initial_steps"),
        ({"steps_per_round": 1.5}, "steps_per_round"),
        ({"n_rounds": 0}, "n_rounds"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DCDistiller(Recorder(6), 6, **kwargs)


def test_bad_windows_are_refused():
    with pytest.raises(TypeError, match="window"):
        DCDistiller(Recorder(6), 6, window=(-4.0, -1.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha_end"):
        AlphaWindow(0.2, 0.9)


@pytest.mark.parametrize("k", [30, 85, 300, 50257])
def test_alpha_windows_mean_the_same_for_any_vocabulary(k):
    """The default window covers the paper's alpha range at every K (gamma alone does not:
    at K = 85 the paper's gamma-window leaves alpha_1 = 0.22)."""
    d = DCDistiller(Recorder(k), k)
    ends = d.schedule.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(
        ends, torch.tensor([PAPER_DCD_WINDOW.alpha_start, PAPER_DCD_WINDOW.alpha_end],
                           dtype=torch.float64), atol=1e-9, rtol=0)  # fmt: skip


def test_bad_tokens_are_refused():
    distiller = make(Recorder(6), 6)
    with pytest.raises(ValueError, match="x_0"):
        distiller.loss(Recorder(6), torch.full((2, 3), 6), 0)
    with pytest.raises(ValueError, match="x_0"):
        distiller.loss(Recorder(6), torch.zeros(2, 3, 1, dtype=torch.long), 0)
    with pytest.raises(TypeError, match="teacher"):
        DCDistiller(None, 6)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Where the truth is known: a Markov chain
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_distilled_student_samples_a_markov_chain_better_in_few_steps():
    """Duo teacher (curriculum, then discrete) on a peaked Markov chain (K = 8, L = 6), distilled
    for 4 rounds (dt = 1/16 .. 1/2) with the paper's KL(student || teacher); everything sampled
    by ``sample_uniform`` with the greedy tail (N steps + one call at t_min) on the log-linear
    schedule, as ``DCDistiller.sample`` samples the student.

    The teacher at 128 ancestral steps is close to the chain; at 2 and 4 steps its samples are
    incoherent (mean exact NLL well above the entropy H). The student's few-step samples have a
    mean NLL close to H. Observed |NLL - H| over seeds 0-1 (this configuration, greedy tail,
    log-linear grid): teacher 4.8-5.2 nats at 2 steps and 2.3-2.6 at 4; student 0.29-0.43 at 2
    steps and 0.39-0.49 at 4; the teacher at 128 steps without a tail 0.79-0.89. Unigram /
    bigram total variation do not improve reliably at this scale (see the table of
    benchmarks/bench_distill.py): the mode-seeking student trades diversity for coherence.
    """
    from discdiff.testing import MarkovChain, distill, train_duo
    from discdiff.testing import evaluate_uniform as evaluate

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    k, length, gamma = 8, 6, (-4.0, 5.0)
    law = MarkovChain.peaked(k, seed=123)
    entropy = law.entropy(length)
    teacher = train_duo(
        law, length, steps=1500, curriculum_steps=500, gamma_min=gamma[0], gamma_max=gamma[1],
        batch_size=128, hidden=128, depth=2, generator=g,
    )
    distiller = DCDistiller(
        teacher, k, window=GammaSchedule(*gamma), initial_steps=16,
        steps_per_round=250, n_rounds=4,
    )
    student = distill(teacher, law, length, distiller, batch_size=128, generator=g)

    def gap(model, steps, tail="greedy"):
        m = evaluate(model, law, length, steps, schedule=LogLinearSchedule(), n=4096, tail=tail,
                     generator=g)
        return abs(m["nll"] - entropy), m

    many, m = gap(teacher, 128, tail="none")
    assert many < 1.5 and m["tv_unigram"] < 0.05 and m["tv_bigram"] < 0.1, m
    for steps in (2, 4):
        few_teacher, mt = gap(teacher, steps)
        few_student, ms = gap(student, steps)
        assert few_teacher > (3.5 if steps == 2 else 1.5), mt  # few steps are visibly hard
        assert few_student < 1.2 and few_student < few_teacher - 1.0, (steps, mt, ms)
