"""The part every distiller shares (Concepts §6): the teacher's rounds, the loss's checks and
divergence, checkpoints and settings as plain data.

A distiller distils a frozen teacher into a student in rounds (``discdiff.rounds.TeacherRounds``):
round n uses the teacher's step dt = growth^n / initial_steps (growth 2 for DCD, the teacher's
steps per student step for SDTT), and at each round's end the teacher becomes a copy of the
student (or its EMA). A subclass supplies the per-token loss, the sampler, its own settings
(``_SETTINGS``, ``_own_config``) and ``_growth``; the rest lives here once.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from discdiff import config
from discdiff.checks import check_generator, check_x0
from discdiff.losses._common import Reduction, check_mask, check_reduction, reduce_loss
from discdiff.losses.kl import token_kl
from discdiff.objective import Bound
from discdiff.rounds import TeacherRounds, check_distillation_settings, unwrap
from discdiff.typing import Denoiser, check_vocab_size

__all__ = ["Distiller", "Divergence"]

Divergence = Literal["kl_student_teacher", "kl_teacher_student"]
"""KL(p_student || p_teacher) (mode seeking, the papers') or KL(p_teacher || p_student)."""

_D = TypeVar("_D", bound="Distiller")


class Distiller(abc.ABC):
    """A teacher's rounds, the loss's shared checks and divergence, checkpoints and settings.

    Args:
        teacher: the denoiser to distil; a frozen deep copy is kept (``teacher``), the module
            passed is never modified (``TeacherRounds``).
        vocab_size: K, the number of data token ids.
        initial_steps: T; round n uses dt = ``_growth``^n / T. Checked by the subclass, which
            knows what else it must satisfy.
        steps_per_round, n_rounds, refresh_from: the round protocol (``TeacherRounds``).
        divergence: which KL between student and teacher (``Divergence``).
        kl_dtype: torch.float32 or torch.float64, the precision of the KL.
        eps: the subclass's smallest time, in [0, 1).

    Subclasses define ``_token_loss`` (what ``loss`` computes per token once its arguments are
    checked), ``sample``, ``_SETTINGS`` (the constructor's keyword settings, ``to_dict``'s keys),
    ``_own_config`` (their checkpointed settings) and ``_growth``.
    """

    _SETTINGS: tuple[str, ...]
    """The settings ``to_dict`` describes and ``from_dict`` passes back to the constructor."""

    def __init__(
        self,
        teacher: Denoiser,
        vocab_size: int,
        *,
        initial_steps: int,
        steps_per_round: int,
        n_rounds: int,
        divergence: Divergence,
        refresh_from: Literal["student", "ema"],
        kl_dtype: torch.dtype,
        eps: float,
    ) -> None:
        check_vocab_size(vocab_size)
        self.rounds = TeacherRounds(
            teacher, steps_per_round=steps_per_round, n_rounds=n_rounds, refresh_from=refresh_from
        )
        """The frozen teacher, its round and the refresh protocol (``TeacherRounds``)."""
        check_distillation_settings(divergence, refresh_from, kl_dtype, eps)
        self.vocab_size = vocab_size
        self.model_vocab_size = vocab_size  # the masked distiller appends its mask id
        self.initial_steps = initial_steps
        self.divergence: Divergence = divergence
        self.kl_dtype = kl_dtype
        self.eps = eps

    # -- what a distiller adds --------------------------------------------------------------

    def loss(
        self,
        student: Denoiser,
        x_0: Int[Tensor, "b l"],
        step: int = 0,
        *,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
        mask: Bool[Tensor, "b l"] | None = None,
        reduction: Reduction = "none",
    ) -> Float[Tensor, "b l"] | Float[Tensor, ""]:
        """The distillation loss at distillation step ``step``: per token (B, L), or reduced.

        The diffusions' convention (``UniformDiffusion.loss``): ``step`` positional or keyword,
        ``mask`` (B, L) True at the tokens that count, ``reduction`` "none" (0 at the ignored
        tokens), "sum" or "mean" over the tokens that count. ``cond`` (the denoisers' keyword
        conditioning) goes to student and teacher; randomness comes from ``generator`` only.
        Returns the KL of ``divergence`` between student and teacher in ``kl_dtype``; what the
        two see is the subclass's (``DCDistiller``, ``SDTTDistiller``: their ``_token_loss``).
        ``step`` must belong to the round the teacher holds (call ``maybe_refresh`` after every
        optimiser step).
        """
        x_0 = check_x0(x_0, self.vocab_size)  # any integer dtype in, int64 out
        check_generator(generator)
        check_mask(mask, x_0.shape)
        check_reduction(reduction)
        if not callable(student):
            raise TypeError(
                f"student must be a denoiser (a callable), got {type(student).__name__}"
            )
        round = self.rounds.current(step)
        per_token = self._token_loss(student, x_0, round, generator=generator, cond=cond, mask=mask)
        return reduce_loss(per_token, mask, reduction)

    @abc.abstractmethod
    def _token_loss(
        self,
        student: Denoiser,
        x_0: Int[Tensor, "b l"],
        round: int,
        *,
        generator: torch.Generator | None,
        cond: Mapping[str, Any] | None,
        mask: Bool[Tensor, "b l"] | None,
    ) -> Float[Tensor, "b l"]:
        """The unreduced loss (B, L) of round ``round`` on checked int64 ``x_0``; ``mask`` may
        only save work (``loss`` zeroes the ignored tokens)."""

    @abc.abstractmethod
    def sample(
        self, student: Denoiser, batch_size: int, length: int, steps: int, **options: Any
    ) -> Int[Tensor, "b l"]:
        """(batch_size, length) token ids from the distilled ``student`` in ``steps`` steps."""

    @property
    @abc.abstractmethod
    def _growth(self) -> int:
        """The factor by which the teacher's step grows per round."""

    @abc.abstractmethod
    def _own_config(self) -> dict[str, Any]:
        """The subclass's checkpointed settings, between ``vocab_size`` and ``initial_steps``."""

    # -- the round schedule (``TeacherRounds``) ---------------------------------------------

    teacher = property(lambda self: self.rounds.teacher, doc="The frozen teacher.")
    round = property(lambda self: self.rounds.round, doc="The round the teacher belongs to.")
    steps_per_round = property(lambda self: self.rounds.steps_per_round)
    n_rounds = property(lambda self: self.rounds.n_rounds)
    refresh_from = property(lambda self: self.rounds.refresh_from)

    def round_at(self, step: int) -> int:
        """The round of distillation step ``step`` (0-based); steps past the last round stay in
        the last round."""
        return self.rounds.round_at(step)

    def end_of_round(self, step: int) -> bool:
        """Whether ``step`` is the last step of a round that another round follows."""
        return self.rounds.end_of_round(step)

    def dt(self, round: int) -> float:
        """The teacher's time step in round ``round``: dt = growth^round / initial_steps (growth
        2 for DCD, ``teacher_steps`` for SDTT)."""
        return self._growth ** self.rounds.check_round(round) / self.initial_steps

    # -- the training loop's ``Objective`` (``discdiff.objective``) -------------------------

    def student_diffusion(self) -> Any:
        """The diffusion the student is sampled and evaluated on (its schedule and process);
        a distiller that offers ``bound`` defines it."""
        raise NotImplementedError(
            f"{type(self).__name__} defines no student_diffusion(), so it has no bound"
        )

    def bound(
        self,
        student: Denoiser,
        x_0: Int[Tensor, "b l"],
        *,
        generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None,
        mask: Bool[Tensor, "b l"] | None = None,
    ) -> Bound:
        """The student's NELBO on ``student_diffusion()`` as a ``Bound`` (validation)."""
        return self.student_diffusion().bound(student, x_0, generator=generator, cond=cond,
                                              mask=mask)  # fmt: skip

    def phase(self, step: int) -> str:
        """``round<r>``: the round of distillation step ``step``."""
        return f"round{self.round_at(step)}"

    def after_step(self, step: int, model: Any, ema: Any = None) -> None:
        """``maybe_refresh`` after the optimiser update of step ``step``."""
        self.maybe_refresh(step, model, ema)

    def maybe_refresh(self, step: int, student: Any, ema: Any = None) -> bool:
        """Call after the optimiser update of distillation step ``step``: at a round boundary,
        copy the student (``refresh_from="student"``) or its EMA into the teacher and return
        True; otherwise return False. Idempotent for a given step.

        ``ema`` is an ``nn.Module`` holding the averaged weights (e.g. a
        ``torch.optim.swa_utils.AveragedModel``, or a copy of the student) or a state dict;
        it is required when ``refresh_from="ema"`` and ignored otherwise.
        """
        return self.rounds.maybe_refresh(step, student, ema)

    # -- the loss's shared parts ------------------------------------------------------------

    def _divergence(
        self, student_logits: Float[Tensor, "b l k"], teacher_logits: Float[Tensor, "b l k"]
    ) -> Float[Tensor, "b l"]:
        """The per-token KL of ``divergence`` between the two softmaxes, in ``kl_dtype``."""
        if self.divergence == "kl_student_teacher":
            return token_kl(student_logits, teacher_logits, dtype=self.kl_dtype)
        return token_kl(teacher_logits, student_logits, dtype=self.kl_dtype)

    @staticmethod
    def _role(role: str, denoiser: Any) -> str:
        """How errors name a denoiser: its role and its bare class, e.g. "teacher (DiT)"."""
        return f"{role} ({type(unwrap(denoiser)).__name__})"

    # -- checkpoints ------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        """The settings a checkpoint must agree on (``load_state_dict`` compares them)."""
        return {
            "vocab_size": self.vocab_size,
            **self._own_config(),
            "initial_steps": self.initial_steps,
            "steps_per_round": self.steps_per_round,
            "n_rounds": self.n_rounds,
            "divergence": self.divergence,
            "eps": self.eps,
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"round", "teacher", "config"}``: the teacher's round and weights (None for a
        teacher that is not an ``nn.Module``) and the settings that define the rounds."""
        return self.rounds.state_dict(self._config())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s round and teacher weights; the settings must match."""
        self.rounds.load_state_dict(state, self._config(), type(self).__name__)

    def _repr_extra(self) -> list[str]:
        """Derived quantities ``__repr__`` shows after the settings, as "name=value" strings."""
        return []

    def __repr__(self) -> str:
        fields = [f"{k}={getattr(self, k)!r}" for k in self._SETTINGS]
        fields += [*self._repr_extra(), f"round={self.round}"]
        return f"{type(self).__name__}({', '.join(fields)})"

    # -- settings as plain data -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The distiller's settings, JSON-safe, nested objects as dicts (``discdiff.config``):
        not the teacher's weights nor the round (those are ``state_dict()``'s)."""
        return config.settings_to_dict(self, self._SETTINGS)

    @classmethod
    def from_dict(cls: type[_D], data: Mapping[str, Any], *, teacher: Denoiser) -> _D:
        """A distiller with ``to_dict``'s settings around ``teacher`` (at round 0; restore a
        run's round and teacher with ``load_state_dict``)."""
        return config.distiller_from_dict(cls, data, cls._SETTINGS, teacher)
