"""The argument checks every public function uses, and the switches that turn them off.

``typechecked`` checks jaxtyping annotations (shapes, dtypes) with beartype at call time, naming
the offending argument in one line; the ``check_*`` helpers check values (token ranges,
probabilities, finiteness) and raise errors that name the argument and what to pass instead.

Two switches skip value checks inside a ``with`` block: ``unchecked()`` (a user's tuned hot loop)
and ``trusted()`` (the library's own layers below a public call that checked its inputs). Both
live in ``contextvars``: each thread and each asyncio task sees its own value, so a sampler
running in one thread never silences the checks of a call in another, and every block restores
exactly the value it found (``ContextVar.reset``). host_checks (how many value checks were
decided on the host) is counted per context too.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import operator
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import torch
from beartype import BeartypeConf, beartype
from jaxtyping import TypeCheckError, jaxtyped
from torch import Tensor

__all__ = [
    "as_float",
    "check_count",
    "check_finite",
    "check_generator",
    "check_logits",
    "check_model_tokens",
    "check_range",
    "check_schedule",
    "check_tokens",
    "check_vocab_size",
    "check_x0",
    "checks_enabled",
    "host_check_count",
    "output_checks_enabled",
    "reject_if",
    "trusted",
    "typechecked",
    "unchecked",
]

# --------------------------------------------------------------------------------------------
# The switches (per thread, per asyncio task)
# --------------------------------------------------------------------------------------------

_checks_on: ContextVar[bool] = ContextVar("discdiff_checks_on", default=True)
_trusted: ContextVar[bool] = ContextVar("discdiff_trusted", default=False)
_host_checks: ContextVar[int] = ContextVar("discdiff_host_checks", default=0)


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """Skip value checks (token ranges, NaN scans) inside this block, e.g. in a tuned hot loop.

    Only in the calling thread or asyncio task: other threads keep their checks."""
    if torch.compiler.is_compiling():  # value checks are off while tracing; Dynamo cannot
        yield  # trace ContextVar.set
        return
    token = _checks_on.set(False)
    try:
        yield
    finally:
        _checks_on.reset(token)


@contextlib.contextmanager
def trusted() -> Iterator[None]:
    """Inside the library, below a public call that checked its inputs: the layers there skip
    re-checking them (each check is a device sync on a GPU). A denoiser's output is still
    checked (see ``output_checks_enabled``). Per thread and asyncio task, like ``unchecked``."""
    if torch.compiler.is_compiling():  # value checks are off while tracing; Dynamo cannot
        yield  # trace ContextVar.set
        return
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


def checks_enabled() -> bool:
    """Whether input value checks run: not under ``unchecked()`` or ``trusted()``, nor while
    ``torch.compile`` traces (value checks synchronise and confuse graph capture)."""
    # is_compiling first: Dynamo cannot trace ContextVar.get.
    return not torch.compiler.is_compiling() and _checks_on.get() and not _trusted.get()


def output_checks_enabled() -> bool:
    """Whether a denoiser's output (and a model's own input) is checked: everywhere but under
    ``unchecked()`` and ``torch.compile``."""
    return not torch.compiler.is_compiling() and _checks_on.get()


def host_check_count() -> int:
    """How many value checks this thread (or asyncio task) decided on the host so far; each is
    a device sync on an accelerator. The module attribute host_checks reads the same number."""
    return _host_checks.get()


def __getattr__(name: str) -> Any:
    # ``host_checks`` reads like the module attribute it used to be, but is counted per context.
    if name == "host_checks":
        return _host_checks.get()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Type checks: jaxtyping + beartype, one line per violation
# --------------------------------------------------------------------------------------------

_BEARTYPE = beartype(conf=BeartypeConf(is_pep484_tower=True))
_F = TypeVar("_F", bound=Callable[..., Any])


def typechecked(fn: _F) -> _F:
    """Check jaxtyping annotations with beartype on every call.

    Numbers follow the numeric tower: an ``int`` is accepted where a ``float`` is annotated.
    A wrong argument raises a one-line ``TypeCheckError`` (a TypeError) naming the parameter,
    what it must be (with the sizes the other arguments fixed) and what it got. Skipped while
    ``torch.compile`` traces (jaxtyping+beartype raise false errors there).
    """
    checked = jaxtyped(typechecker=_BEARTYPE)(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        try:
            return checked(*args, **kwargs)
        except TypeCheckError as err:
            short = _one_line(fn, err, args, kwargs)
            if short is None:
                raise
            raise TypeCheckError(short) from None

    return wrapper  # type: ignore[return-value]


_PARAMETER = re.compile(r"whilst checking the parameters of .*?\n.*?parameter '(\w+)'", re.S)
_LITERAL = re.compile(r"typing\.Literal\[(.*)\]")
_AXES = re.compile(r"jaxtyping axis annotation are as follows\.\n((?:\w+=.*\n?)+)")


def _one_line(fn: Callable[..., Any], err: TypeCheckError, args: Any, kwargs: Any) -> str | None:
    """The parameter violation of ``err`` in one line, or None (a return value, or a message
    this parser does not know: the full report then stands)."""
    text = str(err)
    found = _PARAMETER.search(text)
    if found is None:
        return None
    name = found.group(1)
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return None
    value = bound.arguments.get(name)
    expected = text.split("Expected type: ", 1)[-1].split("\n", 1)[0].rstrip(".")
    expected = re.sub(r"<class '(.*?)'>", r"\1", expected)  # a bare annotation is a class
    expected = expected.replace("jaxtyping.", "").replace("torch._C.", "torch.")
    options = _LITERAL.fullmatch(expected)
    if options is not None:
        return (f"{fn.__qualname__}: parameter '{name}' must be one of {options.group(1)}, got "
                f"{value!r}")  # fmt: skip
    axes = _AXES.search(text)
    sizes = ""
    if axes is not None and isinstance(value, Tensor):
        fixed = ", ".join(line for line in axes.group(1).split("\n") if line)
        sizes = f" with {fixed} (the sizes the other arguments fix)"
    return (
        f"{fn.__qualname__}: parameter '{name}' must be {expected}{sizes}, got {_describe(value)}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


# --------------------------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------------------------

_async_checks = True
"""Whether value checks on an accelerator are asynchronous device assertions (a constant: the
host path is what the CPU always takes)."""


def reject_if(bad: Tensor, message: str | Callable[[], str]) -> None:
    """Raise ValueError(message) if any element of the boolean tensor ``bad`` is set.

    The one place where a value check reaches the host. On the CPU that costs nothing; on an
    accelerator ``bool()`` would stall the stream, so there the check is enqueued as an
    asynchronous device assertion instead (it fails at the next synchronisation).
    """
    if bad.device.type == "cpu" or not _async_checks:
        _host_checks.set(_host_checks.get() + 1)
        if bool(bad.any()):
            raise ValueError(message() if callable(message) else message)
    else:
        text = message if isinstance(message, str) else "a discdiff value check failed"
        torch._assert_async(~bad.any(), text)


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


def _check_integer_dtype(x: Tensor, name: str) -> None:
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {x.dtype}")


def check_tokens(x: Tensor, vocab_size: int, name: str) -> None:
    """Raise unless ``x`` is an integer tensor with values in [0, vocab_size)."""
    _check_integer_dtype(x, name)
    if checks_enabled() and x.numel() > 0:

        def message() -> str:
            lo, hi = int(x.min()), int(x.max())
            return (
                f"{name} holds token ids in [{lo}, {hi}], outside [0, {vocab_size}) "
                f"for vocab_size={vocab_size}"
            )

        reject_if((x < 0) | (x >= vocab_size), message)


def check_x0(x_0: Any, vocab_size: int, name: str = "x_0") -> Tensor:
    """The door of a training call: ``x_0`` as (B, L) int64 token ids in [0, vocab_size).

    Any integer dtype is accepted (uint8 for bytes, int32 from a data loader) and converted
    once, here, so the layers below and the denoiser always see int64 (a no-op for int64).
    """
    if not isinstance(x_0, Tensor) or x_0.ndim != 2 or x_0.numel() == 0:
        got = tuple(x_0.shape) if isinstance(x_0, Tensor) else type(x_0).__name__
        raise ValueError(f"{name} must be a (B, L) tensor of token ids with B, L >= 1, got {got}")
    check_tokens(x_0, vocab_size, name)
    return x_0.long()


def check_model_tokens(ids: Tensor, vocab_size: int, owner: str, name: str = "z_t") -> None:
    """Raise unless the ids a model is about to embed lie in its own [0, vocab_size).

    Runs under ``trusted()`` too: the caller checked the ids against *its* vocabulary, which
    may be larger than the model's. One reduction (min and max at once); on an accelerator an
    asynchronous device assertion.
    """
    _check_integer_dtype(ids, name)
    if not output_checks_enabled() or ids.numel() == 0:
        return
    lo, hi = torch.aminmax(ids)
    vocabulary = f"outside its vocabulary [0, {vocab_size}) (built for vocab_size={vocab_size})"
    fix = (
        f"build {owner} with the vocab_size of the diffusion or sampler that feeds it, or give "
        f"them vocab_size={vocab_size}"
    )

    def message() -> str:
        got = f"{owner} got token ids {name} in [{int(lo)}, {int(hi)}]"
        return f"{got}, {vocabulary}, which it cannot embed: {fix}"

    # On an accelerator the message is fixed when the assertion is enqueued: no values in it.
    on_device = ids.device.type != "cpu" and _async_checks
    text = f"{owner} got token ids {name} {vocabulary}: {fix}"
    reject_if((lo < 0) | (hi >= vocab_size), text if on_device else message)


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


# --------------------------------------------------------------------------------------------
# Objects handed to the library
# --------------------------------------------------------------------------------------------


def check_schedule(schedule: Any, name: str = "schedule") -> Any:
    """The one rule for a schedule, in training and in sampling alike: an object (not a class)
    with callable ``alpha(t)`` and ``dalpha_dt(t)``, the two methods the library calls
    (``inverse`` is optional). Returns it; raises TypeError naming what is missing."""
    if isinstance(schedule, type):
        raise TypeError(
            f"{name} must be a schedule object, got the class {schedule.__name__}: pass "
            f"{schedule.__name__}() (e.g. LogLinearSchedule())"
        )
    missing = [m for m in ("alpha", "dalpha_dt") if not callable(getattr(schedule, m, None))]
    if missing:
        raise TypeError(
            f"{name} must be a schedule object with alpha(t) and dalpha_dt(t), e.g. "
            f"LogLinearSchedule() or CosineSchedule(), got {type(schedule).__name__} "
            f"{schedule!r:.80} without {' and '.join(missing)}"
        )
    return schedule


def check_generator(generator: Any, name: str = "generator") -> None:
    """Raise TypeError unless ``generator`` is a ``torch.Generator`` or None (a seed is not)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        hint = (
            f": seed one with {name}=torch.Generator().manual_seed({generator!r})"
            if isinstance(generator, int) and not isinstance(generator, bool)
            else ""
        )
        raise TypeError(
            f"{name} must be a torch.Generator or None, got {type(generator).__name__} "
            f"{generator!r:.60}{hint}"
        )
