"""The diffusion objects: a forward process, a schedule and a loss around any denoiser.

``Diffusion`` holds what every diffusion object shares: a ``discdiff.processes.Process`` (the
forward process and the per-token terms of its bound), a schedule, the smallest time ``eps``,
the checked training loss, the NELBO (also conditional on clean positions), sampling and the
dict round trip. ``UniformDiffusion`` is Duo: uniform-state discrete diffusion, optionally
trained first with the Gaussian curriculum (relaxed argmax latents; Concepts §4), then on the
plain discrete process. ``MaskedDiffusion`` is MDLM (absorbing state, SUBS parameterisation),
the usual baseline. Either becomes a block diffusion with ``block_size=b`` (``discdiff.blocks``:
the block NELBO, one time per block, a block model; ``sample`` then generates block by block over
a cache of the clean blocks, ``discdiff.samplers.blocks``).

Notation: ``x_0`` clean tokens (B, L); ``z_t`` noisy tokens; ``alpha_t`` the discrete signal level;
``dalpha_dt`` its time derivative; ``sigma = -log(alpha_t)`` the noise level handed to the
denoiser, shape (B,).

Every training loss (these and the distillers') is ``loss(denoiser, x_0, step=0, *, ...,
mask=None, reduction="none")``: ``mask`` (B, L) True at the tokens that count, ``reduction``
"none" (per token, 0 at ignored ones), "sum" or "mean" over the tokens that count. A denoiser
that offers ``discdiff.denoise.FusedHead`` (the DiT) may have its loss computed from its last
hidden state and output projection (``discdiff.losses.fused``), never holding the (B, L, K)
logits, equal to the logits' loss to rounding: ``fused=None`` where it pays
(``discdiff.losses.dispatch``; ask for ``reduction="mean"``, not ``loss(...).mean()``, so that it
can), True / False force either. The validation bounds (``nelbo``) always take the logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from discdiff import blocks, config, samplers
from discdiff.checks import check_generator, check_schedule, check_x0
from discdiff.context import check_clean_mask, require_token_levels
from discdiff.curriculum import GaussianCurriculum
from discdiff.duality import DualSchedule
from discdiff.losses._common import Reduction, check_mask, check_reduction
from discdiff.objective import Bound, ObjectiveDefaults
from discdiff.processes import NELBO, MaskedProcess, Process, UniformProcess
from discdiff.processes.base import column
from discdiff.schedules import LogLinearSchedule, Schedule
from discdiff.timesteps import antithetic_times
from discdiff.typing import Denoiser, as_float, check_count, check_range, trusted

__all__ = ["NELBO", "Diffusion", "GaussianCurriculum", "MaskedDiffusion", "UniformDiffusion"]


def _check_x0(x_0: Any, vocab_size: int) -> Tensor:
    """The one check of the clean tokens on a public call; the layers below trust them. Any
    integer dtype in, int64 out (what the processes and the denoiser get)."""
    return check_x0(x_0, vocab_size)


def _check_schedule(schedule: Any) -> Schedule:
    """A schedule object (alpha(t), dalpha_dt(t)), e.g. ``LogLinearSchedule()``; not a name.
    The same rule as the samplers' (``discdiff.checks.check_schedule``)."""
    return check_schedule(schedule)


