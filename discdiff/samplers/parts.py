"""The options of a sampling run as small validated parts, built once and handed to ``run``.

- ``Filter``: top-k / nucleus filtering of x_hat, shared by the steps and the tail;
- ``Prompt``: tokens (B, L) held at the positions of a mask (B, L), in z_1, after every step
  and in the output;
- ``Guidance``: classifier-free guidance, the scale gamma and the unconditional conditioning;
- ``Finish``: the tail call that ends a sample (greedy or MAP; ``None`` in ``run`` is the "none"
  tail, which steps down to t = 0).

Each part checks its fields when it is built, and its errors name the field and the keyword of
``sample_uniform`` / ``sample_masked`` that fills it. The parts are frozen: a run never changes
them, so one part can serve many runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from discdiff.samplers.categorical import check_filters
from discdiff.samplers.guidance import guided_logits
from discdiff.samplers.tails import greedy_tail, map_tail
from discdiff.typing import as_float, check_count, check_tokens

__all__ = ["Filter", "Finish", "Guidance", "Prediction", "Prompt"]


@dataclass(frozen=True, eq=False)
class Prediction:
    """What one prediction gives a step: ``logits`` (B, L, K), the conditional ones under
    guidance, with the unconditional ``uncond`` (B, L, K) and the scale ``gamma`` (both None
    without guidance). A step draws from the guided transition when ``uncond`` is set."""

    logits: Float[Tensor, "b l k"]
    uncond: Float[Tensor, "b l k"] | None = None
    gamma: float | None = None

    def shown(self) -> Float[Tensor, "b l k"]:
        """What a callback sees: the logits, or the guided log-probabilities."""
        if self.uncond is None:
            return self.logits
        assert self.gamma is not None
        return guided_logits(self.logits, self.uncond, self.gamma)


@dataclass(frozen=True)
class Filter:
    """Top-k / nucleus filtering of x_hat before each step's law and in the tail.

    ``top_k``: None or a positive int (keep the k most probable classes); ``top_p``: None or a
    number in (0, 1] (keep the smallest set of mass >= top_p). Both None: no filtering.
    """

    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        top_k = None if self.top_k is None else check_count(self.top_k, "top_k")
        top_p = None if self.top_p is None else as_float(self.top_p, "top_p")
        check_filters(top_k, top_p)
        object.__setattr__(self, "top_k", top_k)
        object.__setattr__(self, "top_p", top_p)


@dataclass(frozen=True, eq=False)
class Prompt:
    """Given tokens: ``tokens`` (B, L) int ids held where ``mask`` (B, L) bool is True.

    Calling it on z (B, L) returns z with the prompt's positions set to its tokens. Build one
    for a sampler's (B, L) and vocabulary with ``Prompt.of``, which also checks the ids.
    """

    tokens: Int[Tensor, "b l"]
    mask: Bool[Tensor, "b l"]

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, Tensor) or self.tokens.ndim != 2:
            raise ValueError(
                f"prompt must be (B, L) token ids (Prompt.tokens), got {_describe(self.tokens)}"
            )
        if self.tokens.dtype.is_floating_point or self.tokens.dtype == torch.bool:
            raise TypeError(
                f"prompt (Prompt.tokens) must hold integer token ids, got {self.tokens.dtype}"
            )
        shape = tuple(self.tokens.shape)
        mask = self.mask
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
            raise ValueError(
                f"prompt_mask must be a (B, L) = {shape} bool tensor (Prompt.mask), got "
                f"{_describe(mask)}"
            )
        if mask.device != self.tokens.device:
            raise ValueError(
                f"prompt_mask (Prompt.mask) is on {mask.device}, its tokens on "
                f"{self.tokens.device}: put both on one device"
            )

    @staticmethod
    def of(
        prompt: Tensor | None,
        prompt_mask: Tensor | None,
        shape: tuple[int, int],
        vocab_size: int,
    ) -> Prompt | None:
        """The prompt of a (B, L) = ``shape`` sample, or None when neither is given.

        ``prompt_mask`` defaults to every position; ``prompt`` must hold ids in [0, vocab_size).
        """
        if prompt is None and prompt_mask is None:
            return None
        if prompt is None:
            raise ValueError("prompt_mask needs prompt: the (B, L) token ids it marks")
        if prompt.shape != shape:
            raise ValueError(
                f"prompt must be (B, L) = {shape} token ids, got {tuple(prompt.shape)}"
            )
        check_tokens(prompt, vocab_size, "prompt")
        if prompt_mask is None:
            prompt_mask = torch.ones(shape, dtype=torch.bool, device=prompt.device)
        if isinstance(prompt_mask, Tensor) and prompt_mask.device != prompt.device:
            prompt_mask = prompt_mask.to(prompt.device)
        return Prompt(prompt.long(), prompt_mask)

    def to(self, device: torch.device) -> Prompt:
        """This prompt on ``device``."""
        return Prompt(self.tokens.to(device), self.mask.to(device))

    def __call__(self, z: Int[Tensor, "b l"]) -> Int[Tensor, "b l"]:
        return torch.where(self.mask, self.tokens, z)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: each prediction also calls the denoiser with ``uncond`` (the
    conditioning of the unconditional prediction, e.g. ``{"label": null_label}``; ``{}`` calls it
    without conditioning), and each step draws from q_c^scale q_u^(1 - scale), renormalised
    (``discdiff.samplers.guidance``). ``scale`` (gamma) is a finite number >= 0: 1 is the
    conditional sampler, 0 the unconditional one.
    """

    scale: float
    uncond: Mapping[str, Any]

    def __post_init__(self) -> None:
        gamma = as_float(self.scale, "guidance_scale (Guidance.scale)")
        if not (gamma >= 0 and math.isfinite(gamma)):
            raise ValueError(
                f"guidance_scale (Guidance.scale) must be a finite number >= 0, got {self.scale!r}"
            )
        if not isinstance(self.uncond, Mapping):
            raise ValueError(
                "guidance_scale needs uncond (Guidance.uncond): the denoiser's conditioning for "
                "the unconditional prediction, e.g. uncond={'label': null_label} ({} calls it "
                f"without conditioning), got {self.uncond!r}"
            )
        object.__setattr__(self, "scale", gamma)

    @staticmethod
    def of(guidance_scale: Any, uncond: Any) -> Guidance | None:
        """The guidance of the samplers' ``guidance_scale`` / ``uncond`` keywords (None: off)."""
        if guidance_scale is None:
            if uncond is not None:
                raise ValueError("uncond is only used with guidance_scale: pass both, or neither")
            return None
        return Guidance(guidance_scale, uncond)


