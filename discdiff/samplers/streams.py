"""Row-wise randomness: draws keyed by (seed, row, call, position), not by a generator's state.

A ``torch.Generator`` lays its numbers out over the flattened (B·L) tokens of a batch, so row 0
of a batch of 1 and row 0 of a batch of 4 see different numbers after the first draw. A
``RowStream`` is counter-based instead: element (b, l) of its c-th draw is a pure function of
(seed, b, c, l), so row b of a sample is the same whatever the batch size and whatever rows sit
beside it (given a denoiser whose output for a row depends only on that row).

The function is SplitMix64 (Steele, Lea & Flood 2014; the seeding generator of
xoshiro / java.util.SplittableRandom): each (row, call) owns a SplitMix64 sequence whose state
key_{b,c} is itself derived by SplitMix64 mixing, and position l takes the l-th output,

    s         = mix(seed)
    key_{b,c} = mix(mix(s + (b + 1) γ) ^ mix((c + 1) δ))
    x_{b,c,l} = mix(key_{b,c} + (l + 1) γ)            (all mod 2^64)

with mix the SplitMix64 finaliser (a bijection of 64-bit words), γ = 0x9E3779B97F4A7C15 and
δ = 0xD1B54A32D192ED03 (odd constants, so distinct rows, calls and positions give distinct
inputs to the bijection). A float64 uniform keeps the top 53 bits, x >> 11 times 2^-53, in
[0, 1) like ``torch.rand``; an integer in [0, k) is (x mod 2^63) mod k, whose deviation from
uniform is at most k / 2^63 (5e-15 at k = 50257; ``torch.randint`` reduces 32 bits, ~1e-5).

The arithmetic is int64 torch ops on the tensors' device: a multiply wraps mod 2^64 and ``>>``
is arithmetic, so a logical shift is an arithmetic one masked to its low 64 - s bits. A draw of
B·L numbers costs ~12 elementwise passes over B·L int64s, independent of K.

The Triton step (``discdiff.kernels``) draws its numbers from Philox streams instead; from a
``RowStream`` token (b, l) of draw c takes the Philox key (mix(s + (b + 1) γ) ^ mix((c + 1) δ))
+ l, again a function of (seed, b, c, l) alone, computed in the kernel (no extra pass).
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

__all__ = ["RowStream", "check_stream", "row_source"]

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # the golden-ratio increment of SplitMix64
_DELTA = 0xD1B54A32D192ED03  # a second odd constant: the call index's own increment
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(x: int) -> int:
    """The int64 whose two's-complement bits are the 64-bit word ``x``."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def mix64(x: int) -> int:
    """The SplitMix64 finaliser on a Python int (the reference the tensor version is tested
    against): a bijection of 64-bit words."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def _as_int(x: object) -> int | None:
    """``x`` as a Python int when it is an integer (numpy's too), not a bool; else None."""
    if isinstance(x, bool):
        return None
    try:
        return operator.index(x)  # type: ignore[arg-type]
    except TypeError:  # not an integer (a float, a string, a float tensor)
        return None


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 words: torch's ``>>`` on int64 copies the sign bit."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: Tensor) -> Tensor:
    """``mix64`` on an int64 tensor, elementwise (the multiplies wrap mod 2^64)."""
    x = (x ^ _shr(x, 30)) * _signed(_M1)
    x = (x ^ _shr(x, 27)) * _signed(_M2)
    return x ^ _shr(x, 31)


class RowStream:
    """Counter-based random numbers for (rows, ``length``) layouts, keyed by (seed, row).

    Pass it wherever a sampler takes ``generator=`` (or pass ``seed=`` to the sampling entry
    points, which build one): each draw of n = rows · length numbers is laid out row-major, and
    element (b, l) of the c-th draw depends on (seed, b, c, l) only (module docstring). Like a
    generator it has state, the number of draws made so far (``calls``): a sampler that makes
    the same sequence of draws whatever its batch holds gives every row the same numbers in
    every batch. Not thread-safe (nor is a generator).

    Args:
        seed: an int in [0, 2^64).
        length: the numbers per row of every draw (L for (B, L) tokens).
    """

    def __init__(self, seed: int, length: int) -> None:
        value = _as_int(seed)
        if value is None or not 0 <= value <= _MASK64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        size = _as_int(length)
        if size is None or size < 1:
            raise ValueError(f"length must be a positive int (numbers per row), got {length!r}")
        self.seed, self.length = value, size
        self.calls = 0
        self._key = mix64(value)
        self._positions: dict[torch.device, Tensor] = {}
        self._rows: dict[tuple[torch.device, int], Tensor] = {}

    def __repr__(self) -> str:
        return f"RowStream(seed={self.seed}, length={self.length}, calls={self.calls})"

    def words(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """The next draw as n = rows · length random int64 words (all 64 bits random), (n,):
        what ``uniforms`` and ``randint`` are made of."""
        rows = self.rows_of(n)
        device = torch.device(device)
        pos = self._positions.get(device)
        if pos is None:
            steps = torch.arange(1, self.length + 1, dtype=torch.int64, device=device)
            pos = self._positions[device] = steps * _signed(_GAMMA)
        key = _mix(self.row_keys(rows, device) ^ self.next_call())
        return _mix(key.unsqueeze(-1) + pos).reshape(n)

    def rows_of(self, n: int) -> int:
        """The rows of a draw of n numbers, n / length (ValueError unless a whole number)."""
        if n % self.length:
            raise ValueError(
                f"a RowStream of length {self.length} draws rows of {self.length} numbers; "
                f"{n} numbers is not a whole number of rows (build it with length=L for (B, L))"
            )
        return n // self.length

    def row_keys(self, rows: int, device: torch.device | str = "cpu") -> Tensor:
        """mix(mix(seed) + (b + 1) γ) for rows b < ``rows``, int64 (rows,): what every draw
        of row b starts from (cached per device and row count)."""
        device = torch.device(device)
        keys = self._rows.get((device, rows))
        if keys is None:
            b = torch.arange(1, rows + 1, dtype=torch.int64, device=device)
            keys = self._rows[(device, rows)] = _mix(b * _signed(_GAMMA) + _signed(self._key))
        return keys

    def next_call(self) -> int:
        """Start the next draw: its call key mix((c + 1) δ) as an int64 value; c += 1."""
        self.calls += 1
        return _signed(mix64(self.calls * _DELTA))

    def uniforms(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """The next draw as n float64 uniforms in [0, 1) (53 random bits each), (n,)."""
        return _shr(self.words(n, device), 11).to(torch.float64) * 2.0**-53

    def randint(self, k: int, n: int, device: torch.device | str = "cpu") -> Tensor:
        """The next draw as n int64 integers uniform on [0, k) (bias <= k / 2^63), (n,)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int (the range [0, k)), got {k!r}")
        return (self.words(n, device) & ((1 << 63) - 1)) % k


def row_source(
    generator: torch.Generator | RowStream | None, seed: int | None, length: int
) -> torch.Generator | RowStream | None:
    """What a sampling entry point draws from: ``generator``, or a ``RowStream(seed, length)``
    when ``seed`` is given (both given: ValueError)."""
    if seed is None:
        return generator
    if generator is not None:
        raise ValueError(
            "pass either generator= (one stream over the whole batch) or seed= (a stream per "
            "row, the same whatever the batch size), not both"
        )
    return RowStream(seed, length)


def check_stream(generator: object, length: int) -> None:
    """ValueError when ``generator`` is a ``RowStream`` built for rows of another length than
    the (B, ``length``) tokens it is about to draw for (its rows would not be the batch's)."""
    if isinstance(generator, RowStream) and generator.length != length:
        raise ValueError(
            f"generator is a RowStream of length {generator.length}, but the tokens have "
            f"L = {length} per row: build it as RowStream(seed, {length})"
        )