def _draw_times(
    x_0: Tensor, eps: float, t: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    check_generator(generator)
    if t is None:
        # Antithetic over this batch; for data-parallel training pass t from
        # discdiff.timesteps.AntitheticTimes (stratified over the global batch).
        return antithetic_times(x_0.shape[0], eps=eps, generator=generator, device=x_0.device)
    if not isinstance(t, Tensor) or t.shape != (x_0.shape[0],):
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"t must have shape (B,) = ({x_0.shape[0]},), got {got}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"t must hold float times in [0, 1], got dtype {t.dtype}")
    check_range(t, "t", 0.0, 1.0)
    return t.to(x_0.device)


def _check_step(step: Any) -> int:
    return check_count(step, "step", minimum=0)


def _check_eps(eps: Any) -> float:
    eps = as_float(eps, "eps")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    return eps


class Diffusion(ObjectiveDefaults):
    """What the diffusion objects share: a ``Process``, a schedule alpha_t and the smallest
    time ``eps``, and from them the training loss, the validation bound, sampling and the dict
    round trip. Subclasses name their settings in ``_fields`` (the ``__init__`` keywords that
    ``to_dict`` writes, in order) and may override ``_loss`` (the uniform curriculum does).
    """

    _fields: ClassVar[tuple[str, ...]]

    def __init__(
        self, process: Process, schedule: Schedule | None, eps: float,
        block_size: int | None = None,
    ) -> None:  # fmt: skip
        self.process = process
        self.block_size = blocks.check_block_size(block_size)
        self.vocab_size = process.vocab_size
        self.model_vocab_size = process.model_vocab_size
        self.eps = _check_eps(eps)
        self.schedule: Schedule = (
            _check_schedule(schedule) if schedule is not None else LogLinearSchedule(eps)
        )

    def _settings(self) -> tuple[str, ...]:
        """The ``_fields`` that describe this object: ``block_size`` only when set, so that an
        ordinary diffusion reads and saves as before block diffusion existed."""
        return tuple(k for k in self._fields if k != "block_size" or self.block_size is not None)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._settings())
        return f"{type(self).__name__}({settings})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings with the schedule (and curriculum) nested: ``{"type":
        "UniformDiffusion", "vocab_size": K, "schedule": {"type": "LogLinearSchedule", ...},
        ...}``, one key per ``__init__`` keyword (see ``discdiff.config``); ``block_size`` only
        for a block diffusion."""
        settings = {k: config.encode(getattr(self, k)) for k in self._settings()}
        return {"type": type(self).__name__, **settings}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """The diffusion ``to_dict`` describes."""
        fields = config.check_keys(cls, data, set(cls._fields))
        return cls(**{k: config.decode(v) for k, v in fields.items()})

    def _times(
        self, denoiser: Any, x_0: Tensor, t: Tensor | None, generator: torch.Generator | None
    ) -> Tensor:
        """The checked times: (B,), or (B, n) one per block for a block diffusion (whose model
        must be a block model of the same block size)."""
        if self.block_size is None:
            return _draw_times(x_0, self.eps, t, generator)
        check_generator(generator)
        blocks.check_block_model(denoiser, self.block_size, self.process.needs_token_levels)
        return blocks.block_times(x_0, self.block_size, self.eps, t, generator)

    def _levels(self, values: Tensor) -> Tensor:
        """A level per sequence (B,) -> (B, 1), or per block (B, n) -> per token (B, L)."""
        if self.block_size is None:
            return column(values)
        return blocks.per_token(values, self.block_size)

    def _integrand(self, *args: Any, **kw: Any) -> Tensor:
        """The process's integrand, from one training call of a block model for a block
        diffusion (``discdiff.blocks.block_integrand``)."""
        if self.block_size is None:
            return self.process.integrand(*args, **kw)
        return blocks.block_integrand(self.process, *args, **kw)

    def checked_clean_mask(
        self, denoiser: Any, clean_mask: Any, x_0: Tensor, fix: str
    ) -> Tensor | None:
        """``clean_mask`` (B, L) bool checked and on ``x_0``'s device, or None. A process that
        tells clean context by per-token levels needs a denoiser that reads them; ``fix`` is
        the way out the error names besides that."""
        if clean_mask is None:
            return None
        check_clean_mask(clean_mask, x_0.shape)
        if self.process.needs_token_levels:
            require_token_levels(denoiser, "clean_mask", fix)
        return clean_mask.to(x_0.device)

    def _loss_options(
        self, denoiser: Any, x_0: Tensor, fused: bool | None, mask: Tensor | None,
        reduction: Any, clean_mask: Tensor | None,
    ) -> dict[str, Any]:  # fmt: skip
        """The checked options of a loss; clean positions leave the loss's ``mask``."""
        check_mask(mask, x_0.shape)
        options = {"fused": fused, "mask": mask, "reduction": check_reduction(reduction)}
        clean = self.checked_clean_mask(denoiser, clean_mask, x_0, "or train without clean context")
        if clean is not None:
            options["mask"] = ~clean if mask is None else mask & ~clean
            options["clean"] = clean
        return options

    def loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        step: int = 0,
        *,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
        fused: bool | None = None,
        mask: Tensor | None = None,
        reduction: Reduction = "none",
        clean_mask: Tensor | None = None,
    ) -> Tensor:
        """The training loss at training step ``step``: per token (B, L), or reduced (0-d).

        ``t`` (B,) fixes the times; by default they are antithetic over the batch
        (``AntitheticTimes`` makes them antithetic over a data-parallel global batch). With
        ``block_size`` one time per block, (B, n) (or (B,) for every block of a row), by
        default antithetic over the batch and the blocks, and the denoiser must be a block
        model (``discdiff.blocks``) called as ``model(z_t, sigma (B, L), x_0=x_0, **cond)``.
        ``cond`` is the denoiser's keyword conditioning. ``mask`` (B, L) bool, True at the
        tokens that count (None: all; not the mask token); ``reduction`` "none" (0 at ignored
        tokens), "sum" or "mean" over the tokens that count. ``fused``: None picks the path by
        ``discdiff.losses.dispatch``'s rule; True computes the loss from the denoiser's hidden
        state and output projection when it offers them (``FusedHead``), never holding the
        logits; False from its logits.

        ``clean_mask`` (B, L) bool: positions held clean as context (a prompt, the sides of a
        gap to fill): z_t = x_0 there and no loss there. The uniform process shows them to the
        denoiser at level 0 (per-token levels: the denoiser must declare
        ``reads_token_levels``); the masked process simply never masks them. A model trained
        with such rows (``discdiff.context.random_clean_mask``) samples prompts exactly.
        """
        x_0 = self.process.check_data(_check_x0(x_0, self.vocab_size))
        step = _check_step(step)
        t = self._times(denoiser, x_0, t, generator)
        kw = self._loss_options(denoiser, x_0, fused, mask, reduction, clean_mask)
        with trusted():  # checked at the door: the layers below trust their inputs
            return self._loss(denoiser, x_0, t, step, generator, cond, **kw)

    def _loss(
        self, denoiser: Denoiser, x_0: Tensor, t: Tensor, step: int,
        generator: torch.Generator | None, cond: Mapping[str, Any] | None,
        **kw: Any,  # fused, mask, reduction, clean
    ) -> Tensor:  # fmt: skip
        return self._discrete_loss(denoiser, x_0, t, generator, cond, **kw)

    def _discrete_loss(
        self, denoiser: Denoiser, x_0: Tensor, t: Tensor, generator: torch.Generator | None,
        cond: Mapping[str, Any] | None, **kw: Any,  # fused, mask, reduction, clean
    ) -> Tensor:  # fmt: skip
        """The continuous-time NELBO integrand of the process at times ``t`` (B,), or (B, n)
        one per block."""
        t = t.to(torch.promote_types(t.dtype, torch.float32))
        alpha_t = self._levels(self.schedule.alpha(t))
        dalpha_t = self._levels(self.schedule.dalpha_dt(t))
        z_t = self.process.corrupt(x_0, alpha_t, generator=generator, clean=kw.get("clean"))
        return self._integrand(denoiser, z_t, x_0, z_t, alpha_t, dalpha_t, cond, **kw)

    @torch.no_grad()
    def nelbo(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        *,
        t: Tensor | None = None,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
        clean_mask: Tensor | None = None,
    ) -> NELBO:
        """A validation bound on -log p(x_0) per token (see ``NELBO``), always on the discrete
        process; with ``clean_mask`` (B, L) the bound on -log p(x_free | x_clean), the clean
        positions held as ``loss(..., clean_mask=)`` holds them and 0 in every term
        (``discdiff.processes.base``).

        One Monte Carlo sample of t per sequence (antithetic over the batch, or ``t`` (B,));
        with ``block_size`` one per block (``t`` (B, n)) and the block NELBO
        (``discdiff.blocks.block_nelbo``: every term per block, from a block model);
        average over a validation set for the bound ``exp(sum(total) / n_tokens)`` on
        perplexity (``discdiff.metrics`` reduces it across ranks).
        """
        x_0 = self.process.check_data(_check_x0(x_0, self.vocab_size))
        t = self._times(denoiser, x_0, t, generator)
        clean = self.checked_clean_mask(denoiser, clean_mask, x_0, "or drop clean_mask")
        kw: dict[str, Any] = {"generator": generator, "cond": cond, "clean": clean}
        with trusted():
            if self.block_size is not None:
                return blocks.block_nelbo(self.process, denoiser, x_0, t, self.schedule,
                                          self.eps, self.block_size, **kw)  # fmt: skip
            return self.process.nelbo(denoiser, x_0, t, self.schedule, self.eps, **kw)

    def bound(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        *,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
        mask: Tensor | None = None,
        clean_mask: Tensor | None = None,
    ) -> Bound:
        """``nelbo``'s bound as the training loop's ``Bound`` (``discdiff.objective``), with the
        tokens that count (``mask`` (B, L), None: all)."""
        return self.nelbo(denoiser, x_0, generator=generator, cond=cond,
                          clean_mask=clean_mask).bound(mask)  # fmt: skip

    def phase(self, step: int) -> str:
        """The training phase of step ``step``, for logs: the process's name here; the uniform
        diffusion names its curriculum."""
        del step
        return self.process.name


