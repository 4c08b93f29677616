"""Training objectives behind one small adapter, so the training loop is shared.

An objective turns a batch of clean tokens into a per-token loss, gives a validation bound with
its terms, samples, and carries whatever state its phase needs in checkpoints:

- ``DuoObjective``: ``UniformDiffusion`` with the Gaussian curriculum for the first
  ``curriculum_end`` steps, then the plain discrete process (Concepts §3-4).
- ``MDLMObjective``: ``MaskedDiffusion`` (absorbing state; the model has one extra id, the mask).
- ``ARObjective``: a causal DiT and next-token cross-entropy (the baseline and the evaluator).
- ``DCDObjective``: discrete consistency distillation of a trained Duo model (Concepts §6).
- ``SDTTObjective``: self-distillation through time of a trained MDLM model (Concepts §6).

Strings are resolved to objects here, at the edge (``build_objective``); the library itself
takes objects.

Padding (unpacked data, ``--data.packing false``): ``loss`` and ``bound`` take ``mask`` (B, L)
bool, True at real tokens. The model gets it as its conditioning ``padding_mask`` (so no real
token attends to a padded one; the backbone must accept that keyword), padded positions keep
whatever noisy token the process gives them, and ``token_mask(mask)`` is the mask aligned with
the per-token loss (the AR loss is one shorter), which the loop uses to leave padding out of
the mean; a ``Bound`` carries its own aligned ``mask`` for ``BoundMeter``.

Class labels (``--data.labels``, Duo and MDLM): ``loss`` and ``bound`` take ``label`` (B,)
int64 and pass it to the model as ``cond={"label": y}``. In training each label becomes the
null label (id ``num_classes``) with probability ``--train.cond_dropout``
(``discdiff.LabelDropout``, drawn from the training noise generator, so a resumed run draws the
same), so that the one model also learns the unconditional prediction that classifier-free
guidance needs; the validation bound is the conditional one, with every row's own label.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from discdiff.labels import LabelDropout
from discdiff.objective import Bound
from examples.config import Config

__all__ = [
    "ARObjective",
    "Bound",
    "DCDObjective",
    "DuoObjective",
    "LabelDropout",
    "LibraryObjective",
    "MDLMObjective",
    "SDTTObjective",
    "Objective",
    "build_objective",
    "sample_autoregressive",
]


class Objective(Protocol):
    """The loop's view of an objective: the library's ``discdiff.objective.Objective`` plus the
    example's conventions (padding ``mask`` and class ``label`` as keywords, the ``t`` of the
    data-parallel antithetic times, ``token_mask``, a name)."""

    name: str
    vocab_size: int
    """Data vocabulary (the tokenizer's)."""
    model_vocab_size: int
    """Logits the model returns (MDLM adds the mask id)."""
    causal: bool
    uses_times: bool

    def loss(
        self, model: nn.Module, x_0: Tensor, *, step: int, t: Tensor | None,
        generator: torch.Generator | None, mask: Tensor | None = None,
        label: Tensor | None = None,
    ) -> Tensor: ...  # fmt: skip

    def bound(
        self, model: nn.Module, x_0: Tensor, *, generator: torch.Generator | None,
        mask: Tensor | None = None, label: Tensor | None = None,
    ) -> Bound: ...  # fmt: skip

    def token_mask(self, mask: Tensor) -> Tensor:
        """The padding mask (B, L) aligned with this objective's per-token loss."""
        ...

    def sample(
        self, model: nn.Module, batch_size: int, length: int, steps: int, **kwargs: Any
    ) -> Tensor: ...

    def phase(self, step: int) -> str: ...

    def after_step(self, step: int, model: nn.Module, ema: Any) -> None:
        """Called after every optimizer step; ``step`` is that step's 0-based index, ``ema``
        the weights' ``AveragedModel``."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _cond(mask: Tensor | None, label: Tensor | None = None) -> dict[str, Tensor] | None:
    """The model's conditioning for a padding mask and class labels (None: neither)."""
    cond = {k: v for k, v in (("padding_mask", mask), ("label", label)) if v is not None}
    return cond or None


class LibraryObjective:
    """A library objective (a diffusion or a distiller: ``discdiff.objective.Objective``) in
    the loop. ``trainer`` gives the loss, the phases, ``after_step`` and the checkpointed state;
    ``diffusion`` (the trainer itself for a diffusion, the student's for a distiller) the
    validation bound and the samples. ``trainer`` is None for a distillation objective built for
    evaluation and sampling only (no teacher). The example's conventions live here: the padding
    mask and class labels become the model's conditioning, labels are dropped with
    ``label_dropout`` in training, and a ``clean_context`` share of the steps trains rows that
    keep clean context (uniform diffusion only)."""

    causal = False
    label_dropout: LabelDropout | None = None
    """Set by ``build_objective`` for a labelled run."""

    def __init__(self, trainer: Any, diffusion: Any, *, uses_times: bool,
                 clean_context: float = 0.0) -> None:  # fmt: skip
        self.trainer, self.diffusion = trainer, diffusion
        self.uses_times, self.clean_context = uses_times, clean_context
        self.vocab_size = diffusion.vocab_size
        self.model_vocab_size = diffusion.model_vocab_size
        self.held_clean: Tensor | None = None  # the last loss's clean context (no loss there)

    @property
    def distiller(self) -> Any:
        """The trainer of a distillation objective (None without a teacher)."""
        return self.trainer

    def _require_trainer(self) -> Any:
        if self.trainer is None:
            raise RuntimeError(
                f"this {self.name.upper()} objective was built without a teacher (evaluation only)"
            )
        return self.trainer

    def loss(self, model, x_0, *, step, t, generator, mask=None, label=None):  # type: ignore[no-untyped-def]
        """The trainer's per-token loss. With ``clean_context`` > 0 that share of the steps
        trains rows with clean context (level 0, no loss), which ``held_clean`` keeps for the
        step's mean. Whole steps rather than a share of every batch's rows: a batch with any
        clean position hands the model per-token levels (B, L), whose adaLN modulation costs a
        quarter more than one level per row, so the other steps keep the cheaper path."""
        if label is not None and self.label_dropout is not None:
            label = self.label_dropout(label, generator)
        options: dict[str, Any] = {"generator": generator, "cond": _cond(mask, label)}
        if self.uses_times:
            options["t"] = t
        self.held_clean = None
        if self.clean_context > 0:
            draw = torch.rand((), generator=generator, device=x_0.device)
            if float(draw) < self.clean_context:
                from discdiff.context import random_clean_mask

                self.held_clean = random_clean_mask(*x_0.shape, share=1.0, generator=generator,
                                                    device=x_0.device)  # fmt: skip
                options["clean_mask"] = self.held_clean
        return self._require_trainer().loss(model, x_0, step, **options)

    def token_mask(self, mask: Tensor) -> Tensor:
        return mask

    def bound(self, model, x_0, *, generator, mask=None, label=None):  # type: ignore[no-untyped-def]
        return self.diffusion.bound(model, x_0, generator=generator, cond=_cond(mask, label),
                                    mask=mask)  # fmt: skip

    def sample(self, model, batch_size, length, steps, **kwargs):  # type: ignore[no-untyped-def]
        return self.diffusion.sample(model, batch_size, length, steps, **kwargs)

    def phase(self, step: int) -> str:
        return self._require_trainer().phase(step)

    def after_step(self, step: int, model: nn.Module, ema: Any) -> None:
        self._require_trainer().after_step(step, model, ema)

    def state_dict(self) -> dict[str, Any]:
        return self._require_trainer().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._require_trainer().load_state_dict(state)


class DuoObjective(LibraryObjective):
    """Duo: ``UniformDiffusion`` with the Gaussian curriculum until ``curriculum_end``, then
    the discrete process."""

    name = "duo"

    def __init__(
        self, vocab_size: int, *, gamma_min: float, gamma_max: float, tau: float,
        curriculum_end: int, top_k: int | None = None, tau_end: float | None = None,
        eps: float = 1e-3, clean_context: float = 0.0, block_size: int | None = None,
    ) -> None:  # fmt: skip
        from discdiff import GammaSchedule, GaussianCurriculum, UniformDiffusion

        curriculum = None
        if curriculum_end > 0:
            curriculum = GaussianCurriculum(
                window=GammaSchedule(gamma_min, gamma_max), tau=tau, end_step=curriculum_end,
                top_k=top_k, tau_end=tau_end,
            )  # fmt: skip
        diffusion = UniformDiffusion(vocab_size, curriculum=curriculum, eps=eps,
                                     block_size=block_size)  # fmt: skip
        super().__init__(diffusion, diffusion, uses_times=True, clean_context=clean_context)
        self.curriculum_end = curriculum_end


class MDLMObjective(LibraryObjective):
    """MDLM: absorbing-state diffusion; the model's vocabulary has the mask id appended."""

    name = "mdlm"

    def __init__(self, vocab_size: int, *, eps: float = 1e-3,
                 block_size: int | None = None) -> None:  # fmt: skip
        from discdiff.diffusion import MaskedDiffusion

        diffusion = MaskedDiffusion(vocab_size, eps=eps, block_size=block_size)
        super().__init__(diffusion, diffusion, uses_times=True)


class ARObjective:
    """Next-token prediction with a causal DiT: logits at i predict token i + 1.

    ``fused``: the training loss of a model that offers ``discdiff.denoise.FusedHead`` (the DiT)
    is computed from its last hidden state and output projection, never holding the logits
    (``fused_linear_cross_entropy``); the bound always takes the logits.
    """

    name = "ar"
    causal = True
    uses_times = False
    label_dropout = None

    def __init__(self, vocab_size: int, bos_id: int, *, fused: bool = True) -> None:
        self.vocab_size = self.model_vocab_size = vocab_size
        self.bos_id = bos_id
        self.fused = fused

    def loss(self, model, x_0, *, step, t, generator, mask=None):  # type: ignore[no-untyped-def]
        del step, t, generator
        return self._nll(model, x_0, mask, self.fused)

    def _nll(self, model: nn.Module, x_0: Tensor, mask: Tensor | None, fused: bool) -> Tensor:
        from discdiff.denoise import denoise_head, has_fused_head
        from discdiff.losses import ar_loss, fused_linear_cross_entropy

        inputs, targets = x_0[:, :-1], x_0[:, 1:]
        cond = _cond(None if mask is None else mask[:, :-1])
        if fused and has_fused_head(model):
            sigma: Any = None  # the causal model has no noise level
            head = denoise_head(model, inputs, sigma, vocab_size=self.model_vocab_size,
                                cond=cond, role="model")  # fmt: skip
            return fused_linear_cross_entropy(head.hidden, head.weight, targets, bias=head.bias)
        return ar_loss(model(inputs, **(cond or {})), targets)

    def token_mask(self, mask: Tensor) -> Tensor:
        return mask[:, 1:]  # the loss at i scores token i + 1

    def bound(self, model, x_0, *, generator, mask=None):  # type: ignore[no-untyped-def]
        del generator
        nll = self._nll(model, x_0, mask, fused=False)
        aligned = None if mask is None else self.token_mask(mask)
        return Bound(nll, {"nll": nll}, "exact next-token NLL (no bound: the AR likelihood)",
                     aligned)  # fmt: skip

    def sample(self, model, batch_size, length, steps=None, **kwargs):  # type: ignore[no-untyped-def]
        del steps
        return sample_autoregressive(
            model, batch_size, length, bos_id=self.bos_id, generator=kwargs.get("generator"),
            top_p=kwargs.get("top_p"),
        )  # fmt: skip

    def phase(self, step: int) -> str:
        return "ar"

    def after_step(self, step: int, model: nn.Module, ema: Any) -> None:
        del step, model, ema

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def sample_autoregressive(
    model: nn.Module, batch_size: int, length: int, *, bos_id: int,
    generator: torch.Generator | None = None, top_p: float | None = None,
) -> Tensor:  # fmt: skip
    """BOS, then ``length - 1`` tokens decoded with the KV cache (``generate_ar``): (B, length).

    Every token is drawn exactly from the model's (nucleus-filtered) next-token law.
    """
    from discdiff.models import generate_ar

    device = next(model.parameters()).device
    bos = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)
    return generate_ar(model, bos, length - 1, top_p=top_p, generator=generator)


