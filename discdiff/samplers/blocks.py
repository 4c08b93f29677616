"""Block-by-block sampling of a block model (BD3-LM; Concepts, "Block diffusion").

``run_blocks`` is a loop over blocks around the one sampling loop ``run``: for block k it draws
the process's prior on the block's b tokens, runs the usual parts (a ``Predictor``, the step
object ``UniformStep`` / ``MaskedStep``, ``Finish``, ``Prompt``) on those b tokens with a
denoiser that reads the clean blocks before it, and appends the finished block to the context.
``sample_uniform_blocks`` / ``sample_masked_blocks`` are its keyword layer (what
``UniformDiffusion(K, block_size=b).sample`` / ``MaskedDiffusion(K, block_size=b).sample`` call).

The block model's three calls (the protocol the DiT and ``discdiff.testing.blocks`` implement):

1. ``model(z, sigma, x_0=x_0, **cond)`` -> (B, L, K): the training pass; the *uncached* sampler
   calls it on the window's clean tokens followed by the noisy block (z = x_0 = [x_<k ; z_k],
   sigma 0 on the clean part) and keeps the last block's logits;
2. ``model(z_block, sigma_block, kv_cache=cache, **cond)`` -> (B, n, K): the block right after
   the cached positions, reading the cache, which it leaves as it was;
3. ``model.prefill(x, cache, **cond)``: appends clean tokens x (B, n) to the cache;
   ``model.new_kv_cache(max_len)`` makes an empty one (``length``, ``crop(n)``, ``reset()``).

Cached and uncached sampling give the same tokens (the same logits up to rounding). A prompt is
clean context: its whole blocks are prefilled, a partial last block of r tokens sits at the start
of the first generated block, held there at level 0. Past the model's window (``window``, by
default its ``training_length`` if it declares one) the context slides: before a block that would
not fit, the cache is reset and refilled with the last window - b clean tokens, so positions stay
within what the model was trained on. With ``eos_id`` a row stops at its first EOS among the
generated tokens (everything after it is ``eos_id``), and the loop stops once every row has.
Under classifier-free guidance each conditioning has its own cache (the clean keys and values
depend on it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from discdiff.blocks import check_block_model
from discdiff.checks import check_generator
from discdiff.denoise import warn_if_training
from discdiff.samplers.categorical import Source, randint
from discdiff.samplers.grid import Tail, TimeGrid
from discdiff.samplers.loop import Callback, Step, run
from discdiff.samplers.masked import MaskedStep
from discdiff.samplers.parts import Filter, Finish, Guidance, Prompt
from discdiff.samplers.predict import Predict, Predictor
from discdiff.samplers.psi import Kappa
from discdiff.samplers.streams import row_source
from discdiff.samplers.uniform import UniformStep
from discdiff.schedules import Schedule
from discdiff.typing import Denoiser, check_count, check_tokens, check_vocab_size, trusted

__all__ = [
    "BlockPlan",
    "BlockSample",
    "model_window",
    "run_blocks",
    "sample_masked_blocks",
    "sample_uniform_blocks",
]

Prior = Callable[[int, int, Source, torch.device], Tensor]
"""(batch_size, b, randomness, device) -> the prior's (B, b) ids of one block."""
MakePredict = Callable[[Denoiser, Tensor | None], Predict]
"""(the block's denoiser, its clean positions (B, b) or None) -> the block's ``Predict``."""


def model_window(model: Any) -> int | None:
    """The positions a model was trained on, its ``training_length`` if it declares one
    (through a ``torch.compile`` or DDP wrapper too), else None."""
    for obj in (model, getattr(model, "_orig_mod", None), getattr(model, "module", None)):
        size = getattr(obj, "training_length", None) if obj is not None else None
        if isinstance(size, int) and not isinstance(size, bool):
            return size
    return None


