"""Sampling loops: a denoiser, an initial state and a time grid in; tokens out.

``uniform_loop`` and ``masked_loop`` run the reverse process from a given z_1 along a given
``TimeGrid`` (k-diffusion style: the caller builds both); ``sample_uniform`` and
``sample_masked`` build them from a schedule and call the loops.

How a sample ends is its ``tail`` (``discdiff.samplers.grid``): "greedy" (the paper's) and
"map" make one more call at t_min, "none" steps down to t = 0. For the masked process "map"
and "greedy" coincide: a masked token's denoising posterior is x_hat itself.

A prompt (``prompt`` ids and ``prompt_mask``, both (B, L)) holds its tokens in z_1, after every
step and in the output. The masked process samples the conditional law as it is (a clean token
is an unmasked token). The uniform process needs the denoiser to be told which positions are
clean: it passes per-token levels sigma (B, L), 0 at the prompt, to a denoiser that declares
``reads_token_levels`` (``discdiff.context``), and refuses a prompt otherwise, unless
``clamp_prompt=True`` accepts the clamped approximation (whose free positions do not follow the
conditional law: Concepts, "Prompts"). ``callback`` receives a ``StepRecord`` after every
denoiser call, with the logits, so analysis needs no wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from discdiff.checks import check_generator
from discdiff.context import require_token_levels, token_levels
from discdiff.denoise import denoise, noise_level, warn_if_training
from discdiff.samplers.categorical import Source, check_filters, randint
from discdiff.samplers.grid import Tail, TimeGrid
from discdiff.samplers.guidance import guided_logits, guided_masked_step, guided_uniform_step
from discdiff.samplers.steps import _masked_step, _uniform_step
from discdiff.samplers.streams import row_source
from discdiff.samplers.tails import greedy_tail, map_tail
from discdiff.schedules import Schedule
from discdiff.typing import (
    Denoiser,
    as_float,
    check_count,
    check_tokens,
    check_vocab_size,
    trusted,
)

__all__ = [
    "StepRecord",
    "masked_loop",
    "sample_masked",
    "sample_uniform",
    "uniform_loop",
]

@dataclass(frozen=True)
class StepRecord:
    """What a ``callback`` sees after each denoiser call of a sampling run.

    ``step`` counts reverse steps from 0 (the tail call has step = N); the call was at time
    ``t`` and the tokens are now at time ``s`` (``z_s``, (B, L)); ``logits`` (B, L, K) is what
    the denoiser returned (the cached prediction when the masked sampler reused it); ``nfe`` the
    denoiser calls so far.
    """

    step: int
    t: float
    s: float
    z_s: Tensor
    logits: Tensor
    nfe: int


Callback = Callable[[StepRecord], None]


def _progress(total: int, enabled: bool) -> Iterator[int]:
    if not enabled:
        return iter(range(total))
    from tqdm.auto import tqdm

    return iter(tqdm(range(total), desc="sampling", unit="step"))


class _Prompt:
    """Clamps the prompt's positions (``mask`` True) to its tokens."""

    def __init__(self, prompt: Tensor | None, mask: Tensor | None) -> None:
        self.prompt, self.mask = prompt, mask

    def __call__(self, z: Tensor) -> Tensor:
        return z if self.mask is None else torch.where(self.mask, self.prompt, z)


@torch.no_grad()
def uniform_loop(
    denoiser: Denoiser,
    z: Int[Tensor, "b l"],
    grid: TimeGrid,
    *,
    vocab_size: int,
    tail: Tail = "greedy",
    kappa: float | Callable[[float, float], float] | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    prompt: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    clamp_prompt: bool = False,
    cond: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    generator: Source = None,
) -> Int[Tensor, "b l"]:
    """Run the uniform-state reverse process from ``z`` (B, L) along ``grid``, then the tail.

    Trusts its inputs (``sample_uniform`` checks them): ``z`` already holds the prompt. The
    only value check per step is ``denoise``'s on the logits. A prompt is clean context for a
    denoiser that ``reads_token_levels``; for any other it is an error unless ``clamp_prompt``
    (module docstring).
    """
    clean = None
    if prompt_mask is not None and not clamp_prompt:
        require_token_levels(denoiser, "A prompt on a uniform-state model",
                             "or pass clamp_prompt=True to accept the clamped approximation, "
                             "which does not sample the conditional law")  # fmt: skip
        clean = prompt_mask
    predict = _Predictor(denoiser, vocab_size, cond, guidance_scale, uncond, clean)
    with trusted():
        return _uniform_loop(predict, z, grid, tail, kappa, top_k, top_p,
                             _Prompt(prompt, prompt_mask), callback, progress, generator)


