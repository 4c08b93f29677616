"""The Triton kernels and their launchers (imported only when a Triton path runs).

Each program handles a tile of ``ROWS`` rows of a (n, K) row-major array and walks K in blocks of
``BLOCK_K`` columns. On a GPU with K = 50k a program owns one row (ROWS = 1); a tiny K packs many
rows into a program, which also keeps the interpreter (``TRITON_INTERPRET=1``, the CPU tests)
fast. Rows past n reuse row n - 1 for their loads and store nothing.

Only plain ``triton.language`` is used (no libdevice, no descriptors), so that the kernels run
under the interpreter and on Triton 3.x compilers alike; ``log1p`` is written out (Goldberg's
form, accurate to a few ulps).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "NELBO_STATS",
    "ancestral_step",
    "nelbo_backward",
    "nelbo_forward",
]

NELBO_STATS = ("max", "inv_sum", "p_i", "p_x", "q_x", "rest", "t_sum", "g_sum", "r_sum")
"""Rows of the (9, n) float32 statistics the forward kernel writes, in this order."""

_TILE = 4096  # elements per program tile (ROWS * BLOCK_K)
# The Philox counter of a row's own draws; the race uses counters below K.
_COUNTER_ROW = tl.constexpr(2147483647)


@triton.jit
def _log1p(y):
    """log(1 + y) for y > -1, accurate where 1 + y rounds (Goldberg: log(u) * y / (u - 1))."""
    u = 1.0 + y
    d = u - 1.0
    return tl.where(d == 0.0, y, tl.log(u) * (y / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _g_small(z):
    """z - log1p(z) for |z| <= 0.1 by the series of discdiff.numerics.g_small."""
    s = z / (2.0 + z)
    s2 = s * s
    poly = 1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * (1.0 / 11 + s2 / 13))))
    return 2.0 * s2 / (1.0 - s) - 2.0 * s * s2 * poly


@triton.jit
def _tile_rows(n_rows, ROWS: tl.constexpr):
    """This program's ROWS rows: their indices, whether each is a real row, and the indices
    clamped into range (the tail tile reads the last row again and stores nothing)."""
    rows_out = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    return rows_out, rows_out < n_rows, tl.minimum(rows_out, n_rows - 1).to(tl.int64)


@triton.jit
def _row_max_sum(x_ptr, rows, stride, n_cols, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Online max and sum of exp(x - max) over each row (float32), one pass."""
    m = tl.full([ROWS], float("-inf"), tl.float32)
    s = tl.zeros([ROWS], tl.float32)
    for start in range(0, n_cols, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        inside = cols < n_cols
        x = tl.load(x_ptr + rows[:, None] * stride + cols[None, :], mask=inside[None, :],
                    other=float("-inf")).to(tl.float32)  # fmt: skip
        m_new = tl.maximum(m, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe[:, None]), 1)
        m = m_new
    return m, s


# ---------------------------------------------------------------------------------------------
# Uniform NELBO: the forward's O(K) reductions, the backward's closed-form gradient
# ---------------------------------------------------------------------------------------------