@dataclass(frozen=True)
class BlockPlan:
    """How the blocks are laid out: ``length`` tokens in all (the prompt's included) in blocks
    of ``block_size``; ``window`` the most positions the model sees at once (None: no limit),
    a multiple of ``block_size``; ``eos_id`` where rows stop (None: never); ``kv_cache``
    whether the model reads a cache (protocol calls 2 and 3) or recomputes the clean blocks
    (call 1); ``batch_size`` the rows generated."""

    block_size: int
    length: int
    window: int | None = None
    eos_id: int | None = None
    kv_cache: bool = True
    batch_size: int = 1

    def __post_init__(self) -> None:
        b = check_count(self.block_size, "block_size")
        check_count(self.length, "length")
        check_count(self.batch_size, "batch_size")
        if self.window is not None:
            window = check_count(self.window, "window")
            if window % b:
                raise ValueError(f"window={window} must be a multiple of block_size={b} (the "
                                 "context slides by whole blocks)")  # fmt: skip
        if self.eos_id is not None:
            check_count(self.eos_id, "eos_id", minimum=0)
        if not isinstance(self.kv_cache, bool):
            raise ValueError(f"kv_cache must be True or False, got {self.kv_cache!r}")


@dataclass(frozen=True)
class BlockSample:
    """What ``run_blocks`` returns: ``tokens`` (B, length) int64; ``nfe`` the denoiser calls
    of each generated block (their sum is the sample's NFE); ``prefills`` the calls that
    appended clean tokens to a cache (``model.prefill``, one per conditioning)."""

    tokens: Int[Tensor, "b l"]
    nfe: tuple[int, ...]
    prefills: int

    @property
    def total_nfe(self) -> int:
        return sum(self.nfe)


