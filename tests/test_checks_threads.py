"""discdiff.checks per context, and nothing silent at the denoiser seam.

The check switches (``trusted``, ``unchecked``) live in contextvars: while one thread sits inside
a sampler (under ``trusted()``), another thread's bad calls still raise, and overlapping blocks
in two threads leave the checks on. Below: what an exception raised inside a denoiser is told
(the ids it was given, the curriculum's relaxed input), the DiT's own vocabulary check, the
training-mode warning, integer token dtypes at the door, one schedule rule, one-line messages.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

import discdiff.checks as checks_module
import discdiff.typing as typing_module
from discdiff import (
    DCDistiller,
    GaussianCurriculum,
    MaskedDiffusion,
    SDTTDistiller,
    UniformDiffusion,
    kernels,
    losses,
    samplers,
)
from discdiff.checks import checks_enabled, host_check_count, trusted, unchecked
from discdiff.models import DiT, DiTConfig
from discdiff.schedules import LogLinearSchedule
from discdiff.typing import Bag
from tests.helpers import AlphaOnlySchedule as AlphaOnly
from tests.helpers import TwoMethodSchedule as TwoMethods

K, B, L = 7, 2, 4
WAIT = 30.0  # seconds; a deadlock fails the test instead of hanging the run
NOTES = sys.version_info >= (3, 11)  # BaseException.add_note


class Net(torch.nn.Module):
    """A tiny denoiser: ids (B, L), soft (B, L, k) or a Bag in; records the inputs' dtypes."""

    def __init__(self, k: int = K, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.emb = torch.nn.Embedding(k, 8, dtype=dtype)
        self.out = torch.nn.Linear(8, k, dtype=dtype)
        self.seen: list[torch.dtype] = []

    def forward(self, z_t, sigma, **cond):
        if isinstance(z_t, Bag):
            self.seen.append(z_t.weights.dtype)
            h = (self.emb(z_t.ids) * z_t.weights.unsqueeze(-1)).sum(-2)
        elif z_t.is_floating_point():
            self.seen.append(z_t.dtype)
            h = z_t @ self.emb.weight  # fails unless z_t has the weights' dtype
        else:
            self.seen.append(z_t.dtype)
            h = self.emb(z_t)
        return self.out(h).float()


def x0(dtype: torch.dtype = torch.long) -> torch.Tensor:
    return torch.randint(0, K, (B, L), generator=torch.Generator().manual_seed(0)).to(dtype)


def small_dit(vocab_size: int, **overrides: Any) -> DiT:
    cfg = {"vocab_size": vocab_size, "hidden_size": 16, "n_blocks": 1, "n_heads": 2,
           "cond_dim": 8, "frequency_dim": 16, **overrides}  # fmt: skip
    return DiT(DiTConfig(**cfg))


def notes_of(err: BaseException) -> str:
    return "\n".join(getattr(err, "__notes__", []))


# ------------------------------------------------------------------------------------------------
# Thread A inside a sampler, thread B calling
# ------------------------------------------------------------------------------------------------


class Blocking:
    """A denoiser that, on its first call, says it is inside and waits to be released."""

    def __init__(self) -> None:
        self.inside, self.release = threading.Event(), threading.Event()
        self.checks_inside: list[bool] = []

    def __call__(self, z_t, sigma, **cond):
        if not self.inside.is_set():
            self.checks_inside.append(checks_enabled())
            self.inside.set()
            assert self.release.wait(WAIT), "never released"
        return torch.zeros(z_t.shape[0], z_t.shape[1], K)


def start_sampler(denoiser: Blocking) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            samplers.sample_uniform(denoiser, B, L, 2, schedule=LogLinearSchedule(),
                                    vocab_size=K, generator=torch.Generator().manual_seed(0))
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    assert denoiser.inside.wait(WAIT), "the sampler never called its denoiser"
    return thread, errors


@contextmanager
def sampler_running_in_another_thread() -> Iterator[Blocking]:
    """Thread A sits inside ``sample_uniform`` (under ``trusted()``) for the whole block."""
    blocking = Blocking()
    thread, errors = start_sampler(blocking)
    try:
        yield blocking
    finally:
        blocking.release.set()
        thread.join(WAIT)
    assert not thread.is_alive() and not errors, errors


logits = lambda k=K: torch.randn(B, L, k, generator=torch.Generator().manual_seed(1))  # noqa: E731
BAD_CALLS: dict[str, tuple[Callable[[], Any], str]] = {
    "uniform_ancestral_step alpha_s < alpha_t": (
        lambda: samplers.uniform_ancestral_step(logits(), x0(), 0.2, 0.5), "alpha_s"),
    "uniform_ancestral_step alpha_s = 1.7": (
        lambda: samplers.uniform_ancestral_step(logits(), x0(), 1.7, 0.5), "alpha_s"),
    "uniform_ancestral_step kappa = 3": (
        lambda: samplers.uniform_ancestral_step(logits(), x0(), 0.6, 0.5, kappa=3.0), "kappa"),
    "masked_ancestral_step remask above its maximum": (
        lambda: samplers.masked_ancestral_step(logits(K + 1), x0(), 0.6, 0.5, mask_id=K,
                                               remask=0.9), "remask"),
    "sample_categorical negative probabilities": (
        lambda: samplers.sample_categorical(torch.tensor([[0.5, -0.1, 0.6]])), "probs"),
    "uniform_nelbo alpha = 2": (
        lambda: losses.uniform_nelbo(logits(), x0(), x0(), 2.0, -1.0), "alpha_t"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_calls_raise_while_another_thread_is_inside_a_sampler(name):
    call, culprit = BAD_CALLS[name]
    with pytest.raises(ValueError, match=culprit):  # in this thread, before any sampler
        call()
    with sampler_running_in_another_thread() as blocking:
        assert blocking.checks_inside == [False]  # thread A: trusted, below the door
        assert checks_enabled()  # this thread: its own switch
        with pytest.raises(ValueError, match=culprit):
            call()


def overlapping(enter_leave: Callable[[threading.Event, threading.Event], None]) -> None:
    """A enters, B enters, A leaves, B leaves: each thread runs ``enter_leave(entered, leave)``
    and the main thread orders the four events."""
    events = {name: (threading.Event(), threading.Event()) for name in "AB"}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            enter_leave(*events[name])
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = {name: threading.Thread(target=run, args=(name,)) for name in "AB"}
    for name in "AB":  # A enters, then B enters
        threads[name].start()
        assert events[name][0].wait(WAIT)
    for name in "AB":  # A leaves, then B leaves
        events[name][1].set()
        threads[name].join(WAIT)
        assert not threads[name].is_alive()
    assert not errors, errors


@pytest.mark.parametrize("switch", [trusted, unchecked])
def test_overlapping_blocks_in_two_threads_leave_the_checks_on(switch):
    inside: list[bool] = []

    def block(entered: threading.Event, leave: threading.Event) -> None:
        with switch():
            inside.append(checks_enabled())
            entered.set()
            assert leave.wait(WAIT)
        inside.append(checks_enabled())

    overlapping(block)
    assert inside == [False, False, True, True]
    assert checks_enabled()  # this thread, and a fresh one
    fresh: list[bool] = []
    thread = threading.Thread(target=lambda: fresh.append(checks_enabled()))
    thread.start()
    thread.join(WAIT)
    assert fresh == [True]


def test_overlapping_sampling_calls_leave_the_checks_on():
    first, second = Blocking(), Blocking()
    a, a_errors = start_sampler(first)  # A enters
    b, b_errors = start_sampler(second)  # B enters
    first.release.set()  # A leaves
    a.join(WAIT)
    second.release.set()  # B leaves
    b.join(WAIT)
    assert not a.is_alive() and not b.is_alive() and not a_errors and not b_errors
    assert first.checks_inside == second.checks_inside == [False]
    assert checks_enabled()
    with pytest.raises(ValueError, match="alpha_t"):
        losses.uniform_nelbo(logits(), x0(), x0(), 2.0, -1.0)


def test_asyncio_tasks_see_their_own_switch():
    async def task(switch: Any, hold: asyncio.Event) -> bool:
        with switch():
            await hold.wait()
            return checks_enabled()

    async def plain(hold: asyncio.Event) -> bool:
        await asyncio.sleep(0)
        enabled = checks_enabled()
        hold.set()
        return enabled

    async def main() -> list[bool]:
        hold = asyncio.Event()
        return await asyncio.gather(task(trusted, hold), task(unchecked, hold), plain(hold))

    assert asyncio.run(main()) == [False, False, True]
    assert checks_enabled()


def test_host_checks_are_counted_per_thread():
    draw = lambda: samplers.sample_categorical(torch.tensor([[0.5, 0.5]]))  # noqa: E731
    before = host_check_count()
    draw()
    per_call = host_check_count() - before
    assert per_call >= 1
    before, counted = host_check_count(), []
    with sampler_running_in_another_thread():

        def other() -> None:
            start = host_check_count()
            for _ in range(5):
                draw()
            counted.append(host_check_count() - start)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(WAIT)
    assert counted == [5 * per_call]  # in its own thread
    assert host_check_count() == before  # nothing of the other threads counted here
    # The old module attributes read the same per-thread number.
    assert typing_module.host_checks == checks_module.host_checks == before


def test_the_checks_moved_but_every_old_import_still_works():
    for name in typing_module.__all__:
        assert hasattr(typing_module, name), name
    assert typing_module.trusted is checks_module.trusted
    assert typing_module.check_tokens is checks_module.check_tokens
    with pytest.raises(AttributeError, match="no_such_name"):
        typing_module.no_such_name  # noqa: B018


# ------------------------------------------------------------------------------------------------
# The denoiser seam: a DiT smaller than the vocabulary, notes on the inputs
# ------------------------------------------------------------------------------------------------


def test_a_dit_smaller_than_the_vocabulary_names_both_sizes():
    model = small_dit(50).eval()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError) as caught:
        UniformDiffusion(55).sample(model, 4, 64, 2, generator=g)
    message = str(caught.value)
    assert "vocab_size=50" in message and "outside its vocabulary [0, 50)" in message
    assert "IndexError" not in message
    if NOTES:
        assert "vocab_size=55" in notes_of(caught.value)
        assert "torch.int64 (4, 64), ids in [" in notes_of(caught.value)
    else:
        assert notes_of(caught.value) == ""


def test_the_dit_checks_its_ids_below_a_public_call_but_not_when_unchecked():
    model = small_dit(5).eval()
    big = torch.full((1, 3), 6)
    with trusted(), pytest.raises(ValueError, match=r"\[6, 6\], outside its vocabulary \[0, 5\)"):
        model(big, torch.zeros(1))
    with trusted(), pytest.raises(ValueError, match="vocab_size=5"):
        model(Bag(big[..., None], torch.ones(1, 3, 1)), torch.zeros(1))
    with unchecked(), pytest.raises(IndexError):  # the user asked for no checks
        model(big, torch.zeros(1))
    before = host_check_count()
    with trusted():
        model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1))
    assert host_check_count() == before + 1  # one reduction, one decision