@triton.jit
def _nelbo_fwd_kernel(
    x_ptr, stride, ix_ptr, ii_ptr, coef_ptr, stats_ptr, n_rows, n_cols,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Per row: max, 1/sum of the softmax; p_i, p_x, q_x; Σ_{j∉{i,x}} p_j, log1p(β p_j) and (when
    any β of the tile is small) g(β p_j); R = Σ_j p_j q_j with q = p / (A p + c)."""
    rows_out, live, rows = _tile_rows(n_rows, ROWS)
    x_id = tl.load(ix_ptr + rows)
    i_id = tl.load(ii_ptr + rows)
    beta = tl.load(coef_ptr + rows)
    beta_small = tl.load(coef_ptr + n_rows + rows)
    a_ = tl.load(coef_ptr + 2 * n_rows + rows)
    c_ = tl.load(coef_ptr + 3 * n_rows + rows)
    any_small = tl.max(tl.where(beta_small > 0.0, 1, 0), 0) > 0

    m, s = _row_max_sum(x_ptr, rows, stride, n_cols, ROWS, BLOCK_K)
    inv_s = 1.0 / s
    p_i = tl.zeros([ROWS, BLOCK_K], tl.float32)
    p_x = tl.zeros([ROWS, BLOCK_K], tl.float32)
    q_x = tl.zeros([ROWS, BLOCK_K], tl.float32)
    rest = tl.zeros([ROWS, BLOCK_K], tl.float32)
    t_sum = tl.zeros([ROWS, BLOCK_K], tl.float32)
    g_sum = tl.zeros([ROWS, BLOCK_K], tl.float32)
    r_sum = tl.zeros([ROWS, BLOCK_K], tl.float32)
    for start in range(0, n_cols, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        inside = cols < n_cols
        x = tl.load(x_ptr + rows[:, None] * stride + cols[None, :], mask=inside[None, :],
                    other=float("-inf")).to(tl.float32)  # fmt: skip
        p = tl.exp(x - m[:, None]) * inv_s[:, None]
        q = p / (a_[:, None] * p + c_[:, None])
        at_i = cols[None, :] == i_id[:, None]
        at_x = cols[None, :] == x_id[:, None]
        other = ~(at_i | at_x)
        p_i += tl.where(at_i, p, 0.0)
        p_x += tl.where(at_x, p, 0.0)
        q_x += tl.where(at_x, q, 0.0)
        r_sum += p * q
        p_o = tl.where(other, p, 0.0)
        rest += p_o
        t_sum += _log1p(beta[:, None] * p_o)
        if any_small:
            g_sum += _g_small(beta_small[:, None] * p_o)
    out = stats_ptr + rows_out
    tl.store(out, m, mask=live)
    tl.store(out + n_rows, inv_s, mask=live)
    tl.store(out + 2 * n_rows, tl.sum(p_i, 1), mask=live)
    tl.store(out + 3 * n_rows, tl.sum(p_x, 1), mask=live)
    tl.store(out + 4 * n_rows, tl.sum(q_x, 1), mask=live)
    tl.store(out + 5 * n_rows, tl.sum(rest, 1), mask=live)
    tl.store(out + 6 * n_rows, tl.sum(t_sum, 1), mask=live)
    tl.store(out + 7 * n_rows, tl.sum(g_sum, 1), mask=live)
    tl.store(out + 8 * n_rows, tl.sum(r_sum, 1), mask=live)


@triton.jit
def _nelbo_bwd_kernel(
    x_ptr, stride, g_ptr, g_stride, ix_ptr, ii_ptr, stats_ptr, coef_ptr, n_rows, n_cols,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """grad_k = p_k (scale q_k + shift) + [k = x] at_x + [k = i] at_i, one pass over the row."""
    rows_out, live, rows = _tile_rows(n_rows, ROWS)
    x_id = tl.load(ix_ptr + rows)
    i_id = tl.load(ii_ptr + rows)
    m = tl.load(stats_ptr + rows)
    inv_s = tl.load(stats_ptr + n_rows + rows)
    a_ = tl.load(coef_ptr + rows)
    c_ = tl.load(coef_ptr + n_rows + rows)
    scale = tl.load(coef_ptr + 2 * n_rows + rows)
    shift = tl.load(coef_ptr + 3 * n_rows + rows)
    add_x = tl.load(coef_ptr + 4 * n_rows + rows)
    add_i = tl.load(coef_ptr + 5 * n_rows + rows)
    for start in range(0, n_cols, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        inside = cols < n_cols
        x = tl.load(x_ptr + rows[:, None] * stride + cols[None, :], mask=inside[None, :],
                    other=float("-inf")).to(tl.float32)  # fmt: skip
        p = tl.exp(x - m[:, None]) * inv_s[:, None]
        q = p / (a_[:, None] * p + c_[:, None])
        g = p * (scale[:, None] * q + shift[:, None])
        g += tl.where(cols[None, :] == x_id[:, None], add_x[:, None], 0.0)
        g += tl.where(cols[None, :] == i_id[:, None], add_i[:, None], 0.0)
        keep = live[:, None] & inside[None, :]
        tl.store(g_ptr + rows[:, None] * g_stride + cols[None, :],
                 g.to(g_ptr.dtype.element_ty), mask=keep)  # fmt: skip


def _tiling(
    n_rows: int, n_cols: int, block_k: int | None, rows: int | None, widest: int
) -> tuple[int, int]:
    """(BLOCK_K, ROWS): blocks of at most ``widest`` columns, rows packed up to _TILE elements.

    The widths were chosen from the register counts of sm_90 builds (8 warps): 2048 columns keep
    the forward loss kernel at one program per SM, so that the rows in flight (132 x 200 KiB at
    K = 50k) stay in L2 between its two sweeps; the single-sweep kernels take 1024 columns
    (about 75 registers, three programs per SM) to hide memory latency better.
    """
    bk = block_k or min(widest, triton.next_power_of_2(n_cols))
    r = rows or max(1, min(triton.next_power_of_2(n_rows), _TILE // bk))
    return bk, r


def _warps(rows: int, block_k: int) -> int:
    return 8 if rows * block_k >= 1024 else 4


def nelbo_forward(
    logits: Tensor, x_id: Tensor, i_id: Tensor, coef: Tensor, stats: Tensor,
    *, block_k: int | None = None, rows: int | None = None,
) -> None:  # fmt: skip
    """Fill ``stats`` (9, n) float32 (rows named by NELBO_STATS) from logits (n, K) with a unit
    last stride, token ids (n,) and ``coef`` (4, n) float32: β, β where small else 0, A, c."""
    n, k = logits.shape
    bk, r = _tiling(n, k, block_k, rows, 2048)
    _nelbo_fwd_kernel[(triton.cdiv(n, r),)](
        logits, logits.stride(0), x_id, i_id, coef, stats, n, k,
        ROWS=r, BLOCK_K=bk, num_warps=_warps(r, bk),
    )  # fmt: skip


def nelbo_backward(
    logits: Tensor, grad: Tensor, x_id: Tensor, i_id: Tensor, stats: Tensor, coef: Tensor,
    *, block_k: int | None = None, rows: int | None = None,
) -> None:  # fmt: skip
    """Write the gradient (n, K) from ``stats`` and ``coef`` (6, n) float32: A, c, scale, shift,
    the additions at x and at i."""
    n, k = logits.shape
    bk, r = _tiling(n, k, block_k, rows, 1024)
    _nelbo_bwd_kernel[(triton.cdiv(n, r),)](
        logits, logits.stride(0), grad, grad.stride(0), x_id, i_id, stats, coef, n, k,
        ROWS=r, BLOCK_K=bk, num_warps=_warps(r, bk),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Uniform ancestral / Ψ step: normaliser, exact x̂ draw (float64 exponential race), mixture
# ---------------------------------------------------------------------------------------------


@triton.jit
def _bits52(r_hi, r_lo):
    """A 52-bit integer (uint64) from the top 26 bits of two random 32-bit words."""
    hi = (r_hi.to(tl.uint32, bitcast=True) >> 6).to(tl.uint64)
    lo = (r_lo.to(tl.uint32, bitcast=True) >> 6).to(tl.uint64)
    return (hi << 26) | lo


@triton.jit
def _exponential(mant, dtype: tl.constexpr):
    """Exp(1) variates in ``dtype`` from 52-bit integers m: u = (m + 1/2) / 2^52 lies in
    [2^-53, 1 - 2^-53], and u and 1 - u are both exact in float64; E = -log u, taken as
    -log1p(-(1 - u)) when u >= 1/2 so that E stays accurate as u -> 1."""
    low = mant < 2251799813685248  # u < 1/2
    comp = 4503599627370495 - mant  # 2^52 - 1 - m: 1 - u = (comp + 1/2) / 2^52
    u = (mant.to(dtype) + 0.5) * (1.0 / 4503599627370496.0)
    v = (comp.to(dtype) + 0.5) * (1.0 / 4503599627370496.0)
    return tl.where(low, -tl.log(u), -_log1p(-tl.where(low, 0.0, v)))


@triton.jit
def _token_keys(seed_ptr, rows, call, length, ROW_KEYS: tl.constexpr):
    """The Philox key of each row (token) of the tile."""
    if ROW_KEYS:  # token r = (b, l) of a RowStream's draw: (key of row b ^ the call's) + l
        seq = rows // length
        key = (tl.load(seed_ptr + seq).to(tl.int64) ^ call) + (rows - seq * length)
    else:  # one seed: one Philox key per token
        key = tl.load(seed_ptr).to(tl.int64) + rows
    return key


@triton.jit
def _race_block(
    x_ptr, rows, stride, start, n_cols, key, m, s, best, best_id,
    ROWS: tl.constexpr, H: tl.constexpr,
):  # fmt: skip
    """One block of 2H columns of the step's single pass: the online max and sum of the
    softmax normaliser, and the exponential race (float32 screening, float64 keys where a
    block may hold the winner). Returns the updated (m, s, best, best_id)."""
    half = tl.arange(0, H)
    cols_a = start + half
    cols_b = start + H + half
    in_a = cols_a < n_cols
    in_b = cols_b < n_cols
    base = x_ptr + rows[:, None] * stride
    xa = tl.load(base + cols_a[None, :], mask=in_a[None, :], other=float("-inf"))
    xb = tl.load(base + cols_b[None, :], mask=in_b[None, :], other=float("-inf"))
    xa = xa.to(tl.float32)
    xb = xb.to(tl.float32)
    m_new = tl.maximum(m, tl.maximum(tl.max(xa, 1), tl.max(xb, 1)))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = (s * tl.exp(m - m_safe) + tl.sum(tl.exp(xa - m_safe[:, None]), 1)
         + tl.sum(tl.exp(xb - m_safe[:, None]), 1))  # fmt: skip
    m = m_new
    # 128 random bits per counter: 52 for a class of the first half, 52 for the second.
    counter = (start // 2 + half)[None, :] + tl.zeros([ROWS, H], tl.int32)
    r0, r1, r2, r3 = tl.randint4x(key[:, None], counter)
    mant_a = _bits52(r0, r1)
    mant_b = _bits52(r2, r3)
    ka = xa - tl.log(_exponential(mant_a, tl.float32))
    kb = xb - tl.log(_exponential(mant_b, tl.float32))
    # float32 keys are within ~1e-6 (1 + |key|) of the float64 ones; the margin is far wider.
    margin = 1e-3 + 1e-5 * tl.abs(best)
    floor = (best - margin).to(tl.float32)[:, None]
    near = tl.where(ka > floor, 1, 0) + tl.where(kb > floor, 1, 0)
    if tl.max(tl.max(near, 1), 0) > 0:
        ea = _exponential(mant_a, tl.float64)
        eb = _exponential(mant_b, tl.float64)
        ka64 = tl.where(in_a[None, :], xa.to(tl.float64) - tl.log(ea), float("-inf"))
        kb64 = tl.where(in_b[None, :], xb.to(tl.float64) - tl.log(eb), float("-inf"))
        top_a = tl.max(ka64, 1)
        top_b = tl.max(kb64, 1)
        id_a = tl.min(tl.where(ka64 == top_a[:, None], cols_a[None, :], n_cols), 1)
        id_b = tl.min(tl.where(kb64 == top_b[:, None], cols_b[None, :], n_cols), 1)
        top = tl.maximum(top_a, top_b)
        top_id = tl.where(top_a >= top_b, id_a, id_b).to(tl.int64)
        better = top > best
        best_id = tl.where(better, top_id, best_id)
        best = tl.where(better, top, best)
    return m, s, best, best_id


@triton.jit
def _mixture(p_i, a_s, a_t, kappa_ptr, rows, kf, HAS_KAPPA: tl.constexpr):
    """The step's three weights (stay, draw from x̂, draw uniformly), unnormalised, float64:
    ``discdiff.numerics.uniform_mixture``'s formula, evaluated in the kernel."""
    a_ts = tl.where(a_s > 0.0, a_t / tl.where(a_s > 0.0, a_s, 1.0), 1.0)
    norm = kf * a_t * p_i + 1.0 - a_t
    w_stay = (kf * a_t * p_i + a_ts - a_t) / norm
    w_hat = (a_s - a_t) / norm
    w_unif = (1.0 - a_ts) * (1.0 - a_s) / norm
    if HAS_KAPPA:
        kappa = tl.load(kappa_ptr + rows)
        # Ψ: κ · posterior + (1 - κ) · (α_s q0 + (1 - α_s)/K), q0 the denoising posterior
        # ∝ (α_t [j = z_t] + (1 - α_t)/K) x̂_j: itself stay (α_t x̂_i) or draw from x̂ ((1 - α_t)/K).
        q0 = a_t * p_i + (1.0 - a_t) / kf
        w_stay = kappa * w_stay + (1.0 - kappa) * a_s * a_t * p_i / q0
        w_hat = kappa * w_hat + (1.0 - kappa) * a_s * (1.0 - a_t) / (kf * q0)
        w_unif = kappa * w_unif + (1.0 - kappa) * (1.0 - a_s)
    return w_stay, w_hat, w_unif


@triton.jit
def _step_kernel(
    x_ptr, stride, z_ptr, as_ptr, at_ptr, kappa_ptr, seed_ptr, out_ptr, n_rows, n_cols,
    call, length,
    HAS_KAPPA: tl.constexpr, ROW_KEYS: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """One reverse step per row, reading the row once.

    In one pass over the row: the softmax normaliser (online max and sum) and the exponential
    race j* = argmax_j (ℓ_j - log E_j), E_j ~ Exp(1) i.i.d., whose winner has law softmax(ℓ). The
    race keys are screened in float32: a block whose float32 keys all lie more than a margin
    below the row's best float64 key cannot hold the winner (the float32 key is within far less
    than the margin of the float64 one), so only the other blocks compute float64 keys. The
    winner is therefore the argmax of the float64 keys over all K classes. Then the three-part
    mixture (stay at z_t, the x̂ draw, a uniform draw) with float64 weights from x̂[z_t].
    """
    H: tl.constexpr = BLOCK_K // 2
    rows_out, live, rows = _tile_rows(n_rows, ROWS)
    key = _token_keys(seed_ptr, rows, call, length, ROW_KEYS)
    m = tl.full([ROWS], float("-inf"), tl.float32)
    s = tl.zeros([ROWS], tl.float32)
    best = tl.full([ROWS], float("-inf"), tl.float64)
    best_id = tl.zeros([ROWS], tl.int64)
    for start in range(0, n_cols, BLOCK_K):
        m, s, best, best_id = _race_block(x_ptr, rows, stride, start, n_cols, key, m, s, best,
                                          best_id, ROWS, H)  # fmt: skip

    # The row's own draws: which part of the mixture, and the uniform class.
    z = tl.load(z_ptr + rows).to(tl.int64)
    c_row = tl.full([ROWS], _COUNTER_ROW, tl.int32)
    w0, w1, w2, w3 = tl.randint4x(key, c_row)
    u_part = (_bits52(w0, w1).to(tl.float64) + 0.5) * (1.0 / 4503599627370496.0)
    u_unif = _bits52(w2, w3).to(tl.float64)
    uniform_id = tl.minimum((u_unif * (1.0 / 4503599627370496.0) * n_cols).to(tl.int64),
                            n_cols - 1)  # fmt: skip

    x_i = tl.load(x_ptr + rows * stride + z).to(tl.float32).to(tl.float64)
    p_i = tl.exp(x_i - m.to(tl.float64)) / s.to(tl.float64)  # x̂[z_t]
    a_s = tl.load(as_ptr + rows)
    a_t = tl.load(at_ptr + rows)
    kf = n_cols.to(tl.float64)
    w_stay, w_hat, w_unif = _mixture(p_i, a_s, a_t, kappa_ptr, rows, kf, HAS_KAPPA)
    total = w_stay + w_hat + w_unif
    t = u_part * total
    out = tl.where(t < w_hat + w_stay, best_id, uniform_id)
    out = tl.where(t < w_stay, z, out)
    out = tl.where(total > 0.0, out, z)  # an impossible z_t (x̂[z_t] = 0 at α_t = 1): stay
    tl.store(out_ptr + rows_out, out, mask=live)


def ancestral_step(
    logits: Tensor, z: Tensor, alpha_s: Tensor, alpha_t: Tensor, kappa: Tensor | None,
    seed: Tensor, out: Tensor, *, row_call: tuple[int, int] | None = None,
    block_k: int | None = None, rows: int | None = None,
) -> None:  # fmt: skip
    """Write z_s (n,) int64 into ``out``: logits (n, K) unit last stride, z (n,) int64, levels
    (n,) float64. ``seed`` (int64, on the logits' device) keys the Philox streams: one element,
    token r's key is seed + r; or, with ``row_call = (call, L)``, (n / L,) keys of the rows of
    (B, L) tokens, and token (b, l)'s key is (seed[b] ^ call) + l (a ``RowStream``'s draw)."""
    n, k = logits.shape
    bk, r = _tiling(n, k, block_k, rows, 1024)
    bk = max(bk, 2)
    call, length = (0, 1) if row_call is None else row_call
    _step_kernel[(triton.cdiv(n, r),)](
        logits, logits.stride(0), z, alpha_s, alpha_t, alpha_t if kappa is None else kappa, seed,
        out, n, k, call, length, HAS_KAPPA=kappa is not None, ROW_KEYS=row_call is not None,
        ROWS=r, BLOCK_K=bk, num_warps=_warps(r, bk),
    )  # fmt: skip


def compile_for(capability: int = 90, dtype: str = "fp32") -> dict[str, object]:
    """Compile every kernel for a CUDA device of ``capability`` (90: Hopper) at the tilings the
    launchers use for a large K, without a GPU (ptxas runs on the host): a check that the
    kernels build for real hardware, which the interpreter cannot give. Needs a Triton with its
    NVIDIA backend and TRITON_INTERPRET unset."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", capability, 32)
    ptr, i32, i64, f32, f64 = f"*{dtype}", "i32", "*i64", "*fp32", "*fp64"
    kernels = {
        "nelbo_forward": (_nelbo_fwd_kernel, [ptr, i32, i64, i64, f32, f32, i32, i32],
                          {"ROWS": 1, "BLOCK_K": 2048}),
        "nelbo_backward": (_nelbo_bwd_kernel, [ptr, i32, ptr, i32, i64, i64, f32, f32, i32, i32],
                           {"ROWS": 1, "BLOCK_K": 1024}),
        "ancestral_step": (_step_kernel,
                           [ptr, i32, i64, f64, f64, f64, i64, i64, i32, i32, "i64", i32],
                           {"HAS_KAPPA": True, "ROW_KEYS": True, "ROWS": 1, "BLOCK_K": 1024}),
    }  # fmt: skip
    out = {}
    for name, (fn, types, constexprs) in kernels.items():
        names = fn.arg_names
        signature = dict(zip(names, types + ["constexpr"] * len(constexprs), strict=True))
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        out[name] = triton.compile(source, target=target, options={"num_warps": 8})
    return out
