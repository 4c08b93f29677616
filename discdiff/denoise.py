"""The one seam between the library and a user's backbone.

Every call of a denoiser in discdiff goes through ``denoise``: it turns the signal level alpha_t
into the noise level sigma = -log(alpha_t) that the denoiser sees (``noise_level``, the only
place that formula lives), calls ``denoiser(z_t, sigma, **cond)`` with the caller's
conditioning mapping, and checks the output once: a float (B, L, K) tensor without NaN.
Samplers, losses and distillers trust the logits they get from here: the check is one
reduction, and on an accelerator an asynchronous assertion (no host sync).

A denoiser may also offer the ``FusedHead`` protocol: its last hidden state and its output
projection, so that a training loss can be computed from them without ever holding the
(B, L, K) logits (``discdiff.losses.fused``). ``denoise_head`` is the seam for that call, with
the same checks on the hidden state.

Nothing fails silently here. An exception raised inside the denoiser gets a note (Python 3.11+)
saying what it was given: token ids (dtype, shape, range, from which ``vocab_size``), or the
curriculum's relaxed input and what the model must accept for it. A denoiser whose signature
does not take ``(z_t, sigma, **cond)`` gets a TypeError that says so, one that returns anything
but a logits tensor an error that says which attribute holds it. ``warn_if_training`` warns,
once per model, when a model is sampled in training mode (dropout active).
"""

from __future__ import annotations

import inspect
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from discdiff.checks import output_checks_enabled, reject_if
from discdiff.typing import Bag, Denoiser, DenoiserInput, Times

__all__ = [
    "FusedHead",
    "Head",
    "denoise",
    "denoise_head",
    "has_fused_head",
    "noise_level",
    "warn_if_training",
]


@runtime_checkable
class FusedHead(Protocol):
    """A denoiser that exposes what its output layer is made of, so that a loss can be fused
    with it: ``denoiser(z_t, sigma, **cond) == hidden @ weight.T + bias`` with

    - ``hidden_states(z_t, sigma, **cond)`` -> (B, L, D): the input of the vocabulary projection
      (for the DiT: after the final norm and adaLN modulation), in the dtype the projection's
      matmul would see;
    - ``output_projection()`` -> (weight (K, D), bias (K,) or None): exactly K rows, the
      logits' classes, as views of the live parameters (gradients flow to them). Called right
      after ``hidden_states``.

    No base class: any module with the two methods fits. ``discdiff.models.DiT`` implements it.
    A ``torch.compile`` wrapper does not count (its methods are not compiled; compile in place
    with ``model.compile()``), nor does a DDP wrapper (its forward must run).
    """

    def hidden_states(self, z_t: DenoiserInput, sigma: Times, **cond: Any) -> Tensor: ...

    def output_projection(self) -> tuple[Tensor, Tensor | None]: ...


def has_fused_head(denoiser: Any) -> bool:
    """Whether a loss goes through ``denoise_head`` for this denoiser (see ``FusedHead``).

    Not while ``torch.compile`` traces the loss itself: the fused loss's block loop is for eager
    execution (compile the model in place instead), and a traced step sees the logits.
    """
    if torch.compiler.is_compiling():
        return False
    if isinstance(denoiser, torch.nn.Module) and hasattr(denoiser, "_orig_mod"):
        return False  # torch.compile's wrapper: only its __call__ is compiled
    return isinstance(denoiser, FusedHead)