def test_an_error_inside_the_denoiser_notes_its_ids_and_vocab_size():
    def broken(z_t, sigma, **cond):
        raise RuntimeError("backbone exploded")

    with pytest.raises(RuntimeError, match="backbone exploded") as caught:
        UniformDiffusion(K).loss(broken, x0(torch.int32), fused=False)
    expected = "discdiff: denoiser was called with token ids z_t torch.int64 (2, 4), ids in ["
    if NOTES:
        (note,) = caught.value.__notes__
        assert note.startswith(expected) and "drawn from vocab_size=7" in note
    else:
        assert notes_of(caught.value) == ""


def test_an_error_inside_hidden_states_is_noted_too():
    model = small_dit(K)
    model.hidden_states = lambda z_t, sigma, **cond: (_ for _ in ()).throw(KeyError("boom"))
    with pytest.raises(KeyError) as caught:
        UniformDiffusion(K).loss(model, x0(), fused=True)
    assert ("vocab_size=7" in notes_of(caught.value)) is NOTES


class NanoGPT(torch.nn.Module):
    """nanoGPT's forward, as is: ``b, t = idx.size()``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.out = torch.nn.Embedding(K, 8), torch.nn.Linear(8, K)

    def forward(self, idx, sigma):
        b, t = idx.size()
        return self.out(self.emb(idx))


@pytest.mark.parametrize("top_k, what", [(None, "(B, L, K) = (2, 4, 7)"), (3, "Bag(ids")])
def test_a_model_failing_on_the_relaxed_input_is_told_what_it_must_accept(top_k, what):
    curriculum = GaussianCurriculum(end_step=10, top_k=top_k)
    with pytest.raises((ValueError, AttributeError)) as caught:
        UniformDiffusion(K, curriculum=curriculum).loss(NanoGPT(), x0(), step=0)
    note = notes_of(caught.value)
    if NOTES:
        assert "relaxed" in note and what in note and "GaussianCurriculum" in note
    else:
        assert note == ""


@pytest.mark.parametrize("top_k", [None, 3])
def test_the_soft_input_comes_in_the_models_dtype_or_the_one_asked_for(top_k):
    model = Net(dtype=torch.bfloat16)
    UniformDiffusion(K, curriculum=GaussianCurriculum(end_step=10, top_k=top_k)).loss(
        model, x0(), step=0, fused=False)  # fmt: skip
    assert model.seen == [torch.bfloat16]
    model = Net(dtype=torch.float64)
    asked = GaussianCurriculum(end_step=10, top_k=top_k, dtype=torch.float64)
    UniformDiffusion(K, curriculum=asked).loss(model, x0(), step=0, fused=False)
    assert model.seen == [torch.float64]
    plain = lambda z, sigma: torch.zeros(*z.shape[:2], K)  # noqa: E731 - no parameters
    assert GaussianCurriculum().input_dtype(plain) == torch.float32


def test_the_curriculum_dtype_is_checked_and_survives_json():
    from discdiff import config

    curriculum = GaussianCurriculum(end_step=10, dtype="bfloat16")
    assert curriculum.dtype == torch.bfloat16
    assert config.from_dict(curriculum.to_dict()) == curriculum
    with pytest.raises(ValueError, match="dtype"):
        GaussianCurriculum(dtype="int8")


# ------------------------------------------------------------------------------------------------
# Training mode
# ------------------------------------------------------------------------------------------------


def test_sampling_a_model_in_training_mode_warns_once_and_leaves_its_mode():
    model = small_dit(K)  # fresh: training mode, dropout 0.1
    with pytest.warns(UserWarning, match=r"training mode.*\.eval\(\)"):
        UniformDiffusion(K).sample(model, B, L, 2)
    assert model.training
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UniformDiffusion(K).sample(model, B, L, 2)  # once per model
        UniformDiffusion(K).sample(small_dit(K).eval(), B, L, 2)
        UniformDiffusion(K).sample(Net(), B, L, 2)  # training mode, but nothing random in it


@pytest.mark.parametrize("entry", ["sample_masked", "dcd", "sdtt"])
def test_every_sampling_entry_point_warns(entry):
    model = small_dit(K + 1 if entry != "dcd" else K)
    run = {
        "sample_masked": lambda: samplers.sample_masked(
            model, B, L, 2, schedule=LogLinearSchedule(), vocab_size=K + 1, mask_id=K),
        "dcd": lambda: DCDistiller(small_dit(K).eval(), K).sample(model, B, L, 2),
        "sdtt": lambda: SDTTDistiller(small_dit(K + 1).eval(), K).sample(model, B, L, 2),
    }[entry]  # fmt: skip
    with pytest.warns(UserWarning, match=r"\.eval\(\)"):
        run()
    assert model.training


# ------------------------------------------------------------------------------------------------
# Token dtypes at the door
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_every_integer_dtype_is_accepted_and_the_denoiser_gets_int64(dtype):
    calls = {
        "uniform.loss": lambda net, x, g: UniformDiffusion(K).loss(net, x, generator=g,
                                                                  fused=False),
        "uniform.nelbo": lambda net, x, g: UniformDiffusion(K).nelbo(net, x, generator=g).total,
        "masked.loss": lambda net, x, g: MaskedDiffusion(K - 1).loss(net, x % (K - 1),
                                                                    generator=g, fused=False),
        "dcd.loss": lambda net, x, g: DCDistiller(Net(), K).loss(net, x, 0, generator=g),
        "sdtt.loss": lambda net, x, g: SDTTDistiller(Net(), K - 1).loss(net, x % (K - 1), 0,
                                                                        generator=g),
    }  # fmt: skip
    for name, call in calls.items():
        torch.manual_seed(0)
        net = Net()
        got = call(net, x0(dtype), torch.Generator().manual_seed(3))
        assert set(net.seen) == {torch.int64}, name
        torch.manual_seed(0)  # the same weights (the student's, then the teacher's)
        want = call(Net(), x0(torch.long), torch.Generator().manual_seed(3))
        assert torch.equal(got, want), name  # converted at the door, before any draw


# ------------------------------------------------------------------------------------------------
# One schedule rule; messages that name the fix
# ------------------------------------------------------------------------------------------------


def test_one_schedule_rule_for_training_and_sampling():
    diffusion = UniformDiffusion(K, schedule=TwoMethods())
    diffusion.loss(Net(), x0())
    assert diffusion.sample(Net(), B, L, 2).shape == (B, L)  # refused before: no inverse
    messages = []
    for call in (lambda: UniformDiffusion(K, schedule=AlphaOnly()),
                 lambda: samplers.sample_uniform(Net(), B, L, 2, schedule=AlphaOnly(),
                                                 vocab_size=K),
                 lambda: SDTTDistiller(Net(K + 1), K, schedule=AlphaOnly())):  # fmt: skip
        with pytest.raises(TypeError, match="without dalpha_dt") as caught:
            call()
        messages.append(str(caught.value).split(", got")[0])
    assert len(set(messages)) == 1


def test_a_model_output_or_a_tuple_is_told_to_return_the_logits():
    class Output:
        def __init__(self, logits):
            self.logits = logits

    for wrap in (Output, lambda t: (t,)):
        model = lambda z, sigma, wrap=wrap: wrap(torch.zeros(*z.shape[:2], K))  # noqa: E731
        with pytest.raises(ValueError, match=r"return the logits tensor, e\.g\. `\.logits`"):
            UniformDiffusion(K).sample(model, B, L, 2)


def test_a_forward_without_sigma_is_told_how_it_is_called():
    class NoSigma(torch.nn.Module):
        def forward(self, z):
            return torch.zeros(*z.shape[:2], K)

    with pytest.raises(TypeError, match=r"called as denoiser\(z_t, sigma, \*\*cond\)"):
        UniformDiffusion(K).sample(NoSigma(), B, L, 2)
    # A TypeError raised inside a model that takes (z_t, sigma) is left as it is (and noted).
    def inside(z_t, sigma):
        raise TypeError("inside the model")

    with pytest.raises(TypeError, match="^inside the model") as caught:
        UniformDiffusion(K).sample(inside, B, L, 2)
    assert str(caught.value) == "inside the model"
    assert ("drawn from vocab_size=7" in notes_of(caught.value)) is NOTES


@pytest.mark.parametrize("call", [
    lambda: UniformDiffusion(K).sample(Net(), B, L, 2, generator=0),
    lambda: UniformDiffusion(K).loss(Net(), x0(), generator=0),
    lambda: DCDistiller(Net(), K).loss(Net(), x0(), 0, generator=0),
    lambda: SDTTDistiller(Net(K + 1), K).loss(Net(K + 1), x0(), 0, generator=0),
])  # fmt: skip
def test_an_int_generator_is_told_how_to_seed_one(call):
    with pytest.raises(TypeError, match=r"generator=torch\.Generator\(\)\.manual_seed\(0\)"):
        call()


def one_line_type_error(call: Callable[[], Any]) -> str:
    with pytest.raises(TypeError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and "Called with parameters" not in message, message
    return message


def test_wrong_backend_and_padding_mask_are_one_line():
    lg, z = logits(), x0()
    level = torch.full((B, 1), 0.5)
    for call in (lambda: kernels.uniform_nelbo(lg, z, z, level, -level, backend="cuda"),
                 lambda: kernels.uniform_ancestral_step(lg, z, 0.6, 0.5, backend="cuda")):
        message = one_line_type_error(call)
        assert "parameter 'backend' must be one of 'auto', 'triton', 'torch', got 'cuda'" in message
    mask = torch.ones(B + 1, L, dtype=torch.bool)
    message = one_line_type_error(
        lambda: UniformDiffusion(K).sample(small_dit(K).eval(), B, L, 2,
                                           cond={"padding_mask": mask}))  # fmt: skip
    assert "padding_mask" in message and f"b={B}" in message and f"shape {(B + 1, L)}" in message


def test_nan_logits_still_fail_below_the_door_in_another_thread():
    with sampler_running_in_another_thread():
        nan = lambda z, sigma: torch.full((*z.shape[:2], K), math.nan)  # noqa: E731
        with pytest.raises(ValueError, match="NaN"):
            UniformDiffusion(K).loss(nan, x0(), fused=False)