class UniformDiffusion(Diffusion):
    """Duo: uniform-state discrete diffusion with an optional Gaussian curriculum.

    Args:
        vocab_size: K, the number of token ids (the denoiser returns K logits).
        schedule: the discrete schedule alpha_t used after the curriculum and for validation.
        curriculum: a ``GaussianCurriculum`` for the first training phase, or None.
        eps: the smallest time; t is drawn on [eps, 1].
        block_size: None (one diffusion over the sequence) or b, a block diffusion over
            blocks of b tokens with a block model of the same b (``discdiff.blocks``).
        objective: what ``loss`` trains: "nelbo" (Duo, UDLM: the bound, whose optimum is x_hat)
            or "cross_entropy" (-log p_theta(x_0 | z_t), the recipe of production uniform-state
            models, whose optimum is the posterior; NOT a bound: unweighted in t). Either
            trains a denoiser of either ``parameterization``: the logits are converted exactly
            (``discdiff.parameterization``) to what the objective reads. ``nelbo`` is the bound
            for both.
    """

    _fields = ("vocab_size", "schedule", "curriculum", "eps", "objective", "block_size")

    def __init__(
        self,
        vocab_size: int,
        schedule: Schedule | None = None,
        curriculum: GaussianCurriculum | None = None,
        eps: float = 1e-3,
        objective: Literal["nelbo", "cross_entropy"] = "nelbo",
        block_size: int | None = None,
    ) -> None:
        if objective not in ("nelbo", "cross_entropy"):
            raise ValueError(f"objective must be 'nelbo' (the bound) or 'cross_entropy' (the "
                             f"posterior's objective, not a bound), got {objective!r}")  # fmt: skip
        if objective == "cross_entropy" and block_size is not None:
            raise ValueError("objective='cross_entropy' trains one diffusion over the sequence; "
                             "a block diffusion (block_size) trains its NELBO")  # fmt: skip
        self.objective = objective
        process = UniformProcess(vocab_size)
        if curriculum is not None and not isinstance(curriculum, GaussianCurriculum):
            kind = type(curriculum).__name__
            raise TypeError(f"curriculum must be a GaussianCurriculum or None, got {kind}")
        super().__init__(process, schedule, eps, block_size)
        self.curriculum = curriculum
        self.curriculum_schedule: DualSchedule | None = (
            None if curriculum is None else curriculum.schedule(vocab_size)
        )

    def _loss(
        self, denoiser: Denoiser, x_0: Tensor, t: Tensor, step: int,
        generator: torch.Generator | None, cond: Mapping[str, Any] | None, **kw: Any,
    ) -> Tensor:  # fmt: skip
        """The curriculum's loss while it is active, the discrete process's otherwise."""
        if self.curriculum is not None and self.curriculum.active(step):
            return self._curriculum_loss(denoiser, x_0, t, step, generator, cond, **kw)
        return self._discrete_loss(denoiser, x_0, t, generator, cond, **kw)

    def discrete_loss(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        t: Tensor,
        *,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
        fused: bool | None = None,
        mask: Tensor | None = None,
        reduction: Reduction = "none",
        clean_mask: Tensor | None = None,
    ) -> Tensor:
        """The continuous-time uniform NELBO integrand at times ``t`` (B,), per token (B, L) or
        reduced; ``fused``, ``mask``, ``reduction`` and ``clean_mask`` as in ``loss``."""
        x_0 = self.process.check_data(_check_x0(x_0, self.vocab_size))
        t = self._times(denoiser, x_0, t, generator)
        kw = self._loss_options(denoiser, x_0, fused, mask, reduction, clean_mask)
        with trusted():
            return self._discrete_loss(denoiser, x_0, t, generator, cond, **kw)

    def _curriculum_loss(
        self, denoiser: Denoiser, x_0: Tensor, t: Tensor, step: int,
        generator: torch.Generator | None, cond: Mapping[str, Any] | None,
        **kw: Any,  # fused, mask, reduction, clean
    ) -> Tensor:  # fmt: skip
        """The uniform NELBO at z_t = argmax w_t, the denoiser seeing the relaxed latent; for a
        block diffusion each block at its own Gaussian level (the block model reads the relaxed
        noisy copy and the clean ids x_0)."""
        assert self.curriculum is not None and self.curriculum_schedule is not None
        schedule = self.curriculum_schedule
        t = t.to(torch.float32)
        alpha_tilde = self._levels(schedule.alpha_tilde(t))  # per block for a block diffusion
        alpha_t = self._levels(schedule.alpha(t))
        dalpha_t = self._levels(schedule.dalpha_dt(t))
        dtype = self.curriculum.input_dtype(denoiser)  # the soft input's dtype: the model's
        relaxed, z_t = self.curriculum.relaxed_input(
            x_0, alpha_tilde, step, self.vocab_size, dtype, generator=generator,
            clean=kw.get("clean"),
        )  # fmt: skip
        return self._integrand(denoiser, relaxed, x_0, z_t, alpha_t, dalpha_t, cond, **kw)

    def _integrand(
        self, denoiser: Denoiser, z_in: Any, x_0: Tensor, z_t: Tensor, alpha_t: Tensor,
        dalpha_t: Tensor, cond: Mapping[str, Any] | None, **kw: Any,
    ) -> Tensor:  # fmt: skip
        """The NELBO integrand, or the cross-entropy of ``objective="cross_entropy"``."""
        if self.objective == "cross_entropy":
            kw.pop("fused", None)  # the cross-entropy reads the logits
            return self.process.cross_entropy(denoiser, z_in, x_0, z_t, alpha_t, cond, **kw)
        return super()._integrand(denoiser, z_in, x_0, z_t, alpha_t, dalpha_t, cond, **kw)

    def phase(self, step: int) -> str:
        """ "curriculum" while the Gaussian curriculum trains step ``step``, "discrete" after."""
        active = self.curriculum is not None and self.curriculum.active(_check_step(step))
        return "curriculum" if active else "discrete"

    def sample(
        self,
        denoiser: Denoiser,
        batch_size: int,
        length: int,
        steps: int,
        **options: Any,
    ) -> Tensor:
        """Sample in ``steps`` steps on this diffusion's schedule: ``discdiff.samplers.
        sample_uniform``'s options (tail, kappa, top_k, top_p, time_grid, prompt, prompt_mask,
        cond, callback, progress, generator, seed, device); an unknown option is a TypeError.
        ``seed=`` (an int) draws each row's randomness from a stream keyed by (seed, row).

        With ``block_size``: ``steps`` per block, block by block over a cache of the clean blocks
        (``discdiff.samplers.sample_uniform_blocks``: also ``eos_id=None``, ``kv_cache=True``,
        ``window``; ``prompt`` (B, P) is the clean prefix and ``length`` counts it)."""
        if self.block_size is not None:
            return samplers.sample_uniform_blocks(
                denoiser, batch_size, length, steps, schedule=self.schedule,
                vocab_size=self.vocab_size, block_size=self.block_size, **options,
            )  # fmt: skip
        return samplers.sample_uniform(
            denoiser, batch_size, length, steps, schedule=self.schedule,
            vocab_size=self.vocab_size, **options,
        )  # fmt: skip


