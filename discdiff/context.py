"""Clean context: positions that hold their clean token (prompts, infilling, training context).

A uniform-state token looks the same clean or noised, so a denoiser can only treat a position as
context if it is told: per-token noise levels sigma (B, L), 0 (alpha = 1) at clean positions and
-log(alpha_t) elsewhere (SPEC §9). A denoiser declares that it reads them with a class attribute
``reads_token_levels = True`` (``discdiff.models.DiT`` does); one that reads only one level per
sequence is never handed clean context silently: sampling with a prompt raises an error naming
the fix, unless the caller opts in to the clamped approximation (``clamp_prompt=True``).

A model learns to read clean context from training rows that keep some positions clean, with
level 0 and no loss there: ``random_clean_mask`` draws such rows (a prefix, a middle span, or a
prefix and a suffix around a gap to fill), and ``UniformDiffusion.loss(..., clean_mask=...)``
trains on them.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from discdiff.checks import check_count, check_range
from discdiff.typing import Bag

__all__ = [
    "check_clean_mask",
    "hold_clean",
    "random_clean_mask",
    "reads_token_levels",
    "require_token_levels",
    "token_levels",
]


def reads_token_levels(denoiser: Any) -> bool:
    """Whether ``denoiser`` declares ``reads_token_levels = True`` (through a ``torch.compile``
    or DDP / FSDP wrapper too)."""
    for obj in (denoiser, getattr(denoiser, "_orig_mod", None), getattr(denoiser, "module", None)):
        if obj is not None and getattr(obj, "reads_token_levels", False) is True:
            return True
    return False


def require_token_levels(denoiser: Any, what: str, fix: str) -> None:
    """Raise ValueError unless ``denoiser`` reads per-token levels; ``what`` names the option
    that needs them, ``fix`` the way out besides declaring the attribute."""
    if reads_token_levels(denoiser):
        return
    raise ValueError(
        f"{what} needs a denoiser that reads per-token noise levels: it must tell clean "
        "positions (sigma = 0) from noisy ones, which one level per sequence cannot. Give the "
        "model a forward that accepts sigma of shape (B, L) and the class attribute "
        "`reads_token_levels = True` (discdiff.models.DiT has both), trained with clean "
        f"context (loss(..., clean_mask=...)); {fix}"
    )


def token_levels(sigma: Tensor, clean: Bool[Tensor, "b l"] | None) -> Tensor:
    """Per-token noise levels (B, L): ``sigma`` (B,) at noisy positions, 0 at ``clean`` ones.

    Without a clean mask, ``sigma`` (B,) itself (one level per sequence)."""
    if clean is None:
        return sigma
    return torch.where(clean, sigma.new_zeros(()), sigma.unsqueeze(-1)).contiguous()


def check_clean_mask(clean_mask: Any, shape: tuple[int, ...] | torch.Size) -> None:
    """``clean_mask`` is a bool tensor of the tokens' shape (B, L), True at clean context."""
    if not isinstance(clean_mask, Tensor) or clean_mask.dtype != torch.bool:
        got = (
            f"dtype {clean_mask.dtype}"
            if isinstance(clean_mask, Tensor)
            else (type(clean_mask).__name__)
        )
        raise ValueError(f"clean_mask must be a bool tensor, True at the positions held clean "
                         f"as context, got {got}")  # fmt: skip
    if tuple(clean_mask.shape) != tuple(shape):
        raise ValueError(f"clean_mask must have the tokens' shape (B, L) = {tuple(shape)}, got "
                         f"{tuple(clean_mask.shape)}")  # fmt: skip


def hold_clean(
    relaxed: Tensor | Bag, z_t: Tensor, x_0: Tensor, clean: Tensor, vocab_size: int
) -> tuple[Tensor | Bag, Tensor]:
    """The curriculum's relaxed input and its argmax z_t with the ``clean`` positions holding
    x_0 exactly: a one-hot row of the soft (B, L, K) input, or a bag whose first id is x_0 with
    weight 1 (the others 0)."""
    z_t = torch.where(clean, x_0, z_t)
    if isinstance(relaxed, Bag):
        first = torch.zeros_like(relaxed.ids, dtype=torch.bool)
        first[..., 0] = True
        held = clean.unsqueeze(-1)
        ids = torch.where(held & first, x_0.unsqueeze(-1), relaxed.ids)
        weights = torch.where(held, first.to(relaxed.weights.dtype), relaxed.weights)
        return Bag(ids, weights), z_t
    one_hot = torch.nn.functional.one_hot(x_0, vocab_size).to(relaxed.dtype)
    return torch.where(clean.unsqueeze(-1), one_hot, relaxed), z_t


def random_clean_mask(
    batch_size: int,
    length: int,
    *,
    share: float = 0.25,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Bool[Tensor, "b l"]:
    """A (B, L) bool mask for training with clean context: about ``share`` of the rows keep
    clean positions (True), the other rows none.

    A chosen row cuts at two points 0 < a < b <= L (uniform) and keeps, with probability 1/3
    each, the prefix [0, a) (a prompt), the span [a, b) (context in the middle) or everything but
    [a, b) (infilling); at least one position of every row stays noisy. Consumes the same
    random numbers whatever ``share`` is: three uniforms and two cut points per row.
    """
    check_count(batch_size, "batch_size")
    check_count(length, "length")
    check_range(share, "share", 0.0, 1.0)
    dev = (
        torch.device(device)
        if device is not None
        else (generator.device if generator is not None else torch.device("cpu"))
    )
    u = torch.rand(batch_size, 2, generator=generator, device=dev)
    cuts = torch.randint(1, max(length, 2), (batch_size, 2), generator=generator, device=dev)
    a, b = cuts.min(-1).values, cuts.max(-1).values
    b = torch.where(a == b, torch.full_like(b, length), b)  # a nonempty gap [a, b)
    pos = torch.arange(length, device=dev)
    after_a, before_b = pos >= a.unsqueeze(-1), pos < b.unsqueeze(-1)
    span = after_a & before_b
    kind = (u[:, 1] * 3).long().unsqueeze(-1)  # 0 prefix, 1 middle span, 2 infill
    clean = torch.where(kind == 0, ~after_a, torch.where(kind == 1, span, ~span))
    clean = clean & (u[:, :1] < share)
    if length == 1:
        clean = torch.zeros_like(clean)
    return clean & ~clean.all(-1, keepdim=True)  # never a row without a noisy position
