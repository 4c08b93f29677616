"""The masked (absorbing-state) process, MDLM: q(z_t | x) = Cat(alpha_t x + (1 - alpha_t) m).

``x_0`` clean ids (B, L); ``alpha_t`` the signal level in [0, 1], (B, 1) or (B, L); m the mask
id. ``MaskedProcess(K)`` puts the mask at id K, so its denoiser returns K + 1 logits (SUBS: the
mask logit is ignored); ``MaskedProcess(K, mask_id=m)`` uses an id m < K of the model's own
vocabulary and K logits. The prior at t = 1 is all masks. A masked position is visible as such,
so clean context needs no per-token levels: clean positions are simply never masked.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff import losses
from discdiff.denoise import Head, noise_level
from discdiff.losses._common import Reduction
from discdiff.processes._common import LevelTensor, check_index, float_dtype, survivors
from discdiff.processes.base import Process
from discdiff.typing import (
    check_range,
    check_tokens,
    check_vocab_size,
    checks_enabled,
    reject_if,
    typechecked,
)

__all__ = ["MaskedProcess", "masked_corrupt", "masked_marginal"]


@typechecked
def masked_marginal(
    x_0: Int[Tensor, "b l"], alpha_t: LevelTensor, mask_id: int, vocab_size: int
) -> Float[Tensor, "b l k"]:
    """q(z_t | x_0) = alpha_t onehot(x_0) + (1 - alpha_t) onehot(mask_id), shape (B, L, K).

    K = ``vocab_size`` counts the mask id, which must lie in [0, K). A position whose clean token
    already is ``mask_id`` stays there with probability one.
    """
    check_vocab_size(vocab_size)
    check_index(mask_id, "mask_id", vocab_size)
    check_tokens(x_0, vocab_size, "x_0")
    check_range(alpha_t, "alpha_t", 0.0, 1.0)
    dtype = float_dtype(alpha_t.dtype)
    alpha = alpha_t.to(dtype).expand(x_0.shape)
    probs = torch.zeros(*x_0.shape, vocab_size, dtype=dtype, device=x_0.device)
    probs[..., mask_id] = 1 - alpha
    return probs.scatter_add_(-1, x_0.long().unsqueeze(-1), alpha.unsqueeze(-1))


@typechecked
def masked_corrupt(
    x_0: Int[Tensor, "b l"],
    alpha_t: LevelTensor,
    mask_id: int,
    *,
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, "b l"]:
    """Draw z_t ~ q(z_t | x_0) of the masked process: keep x_0 w.p. alpha_t, else ``mask_id``.

    Shape (B, L), dtype of ``x_0``. Pass ``vocab_size`` to also check that ids lie in [0, K).
    """
    if vocab_size is not None:
        check_vocab_size(vocab_size)
        check_index(mask_id, "mask_id", vocab_size)
        check_tokens(x_0, vocab_size, "x_0")
    else:
        if not isinstance(mask_id, int) or isinstance(mask_id, bool) or mask_id < 0:
            raise ValueError(f"mask_id must be a non-negative integer, got {mask_id!r}")
        check_tokens(x_0, torch.iinfo(torch.int64).max, "x_0")
    if checks_enabled() and x_0.numel() > 0:
        reject_if(x_0 == mask_id, f"x_0 holds the mask id mask_id={mask_id}; clean data never "
                  "does (the mask token is the extra id K of a masked model, or the model's "
                  "own [MASK] id with MaskedDiffusion(K, mask_id=m))")  # fmt: skip
    check_range(alpha_t, "alpha_t", 0.0, 1.0)
    keep = survivors(x_0, alpha_t, generator)
    return torch.where(keep, x_0, torch.full_like(x_0, mask_id))


class MaskedProcess(Process):
    """The masked process and the terms of its NELBO (``discdiff.losses.masked_nelbo``,
    ``masked_prior_kl``, ``masked_reconstruction``).

    ``mask_id=None`` (or K): ``vocab_size`` data ids and the mask at the extra id K =
    ``vocab_size``, so the denoiser returns K + 1 logits. ``mask_id=m`` in [0, K): the mask is
    an id of the model's own vocabulary (a [MASK] token), the denoiser returns K logits and m
    is never a data id nor sampled (SUBS ignores its logit). ``time_conditioned``: whether the
    denoiser sees the noise level; if not (MDLM's default) it gets sigma = 0.
    """

    needs_token_levels = False

    name = "masked"

    def __init__(
        self, vocab_size: int, time_conditioned: bool = False, mask_id: int | None = None
    ) -> None:
        check_vocab_size(vocab_size)
        self.vocab_size = vocab_size
        is_int = isinstance(mask_id, int) and not isinstance(mask_id, bool)
        if mask_id is not None and not (is_int and 0 <= mask_id <= vocab_size):
            raise ValueError(
                f"mask_id must be an id of the model's vocabulary, an int in [0, {vocab_size}) "
                f"(the model returns {vocab_size} logits), or None / {vocab_size} for the extra "
                f"mask id {vocab_size} (the model returns {vocab_size + 1}), got {mask_id!r}"
            )
        if mask_id is None or mask_id == vocab_size:
            self.mask_id, self.model_vocab_size = vocab_size, vocab_size + 1
        elif vocab_size < 3:  # the prior spreads alpha_1 over the K - 1 other ids: two at least
            raise ValueError(f"MaskedProcess(vocab_size={vocab_size}, mask_id={mask_id}) needs "
                             "vocab_size >= 3: two data ids besides the mask")  # fmt: skip
        else:
            self.mask_id, self.model_vocab_size = mask_id, vocab_size
        self.time_conditioned = bool(time_conditioned)

    def __repr__(self) -> str:
        k, timed, m = self.vocab_size, self.time_conditioned, self.mask_id
        return f"MaskedProcess(vocab_size={k}, time_conditioned={timed}, mask_id={m})"

    def check_data(self, x_0: Tensor) -> Tensor:
        """``x_0``, unless it holds the mask id (possible only with the mask inside the
        vocabulary: the extra id K is out of range already)."""
        if self.mask_id < self.vocab_size:
            reject_if(x_0 == self.mask_id, lambda: (
                f"x_0 holds the mask id mask_id={self.mask_id}; clean data never does: keep the "
                "model's [MASK] token out of the training data"))  # fmt: skip
        return x_0

    def corrupt(
        self, x_0: Tensor, alpha_t: Tensor, *, generator: torch.Generator | None = None,
        clean: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        z_t = masked_corrupt(x_0, alpha_t, self.mask_id, generator=generator)
        return z_t if clean is None else torch.where(clean, x_0, z_t)

    def prior(self, x_0: Tensor, alpha_1: Tensor) -> Tensor:
        return losses.masked_prior_kl(x_0, alpha_1, self.model_vocab_size)

    def draw_prior(
        self, shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def levels(
        self, alpha_t: Tensor, batch_size: int, device: torch.device, clean: Tensor | None = None
    ) -> Tensor:
        # One level per sequence even with clean context: a mask is visible as such.
        return noise_level(alpha_t if self.time_conditioned else 1.0, batch_size, device)

    def diffusion_loss(
        self, logits: Tensor, x_0: Tensor, z_t: Tensor, alpha_t: Tensor, dalpha_t: Tensor,
        *, mask: Tensor | None = None, reduction: Reduction = "none",
    ) -> Tensor:  # fmt: skip
        return losses.masked_nelbo(
            logits, x_0, z_t, alpha_t, dalpha_t, self.mask_id, mask=mask, reduction=reduction
        )

    def fused_diffusion_loss(
        self, head: Head, x_0: Tensor, z_t: Tensor, alpha_t: Tensor, dalpha_t: Tensor,
        *, mask: Tensor | None = None, reduction: Reduction = "none",
    ) -> Tensor:  # fmt: skip
        return losses.fused_linear_masked_nelbo(
            head.hidden, head.weight, x_0, z_t, alpha_t, dalpha_t, self.mask_id,
            bias=head.bias, mask=mask, reduction=reduction,
        )  # fmt: skip

    def reconstruction(
        self, logits: Tensor, x_0: Tensor, z_eps: Tensor, alpha_eps: Tensor
    ) -> Tensor:
        return losses.masked_reconstruction(logits, x_0, z_eps, self.mask_id)