def _cond_key(cond: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """The identity of a conditioning mapping as the model receives it (``**cond`` keeps the
    values' identities), so that each conditioning finds its own cache."""
    return tuple(sorted((k, id(v)) for k, v in cond.items()))


class _Context:
    """The clean tokens of a sample, the window over them and the model's caches."""

    def __init__(self, model: Any, plan: BlockPlan, tokens: Tensor,
                 conds: Sequence[Mapping[str, Any]]) -> None:  # fmt: skip
        self.model, self.plan, self.tokens = model, plan, tokens
        self.start = 0  # absolute position of the window's first token
        self.cached_to = 0  # absolute position up to which the caches hold the tokens
        self.prefills = 0
        self.conds = list({_cond_key(c): c for c in conds}.values())
        self.caches: dict[tuple[tuple[str, int], ...], Any] = {}
        if plan.kv_cache:  # the window, or the whole sample (with the last block's scratch rows)
            max_len = plan.window if plan.window is not None else plan.length + plan.block_size
            self.caches = {_cond_key(c): model.new_kv_cache(max_len) for c in self.conds}

    def prepare(self, block_start: int) -> None:
        """Slide the window so that the block at ``block_start`` fits, and prefill the caches
        with the clean tokens they lack."""
        b, window = self.plan.block_size, self.plan.window
        if window is not None and block_start + b - self.start > window:
            self.start = block_start + b - window  # a multiple of b: the blocks keep their shape
            for cache in self.caches.values():
                cache.reset()
            self.cached_to = self.start
        if self.plan.kv_cache and self.cached_to < block_start:
            x = self.tokens[:, self.cached_to : block_start]
            for cond in self.conds:
                self.model.prefill(x, self.caches[_cond_key(cond)], **cond)
                self.prefills += 1
            self.cached_to = block_start

    def denoiser(self, block_start: int) -> _BlockDenoiser:
        return _BlockDenoiser(self, self.tokens[:, self.start : block_start])


class _BlockDenoiser:
    """The denoiser of one block as the parts see it: (z (B, b), sigma (B,) or (B, b),
    **cond) -> logits (B, b, K), reading the clean tokens before the block (from the cache, or
    recomputed with them)."""

    reads_token_levels = True

    def __init__(self, context: _Context, clean: Tensor) -> None:
        self.context, self.clean = context, clean

    def __call__(self, z: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        ctx = self.context
        if ctx.plan.kv_cache:
            return ctx.model(z, sigma, kv_cache=ctx.caches[_cond_key(cond)], **cond)
        c = self.clean.shape[1]
        sigma = sigma.unsqueeze(-1).expand(z.shape) if sigma.ndim == 1 else sigma
        full = torch.cat([self.clean.to(z.dtype), z], 1)
        levels = torch.cat([sigma.new_zeros(z.shape[0], c), sigma], 1)
        return ctx.model(full, levels, x_0=full, **cond)[:, c:]


def _stop_at_eos(new: Tensor, done: Tensor, eos_id: int | None) -> Tensor:
    """The block's new tokens with rows already done all EOS and every token after a row's
    first EOS set to EOS; updates ``done`` (B,) in place."""
    if eos_id is None:
        return new
    new = torch.where(done.unsqueeze(-1), eos_id, new)
    seen = (new == eos_id).long().cumsum(-1) > 0
    done |= seen[:, -1]
    return torch.where(seen, eos_id, new)


def _block_callback(callback: Callback | None, block: int, before: int) -> Callback | None:
    if callback is None:
        return None
    return lambda rec: callback(dataclasses.replace(rec, block=block, nfe=before + rec.nfe))


@torch.no_grad()
def run_blocks(
    model: Any,
    make_predict: MakePredict,
    step: Step,
    grid: TimeGrid,
    prior: Prior,
    plan: BlockPlan,
    *,
    prompt: Int[Tensor, "b p"] | None = None,
    conds: Sequence[Mapping[str, Any]] = ({},),
    finish: Finish | None = None,
    callback: Callback | None = None,
    generator: Source = None,
    device: torch.device | None = None,
) -> BlockSample:
    """Generate ``plan.length`` tokens block by block (module docstring) from trusted parts.

    Per block: ``prior`` draws its b tokens (a prompt's partial block holds its tokens at the
    start, as a ``Prompt`` with clean positions), ``make_predict`` builds the block's predictor
    around the block's denoiser, and ``run(predict, step, grid, z, finish=...)`` denoises it;
    ``callback`` gets each ``StepRecord`` with its ``block`` and the NFE so far. ``conds``: the
    conditionings the model is called with (``cond`` and, under guidance, ``uncond``), one cache
    each. Randomness only from ``generator``, every draw (B, b) (a ``RowStream`` of length b).
    """
    b, batch_size = plan.block_size, plan.batch_size
    dev = device if device is not None else torch.device("cpu")
    tokens = prompt if prompt is not None else torch.zeros(batch_size, 0, dtype=torch.long)
    context = _Context(model, plan, tokens.long().to(dev), conds)
    done = torch.zeros(batch_size, dtype=torch.bool, device=dev)
    nfe: list[int] = []
    # Blocks sit at multiples of b by absolute position, or right after the prompt for a model
    # whose canvases follow its prompt (``blocks_follow_prompt``, e.g. DiffusionGemma's).
    origin = tokens.shape[1] if getattr(model, "blocks_follow_prompt", False) else 0
    while context.tokens.shape[1] < plan.length and not (plan.eos_id is not None and done.all()):
        have = context.tokens.shape[1]
        start = have - (have - origin) % b
        context.prepare(start)
        z = prior(batch_size, b, generator, dev)
        held = None
        if have > start:  # a prompt's partial block: clean tokens at level 0, held
            mask = torch.zeros(batch_size, b, dtype=torch.bool, device=dev)
            mask[:, : have - start] = True
            given = torch.zeros_like(z)
            given[:, : have - start] = context.tokens[:, start:]
            held = Prompt(given, mask)
            z = held(z)
        predict = make_predict(context.denoiser(start), None if held is None else held.mask)
        z = run(
            predict,
            step,
            grid,
            z,
            finish=finish,
            prompt=held,
            callback=_block_callback(callback, (start - origin) // b, sum(nfe)),
            generator=generator,
        )
        nfe.append(predict.calls)
        new = _stop_at_eos(z[:, have - start :], done, plan.eos_id)
        context.tokens = torch.cat([context.tokens, new], 1)
    out = context.tokens[:, : plan.length]
    if out.shape[1] < plan.length:  # every row stopped: the rest is padding
        assert plan.eos_id is not None
        out = torch.cat([out, out.new_full((batch_size, plan.length - out.shape[1]),
                                           plan.eos_id)], 1)  # fmt: skip
    return BlockSample(out, tuple(nfe), context.prefills)


def _setup(
    model: Any, batch_size: int, length: int, vocab_size: int, block_size: int,
    prompt: Tensor | None, kv_cache: bool, window: int | None, eos_id: int | None,
    needs_token_levels: bool, device: Any, generator: torch.Generator | None,
) -> tuple[BlockPlan, Tensor | None, torch.device]:  # fmt: skip
    """The checked plan, prompt and device of a block sample."""
    warn_if_training(model, "model")
    check_vocab_size(vocab_size)
    check_generator(generator)
    check_count(batch_size, "batch_size")
    check_block_model(model, block_size, needs_token_levels)
    if kv_cache and not (callable(getattr(model, "prefill", None))
                         and callable(getattr(model, "new_kv_cache", None))):  # fmt: skip
        raise ValueError(
            f"kv_cache=True needs a model with prefill(x, cache) and new_kv_cache(max_len); "
            f"{type(model).__name__} has not both: pass kv_cache=False to recompute the clean "
            "blocks at every call"
        )
    plan = BlockPlan(block_size, length, window if window is not None else model_window(model),
                     eos_id, kv_cache, batch_size)  # fmt: skip
    if eos_id is not None and eos_id >= vocab_size:
        raise ValueError(f"eos_id={eos_id} must be a token id in [0, {vocab_size})")
    if prompt is not None:
        if not isinstance(prompt, Tensor) or prompt.ndim != 2 or prompt.shape[0] != batch_size:
            got = tuple(prompt.shape) if isinstance(prompt, Tensor) else type(prompt).__name__
            raise ValueError(
                f"prompt must be the (B, P) = ({batch_size}, P) clean tokens that "
                f"start every row (a block sampler's prompt is a prefix), got {got}"
            )
        if prompt.shape[1] >= length:
            raise ValueError(
                f"prompt has P = {prompt.shape[1]} tokens, so length={length} "
                "leaves none to generate: length counts the prompt's tokens too"
            )
        check_tokens(prompt, vocab_size, "prompt")
    dev = torch.device(device) if device is not None else (
        prompt.device if prompt is not None else
        generator.device if generator is not None else torch.device("cpu"))  # fmt: skip
    return plan, None if prompt is None else prompt.long().to(dev), dev


def _conds(cond: Mapping[str, Any] | None, guidance: Guidance | None) -> list[Mapping[str, Any]]:
    return [cond or {}] + ([guidance.uncond] if guidance is not None else [])


def sample_uniform_blocks(
    model: Denoiser,
    batch_size: int,
    length: int,
    steps: int,
    *,
    schedule: Schedule,
    vocab_size: int,
    block_size: int,
    tail: Tail = "greedy",
    kappa: Kappa | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    time_grid: Sequence[float] | Tensor | None = None,
    prompt: Tensor | None = None,
    eos_id: int | None = None,
    kv_cache: bool = True,
    window: int | None = None,
    cond: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> Int[Tensor, "b l"]:
    """Sample (batch_size, length) tokens from a uniform-state block model, block by block
    (module docstring): per block z ~ Uniform(K)^b, ``steps`` steps of ``UniformStep`` (Ψ with
    ``kappa``), then the ``tail`` (NFE per block steps + 1 for "greedy" / "map", steps for
    "none"). ``prompt`` (B, P): clean tokens every row starts with (``length`` counts them).
    ``eos_id``, ``kv_cache``, ``window``: module docstring. The other keywords as in
    ``sample_uniform``; ``seed`` keys a ``RowStream`` of length b. Returns int64 ids (B, length).
    """
    plan, prompt, dev = _setup(model, batch_size, length, vocab_size, block_size, prompt,
                               kv_cache, window, eos_id, True, device, generator)  # fmt: skip
    step = UniformStep(kappa, Filter(top_k, top_p))
    guidance = Guidance.of(guidance_scale, uncond)
    grid = TimeGrid.build(schedule, steps, tail=tail, times=time_grid)
    finish = None if tail == "none" else Finish(tail, step.filter)

    def make_predict(denoiser: Denoiser, clean: Tensor | None) -> Predict:
        return Predictor(denoiser, vocab_size, cond=cond, guidance=guidance, clean=clean)

    def prior(rows: int, b: int, source: Source, where: torch.device) -> Tensor:
        return randint(vocab_size, rows * b, source, where).view(rows, b)

    with trusted():
        return run_blocks(model, make_predict, step, grid, prior, plan, prompt=prompt,
                          conds=_conds(cond, guidance), finish=finish,
                          callback=callback, generator=row_source(generator, seed, block_size),
                          device=dev).tokens  # fmt: skip


def sample_masked_blocks(
    model: Denoiser,
    batch_size: int,
    length: int,
    steps: int,
    *,
    schedule: Schedule,
    vocab_size: int,
    mask_id: int,
    block_size: int,
    tail: Tail = "greedy",
    time_conditioned: bool = False,
    cache: bool | None = None,
    remask: Callable[[float, float], float] | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    time_grid: Sequence[float] | Tensor | None = None,
    prompt: Tensor | None = None,
    eos_id: int | None = None,
    kv_cache: bool = True,
    window: int | None = None,
    cond: Mapping[str, Any] | None = None,
    guidance_scale: float | None = None,
    uncond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> Int[Tensor, "b l"]:
    """Sample (batch_size, length) tokens from a masked block model, block by block (module
    docstring): per block all masks, ``steps`` steps of ``MaskedStep`` (ReMDM with ``remask``),
    then the ``tail``; ``cache`` reuses x_hat inside a block while no token changed (default:
    exactly when not ``time_conditioned``). ``vocab_size`` counts the mask (the model's K).
    ``prompt``, ``eos_id``, ``kv_cache``, ``window`` as in ``sample_uniform_blocks``.
    """
    plan, prompt, dev = _setup(model, batch_size, length, vocab_size, block_size, prompt,
                               kv_cache, window, eos_id, False, device, generator)  # fmt: skip
    filt = Filter(top_k, top_p)
    step = MaskedStep(mask_id, remask, filt)
    if step.mask_id >= vocab_size:
        raise ValueError(f"mask_id={mask_id!r} is outside [0, vocab_size={vocab_size})")
    if prompt is not None and bool((prompt == mask_id).any()):
        raise ValueError(f"prompt holds the mask token {mask_id}: a prompt is clean tokens")
    if eos_id == mask_id:
        raise ValueError(f"eos_id={eos_id} is the mask id: pass the end-of-text token's id")
    guidance = Guidance.of(guidance_scale, uncond)
    grid = TimeGrid.build(schedule, steps, tail=tail, times=time_grid)
    finish = None if tail == "none" else Finish("greedy", filt, mask_id)
    reuse = not time_conditioned if cache is None else cache

    def make_predict(denoiser: Denoiser, clean: Tensor | None) -> Predict:
        return Predictor(denoiser, vocab_size, cond=cond, guidance=guidance,
                         time_conditioned=time_conditioned, cache=reuse,
                         convert=False)  # fmt: skip

    def prior(rows: int, b: int, source: Source, where: torch.device) -> Tensor:
        return torch.full((rows, b), mask_id, dtype=torch.long, device=where)

    with trusted():
        return run_blocks(model, make_predict, step, grid, prior, plan, prompt=prompt,
                          conds=_conds(cond, guidance), finish=finish,
                          callback=callback, generator=row_source(generator, seed, block_size),
                          device=dev).tokens  # fmt: skip