class _Predictor:
    """The denoiser calls of a loop: one per step, or two under guidance (conditional with
    ``cond``, unconditional with ``uncond``); counts them (the NFE). With a ``clean`` mask
    (B, L) the denoiser sees per-token levels, 0 there."""

    def __init__(
        self,
        denoiser: Denoiser,
        vocab_size: int,
        cond: Mapping[str, Any] | None,
        guidance_scale: float | None,
        uncond: Mapping[str, Any] | None,
        clean: Tensor | None = None,
    ) -> None:
        self.denoiser, self.vocab_size = denoiser, vocab_size
        self.cond, self.gamma, self.uncond = cond, guidance_scale, uncond
        self.clean = clean
        self.calls = 0

    def __call__(self, z: Tensor, alpha_t: float) -> tuple[Tensor, Tensor | None]:
        sigma = token_levels(noise_level(alpha_t, z.shape[0], z.device), self.clean)
        self.calls += 1
        logits = denoise(self.denoiser, z, sigma, vocab_size=self.vocab_size, cond=self.cond)
        if self.gamma is None:
            return logits, None
        self.calls += 1
        uncond = denoise(self.denoiser, z, sigma, vocab_size=self.vocab_size, cond=self.uncond)
        return logits, uncond

    def shown(self, logits: Tensor, uncond: Tensor | None) -> Tensor:
        """What the tail and the callback see: the logits, or the guided log-probabilities."""
        return logits if uncond is None else guided_logits(logits, uncond, self.gamma)


def _uniform_loop(
    predict: _Predictor,
    z: Tensor,
    grid: TimeGrid,
    tail: Tail,
    kappa: float | Callable[[float, float], float] | None,
    top_k: int | None,
    top_p: float | None,
    clamp: _Prompt,
    callback: Callback | None,
    progress: bool,
    generator: Source,
) -> Tensor:
    for i in _progress(grid.steps, progress):
        t, s = grid.t[i], grid.t[i + 1]
        a_t, a_s = grid.alpha[i], grid.alpha[i + 1]
        logits, uncond = predict(z, a_t)
        kap = None if kappa is None else _kappa_at(kappa, t, s)
        if uncond is None:
            z = _uniform_step(logits, z, a_s, a_t, kap, top_k, top_p, generator)
        else:
            z = guided_uniform_step(logits, uncond, z, a_s, a_t, predict.gamma, kappa=kap,
                                    top_k=top_k, top_p=top_p, generator=generator)
        z = clamp(z)
        if callback is not None:
            callback(StepRecord(i, t, s, z, predict.shown(logits, uncond), predict.calls))
    if tail == "none":
        return z
    t_end, a_end = grid.t[-1], grid.alpha[-1]
    logits, uncond = predict(z, a_end)
    guided = {} if uncond is None else {"uncond": uncond, "guidance_scale": predict.gamma}
    if tail == "greedy":
        z_0 = greedy_tail(logits, top_k=top_k, top_p=top_p, **guided)
    else:
        z_0 = map_tail(logits, z, a_end, top_k=top_k, top_p=top_p, **guided)
    z = clamp(z_0)
    if callback is not None:
        callback(StepRecord(grid.steps, t_end, 0.0, z, predict.shown(logits, uncond),
                            predict.calls))  # fmt: skip
    return z


def _kappa_at(kappa: float | Callable[[float, float], float], t: float, s: float) -> float:
    value = as_float(kappa(t, s), "kappa(t, s)") if callable(kappa) else kappa
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"kappa(t={t:.6g}, s={s:.6g}) = {value} is outside [0, 1]")
    return value


