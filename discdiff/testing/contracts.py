"""Contract checks for your own components (SPEC §9): each raises AssertionError with a message
saying what is wrong, and returns quietly (or with what it measured) when the component keeps
the contract. Not to be confused with ``discdiff.checks``, the library's input validation.

- ``check_schedule(schedule)``: alpha(0) = 1, alpha in [0, 1], monotone, alpha' against central
  finite differences, the inverse round trip;
- ``check_denoiser(model, vocab_size)``: shapes, dtypes, finite logits, determinism in eval
  mode, rows that do not interact, soft (B, L, K) inputs if accepted, per-token levels if
  declared, padding invariance if it takes a padding mask;
- ``check_sampler(step_or_sampler, toy, options)``: samples against the exact law
  (``discdiff.testing.exact``) of each option combination.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from discdiff.context import reads_token_levels
from discdiff.parameterization import PARAMETERIZATIONS
from discdiff.samplers import (
    CappedRemask,
    Filter,
    Finish,
    Guidance,
    Predictor,
    Prompt,
    TimeGrid,
    run,
)
from discdiff.schedules import LogLinearSchedule, Schedule
from discdiff.testing.exact import Options, exact_law
from discdiff.testing.laws import Agreement, assert_samples_follow, detectable_tv, sequence_ids
from discdiff.testing.toys import Toy

__all__ = ["check_denoiser", "check_sampler", "check_schedule"]

F64 = torch.float64


def _alpha(schedule: Any, t: Tensor) -> Tensor:
    return torch.as_tensor(schedule.alpha(t), dtype=F64)


def check_schedule(schedule: Any, *, points: int = 201, rtol: float = 1e-5) -> None:
    """Raise AssertionError unless ``schedule`` (``alpha(t)``, ``dalpha_dt(t)``, optionally
    ``inverse(alpha)``, on float64 tensors) keeps the contract on ``points`` times in [0, 1]:
    alpha(0) = 1; alpha in [0, 1]; alpha non-increasing; dalpha_dt <= 0 and within ``rtol``
    (relative to max |alpha'|) of a fourth-order central difference of alpha (h = 1e-4,
    truncation and rounding error near 1e-12) on [0.01, 0.99]; alpha(inverse(alpha(t))) =
    alpha(t) and, where |alpha'| > 1e-3, inverse(alpha(t)) = t, to 1e-9.
    """
    for method in ("alpha", "dalpha_dt"):
        if not callable(getattr(schedule, method, None)):
            raise AssertionError(f"the schedule has no {method}(t) method")
    t = torch.linspace(0, 1, points, dtype=F64)
    a = _alpha(schedule, t)
    if a.shape != t.shape or not bool(torch.isfinite(a).all()):
        raise AssertionError(f"alpha(t) must be finite with t's shape {tuple(t.shape)}")
    if abs(float(a[0]) - 1) > 1e-12:
        raise AssertionError(f"alpha(0) = {float(a[0])!r}, must be 1 (t = 0 is clean data)")
    if float(a.min()) < 0 or float(a.max()) > 1:
        i = int(torch.where((a < 0) | (a > 1))[0][0])
        raise AssertionError(f"alpha must lie in [0, 1], alpha({float(t[i]):.4g}) = "
                             f"{float(a[i])!r}")  # fmt: skip
    rises = (a[1:] - a[:-1]) > 1e-12
    if bool(rises.any()):
        i = int(torch.where(rises)[0][0])
        raise AssertionError(f"alpha must be non-increasing, it rises from {float(a[i])!r} at "
                             f"t = {float(t[i]):.4g} to {float(a[i + 1])!r} at "
                             f"t = {float(t[i + 1]):.4g}")  # fmt: skip
    _check_derivative(schedule, rtol)
    if callable(getattr(schedule, "inverse", None)):
        _check_inverse(schedule, t, a)


def _check_derivative(schedule: Any, rtol: float) -> None:
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    h = 1e-4
    f = lambda x: _alpha(schedule, x)  # noqa: E731
    fd = (-f(t + 2 * h) + 8 * f(t + h) - 8 * f(t - h) + f(t - 2 * h)) / (12 * h)
    d = torch.as_tensor(schedule.dalpha_dt(t), dtype=F64)
    if d.shape != t.shape or not bool(torch.isfinite(d).all()):
        raise AssertionError(f"dalpha_dt(t) must be finite with t's shape {tuple(t.shape)}")
    if bool((d > 0).any()):
        i = int(torch.where(d > 0)[0][0])
        raise AssertionError(f"dalpha_dt must be <= 0, dalpha_dt({float(t[i]):.4g}) = "
                             f"{float(d[i])!r}")  # fmt: skip
    gap = (d - fd).abs()
    scale = max(float(fd.abs().max()), 1e-12)
    i = int(gap.argmax())
    if float(gap[i]) > rtol * scale:
        raise AssertionError(
            f"dalpha_dt disagrees with the finite difference of alpha: at t = {float(t[i]):.4g} "
            f"dalpha_dt = {float(d[i])!r}, the central difference {float(fd[i])!r} (off by "
            f"{float(gap[i] / max(abs(float(fd[i])), 1e-300)):.3%}, tolerance {rtol:g} of "
            f"max |alpha'| = {scale:.4g})"
        )


def _check_inverse(schedule: Any, t: Tensor, a: Tensor) -> None:
    back = torch.as_tensor(schedule.inverse(a), dtype=F64)
    again = _alpha(schedule, back)
    i = int((again - a).abs().argmax())
    if not bool(torch.isfinite(again).all()) or float((again - a).abs()[i]) > 1e-9:
        raise AssertionError(f"inverse is not alpha's inverse: alpha(inverse(alpha(t))) = "
                             f"{float(again[i])!r} at t = {float(t[i]):.4g}, alpha(t) = "
                             f"{float(a[i])!r}")  # fmt: skip
    steep = torch.as_tensor(schedule.dalpha_dt(t), dtype=F64).abs() > 1e-3
    gap = torch.where(steep, (back - t).abs(), 0.0)
    i = int(gap.argmax())
    if float(gap[i]) > 1e-9:
        raise AssertionError(f"inverse(alpha(t)) = {float(back[i])!r} at t = {float(t[i]):.4g}: "
                             "the inverse does not return t")  # fmt: skip


def _logits_of(model: Callable[..., Tensor], what: str, *args: Any, **kw: Any) -> Tensor:
    try:
        out = model(*args, **kw)
    except Exception as err:  # the contract: say which call the model failed on
        raise AssertionError(f"the denoiser raised {type(err).__name__}: {err} on {what}") from err
    if not isinstance(out, Tensor):
        raise AssertionError(f"the denoiser returned {type(out).__name__} on {what}, not a tensor "
                             "of logits (B, L, K)")  # fmt: skip
    return out


def _close(a: Tensor, b: Tensor, atol: float, what: str) -> None:
    gap = (a.to(F64) - b.to(F64)).abs()
    gap = torch.where(torch.isinf(a) & (a == b), 0.0, gap)  # the same -inf class is no gap
    bound = atol * (1 + b.to(F64).abs().nan_to_num(posinf=0.0, neginf=0.0))
    if not bool((gap <= bound).all()):
        worst = float((gap - bound).max())
        index = tuple(int(i) for i in torch.nonzero(gap > bound)[0])
        raise AssertionError(f"{what}: the logits differ by up to {float(gap.max()):.3g} "
                             f"(first at index {index}; tolerance {atol:g}, over by "
                             f"{worst:.3g})")  # fmt: skip


def _check_logits(out: Tensor, shape: tuple[int, ...], mask_id: int | None, what: str) -> None:
    if tuple(out.shape) != shape:
        raise AssertionError(f"the denoiser returned shape {tuple(out.shape)} on {what}, expected "
                             f"(B, L, K) = {shape}")  # fmt: skip
    if not out.dtype.is_floating_point:
        raise AssertionError(f"the denoiser returned {out.dtype} logits on {what}: a float dtype")
    bad = torch.isnan(out) | (out == torch.inf)
    if mask_id is None:
        bad = bad | torch.isinf(out)
    else:
        rest = torch.ones(out.shape[-1], dtype=torch.bool, device=out.device)
        rest[mask_id] = False
        bad = bad | (torch.isinf(out) & rest)
    if bool(bad.any()):
        index = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise AssertionError(f"the denoiser returned a non-finite logit {float(out[index])} at "
                             f"{index} on {what}")  # fmt: skip


def _takes(model: Any, name: str) -> bool:
    target = model.forward if isinstance(model, nn.Module) else model
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def check_denoiser(
    model: Callable[..., Tensor],
    vocab_size: int,
    *,
    length: int = 8,
    batch_size: int = 3,
    mask_id: int | None = None,
    cond: Mapping[str, Any] | None = None,
    soft: bool | None = None,
    padding: str | None = "padding_mask",
    atol: float = 1e-4,
    seed: int = 0,
) -> None:
    """Raise AssertionError unless ``model(z_t, sigma, **cond)`` keeps the denoiser contract:

    logits (B, L, ``vocab_size``) of a float dtype, finite (the masked process's ``mask_id``
    column may be -inf); the same logits on a second call (eval mode: an ``nn.Module`` is put in
    eval mode for the check and restored); row b's logits do not depend on the other rows; with
    ``soft`` (None: if the model accepts them) soft inputs (B, L, K): one-hot rows give the ids'
    logits; if it declares ``reads_token_levels``, sigma (B, L) equal along L gives the (B,)
    logits; if it takes the keyword ``padding`` (a (B, L) bool mask, True at real tokens), the
    logits at real positions do not change when the padded positions' tokens do. Tolerances:
    ``atol`` (1 + |logit|). ``cond``: the model's conditioning (tensors with a leading (B,)).

    What the adapters and samplers read is checked too: a declared ``parameterization`` is
    "x_hat" or "posterior"; a block model (an integer ``block_size``, SPEC §10) is checked on
    its own calls instead (``_block_checks``): the training call ``model(z_t, sigma (B, L),
    x_0=x_0)`` over three blocks (shape, determinism, rows apart), the block mask (a block's
    logits ignore the other blocks' noisy tokens and the clean copy of itself and later blocks),
    and, with ``new_kv_cache`` / ``prefill``, the cached call equal to the training call.
    """
    g = torch.Generator().manual_seed(seed)
    parameterization = getattr(model, "parameterization", "x_hat")
    if parameterization not in PARAMETERIZATIONS:
        raise AssertionError(
            f"the denoiser declares parameterization={parameterization!r}; the samplers and "
            f"losses read one of {PARAMETERIZATIONS} (SPEC §11)"
        )
    block = getattr(model, "block_size", None)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            if isinstance(block, int) and not isinstance(block, bool):
                _block_checks(model, vocab_size, block, batch_size, mask_id, dict(cond or {}),
                              atol, g)  # fmt: skip
                return
            _denoiser_checks(model, vocab_size, length, batch_size, mask_id, dict(cond or {}),
                             soft, padding, atol, g)  # fmt: skip
    finally:
        if was_training:
            assert isinstance(model, nn.Module)
            model.train()


def _rows(cond: dict[str, Any], rows: slice | Tensor) -> dict[str, Any]:
    return {k: v[rows] if isinstance(v, Tensor) else v for k, v in cond.items()}


def _denoiser_checks(model: Callable[..., Tensor], k: int, length: int, b: int,
                     mask_id: int | None, cond: dict[str, Any], soft: bool | None,
                     padding: str | None, atol: float, g: torch.Generator) -> None:  # fmt: skip
    z = torch.randint(0, k, (b, length), generator=g)
    sigma = torch.rand(b, generator=g) * 4 + 0.05
    what = f"ids (B, L) = {(b, length)}, sigma (B,)"
    out = _logits_of(model, what, z, sigma, **cond)
    _check_logits(out, (b, length, k), mask_id, what)
    _close(_logits_of(model, what, z, sigma, **cond), out, atol,
           "two calls on the same input in eval mode (not deterministic)")  # fmt: skip
    alone = _logits_of(model, "one row", z[1:2], sigma[1:2], **_rows(cond, slice(1, 2)))
    _close(alone, out[1:2], atol, "row 1 alone and in its batch (rows interact)")
    if reads_token_levels(model):
        levels = _logits_of(model, "sigma (B, L)", z, sigma[:, None].expand(b, length), **cond)
        _close(levels, out, atol, "sigma (B, L) equal along L and sigma (B,) (per-token levels)")
    if soft is not False:
        _check_soft(model, z, sigma, cond, out, k, soft, atol)
    if padding is not None and _takes(model, padding):
        _check_padding(model, z, sigma, cond, k, padding, mask_id, atol, g)


def _block_checks(model: Callable[..., Tensor], k: int, bs: int, b: int, mask_id: int | None,
                  cond: dict[str, Any], atol: float, g: torch.Generator) -> None:  # fmt: skip
    length = 3 * bs
    z, x = (torch.randint(0, k, (b, length), generator=g) for _ in range(2))
    sigma = torch.rand(b, length, generator=g) * 4 + 0.05
    what = f"the block model's training call (B, L) = {(b, length)}, block_size={bs}, x_0="
    out = _logits_of(model, what, z, sigma, x_0=x, **cond)
    _check_logits(out, (b, length, k), mask_id, what)
    _close(_logits_of(model, what, z, sigma, x_0=x, **cond), out, atol,
           "two training calls on the same input in eval mode (not deterministic)")  # fmt: skip
    alone = _logits_of(model, "one row", z[1:2], sigma[1:2], x_0=x[1:2], **_rows(cond, slice(1, 2)))
    _close(alone, out[1:2], atol, "row 1 alone and in its batch (rows interact)")
    mid = slice(bs, 2 * bs)  # the middle block reads its own noisy tokens and the clean block 0
    z2, x2 = z.clone(), x.clone()
    z2[:, :bs], z2[:, 2 * bs :] = (z[:, :bs] + 1) % k, (z[:, 2 * bs :] + 1) % k
    x2[:, bs:] = (x[:, bs:] + 1) % k
    moved = _logits_of(model, what, z2, sigma, x_0=x2, **cond)
    _close(moved[:, mid], out[:, mid], atol, "block 1's logits when only other blocks' noisy "
           "tokens and the clean copy of blocks >= 1 change (the block mask leaks)")  # fmt: skip
    if callable(getattr(model, "prefill", None)) and callable(getattr(model, "new_kv_cache", None)):
        cache = model.new_kv_cache()
        model.prefill(x[:, : 2 * bs], cache, **cond)
        got = _logits_of(model, "the cached call", z[:, 2 * bs :], sigma[:, 2 * bs :],
                         kv_cache=cache, **cond)  # fmt: skip
        _close(got, out[:, 2 * bs :], atol,
               "the cached call on block 2 after prefill(x_0 blocks 0, 1) and the training call")


def _check_soft(model: Callable[..., Tensor], z: Tensor, sigma: Tensor, cond: dict[str, Any],
                out: Tensor, k: int, soft: bool | None, atol: float) -> None:  # fmt: skip
    probs = torch.nn.functional.one_hot(z, k).to(torch.float32)
    try:
        got = model(probs, sigma, **cond)
    except Exception as err:
        if soft:  # declared: a failure is a broken contract
            raise AssertionError(f"the denoiser refused soft inputs (B, L, K): {err}") from err
        return  # not declared, not accepted: nothing to check
    if not isinstance(got, Tensor) or got.shape != out.shape:
        raise AssertionError(f"soft inputs (B, L, K) gave {getattr(got, 'shape', got)}, "
                             f"the ids {tuple(out.shape)}")  # fmt: skip
    _close(got, out, atol, "one-hot soft inputs (B, L, K) and the ids")


def _check_padding(model: Callable[..., Tensor], z: Tensor, sigma: Tensor, cond: dict[str, Any],
                   k: int, padding: str, mask_id: int | None, atol: float,
                   g: torch.Generator) -> None:  # fmt: skip
    b, length = z.shape
    real_len = torch.tensor([max(length - 1 - 2 * i, 1) for i in range(b)])
    real = torch.arange(length)[None] < real_len[:, None]  # (B, L): True at real tokens
    other = torch.where(real, z, (z + 1 + torch.randint(0, k - 1, z.shape, generator=g)) % k)
    what = f"a padded batch ({padding}= (B, L) bool)"
    first = _logits_of(model, what, z, sigma, **cond, **{padding: real})
    second = _logits_of(model, what, other, sigma, **cond, **{padding: real})
    _check_logits(first, (b, length, k), mask_id, what)
    keep = real.unsqueeze(-1).expand_as(first)
    _close(second[keep], first[keep], atol,
           f"real positions when only the padded tokens change ({padding} ignored?)")  # fmt: skip


def _is_sampler(obj: Any) -> bool:
    """A sampler takes ``batch_size`` (the signature of ``sample_uniform`` / ``sample_masked``);
    anything else is a step ``step(prediction, z, interval, generator)``."""
    try:
        return "batch_size" in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False


def _prompt(toy: Toy, opts: Options, n: int) -> Prompt | None:
    values, mask = opts.prompt_mask(toy.length)
    if not bool(mask.any()):
        return None
    return Prompt(values.expand(n, -1).clone(), mask.expand(n, -1).clone())


def _conditioning(toy: Toy, opts: Options, n: int) -> tuple[dict | None, dict | None]:
    if opts.label is None and toy.classes == 1:
        return None, None
    label = toy.null_label if opts.label is None else opts.label
    uncond = None if opts.guidance_scale is None else {"label": torch.full((n,), toy.null_label)}
    return {"label": torch.full((n,), label)}, uncond


def _draw_sampler(sampler: Callable[..., Tensor], toy: Toy, opts: Options, n: int,
                  schedule: Schedule, g: torch.Generator) -> Tensor:  # fmt: skip
    """n rows from a sampler with the keywords of ``sample_uniform`` / ``sample_masked``."""
    k = toy.vocab_size
    kw: dict[str, Any] = {"schedule": schedule, "tail": opts.tail, "generator": g}
    if opts.process == "uniform":
        kw.update(vocab_size=k)
        if opts.kappa is not None:
            kw["kappa"] = opts.kappa
    else:
        kw.update(vocab_size=k + 1, mask_id=k)
        if opts.remask is not None:
            kw["remask"] = CappedRemask(schedule, opts.remask)
    kw.update({name: getattr(opts, name) for name in ("top_k", "top_p")
               if getattr(opts, name) is not None})  # fmt: skip
    prompt = _prompt(toy, opts, n)
    if prompt is not None:
        kw.update(prompt=prompt.tokens, prompt_mask=prompt.mask)
    cond, uncond = _conditioning(toy, opts, n)
    if cond is not None:
        kw["cond"] = cond
    if uncond is not None:
        kw.update(guidance_scale=opts.guidance_scale, uncond=uncond)
    return sampler(toy.denoiser(opts.process), n, toy.length, opts.steps, **kw)


def _draw_step(step: Callable[..., Tensor], toy: Toy, opts: Options, n: int,
               schedule: Schedule, g: torch.Generator) -> Tensor:  # fmt: skip
    """n rows from the library's loop ``run`` around ``step``: the toy's denoiser, the options'
    prompt, guidance and tail (the step itself carries kappa, remasking and its filter)."""
    k, masked = toy.vocab_size, opts.process == "masked"
    prompt = _prompt(toy, opts, n)
    cond, uncond = _conditioning(toy, opts, n)
    guidance = None
    if uncond is not None and opts.guidance_scale is not None:
        guidance = Guidance(opts.guidance_scale, uncond)
    clean = None if masked or prompt is None else prompt.mask
    denoiser: Any = toy.denoiser(opts.process)  # a Denoiser whose only conditioning is label
    predict = Predictor(denoiser, k + masked, cond=cond, guidance=guidance,
                        clean=clean, time_conditioned=not masked)  # fmt: skip
    if masked:
        z = torch.full((n, toy.length), k)
    else:
        z = torch.randint(0, k, (n, toy.length), generator=g)
    z = z if prompt is None else prompt(z)
    filt = Filter(opts.top_k, opts.top_p)
    finish = None
    if opts.tail != "none":
        finish = Finish("greedy" if masked else opts.tail, filt, k if masked else None)
    grid = TimeGrid.build(schedule, opts.steps, tail=opts.tail)
    return run(predict, step, grid, z, finish=finish, prompt=prompt, generator=g)


def samples_needed(law: Tensor, tv: float, alpha: float, power: float) -> int:
    """The draws for which ``assert_samples_follow`` rejects every law at TV >= ``tv`` from
    ``law`` with probability >= ``power`` (``detectable_tv`` falls as 1 / sqrt(n))."""
    return math.ceil(detectable_tv(law, 1, alpha, power) ** 2 / tv**2)


def check_sampler(
    step_or_sampler: Callable[..., Tensor],
    toy: Toy,
    options: Options | Iterable[Options] = Options(),
    *,
    schedule: Schedule | None = None,
    tv: float = 0.05,
    n: int | None = None,
    alpha: float = 1e-4,
    power: float = 0.99,
    seed: int = 0,
) -> list[Agreement]:
    """Raise AssertionError unless the samples of ``step_or_sampler`` on ``toy`` follow the exact
    law (``exact_law``) of each option combination in ``options``.

    ``step_or_sampler``: a sampler with the keywords of ``sample_uniform`` / ``sample_masked``
    (recognised by its ``batch_size`` parameter; it receives the options as keywords), or a step
    ``step(prediction, z, interval, generator) -> z_s`` (``discdiff.samplers.Step``) run by
    ``discdiff.samplers.run`` with the toy's denoiser, the options' prompt, guidance and tail;
    the step carries its own kappa, remasking and filter, which must be those of the options.
    Each combination draws ``n`` rows (default: enough to reject a law at TV >= ``tv`` with
    probability ``power``) and calls ``assert_samples_follow`` at level ``alpha``; the message
    names the combination. Returns the ``Agreement`` of each.
    """
    schedule = LogLinearSchedule() if schedule is None else schedule
    draw = _draw_sampler if _is_sampler(step_or_sampler) else _draw_step
    found = []
    for i, opts in enumerate([options] if isinstance(options, Options) else list(options)):
        law = exact_law(toy, opts, schedule=schedule)
        rows = n if n is not None else samples_needed(law, tv, alpha, power)
        g = torch.Generator().manual_seed(seed + i)
        x = draw(step_or_sampler, toy, opts, rows, schedule, g)
        _, mask = opts.prompt_mask(toy.length)
        ids = sequence_ids(x[:, ~mask].cpu(), toy.vocab_size)
        found.append(assert_samples_follow(ids, law, alpha=alpha, power=power,
                                           what=f"samples of ({opts.describe()})"))  # fmt: skip
    return found
