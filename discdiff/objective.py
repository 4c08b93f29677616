"""The ``Objective`` protocol: what a training loop needs from whatever it trains.

Both diffusions (``UniformDiffusion``, ``MaskedDiffusion``) and both distillers
(``DCDistiller``, ``SDTTDistiller``) satisfy it, so one loop trains any of them::

    for step, x_0 in enumerate(batches):
        objective.loss(model, x_0, step, reduction="mean").backward()
        opt.step(); opt.zero_grad()
        objective.after_step(step, model, ema)          # a distiller refreshes its teacher here
        if step % 1000 == 0:
            print(objective.phase(step), objective.bound(model, x_val).mean())
    torch.save({"model": model.state_dict(), "objective": objective.state_dict()}, path)

``loss`` is per token (B, L) or reduced; ``bound`` is a ``Bound``, an upper bound on
-log p(x_0) per token with its named terms; ``sample`` draws token ids; ``phase`` names the
training phase of a step (for logs: "curriculum" / "discrete", "masked", "round2");
``after_step`` runs after each optimiser step; ``state_dict`` / ``load_state_dict`` hold what
a checkpoint must keep beyond the model (a distiller's teacher and round). A model of another
kind (an autoregressive baseline) joins the loop by implementing the same methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from discdiff.losses._common import reduce_loss

__all__ = ["Bound", "Objective", "ObjectiveDefaults"]


@dataclass(frozen=True)
class Bound:
    """A per-token bound on -log p(x_0), ``total`` (B, L'), and its named ``terms`` (each
    (B, L'), summing to ``total``); ``mask`` (B, L') True where a token counts (None: all).
    ``description`` says what the terms are (for reports)."""

    total: Tensor
    terms: dict[str, Tensor]
    description: str
    mask: Tensor | None = None

    def mean(self) -> Tensor:
        """The bound per counted token, 0-d; exp of it bounds this batch's perplexity."""
        return reduce_loss(self.total, self.mask, "mean")


@runtime_checkable
class Objective(Protocol):
    """A training objective (module docstring). ``vocab_size`` is the data's K;
    ``model_vocab_size`` the logits the model returns (K + 1 for a masked model with the mask
    id appended)."""

    vocab_size: int
    model_vocab_size: int

    def loss(
        self, model: Any, x_0: Tensor, step: int = 0, *, generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None, mask: Tensor | None = None, reduction: Any = "none",
    ) -> Tensor: ...  # fmt: skip

    def bound(
        self, model: Any, x_0: Tensor, *, generator: torch.Generator | None = None,
        cond: Mapping[str, Any] | None = None, mask: Tensor | None = None,
    ) -> Bound: ...  # fmt: skip

    def sample(
        self, model: Any, batch_size: int, length: int, steps: int, **options: Any
    ) -> Tensor: ...

    def phase(self, step: int) -> str: ...

    def after_step(self, step: int, model: Any, ema: Any = None) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class ObjectiveDefaults:
    """The ``Objective`` methods of an objective without state between steps (the diffusions):
    nothing to do after a step, nothing to checkpoint beyond its settings."""

    def after_step(self, step: int, model: Any, ema: Any = None) -> None:
        """Nothing: a diffusion has no state that changes with the steps."""
        del step, model, ema

    def state_dict(self) -> dict[str, Any]:
        """{}: a diffusion's settings are ``to_dict``'s, and it has no other state."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Accepts ``state_dict()``'s empty dict (anything else is a checkpoint of another
        objective)."""
        if dict(state):
            raise ValueError(
                f"{type(self).__name__} has no state to restore, got keys {sorted(state)}: "
                "a checkpoint of another objective?"
            )