@torch.no_grad()
def masked_loop(
    denoiser: Denoiser,
    z: Int[Tensor, "b l"],
    grid: TimeGrid,
    *,
    vocab_size: int,
    mask_id: int,
    tail: Tail = "greedy",
    time_conditioned: bool = False,
    cache: bool = True,
    remask: Callable[[float, float], float] | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    prompt: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    generator: Source = None,
) -> Int[Tensor, "b l"]:
    """Run the masked reverse process from ``z`` (B, L) along ``grid``, then the tail.

    With ``cache`` (valid only without time conditioning) the prediction is reused while no
    token changed: the same samples with fewer calls (deciding that is one host sync per step).
    Trusts its inputs; the only value check per call is ``denoise``'s on the logits.
    """
    predict = _Predictor(denoiser, vocab_size, cond, guidance_scale, uncond)
    with trusted():
        return _masked_loop(predict, z, grid, mask_id, tail, time_conditioned, cache, remask,
                            top_k, top_p, _Prompt(prompt, prompt_mask), callback, progress,
                            generator)


def _masked_loop(
    predict: _Predictor,
    z: Tensor,
    grid: TimeGrid,
    mask_id: int,
    tail: Tail,
    time_conditioned: bool,
    cache: bool,
    remask: Callable[[float, float], float] | None,
    top_k: int | None,
    top_p: float | None,
    clamp: _Prompt,
    callback: Callback | None,
    progress: bool,
    generator: Source,
) -> Tensor:
    pred: tuple[Tensor, Tensor | None] | None = None
    for i in _progress(grid.steps, progress):
        t, s = grid.t[i], grid.t[i + 1]
        a_t, a_s = grid.alpha[i], grid.alpha[i + 1]
        if pred is None:
            pred = predict(z, a_t if time_conditioned else 1.0)
        logits, uncond = pred
        sigma = None if remask is None else _remask_at(remask, t, s, a_t, a_s)
        if uncond is None:
            z_new = _masked_step(logits, z, a_s, a_t, mask_id, sigma, top_k, top_p, generator)
        else:
            z_new = guided_masked_step(logits, uncond, z, a_s, a_t, predict.gamma,
                                       mask_id=mask_id, sigma=sigma, top_k=top_k, top_p=top_p,
                                       generator=generator)
        z_new = clamp(z_new)
        if callback is not None:
            callback(StepRecord(i, t, s, z_new, predict.shown(logits, uncond), predict.calls))
        if not cache or not torch.equal(z_new, z):
            pred = None
        z = z_new
    if tail == "none":
        return z
    if pred is None:
        pred = predict(z, grid.alpha[-1] if time_conditioned else 1.0)
    logits, uncond = pred
    guided = {} if uncond is None else {"uncond": uncond, "guidance_scale": predict.gamma}
    z_0 = greedy_tail(logits, exclude=mask_id, top_k=top_k, top_p=top_p, **guided)
    z = torch.where(z == mask_id, z_0, z)
    if callback is not None:
        callback(StepRecord(grid.steps, grid.t[-1], 0.0, z, predict.shown(logits, uncond),
                            predict.calls))  # fmt: skip
    return z


def _remask_at(
    remask: Callable[[float, float], float], t: float, s: float, a_t: float, a_s: float
) -> float:
    value = as_float(remask(t, s), "remask(t, s)")
    sigma_max = 1.0 if a_t <= 0 else min(1.0, (1.0 - a_s) / a_t)
    if not 0.0 <= value <= sigma_max + 1e-12:
        raise ValueError(
            f"remask(t={t:.6g}, s={s:.6g}) = {value} is outside [0, sigma_max] with sigma_max = "
            f"min(1, (1 - alpha_s) / alpha_t) = {sigma_max:.6g}: the unmasking probability "
            "would leave [0, 1]"
        )
    return value


def _check_prompt(
    prompt: Tensor | None, prompt_mask: Tensor | None, shape: tuple[int, int], vocab_size: int
) -> tuple[Tensor | None, Tensor | None]:
    if prompt is None and prompt_mask is None:
        return None, None
    if prompt is None:
        raise ValueError("prompt_mask needs prompt: the (B, L) token ids it marks")
    if prompt.shape != shape:
        raise ValueError(f"prompt must be (B, L) = {shape} token ids, got {tuple(prompt.shape)}")
    check_tokens(prompt, vocab_size, "prompt")
    if prompt_mask is None:
        prompt_mask = torch.ones(shape, dtype=torch.bool, device=prompt.device)
    if prompt_mask.dtype != torch.bool or prompt_mask.shape != shape:
        raise ValueError(
            f"prompt_mask must be a (B, L) = {shape} bool tensor, got {prompt_mask.dtype} "
            f"{tuple(prompt_mask.shape)}"
        )
    return prompt.long(), prompt_mask