class DCDObjective(LibraryObjective):
    """Discrete consistency distillation of a Duo teacher into a student (same architecture).

    Rounds of ``steps_per_round`` steps; dt = 2^round / T; at every round boundary the teacher
    is refreshed from the student's EMA (or the student). The distiller's state (round, teacher
    weights) is checkpointed. The student samples on the log-linear schedule, as
    ``DCDistiller.sample`` does (its alpha_1 ~ 0 matches the uniform prior; the distillation
    window is a training axis), and its validation bound uses it like every other uniform-state
    model here. ``teacher=None`` builds the objective for evaluation and sampling only.
    """

    name = "dcd"

    def __init__(
        self, teacher: nn.Module | None, vocab_size: int, *, rounds: int, steps_per_round: int,
        gamma_min: float, gamma_max: float, T: int, divergence: str, refresh_from: str,
        eps: float = 1e-3,
    ) -> None:  # fmt: skip
        from discdiff.diffusion import UniformDiffusion
        from discdiff.schedules import GammaSchedule

        distiller = None
        if teacher is not None:
            from discdiff.distill import DCDistiller

            distiller = DCDistiller(
                teacher, vocab_size, window=GammaSchedule(gamma_min, gamma_max),
                initial_steps=T, steps_per_round=steps_per_round, n_rounds=rounds,
                divergence=divergence, refresh_from=refresh_from, eps=eps,
            )  # fmt: skip
        # Students sample on the log-linear schedule (alpha_1 ~ 0 matches the uniform prior),
        # as the reference samples them: the distillation window is a training axis only.
        super().__init__(distiller, UniformDiffusion(vocab_size, eps=eps), uses_times=False)


