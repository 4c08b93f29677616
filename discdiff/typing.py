"""Tensor type aliases and the argument checks every public function uses.

Shapes are jaxtyping strings: ``b`` batch, ``l`` sequence length, ``k`` vocabulary size.
``typechecked`` checks shapes and dtypes with beartype at call time, naming the offending
argument; the ``check_*`` helpers check values (token ranges, probabilities, finiteness).
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from beartype import BeartypeConf, beartype
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


@dataclass(frozen=True)
class Bag:
    """A sparse soft input: the top-n token ids of each position and their weights.

    ``ids`` (B, L, n) int64, ``weights`` (B, L, n) float; a denoiser embeds it as the weighted
    sum of the ids' embeddings (an embedding bag). The curriculum's top-k latents use it.
    """

    ids: Int[Tensor, "b l n"]
    weights: Float[Tensor, "b l n"]

    @property
    def shape(self) -> torch.Size:
        """(B, L): the sequence shape, as for token ids."""
        return self.ids.shape[:2]


DenoiserInput = Tokens | Probs | Bag
"""What a denoiser receives: token ids (B, L), soft inputs (B, L, K) or a ``Bag``."""


@runtime_checkable
class Denoiser(Protocol):
    """Anything that maps a noisy sequence and a noise level to logits over the clean token.

    ``z_t`` is token ids (B, L), soft inputs (B, L, K) (the curriculum's relaxed latent), or a
    top-n ``Bag``. ``sigma`` is the noise level -log(alpha_t), (B,) float32. ``cond`` is the
    caller's conditioning (class labels, padding masks), passed through untouched. Returns
    logits (B, L, K). No base class: a bare ``nn.Module`` or a lambda fits.
    """

    def __call__(self, z_t: DenoiserInput, sigma: Times, **cond: Any) -> Logits: ...


_BEARTYPE = beartype(conf=BeartypeConf(is_pep484_tower=True))
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


_trusted = False


@contextlib.contextmanager
def trusted() -> Iterator[None]:
    """Inside the library, below a public call that checked its inputs: the layers there skip
    re-checking them (each check is a device sync on a GPU). A denoiser's output is still
    checked (see ``output_checks_enabled``)."""
    global _trusted
    previous, _trusted = _trusted, True
    try:
        yield
    finally:
        _trusted = previous


def checks_enabled() -> bool:
    """Whether input value checks run: not under ``unchecked()`` or ``trusted()``, nor while
    ``torch.compile`` traces (value checks synchronise and confuse graph capture)."""
    return _checks_enabled and not _trusted and not torch.compiler.is_compiling()


def output_checks_enabled() -> bool:
    """Whether a denoiser's output is checked: everywhere but under ``unchecked()`` and
    ``torch.compile``."""
    return _checks_enabled and not torch.compiler.is_compiling()


def typechecked(fn: _F) -> _F:
    """Check jaxtyping annotations with beartype on every call.

    Numbers follow the numeric tower: an ``int`` is accepted where a ``float`` is annotated.
    Skipped while ``torch.compile`` traces (jaxtyping+beartype raise false errors there).
    """
    checked = jaxtyped(typechecker=_BEARTYPE)(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        return checked(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


host_checks = 0
"""How many value checks decided on the host so far (a test counts them: each is a device sync)."""


def reject_if(bad: Tensor, message: str | Callable[[], str]) -> None:
    """Raise ValueError(message) if any element of the boolean tensor ``bad`` is set.

    The one place where a value check reaches the host. On the CPU that costs nothing; on an
    accelerator ``bool()`` would stall the stream, so there the check is enqueued as an
    asynchronous device assertion instead (it fails at the next synchronisation).
    """
    global host_checks
    if bad.device.type == "cpu" or not _async_checks:
        host_checks += 1
        if bool(bad.any()):
            raise ValueError(message() if callable(message) else message)
    else:
        text = message if isinstance(message, str) else "a discdiff value check failed"
        torch._assert_async(~bad.any(), text)


_async_checks = True


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name`` unless it is an integer
    (not a bool) >= ``minimum``."""
    try:
        if isinstance(value, (bool, float)):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def as_float(value: Any, name: str) -> float:
    """Return a Python number or a one-element tensor as a float; raise naming ``name``."""
    if isinstance(value, (bool, str, bytes)):  # float("0.5") would parse: a number is wanted
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
        return float(value)
    try:
        return float(operator.index(value)) if not isinstance(value, float) else value
    except TypeError:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None


def check_tokens(x: Tensor, vocab_size: int, name: str) -> None:
    """Raise unless ``x`` is an integer tensor with values in [0, vocab_size)."""
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {x.dtype}")
    if checks_enabled() and x.numel() > 0:

        def message() -> str:
            lo, hi = int(x.min()), int(x.max())
            return (
                f"{name} holds token ids in [{lo}, {hi}], outside [0, {vocab_size}) "
                f"for vocab_size={vocab_size}"
            )

        reject_if((x < 0) | (x >= vocab_size), message)


def check_range(
    x: Tensor | float, name: str, lo: float, hi: float, *, open_lo: bool = False
) -> None:
    """Raise ValueError unless every value of ``x`` is finite and in [lo, hi].

    With ``open_lo`` the interval is (lo, hi].
    """
    if not checks_enabled():
        return
    interval = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
    if not isinstance(x, Tensor):
        value = float(x)
        if not math.isfinite(value) or value > hi or (value <= lo if open_lo else value < lo):
            raise ValueError(f"{name} must lie in {interval}, got {value}")
        return
    if x.numel() == 0:
        return
    bad = ~torch.isfinite(x) | (x > hi) | ((x <= lo) if open_lo else (x < lo))
    reject_if(bad, lambda: f"{name} must lie in {interval}, got {x[bad].flatten()[0].item()}")


def check_finite(x: Tensor, name: str) -> None:
    """Raise ValueError if ``x`` holds NaN or +inf values (-inf is allowed in logits)."""
    if checks_enabled() and x.numel() > 0:
        # One streaming reduction (max propagates NaN) instead of a full boolean mask.
        top = x.detach().amax()
        reject_if(torch.isnan(top) | torch.isposinf(top), f"{name} contains NaN or +inf values")


def check_vocab_size(vocab_size: int, name: str = "vocab_size") -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
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
    "as_float",
    "check_count",
    "reject_if",
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
    "checks_enabled",
    "output_checks_enabled",
    "trusted",
    "typechecked",
    "unchecked",
]