def _check_guidance(guidance_scale: Any, uncond: Any) -> float | None:
    if guidance_scale is None:
        if uncond is not None:
            raise ValueError("uncond is only used with guidance_scale: pass both, or neither")
        return None
    gamma = as_float(guidance_scale, "guidance_scale")
    if not (gamma >= 0 and gamma < float("inf")):
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if not isinstance(uncond, Mapping):
        raise ValueError(
            "guidance_scale needs uncond: the denoiser's conditioning for the unconditional "
            "prediction, e.g. uncond={'label': null_label} ({} calls it without conditioning)"
        )
    return gamma


def _setup(
    batch_size: int,
    length: int,
    vocab_size: int,
    top_k: int | None,
    top_p: float | None,
    prompt: Tensor | None,
    prompt_mask: Tensor | None,
    device: Any,
    generator: torch.Generator | None,
) -> tuple[torch.device, Tensor | None, Tensor | None]:
    check_vocab_size(vocab_size)
    check_generator(generator)
    check_count(batch_size, "batch_size")
    check_count(length, "length")
    check_filters(top_k, None if top_p is None else as_float(top_p, "top_p"))
    prompt, prompt_mask = _check_prompt(prompt, prompt_mask, (batch_size, length), vocab_size)
    if device is not None:
        dev = torch.device(device)
    elif prompt is not None:
        dev = prompt.device
    else:
        dev = generator.device if generator is not None else torch.device("cpu")
    if prompt is not None:
        prompt, prompt_mask = prompt.to(dev), prompt_mask.to(dev)
    return dev, prompt, prompt_mask