class SDTTObjective(LibraryObjective):
    """Self-distillation through time of an MDLM teacher into a student (same architecture).

    Rounds of ``steps_per_round`` steps; round n's student learns to take in one step the
    teacher's m steps of size dt = m^n / T (m = ``teacher_steps``); at every round boundary the
    teacher is refreshed from the student (the paper's) or its EMA. The distiller's state
    (round, teacher weights) is checkpointed. The student samples with the masked sampler on
    MDLM's schedule, as ``SDTTDistiller.sample`` does, and gets MDLM's bound. ``teacher=None``
    builds the objective for evaluation and sampling only.
    """

    name = "sdtt"

    def __init__(
        self, teacher: nn.Module | None, vocab_size: int, *, rounds: int, steps_per_round: int,
        teacher_steps: int, T: int, divergence: str, refresh_from: str, eps: float = 1e-3,
    ) -> None:  # fmt: skip
        from discdiff.diffusion import MaskedDiffusion

        diffusion = MaskedDiffusion(vocab_size, eps=eps)
        distiller = None
        if teacher is not None:
            from discdiff.sdtt import SDTTDistiller

            distiller = SDTTDistiller.from_diffusion(
                teacher, diffusion, teacher_steps=teacher_steps, initial_steps=T,
                steps_per_round=steps_per_round, n_rounds=rounds, divergence=divergence,
                refresh_from=refresh_from,
            )  # fmt: skip
        super().__init__(distiller, diffusion, uses_times=False)


