"""Tensor type aliases and the argument checks every public function uses.

Shapes are jaxtyping strings: ``b`` batch, ``l`` sequence length, ``k`` vocabulary size.
``typechecked`` checks shapes and dtypes with beartype at call time, naming the offending
argument; the ``check_*`` helpers check values (token ranges, probabilities, finiteness).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from beartype import beartype
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

Tokens = Int[Tensor, "b l"]
"""Token ids, shape (B, L)."""
Logits = Float[Tensor, "b l k"]
"""Unnormalised log-probabilities over the vocabulary, shape (B, L, K)."""
Probs = Float[Tensor, "b l k"]
"""Probabilities over the vocabulary (rows sum to one), shape (B, L, K)."""
Times = Float[Tensor, " b"]
"""One time or noise level per sequence, shape (B,)."""
PerToken = Float[Tensor, "b l"]
"""A per-token quantity (a loss, a weight), shape (B, L)."""
Bag = tuple[Int[Tensor, "b l n"], Float[Tensor, "b l n"]]
"""Top-n (ids, weights) per position: a sparse soft input, embedded as a weighted bag."""
DenoiserInput = Tokens | Probs | Bag


@runtime_checkable
class Denoiser(Protocol):
    """Anything that maps a noisy sequence and a noise level to logits over the clean token.

    ``z_t`` is token ids (B, L), soft inputs (B, L, K) (the curriculum's relaxed latent), or a
    top-n bag ``(ids, weights)`` each (B, L, n). ``sigma`` is the noise level -log(alpha_t), (B,).
    Returns logits (B, L, K). No base class: a bare ``nn.Module`` or a lambda fits.
    """

    def __call__(self, z_t: Any, sigma: Tensor, **cond: Any) -> Tensor: ...


_F = TypeVar("_F", bound=Callable[..., Any])
_checks_enabled = True


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """Skip value checks (token ranges, NaN scans) inside this block, e.g. in a tuned hot loop."""
    global _checks_enabled
    previous, _checks_enabled = _checks_enabled, False
    try:
        yield
    finally:
        _checks_enabled = previous


def checks_enabled() -> bool:
    # Value checks synchronise with the device and confuse graph capture: skip them when compiling.
    return _checks_enabled and not torch.compiler.is_compiling()


def typechecked(fn: _F) -> _F:
    """Check jaxtyping annotations with beartype on every call.

    Skipped while ``torch.compile`` traces (jaxtyping+beartype raise false errors there).
    """
    checked = jaxtyped(typechecker=beartype)(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        return checked(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_tokens(x: Tensor, vocab_size: int, name: str) -> None:
    """Raise ValueError unless ``x`` is an integer tensor with values in [0, vocab_size)."""
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {x.dtype}")
    if checks_enabled() and x.numel() > 0:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"{name} holds token ids in [{lo}, {hi}], outside [0, {vocab_size}) "
                f"for vocab_size={vocab_size}"
            )


def check_range(
    x: Tensor | float, name: str, lo: float, hi: float, *, open_lo: bool = False
) -> None:
    """Raise ValueError unless every value of ``x`` is finite and in [lo, hi].

    With ``open_lo`` the interval is (lo, hi].
    """
    if not checks_enabled():
        return
    t = torch.as_tensor(x)
    if t.numel() == 0:
        return
    bad = ~torch.isfinite(t) | (t > hi) | ((t <= lo) if open_lo else (t < lo))
    if bool(bad.any()):
        value = t[bad].flatten()[0].item()
        interval = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
        raise ValueError(f"{name} must lie in {interval}, got {value}")


def check_finite(x: Tensor, name: str) -> None:
    """Raise ValueError if ``x`` holds NaN or infinite values (-inf is allowed in logits)."""
    if checks_enabled() and x.numel() > 0:
        if bool(torch.isnan(x).any()) or bool(torch.isposinf(x).any()):
            raise ValueError(f"{name} contains NaN or +inf values")


def check_vocab_size(vocab_size: int, name: str = "vocab_size") -> None:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 2:
        raise ValueError(f"{name} must be an integer >= 2, got {vocab_size!r}")


def check_logits(logits: Tensor, vocab_size: int, name: str = "logits") -> None:
    """Raise ValueError unless logits have K = vocab_size on the last axis and hold no NaN."""
    if logits.shape[-1] != vocab_size:
        raise ValueError(
            f"{name} has {logits.shape[-1]} classes on its last axis, "
            f"expected vocab_size={vocab_size}"
        )
    check_finite(logits, name)


__all__ = [
    "Bag",
    "Denoiser",
    "DenoiserInput",
    "Logits",
    "PerToken",
    "Probs",
    "Times",
    "Tokens",
    "check_finite",
    "check_logits",
    "check_range",
    "check_tokens",
    "check_vocab_size",
    "call_denoiser",
    "checks_enabled",
    "typechecked",
    "unchecked",
]


def call_denoiser(
    denoiser: Denoiser,
    z_t: Any,
    sigma: Tensor,
    *,
    batch_size: int,
    length: int,
    vocab_size: int,
    **cond: Any,
) -> Tensor:
    """Call ``denoiser(z_t, sigma, **cond)`` and check it returned finite (B, L, K) logits."""
    logits = denoiser(z_t, sigma, **cond)
    expected = (batch_size, length, vocab_size)
    if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"denoiser returned logits of shape {got}, expected (B, L, K) = {expected}"
        )
    if checks_enabled() and bool(torch.isnan(logits).any()):
        raise ValueError("denoiser returned NaN logits")
    return logits