@dataclass(frozen=True)
class Head:
    """The last hidden state (B, L, D) and the output projection (K, D), (K,) or None."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None


def noise_level(alpha_t: Tensor | float, batch_size: int, device: torch.device) -> Tensor:
    """sigma = -log(alpha_t) as float32 (B,): +inf at alpha_t = 0, 0 at alpha_t = 1.

    ``alpha_t`` is a float, a 0-d tensor, (B,) or (B, 1) (one level per sequence: the
    denoisers' time conditioning is per sequence). Computed in float64 before the cast.
    """
    alpha = torch.as_tensor(alpha_t, dtype=torch.float64, device=device).reshape(-1)
    sigma = -torch.log(alpha.clamp(min=0.0, max=1.0))
    return sigma.to(torch.float32).expand(batch_size).contiguous()


def _check_call(denoiser: Any, cond: Any, role: str) -> None:
    if not callable(denoiser):
        raise TypeError(
            f"{role} must be a denoiser: a callable (z_t, sigma, **cond) -> logits (B, L, K), "
            f"got {type(denoiser).__name__}"
        )
    if cond is not None and not isinstance(cond, Mapping):
        raise TypeError(
            "cond must be a mapping of the denoiser's keyword arguments (e.g. {'label': y}), "
            f"got {type(cond).__name__}"
        )


def denoise(
    denoiser: Denoiser,
    z_t: DenoiserInput,
    sigma: Tensor,
    *,
    vocab_size: int,
    cond: Mapping[str, Any] | None = None,
    role: str = "denoiser",
) -> Tensor:
    """``denoiser(z_t, sigma, **cond)``, checked once: float logits (B, L, vocab_size), no NaN.

    ``z_t`` is token ids (B, L), soft inputs (B, L, K) or a ``Bag``; ``sigma`` (B,) float32 from
    ``noise_level``; ``cond`` the caller's conditioning, apart from any sampler or loss option.
    ``role`` names the callable in errors ("teacher", "student").
    """
    _check_call(denoiser, cond, role)
    logits = _call(denoiser, denoiser, z_t, sigma, cond, vocab_size, role)
    b, length = z_t.shape[0], z_t.shape[1]
    expected = (b, length, vocab_size)
    if not isinstance(logits, Tensor):
        raise ValueError(
            f"{role} returned a {type(logits).__name__}, expected the logits tensor (B, L, K) = "
            f"{expected}: {_unwrap_hint(logits)}"
        )
    if tuple(logits.shape) != expected:
        got = tuple(logits.shape)
        hint = ""
        if isinstance(logits, Tensor) and logits.ndim == 3 and logits.shape[:2] == (b, length):
            hint = (
                f": it returns {logits.shape[-1]} classes but vocab_size={vocab_size}; give the "
                "diffusion, distiller or sampler the vocab_size the model was built for "
                "(a masked model returns K + 1 logits with MaskedDiffusion(K), mask id K, or "
                "K logits with its own mask id: MaskedDiffusion(K, mask_id=m))"
            )
        raise ValueError(
            f"{role} returned logits of shape {got}, expected (B, L, K) = {expected}" + hint
        )
    if not logits.dtype.is_floating_point:
        raise ValueError(f"{role} returned {logits.dtype} logits; expected a float dtype")
    if output_checks_enabled() and logits.numel() > 0:
        # One pass, no (B, L, K) mask: a row maximum is NaN if the row holds a NaN (max
        # propagates it), +inf for +inf, and -inf when no class is possible.
        top = logits.detach().amax(-1)
        reject_if(
            ~torch.isfinite(top),
            f"{role} returned logits with NaN or +inf values, or a row with no finite class",
        )
    return logits


def denoise_head(
    denoiser: FusedHead,
    z_t: DenoiserInput,
    sigma: Tensor,
    *,
    vocab_size: int,
    cond: Mapping[str, Any] | None = None,
    role: str = "denoiser",
) -> Head:
    """``denoiser.hidden_states(z_t, sigma, **cond)`` and ``denoiser.output_projection()``,
    checked once: a float (B, L, D) hidden state without NaN or inf, a (vocab_size, D) weight
    and a (vocab_size,) bias or None. The logits ``hidden @ weight.T + bias`` are not formed.
    """
    _check_call(denoiser, cond, role)
    hidden = _call(denoiser.hidden_states, denoiser, z_t, sigma, cond, vocab_size, role)
    weight, bias = denoiser.output_projection()
    b, length = z_t.shape[0], z_t.shape[1]
    if not isinstance(hidden, Tensor) or hidden.ndim != 3 or hidden.shape[:2] != (b, length):
        got = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
        raise ValueError(f"{role}.hidden_states returned {got}, expected (B, L, D) with "
                         f"(B, L) = {(b, length)}")  # fmt: skip
    if not hidden.dtype.is_floating_point:
        raise ValueError(f"{role}.hidden_states returned {hidden.dtype}; expected a float dtype")
    d = hidden.shape[-1]
    if not isinstance(weight, Tensor) or tuple(weight.shape) != (vocab_size, d):
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(
            f"{role}.output_projection() returned a weight of shape {got}, expected (K, D) = "
            f"{(vocab_size, d)} (exactly the K classes of the logits, no padding rows)"
        )
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (vocab_size,)):
        got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"{role}.output_projection() returned a bias of shape {got}, "
                         f"expected (K,) = ({vocab_size},) or None")  # fmt: skip
    if output_checks_enabled() and hidden.numel() > 0:
        # One pass over (B, L, D), D << K: amax propagates NaN, and |h| catches both infinities.
        top = hidden.detach().abs().amax(-1)
        reject_if(~torch.isfinite(top), f"{role} returned a hidden state with NaN or inf values")
    return Head(hidden, weight, bias)


# ------------------------------------------------------------------------------------------------
# What an exception inside the denoiser is told, and the training-mode warning
# ------------------------------------------------------------------------------------------------


def _call(
    fn: Callable[..., Any], denoiser: Any, z_t: DenoiserInput, sigma: Tensor,
    cond: Mapping[str, Any] | None, vocab_size: int, role: str,
) -> Any:  # fmt: skip
    """``fn(z_t, sigma, **cond)``; an exception raised inside gets a note on its inputs."""
    try:
        return fn(z_t, sigma, **(cond or {}))
    except Exception as err:
        if isinstance(err, TypeError):  # maybe the call itself: forward(self, z) without sigma
            problem = _signature_problem(fn, denoiser, z_t, sigma, cond, role)
            if problem is not None:
                raise TypeError(problem) from err
        if hasattr(err, "add_note"):  # Python >= 3.11; on 3.10 the error goes on unchanged
            err.add_note(_input_note(z_t, sigma, cond, vocab_size, role))
        raise


def _signature_problem(
    fn: Callable[..., Any], denoiser: Any, z_t: Any, sigma: Tensor,
    cond: Mapping[str, Any] | None, role: str,
) -> str | None:  # fmt: skip
    """Why ``fn`` cannot take ``(z_t, sigma, **cond)``, or None when it can (the TypeError
    came from inside it)."""
    target = fn.forward if isinstance(fn, nn.Module) else fn  # a module's __call__ is (*a, **k)
    try:
        inspect.signature(target).bind(z_t, sigma, **(cond or {}))
        return None
    except ValueError:  # no signature to read (a builtin): nothing to add
        return None
    except TypeError as mismatch:
        keys = f" with cond keys {sorted(cond)}" if cond else ""
        return (
            f"{role} {type(denoiser).__name__} cannot be called as denoiser(z_t, sigma, "
            f"**cond){keys}: {mismatch}. The denoiser is called as denoiser(z_t, sigma, "
            "**cond): its forward must take the noisy tokens z_t and the noise level sigma (B,) "
            "(a model without time conditioning ignores sigma), plus one keyword per key of cond"
        )


def _unwrap_hint(output: Any) -> str:
    wrap = "; discdiff.adapters.as_denoiser(model) does it for any model"
    if isinstance(getattr(output, "logits", None), Tensor):
        return ("return the logits tensor, e.g. `.logits` of this output (return output.logits)"
                + wrap)  # fmt: skip
    if isinstance(output, (tuple, list)):
        return ("return the logits tensor, e.g. `.logits` of a model output or the tensor "
                "inside this tuple (output[0]), not the tuple" + wrap)  # fmt: skip
    return "return the logits tensor, e.g. `.logits` of a model output" + wrap


def _input_note(
    z_t: Any, sigma: Tensor, cond: Mapping[str, Any] | None, vocab_size: int, role: str
) -> str:
    """What the denoiser was given, computed only once it has failed."""
    extra = f"; sigma {_shape_of(sigma)}" + (f"; cond keys {sorted(cond)}" if cond else "")
    if isinstance(z_t, Bag):
        return (
            f"discdiff: {role} was called with the curriculum's relaxed top-k input, a Bag(ids "
            f"{z_t.ids.dtype} {tuple(z_t.ids.shape)}, weights {z_t.weights.dtype} "
            f"{tuple(z_t.weights.shape)}) over vocab_size={vocab_size}{extra}. A model trained "
            "with GaussianCurriculum(top_k=n) must accept a discdiff.typing.Bag and embed it as "
            "the weighted sum of its ids' embeddings (an embedding bag)."
        )
    if isinstance(z_t, Tensor) and z_t.is_floating_point():
        return (
            f"discdiff: {role} was called with the curriculum's relaxed input: soft "
            f"probabilities z_t {z_t.dtype} of shape (B, L, K) = {tuple(z_t.shape)} over "
            f"vocab_size={vocab_size}{extra}. A model trained with GaussianCurriculum must "
            "accept a float (B, L, K) tensor besides (B, L) ids (embed it as z_t @ E); it "
            "comes in the model's parameter dtype, or in GaussianCurriculum(dtype=...)."
        )
    ids = _ids_of(z_t)
    return (f"discdiff: {role} was called with token ids z_t {ids}, drawn from "
            f"vocab_size={vocab_size}{extra}")  # fmt: skip


def _shape_of(x: Any) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _ids_of(z_t: Any) -> str:
    if not isinstance(z_t, Tensor) or z_t.numel() == 0:
        return _shape_of(z_t)
    try:  # the device may be in an error state after a failed kernel: the range is optional
        lo, hi = torch.aminmax(z_t.detach())
        return f"{_shape_of(z_t)}, ids in [{int(lo)}, {int(hi)}]"
    except RuntimeError:
        return _shape_of(z_t)


_warned: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_warned_lock = threading.Lock()
_TRAIN_MODE_LAYERS = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def warn_if_training(denoiser: Any, role: str = "denoiser") -> None:
    """Warn, once per model object, when a model about to be sampled is in training mode with
    layers that behave differently there (dropout, batch norm): its samples are then random
    beyond the generator, and two runs with the same seed differ. The mode is left alone (the
    caller may be mid-training); the warning names the fix, ``.eval()``."""
    if not isinstance(denoiser, nn.Module) or not denoiser.training or denoiser in _warned:
        return
    active = [
        type(m).__name__
        for m in denoiser.modules()
        if m.training and isinstance(m, _TRAIN_MODE_LAYERS) and getattr(m, "p", 1.0) > 0
    ]
    if not active:
        return
    with _warned_lock:
        if denoiser in _warned:
            return
        _warned.add(denoiser)
    warnings.warn(
        f"{role} {type(denoiser).__name__} is sampled in training mode ({active[0]} active), so "
        "two samples with the same seed differ: call model.eval() before sampling (and "
        "model.train() to resume training). The mode is left as it is; this warning is shown "
        "once per model.",
        UserWarning,
        stacklevel=3,
    )