def build_objective(
    cfg: Config, vocab_size: int, *, bos_id: int, teacher: nn.Module | None = None,
    num_classes: int | None = None,
) -> Objective:  # fmt: skip
    """The objective named by ``cfg.train.objective`` for a tokenizer of ``vocab_size`` ids;
    with ``num_classes`` (a labelled run) its training drops labels (``LabelDropout``)."""
    objective = _objective(cfg, vocab_size, bos_id=bos_id, teacher=teacher)
    if num_classes is not None:
        objective.label_dropout = LabelDropout(num_classes, cfg.train.cond_dropout)  # type: ignore[attr-defined]
    return objective


def _objective(
    cfg: Config, vocab_size: int, *, bos_id: int, teacher: nn.Module | None = None
) -> Objective:
    kind = cfg.train.objective
    if kind == "duo":
        d = cfg.duo
        return DuoObjective(
            vocab_size, gamma_min=d.gamma_min, gamma_max=d.gamma_max, tau=d.tau,
            curriculum_end=d.curriculum_end, top_k=d.top_k, tau_end=d.tau_end, eps=d.eps,
            clean_context=d.clean_context or 0.0, block_size=cfg.model.block_size,
        )  # fmt: skip
    if kind == "mdlm":
        return MDLMObjective(vocab_size, eps=cfg.duo.eps, block_size=cfg.model.block_size)
    if kind == "ar":
        return ARObjective(vocab_size, bos_id)
    if kind == "dcd":
        c = cfg.dcd
        return DCDObjective(
            teacher, vocab_size, rounds=c.rounds, steps_per_round=c.steps_per_round,
            gamma_min=c.gamma_min, gamma_max=c.gamma_max, T=c.T, divergence=c.divergence,
            refresh_from=c.refresh_from, eps=cfg.duo.eps,
        )  # fmt: skip
    if kind == "sdtt":
        c = cfg.sdtt
        return SDTTObjective(
            teacher, vocab_size, rounds=c.rounds, steps_per_round=c.steps_per_round,
            teacher_steps=c.teacher_steps, T=c.T, divergence=c.divergence,
            refresh_from=c.refresh_from, eps=cfg.duo.eps,
        )  # fmt: skip
    raise ValueError(f"unknown objective {kind!r}")