class MaskedDiffusion(Diffusion):
    """MDLM: absorbing-state diffusion with the SUBS parameterisation.

    Args:
        vocab_size: K, the number of token ids. By default the mask token is the extra id K,
            so the denoiser returns K + 1 logits (``model_vocab_size``); its mask logit is
            ignored.
        schedule: alpha_t (default log-linear).
        eps: the smallest time.
        time_conditioned: whether the denoiser sees the noise level. MDLM's default is no: the
            denoiser then gets sigma = 0, and the sampler may reuse x_hat while no token changes.
        block_size: None, or b for a block diffusion (BD3-LM; ``discdiff.blocks``).
        mask_id: None or K (the mask is the extra id K, K + 1 logits), or an id m in [0, K) of
            the model's own vocabulary (a [MASK] token): the denoiser then returns K logits, m
            is never a data token and never sampled.
    """

    _fields = ("vocab_size", "schedule", "eps", "time_conditioned", "mask_id", "block_size")

    def __init__(
        self,
        vocab_size: int,
        schedule: Schedule | None = None,
        eps: float = 1e-3,
        time_conditioned: bool = False,
        mask_id: int | None = None,
        block_size: int | None = None,
    ) -> None:
        process = MaskedProcess(vocab_size, time_conditioned, mask_id)
        super().__init__(process, schedule, eps, block_size)
        self.time_conditioned = process.time_conditioned
        self.mask_id = process.mask_id
        self.model_vocab_size = process.model_vocab_size

    def sample(
        self,
        denoiser: Denoiser,
        batch_size: int,
        length: int,
        steps: int,
        **options: Any,
    ) -> Tensor:
        """Sample in ``steps`` steps on this diffusion's schedule: ``discdiff.samplers.
        sample_masked``'s options (tail, cache, remask, top_k, top_p, time_grid, prompt,
        prompt_mask, cond, callback, progress, generator, seed, device); an unknown option is a
        TypeError. ``seed=`` (an int) draws each row's randomness from a stream keyed by
        (seed, row).

        With ``block_size``: ``steps`` per block, block by block over a cache of the clean blocks
        (``discdiff.samplers.sample_masked_blocks``: also ``eos_id=None``, ``kv_cache=True``,
        ``window``; ``prompt`` (B, P) is the clean prefix and ``length`` counts it)."""
        if self.block_size is not None:
            return samplers.sample_masked_blocks(
                denoiser, batch_size, length, steps, schedule=self.schedule,
                vocab_size=self.model_vocab_size, mask_id=self.mask_id,
                time_conditioned=self.time_conditioned, block_size=self.block_size, **options,
            )  # fmt: skip
        return samplers.sample_masked(
            denoiser, batch_size, length, steps, schedule=self.schedule,
            vocab_size=self.model_vocab_size, mask_id=self.mask_id,
            time_conditioned=self.time_conditioned, **options,
        )  # fmt: skip
