"""Classifier-free guidance's training half: label dropout.

Guided sampling (``discdiff.samplers.guidance``) needs one denoiser that gives both the
conditional prediction (with a row's class label) and the unconditional one (with the null
label). It learns both when, in training, each row's label is replaced by the null label with a
small probability p (Ho & Salimans 2022; Schiff et al. 2024 for discrete diffusion). The null
label is id ``num_classes``, the extra row of the DiT's label embedding
(``DiTConfig(num_classes=...)``), so labels take values in [0, num_classes].

    dropout = LabelDropout(num_classes=3, p=0.1)
    y = dropout(labels, generator)                 # (B,) int64, some rows now 3 (null)
    loss = diffusion.loss(model, x_0, generator=generator, cond={"label": y})

Like ``nn.Dropout`` it acts in training mode only: after ``.eval()`` it returns the labels as
they are and draws nothing, so a validation bound is always the conditional one.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor, nn

from discdiff.checks import as_float, check_count, check_generator, check_tokens

__all__ = ["LabelDropout"]


class LabelDropout(nn.Module):
    """Replace each row's class label by the null label (id ``num_classes``) with probability
    ``p``, independently per row, in training mode.

    Args:
        num_classes: the number of real labels (ids 0 .. num_classes - 1); the null label is
            ``num_classes``, as in ``DiTConfig(num_classes=...)``.
        p: the drop probability in [0, 1] (the paper's choice is 0.1); at p = 0 nothing is
            drawn, so a run without dropout consumes no randomness.
    """

    def __init__(self, num_classes: int, p: float) -> None:
        super().__init__()
        self.num_classes = check_count(num_classes, "num_classes")
        p = as_float(p, "p")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p is a drop probability and must lie in [0, 1], got {p!r}")
        self.p = p

    def forward(
        self, label: Int[Tensor, " b"], generator: torch.Generator | None = None
    ) -> Int[Tensor, " b"]:
        """``label`` (B,) integer ids in [0, num_classes] (an already null label stays null),
        each replaced by ``num_classes`` where a uniform draw from ``generator`` (one per row,
        on the labels' device) falls below ``p``. A new tensor in training mode with p > 0;
        ``label`` itself otherwise."""
        check_generator(generator)
        if label.dim() != 1:
            raise ValueError(f"label must be a (B,) tensor of class ids, got shape "
                             f"{tuple(label.shape)}")  # fmt: skip
        check_tokens(label, self.num_classes + 1, "label")
        if not self.training or self.p == 0.0:
            return label
        drop = torch.rand(label.shape, generator=generator, device=label.device) < self.p
        return torch.where(drop, torch.full_like(label, self.num_classes), label)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, p={self.p:g}"