@dataclass(frozen=True)
class Finish:
    """The tail call that ends a sample at t_min: a mode per token of the (filtered, guided)
    x_hat (``discdiff.samplers.tails``).

    ``kind`` "greedy" is argmax x_hat (the paper's tail), "map" the mode of the denoising
    posterior q(z_0 | z_t, x_hat) of the uniform process. With ``mask_id`` (the masked process)
    only the positions still masked are filled, with argmax x_hat, the mask class excluded (a
    masked token's denoising posterior is x_hat itself, so there "map" is "greedy").
    """

    kind: Literal["greedy", "map"] = "greedy"
    filter: Filter = Filter()
    mask_id: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("greedy", "map"):
            raise ValueError(
                f"kind (Finish.kind, the tail) must be 'greedy' or 'map', got {self.kind!r}; "
                "the 'none' tail is no Finish (run(..., finish=None))"
            )
        if not isinstance(self.filter, Filter):
            raise ValueError(f"filter (Finish.filter) must be a Filter, got {self.filter!r}")
        if self.mask_id is not None:
            object.__setattr__(self, "mask_id", check_count(self.mask_id, "mask_id", minimum=0))

    def __call__(
        self, pred: Prediction, z: Int[Tensor, "b l"], alpha_t: float
    ) -> Int[Tensor, "b l"]:
        """The tokens at t = 0 from ``pred`` at level ``alpha_t`` and the tokens ``z`` there."""
        top_k, top_p = self.filter.top_k, self.filter.top_p
        guided = {} if pred.uncond is None else {"uncond": pred.uncond,
                                                 "guidance_scale": pred.gamma}  # fmt: skip
        if self.mask_id is not None:
            z_0 = greedy_tail(pred.logits, exclude=self.mask_id, top_k=top_k, top_p=top_p,
                              **guided)  # fmt: skip
            return torch.where(z == self.mask_id, z_0, z)
        if self.kind == "greedy":
            return greedy_tail(pred.logits, top_k=top_k, top_p=top_p, **guided)
        return map_tail(pred.logits, z, alpha_t, top_k=top_k, top_p=top_p, **guided)


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return repr(x)
