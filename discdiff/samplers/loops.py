"""The keyword layer of the samplers: ``sample_uniform`` / ``sample_masked`` (and the loops
``uniform_loop`` / ``masked_loop``, which start from a given z_1 and ``TimeGrid``) check their
keywords, build the parts once (``Filter``, ``Prompt``, ``Guidance``, a ``Predictor``, the step
object, the ``Finish``) and call the one loop ``discdiff.samplers.loop.run``.

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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from discdiff.checks import check_generator
from discdiff.context import require_token_levels
from discdiff.denoise import warn_if_training
from discdiff.samplers.categorical import Source, randint
from discdiff.samplers.grid import Tail, TimeGrid
from discdiff.samplers.loop import Callback, StepRecord, run
from discdiff.samplers.masked import MaskedStep
from discdiff.samplers.parts import Filter, Finish, Guidance, Prompt
from discdiff.samplers.predict import Predictor
from discdiff.samplers.psi import Kappa
from discdiff.samplers.streams import row_source
from discdiff.samplers.uniform import UniformStep
from discdiff.schedules import Schedule
from discdiff.typing import Denoiser, check_count, check_vocab_size

__all__ = [
    "StepRecord",
    "masked_loop",
    "sample_masked",
    "sample_uniform",
    "uniform_loop",
]


def _uniform_parts(
    denoiser: Denoiser,
    vocab_size: int,
    tail: Tail,
    step: UniformStep,
    prompt: Prompt | None,
    clamp_prompt: bool,
    cond: Mapping[str, Any] | None,
    guidance: Guidance | None,
) -> tuple[Predictor, Finish | None]:
    """The predictor and the tail of a uniform run. A prompt is clean context for a denoiser
    that ``reads_token_levels``; for any other it is an error unless ``clamp_prompt``."""
    clean = None
    if prompt is not None and not clamp_prompt:
        require_token_levels(denoiser, "A prompt on a uniform-state model",
                             "or pass clamp_prompt=True to accept the clamped approximation, "
                             "which does not sample the conditional law")  # fmt: skip
        clean = prompt.mask
    predict = Predictor(denoiser, vocab_size, cond=cond, guidance=guidance, clean=clean)
    finish = None if tail == "none" else Finish(tail, step.filter)
    return predict, finish


def _prompt_part(prompt: Tensor | None, prompt_mask: Tensor | None) -> Prompt | None:
    """The trusted loops' prompt (their caller checked it); no prompt when no mask."""
    if prompt_mask is None:
        return None
    assert prompt is not None
    return Prompt(prompt, prompt_mask)


@torch.no_grad()
def uniform_loop(
    denoiser: Denoiser,
    z: Int[Tensor, "b l"],
    grid: TimeGrid,
    *,
    vocab_size: int,
    tail: Tail = "greedy",
    kappa: Kappa | None = None,
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

    The keywords of ``sample_uniform``, turned into parts for ``run``: ``z`` already holds the
    prompt. A prompt is clean context for a denoiser that ``reads_token_levels``; for any other
    it is an error unless ``clamp_prompt`` (module docstring).
    """
    step = UniformStep(kappa, Filter(top_k, top_p))
    prompt_part = _prompt_part(prompt, prompt_mask)
    guidance = Guidance.of(guidance_scale, uncond)
    predict, finish = _uniform_parts(denoiser, vocab_size, tail, step, prompt_part,
                                     clamp_prompt, cond, guidance)  # fmt: skip
    return run(predict, step, grid, z, finish=finish, prompt=prompt_part, callback=callback,
               progress=progress, generator=generator)  # fmt: skip


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
    cache: bool | None = None,
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

    With ``cache`` (valid only without time conditioning; default: on exactly then) the
    prediction is reused while no token changed: the same samples with fewer calls (deciding
    that is one host sync per step). The keywords of ``sample_masked``, turned into parts for
    ``run``.
    """
    filt = Filter(top_k, top_p)
    if cache is None:
        cache = not time_conditioned
    predict = Predictor(denoiser, vocab_size, cond=cond,
                        guidance=Guidance.of(guidance_scale, uncond),
                        time_conditioned=time_conditioned, cache=cache,
                        convert=False)  # fmt: skip
    finish = None if tail == "none" else Finish("greedy", filt, mask_id)
    return run(predict, MaskedStep(mask_id, remask, filt), grid, z, finish=finish,
               prompt=_prompt_part(prompt, prompt_mask), callback=callback, progress=progress,
               generator=generator)  # fmt: skip


def _setup(
    batch_size: int,
    length: int,
    vocab_size: int,
    prompt: Tensor | None,
    prompt_mask: Tensor | None,
    device: Any,
    generator: torch.Generator | None,
) -> tuple[torch.device, Prompt | None]:
    check_vocab_size(vocab_size)
    check_generator(generator)
    check_count(batch_size, "batch_size")
    check_count(length, "length")
    part = Prompt.of(prompt, prompt_mask, (batch_size, length), vocab_size)
    if device is not None:
        dev = torch.device(device)
    elif part is not None:
        dev = part.tokens.device
    else:
        dev = generator.device if generator is not None else torch.device("cpu")
    return dev, None if part is None else part.to(dev)


def sample_uniform(
    denoiser: Denoiser,
    batch_size: int,
    length: int,
    steps: int,
    *,
    schedule: Schedule,
    vocab_size: int,
    tail: Tail = "greedy",
    kappa: Kappa | None = None,
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
    dev, prompt_part = _setup(batch_size, length, vocab_size, prompt, prompt_mask, device,
                              generator)  # fmt: skip
    filt = Filter(top_k, top_p)
    guidance = Guidance.of(guidance_scale, uncond)
    step = UniformStep(kappa, filt)
    grid = TimeGrid.build(schedule, steps, tail=tail, times=time_grid)
    source = row_source(generator, seed, length)
    z = randint(vocab_size, batch_size * length, source, dev).view(batch_size, length)
    if prompt_part is not None:
        z = prompt_part(z)
    predict, finish = _uniform_parts(denoiser, vocab_size, tail, step, prompt_part,
                                     clamp_prompt, cond, guidance)  # fmt: skip
    return run(predict, step, grid, z, finish=finish, prompt=prompt_part, callback=callback,
               progress=progress, generator=source)  # fmt: skip


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
    dev, prompt_part = _setup(batch_size, length, vocab_size, prompt, prompt_mask, device,
                              generator)  # fmt: skip
    filt = Filter(top_k, top_p)
    guidance = Guidance.of(guidance_scale, uncond)
    step = MaskedStep(mask_id, remask, filt)
    if step.mask_id >= vocab_size:
        raise ValueError(f"mask_id={mask_id!r} is outside [0, vocab_size={vocab_size})")
    if prompt_part is not None and bool((prompt_part.mask & (prompt_part.tokens == mask_id)).any()):
        raise ValueError(f"prompt holds the mask token {mask_id} at a prompt position")
    predict = Predictor(denoiser, vocab_size, cond=cond, guidance=guidance,
                        time_conditioned=time_conditioned,
                        cache=not time_conditioned if cache is None else cache,
                        convert=False)  # fmt: skip
    grid = TimeGrid.build(schedule, steps, tail=tail, times=time_grid)
    source = row_source(generator, seed, length)
    z = torch.full((batch_size, length), mask_id, dtype=torch.long, device=dev)
    if prompt_part is not None:
        z = prompt_part(z)
    finish = None if tail == "none" else Finish("greedy", filt, mask_id)
    return run(predict, step, grid, z, finish=finish, prompt=prompt_part, callback=callback,
               progress=progress, generator=source)  # fmt: skip
