"""The round protocol shared by the distillers (DCD, SDTT): a frozen teacher, refreshed from
the student (or its EMA) at the end of every round, and checkpointed with the round it holds.

Round r covers distillation steps [r * steps_per_round, (r + 1) * steps_per_round); steps past
the last round stay in it. After the optimiser update of a round's last step the teacher
becomes a copy of the student's weights (or of their EMA), and the next round distils from it.
A checkpoint keeps the teacher's weights and round, so a resumed run continues the same round.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from discdiff.typing import Denoiser, check_count

__all__ = ["TeacherRounds", "check_distillation_settings", "frozen_copy", "unwrap"]

RefreshFrom = Literal["student", "ema"]


def unwrap(module: Any) -> Any:
    """The bare module inside DDP / FSDP-like wrappers, ``AveragedModel`` and ``torch.compile``."""
    while True:
        if isinstance(module, (torch.optim.swa_utils.AveragedModel,
                               nn.parallel.DistributedDataParallel)):  # fmt: skip
            module = module.module
        elif isinstance(module, nn.Module) and hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def frozen_copy(module: Any) -> Any:
    """A deep copy of the bare module, without gradients and in eval mode (a callable that is
    not an ``nn.Module`` is returned as is: there is nothing to copy)."""
    module = copy.deepcopy(unwrap(module))
    if isinstance(module, nn.Module):
        module.requires_grad_(False)
        module.eval()
    return module


def check_distillation_settings(
    divergence: Any, refresh_from: Any, kl_dtype: Any, eps: Any
) -> None:
    """The settings both distillers share, each refused by name when it is off."""
    if divergence not in ("kl_student_teacher", "kl_teacher_student"):
        raise ValueError(
            "divergence must be 'kl_student_teacher' (KL(p_student || p_teacher), the "
            f"paper's) or 'kl_teacher_student', got {divergence!r}"
        )
    if refresh_from not in ("ema", "student"):
        raise ValueError(f"refresh_from must be 'ema' or 'student', got {refresh_from!r}")
    if kl_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"kl_dtype must be torch.float32 or torch.float64, got {kl_dtype}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must lie in [0, 1), got {eps!r}")


class TeacherRounds:
    """A distillation's frozen teacher and the round its weights belong to.

    Args:
        teacher: the denoiser to distil; a frozen deep copy is kept (``teacher``), the module
            passed is never modified. A teacher that is not an ``nn.Module`` is used as is and
            replaced by a frozen copy of the student at the first refresh.
        steps_per_round: optimiser steps per round.
        n_rounds: rounds.
        refresh_from: at a round's end the teacher becomes a copy of the ``"student"`` or of its
            ``"ema"`` weights.
    """

    def __init__(
        self,
        teacher: Denoiser,
        *,
        steps_per_round: int,
        n_rounds: int,
        refresh_from: RefreshFrom = "student",
    ) -> None:
        if not callable(teacher):
            raise TypeError(
                f"teacher must be a denoiser (a callable), got {type(teacher).__name__}"
            )
        self.steps_per_round = check_count(steps_per_round, "steps_per_round")
        self.n_rounds = check_count(n_rounds, "n_rounds")
        if refresh_from not in ("ema", "student"):
            raise ValueError(f"refresh_from must be 'ema' or 'student', got {refresh_from!r}")
        self.refresh_from: RefreshFrom = refresh_from
        self.teacher: Any = frozen_copy(teacher)
        self.round = 0
        """The round the teacher's weights belong to (advanced by ``maybe_refresh``)."""

    def round_at(self, step: int) -> int:
        """The round of distillation step ``step`` (0-based)."""
        step = check_count(step, "step", minimum=0)
        return min(step // self.steps_per_round, self.n_rounds - 1)

    def check_round(self, round: Any, what: str = "round") -> int:
        """``round`` as an int in [0, n_rounds), or an error naming it."""
        if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round < self.n_rounds:
            raise ValueError(
                f"{what} must be an integer in [0, n_rounds={self.n_rounds}), got {round!r}"
            )
        return round

    def end_of_round(self, step: int) -> bool:
        """Whether ``step`` is the last step of a round that another round follows."""
        return self.round_at(step + 1) > self.round_at(step)

    def current(self, step: int) -> int:
        """The round of ``step``, which must be the one the teacher holds."""
        round = self.round_at(step)
        if round != self.round:
            raise ValueError(
                f"step {step} belongs to round {round} but the teacher holds round {self.round}'s "
                "weights: call maybe_refresh(step, student, ema) after every optimiser step, and "
                "load_state_dict(...) from the checkpoint when resuming"
            )
        return round

    def maybe_refresh(self, step: int, student: Any, ema: Any = None) -> bool:
        """After the optimiser update of step ``step``: at a round boundary copy the student (or
        ``ema``: an ``nn.Module`` such as an ``AveragedModel``, or a state dict) into the
        teacher and return True; otherwise return False. Idempotent for a given step."""
        target = self.round_at(step + 1)
        if target <= self.round:
            return False
        if self.refresh_from == "ema" and ema is None:
            raise ValueError(
                "refresh_from='ema' needs the student's EMA: pass maybe_refresh(step, student, "
                "ema), or build the distiller with refresh_from='student' (the default)"
            )
        self.load_teacher(ema if self.refresh_from == "ema" else student)
        self.round = target
        return True

    def load_teacher(self, source: Any) -> None:
        """Load an ``nn.Module``'s weights or a state dict into the teacher."""
        source = unwrap(source)
        if isinstance(self.teacher, nn.Module):
            state = source.state_dict() if isinstance(source, nn.Module) else source
            if not isinstance(state, Mapping):
                raise TypeError(
                    f"cannot refresh the teacher from a {type(source).__name__}: pass an "
                    "nn.Module or a state dict"
                )
            self.teacher.load_state_dict(state)
        elif isinstance(source, nn.Module):
            self.teacher = frozen_copy(source)
        else:
            raise TypeError(
                "the teacher is not an nn.Module, so it cannot load a state dict: refresh it "
                "from an nn.Module (the student or its EMA module)"
            )

    def state_dict(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """``{"round", "teacher", "config"}``: the round, the teacher's weights (None for a
        teacher that is not an ``nn.Module``) and the distiller's ``settings``."""
        teacher = self.teacher.state_dict() if isinstance(self.teacher, nn.Module) else None
        return {"round": self.round, "teacher": teacher, "config": dict(settings)}

    def load_state_dict(
        self, state: Mapping[str, Any], settings: Mapping[str, Any], owner: str
    ) -> None:
        """Restore ``state_dict``'s round and teacher; its settings must match ``settings``."""
        missing = {"round", "teacher", "config"} - set(state)
        if missing:
            raise ValueError(f"not a {owner} state dict: missing {sorted(missing)}")
        for key, value in state["config"].items():
            ours = settings.get(key, value)
            if ours != value and not (isinstance(value, float) and math.isclose(value, ours)):
                raise ValueError(
                    f"the checkpoint's distiller has {key}={value!r}, this one {ours!r}: "
                    "build the distiller with the checkpoint's settings"
                )
        round = self.check_round(state["round"], "the checkpoint's round")
        if state["teacher"] is not None:
            self.load_teacher(state["teacher"])
        elif round > 0:
            raise ValueError("the checkpoint holds no teacher weights for round > 0")
        self.round = round