def sample_uniform(
    denoiser: Denoiser,
    batch_size: int,
    length: int,
    steps: int,
    *,
    schedule: Schedule,
    vocab_size: int,
    tail: Tail = "greedy",
    kappa: float | Callable[[float, float], float] | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    time_grid: Sequence[float] | Tensor | None = None,
    prompt: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    clamp_prompt: bool = False,
    cond: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> Int[Tensor, "b l"]:
    """Sample (batch_size, length) tokens from a uniform-state diffusion model (Duo / UDLM).

    z_1 ~ Uniform(K) (prompt positions hold the prompt); ``steps`` reverse steps along
    ``time_grid`` (default: ``TimeGrid.build``'s linspace for the ``tail``), each calling
    ``denoiser(z_t, sigma, **cond)`` once with sigma = -log(alpha_t) (B,) float32 and taking an
    ancestral step, or a Ψ step when ``kappa`` is given (a number in [0, 1] or a callable
    kappa(t, s) such as ``ConstantKappa`` / ``CappedKappa``; kappa = 1 is ancestral). Then the
    ``tail`` (module docstring): NFE = steps + 1 for "greedy" and "map", steps for "none".
    ``top_k`` / ``top_p`` filter x_hat before the posterior and in the tail.

    ``prompt`` / ``prompt_mask`` (B, L): given tokens, clean context for a denoiser that
    declares ``reads_token_levels`` (it sees sigma (B, L), 0 at the prompt): then the free
    positions follow the conditional law. Any other denoiser raises a ValueError, unless
    ``clamp_prompt=True`` accepts the clamped approximation (module docstring).

    ``cond`` is a mapping of keyword arguments for the denoiser (class labels, masks), kept
    apart from the sampler's options. ``guidance_scale`` gamma turns on classifier-free
    guidance: every step also calls the denoiser with ``uncond`` (the conditioning of the
    unconditional prediction, e.g. the null label) and draws from the per-token renormalised
    q(z_s | z_t, y)^gamma q(z_s | z_t)^(1 - gamma) (``discdiff.samplers.guidance``): 2 calls per
    step; gamma = 1 is the conditional sampler, 0 the unconditional one.
    ``callback(StepRecord)`` after each step; ``progress``
    shows a tqdm bar; randomness only from ``generator``, or with ``seed`` (an int, instead of
    ``generator``) from a ``RowStream`` keyed by (seed, row): row b is then the same whatever
    the batch size and the other rows (for a denoiser whose row b depends only on row b);
    tokens on ``device`` (default: the prompt's, else the generator's). Runs under
    ``torch.no_grad()``. Returns int64 ids (B, L).
    """
    warn_if_training(denoiser)
    dev, prompt, prompt_mask = _setup(
        batch_size, length, vocab_size, top_k, top_p, prompt, prompt_mask, device, generator
    )
    guidance_scale = _check_guidance(guidance_scale, uncond)
    if kappa is not None and not callable(kappa):
        kappa = as_float(kappa, "kappa")
        if not 0.0 <= kappa <= 1.0:
            raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
    grid = TimeGrid.build(schedule, steps, tail=tail, times=time_grid)
    source = row_source(generator, seed, length)
    z = randint(vocab_size, batch_size * length, source, dev).view(batch_size, length)
    z = _Prompt(prompt, prompt_mask)(z)
    return uniform_loop(
        denoiser, z, grid, vocab_size=vocab_size, tail=tail, kappa=kappa, top_k=top_k,
        top_p=None if top_p is None else float(top_p), prompt=prompt, prompt_mask=prompt_mask,
        clamp_prompt=clamp_prompt, cond=cond, guidance_scale=guidance_scale, uncond=uncond,
        callback=callback, progress=progress, generator=source,
    )  # fmt: skip


def sample_masked(
    denoiser: Denoiser,
    batch_size: int,
    length: int,
    steps: int,
    *,
    schedule: Schedule,
    vocab_size: int,
    mask_id: int,
    tail: Tail = "greedy",
    cache: bool | None = None,
    time_conditioned: bool = False,
    remask: Callable[[float, float], float] | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    time_grid: Sequence[float] | Tensor | None = None,
    prompt: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> Int[Tensor, "b l"]:
    """Sample (batch_size, length) tokens from a masked diffusion model (MDLM, SUBS).

    z_1 = all ``mask_id`` (prompt positions hold the prompt); then ``steps`` reverse steps
    (``masked_ancestral_step``) along ``time_grid`` (as in ``sample_uniform``) and the ``tail``:
    "greedy" / "map" fill what is still masked with argmax x_hat after one more call at t_min
    (mask class excluded); "none" steps down to t = 0, where every mask is drawn. ``remask``: a
    ReMDM schedule sigma(t, s) (``CappedRemask``, ``RescaledRemask`` or a callable returning
    sigma in [0, min(1, (1 - alpha_s) / alpha_t)]); None is plain MDLM. ``vocab_size`` counts
    the mask token (the denoiser's K).

    ``time_conditioned=False`` (MDLM's default) passes sigma = 0 to the denoiser, which then sees
    only z_t; ``cache`` (default: on exactly when not time-conditioned) then reuses x_hat while
    no token changed: the same samples with fewer calls (``StepRecord.nfe`` counts them).
    ``cache=True`` with ``time_conditioned=True`` is an error. Other arguments (``cond``,
    ``guidance_scale``, ``uncond`` and ``seed`` among them) as in ``sample_uniform``. Returns
    int64 ids (B, L).
    """
    warn_if_training(denoiser)
    dev, prompt, prompt_mask = _setup(
        batch_size, length, vocab_size, top_k, top_p, prompt, prompt_mask, device, generator
    )
    guidance_scale = _check_guidance(guidance_scale, uncond)
    check_count(mask_id, "mask_id", minimum=0)
    if mask_id >= vocab_size:
        raise ValueError(f"mask_id={mask_id!r} is outside [0, vocab_size={vocab_size})")
    if prompt is not None and bool((prompt_mask & (prompt == mask_id)).any()):
        raise ValueError(f"prompt holds the mask token {mask_id} at a prompt position")
    if cache is None:
        cache = not time_conditioned
    elif cache and time_conditioned:
        raise ValueError(
            "cache=True reuses predictions across noise levels, which is only valid when the "
            "denoiser is not time-conditioned; pass cache=False (or time_conditioned=False)"
        )
    grid = TimeGrid.build(schedule, steps, tail=tail, times=time_grid)
    source = row_source(generator, seed, length)
    z = _Prompt(prompt, prompt_mask)(
        torch.full((batch_size, length), mask_id, dtype=torch.long, device=dev)
    )
    return masked_loop(
        denoiser, z, grid, vocab_size=vocab_size, mask_id=mask_id, tail=tail,
        time_conditioned=time_conditioned, cache=cache, remask=remask, top_k=top_k,
        top_p=None if top_p is None else float(top_p), prompt=prompt, prompt_mask=prompt_mask,
        cond=cond, guidance_scale=guidance_scale, uncond=uncond, callback=callback,
        progress=progress, generator=source,
    )  # fmt: skip
