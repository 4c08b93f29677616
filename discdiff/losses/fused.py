"""The output layer and the loss, fused (Concepts §3): losses from the last hidden state.

A training step's largest tensors are the (B·L, K) logits and their gradient. The functions here
take the last hidden state ``hidden`` (B, L, D) and the output projection (``weight`` (K, D),
optional ``bias`` (K,)) instead of the logits, and walk the B·L rows a block at a time: for a
block, logits = h Wᵀ + b, the loss of its rows and d loss / d logits (the per-row mathematics of
the unfused losses, reused, not rewritten), then the block's share of the gradients of ``hidden``,
``weight`` and ``bias``. Only one block of logits and one of their gradient exist at a time.

    fused_linear_uniform_nelbo(hidden, weight, x_0, z_t, alpha_t, dalpha_t)
        == uniform_nelbo(hidden @ weight.T + bias, x_0, z_t, alpha_t, dalpha_t)
    fused_linear_masked_nelbo(..., mask_id)  == masked_nelbo(logits, ..., mask_id)
    fused_linear_cross_entropy(hidden, weight, targets) == ar_loss(logits, targets)

``reduction``: "none" gives the (B, L) per-token loss, as the unfused functions; the backward
then recomputes each block's logits (one more matmul). "sum" and "mean" (over the tokens that
count) give a 0-d loss whose gradient is formed in the forward pass, while each block's logits are
at hand: no recomputation, and the backward only scales the stored gradients. ``mask`` (B, L),
True at the tokens that count: the others are dropped before the projection (loss 0, no work).
When the fused head pays against materialised logits is ``discdiff.losses.dispatch``'s rule.

Gradients flow to ``hidden``, ``weight``, ``bias`` and ``dalpha_t`` (through the per-token weight
of each loss), as in the unfused losses. Under ``torch.autocast`` the matmuls run in the autocast
dtype (the logits a model would have produced) and the losses in float32; the weight's gradient
is accumulated in the weight's dtype. No double backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable

from discdiff._chunks import chunk_rows as default_chunk_rows
from discdiff.kernels.dispatch import Backend, use_triton
from discdiff.kernels.nelbo import TritonUniformNelbo
from discdiff.losses._common import (
    Reduction,
    accumulation_dtype,
    check_levels,
    check_mask,
    check_mask_id,
    check_reduction,
    log_prob_without_mask,
    per_token,
    result_dtype,
)
from discdiff.losses.uniform import UniformNelboCore
from discdiff.typing import (
    Level,
    check_count,
    check_finite,
    check_tokens,
    check_vocab_size,
    checks_enabled,
    typechecked,
)

__all__ = ["fused_linear_cross_entropy", "fused_linear_masked_nelbo", "fused_linear_uniform_nelbo"]


BLOCK_ELEMENTS_CPU = 1 << 22
"""Logits per block on the CPU (16 MiB of float32): large enough for full-rate matmuls."""
BLOCK_ELEMENTS_DEVICE = 1 << 25
"""Logits per block on an accelerator (128 MiB of float32): few launches, little memory."""

RowLoss = Callable[[Tensor, slice], Tensor]
"""``raw(logits (r, K), rows) -> (r,)``: the unweighted loss of a block of rows, differentiable
with respect to the block's logits. The per-token loss is ``row_weight * raw``."""


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device`` if autocast is on there, else None."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except TypeError:  # torch < 2.4: per-device-type functions
        if device.type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device.type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
    return None


class _Head:
    """The output projection in the dtype of the matmuls, one block of logits at a time."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, mm_dtype: torch.dtype):
        self.hidden = hidden.to(mm_dtype)
        self.weight = weight.to(mm_dtype)
        self.bias = None if bias is None else bias.to(mm_dtype)

    def logits(self, sl: slice) -> Tensor:
        h = self.hidden[sl]
        k, d = self.weight.shape
        if h.device.type != "cpu" or k < 4096:
            if self.bias is None:
                return torch.mm(h, self.weight.t())
            return torch.addmm(self.bias, h, self.weight.t())
        # On the CPU a GEMM writing (r, K) rows with K ~ 50k runs well below its usual rate;
        # slices of a few hundred vocabulary rows keep the weight slice in cache (measured:
        # 3.2 s instead of 4.6 s for 1024 x 768 x 50257 in blocks of 83 rows, one thread).
        out = h.new_empty(h.shape[0], k)
        step = max(256, min(1024, 2**18 // d))
        for c0 in range(0, k, step):
            c1 = min(k, c0 + step)
            w = self.weight[c0:c1].t()
            if self.bias is None:
                torch.mm(h, w, out=out[:, c0:c1])
            else:
                torch.addmm(self.bias[c0:c1], h, w, out=out[:, c0:c1])
        return out


class _Grads:
    """Gradients of hidden, weight and bias, accumulated block by block."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, needs: tuple) -> None:
        n, d = hidden.shape
        self.hidden = hidden.new_empty(n, d) if needs[0] else None
        self.weight = torch.zeros_like(weight) if needs[1] else None
        self.bias = torch.zeros_like(bias) if needs[2] and bias is not None else None

    def add(self, head: _Head, sl: slice, grad_logits: Tensor) -> None:
        g = grad_logits.to(head.weight.dtype)
        if self.hidden is not None:
            self.hidden[sl] = torch.mm(g, head.weight)
        if self.weight is not None:
            if self.weight.dtype == g.dtype:
                self.weight.addmm_(g.t(), head.hidden[sl])
            else:  # half matmuls, float32 accumulation
                self.weight.add_(torch.mm(g.t(), head.hidden[sl]))
        if self.bias is not None:
            self.bias.add_(g.sum(0, dtype=self.bias.dtype))


def _block_grad(
    raw: RowLoss, logits: Tensor, sl: slice, grad_rows: Tensor
) -> tuple[Tensor, Tensor]:
    """The block's raw loss (r,) and d (grad_rows · raw) / d logits (r, K)."""
    leaf = logits.detach().requires_grad_()
    with torch.enable_grad():
        value = raw(leaf, sl)
        (grad,) = torch.autograd.grad(value, leaf, grad_rows.to(value.dtype))
    return value.detach(), grad


class _FusedLinearLoss(torch.autograd.Function):
    """Per-row loss ``row_weight * raw(hidden @ weight.T + bias)`` over blocks of rows; summed to
    a 0-d tensor when ``reduced`` (its gradient is then formed in the forward pass)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,  # (n, D)
        weight: Tensor,  # (K, D)
        bias: Tensor | None,  # (K,)
        row_weight: Tensor,  # (n,), the accumulation dtype
        raw: RowLoss,
        reduced: bool,
        block_rows: int,
        mm_dtype: torch.dtype,
        grad_mode: bool,
    ) -> Tensor:
        n = hidden.shape[0]
        # needs_input_grad holds under no_grad too: there the gradients are not formed.
        needs = ctx.needs_input_grad[:3] if grad_mode else (False, False, False)
        want_grad = any(needs)
        values = row_weight.new_empty(n)
        with torch.autocast(hidden.device.type, enabled=False):
            head = _Head(hidden, weight, bias, mm_dtype)
            grads = _Grads(hidden, weight, bias, needs) if reduced and want_grad else None
            for r0 in range(0, n, block_rows):
                sl = slice(r0, min(n, r0 + block_rows))
                logits = head.logits(sl)
                if checks_enabled():
                    check_finite(logits, "logits (hidden @ weight.T + bias)")
                if grads is not None:
                    values[sl], grad = _block_grad(raw, logits, sl, row_weight[sl])
                    grads.add(head, sl, grad)
                    del grad
                else:
                    with torch.no_grad():
                        values[sl] = raw(logits, sl)
                del logits
        ctx.reduced = reduced
        ctx.raw = raw
        ctx.block_rows = block_rows
        ctx.mm_dtype = mm_dtype
        if reduced:
            ctx.grads = grads
            ctx.save_for_backward(values)
            return (row_weight * values).sum()
        ctx.save_for_backward(hidden, weight, bias, row_weight, values)
        return row_weight * values

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        none = (None,) * 5
        if ctx.reduced:
            (values,) = ctx.saved_tensors
            g_row = grad_out * values if ctx.needs_input_grad[3] else None
            if not any(ctx.needs_input_grad[:3]):
                return None, None, None, g_row, *none
            grads: _Grads | None = ctx.grads
            if grads is None:
                raise RuntimeError(
                    "a reduced fused loss keeps its gradients only for one backward pass; use "
                    "reduction='none' to backpropagate through it more than once"
                )
            ctx.grads = None  # handed over: scaled in place, no second copy of weight's size
            scaled = [None if g is None else g.mul_(grad_out.to(g.dtype))
                      for g in (grads.hidden, grads.weight, grads.bias)]  # fmt: skip
            return *scaled, g_row, *none
        hidden, weight, bias, row_weight, values = ctx.saved_tensors
        g_row = grad_out * values if ctx.needs_input_grad[3] else None
        needs = ctx.needs_input_grad[:3]
        if not any(needs):
            return None, None, None, g_row, *none
        n = hidden.shape[0]
        grad_rows = grad_out * row_weight
        with torch.autocast(hidden.device.type, enabled=False):
            head = _Head(hidden, weight, bias, ctx.mm_dtype)
            grads = _Grads(hidden, weight, bias, needs)
            for r0 in range(0, n, ctx.block_rows):
                sl = slice(r0, min(n, r0 + ctx.block_rows))
                _, grad = _block_grad(ctx.raw, head.logits(sl), sl, grad_rows[sl])
                grads.add(head, sl, grad)
                del grad
        return grads.hidden, grads.weight, grads.bias, g_row, *none


# ---------------------------------------------------------------------------------------------
# The three losses: argument checks, their per-row weight and raw loss, one driver
# ---------------------------------------------------------------------------------------------


class _Rows:
    """One fused loss call: its checked head and options, and the rows of the (B·L) tokens that
    it computes — those where ``mask`` is True, or all.

    Ignored tokens are dropped before the output layer (no logits, no loss, no gradient), so
    padding costs nothing and their ids and levels are never read.
    """

    def __init__(
        self,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        mask: Tensor | None,
        reduction: str,
        block_rows: int | None,
    ) -> None:
        self.k, d = weight.shape
        check_vocab_size(self.k, "weight.shape[0] (the vocabulary size K)")
        if hidden.shape[-1] != d:
            raise ValueError(
                f"hidden has size {hidden.shape[-1]} on its last axis but weight is (K, D) = "
                f"({self.k}, {d})"
            )
        if bias is not None and bias.shape != (self.k,):
            raise ValueError(f"bias must have shape (K,) = ({self.k},), got {tuple(bias.shape)}")
        check_reduction(reduction)
        check_mask(mask, hidden.shape[:2])
        self.block_rows = None if block_rows is None else check_count(block_rows, "block_rows")
        self.reduction = reduction
        self.acc = accumulation_dtype(hidden.device)
        self.batch = hidden.shape[0]
        self.n = hidden.shape[0] * hidden.shape[1]
        self.keep = None if mask is None else mask.to(hidden.device).reshape(-1).nonzero()[:, 0]
        self.count = self.n if self.keep is None else int(self.keep.numel())

    def take(self, x: Tensor) -> Tensor:
        """(B, L, ...) per-token values -> (count, ...) of the kept tokens."""
        flat = rearrange(x, "b l ... -> (b l) ...")
        return flat if self.keep is None else flat.index_select(0, self.keep)

    def put(self, values: Tensor) -> Tensor:
        """(count,) losses of the kept tokens -> (B, L), 0 at the ignored ones."""
        if self.keep is not None:
            values = values.new_zeros(self.n).index_put((self.keep,), values)
        return rearrange(values, "(b l) -> b l", b=self.batch)

    def run(
        self,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        row_weight: Tensor,
        raw: RowLoss,
        out_dtype: torch.dtype,
    ) -> Tensor:
        """The loss over the kept rows: ``hidden`` (B, L, D), ``row_weight`` (count,), ``raw``
        the loss of a block of kept rows."""
        hidden = self.take(hidden)
        n = hidden.shape[0]
        mm_dtype = _autocast_dtype(hidden.device)
        if mm_dtype is None or not hidden.dtype.is_floating_point:
            mm_dtype = torch.promote_types(hidden.dtype, weight.dtype)
        block_rows = self.block_rows
        if block_rows is None:
            block_rows = default_chunk_rows(
                self.k, hidden.device, cpu_elements=BLOCK_ELEMENTS_CPU,
                device_elements=BLOCK_ELEMENTS_DEVICE,
            )  # fmt: skip
        block_rows = min(block_rows, max(n, 1))
        reduced = self.reduction != "none"
        loss = _FusedLinearLoss.apply(
            hidden, weight, bias, row_weight, raw, reduced, block_rows, mm_dtype,
            torch.is_grad_enabled(),
        )  # fmt: skip
        if self.reduction == "mean":
            loss = loss / max(self.count, 1)  # the tokens that count; 0 when none does
        return loss.to(out_dtype) if reduced else self.put(loss).to(out_dtype)


def _compute(logits: Tensor) -> Tensor:
    """Half-precision logits are upcast to float32 for the loss (as the unfused losses do)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _uniform_kernel(hidden: Tensor, weight: Tensor, backend: Backend) -> Any:
    """The Triton autograd function of the uniform NELBO's rows when ``discdiff.kernels.
    dispatch``'s rule picks it for blocks of logits in the matmuls' dtype, else None."""
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    return TritonUniformNelbo if use_triton(hidden, backend, dtype=dtype) else None


@typechecked
def fused_linear_uniform_nelbo(
    hidden: Float[Tensor, "b l d"],
    weight: Float[Tensor, "k d"],
    x_0: Int[Tensor, "b l"],
    z_t: Int[Tensor, "b l"],
    alpha_t: Level,
    dalpha_t: Level,
    *,
    bias: Float[Tensor, " k"] | None = None,
    mask: Bool[Tensor, "b l"] | None = None,
    reduction: Reduction = "none",
    block_rows: int | None = None,
    backend: Backend = "auto",
) -> Float[Tensor, "b l"] | Float[Tensor, ""]:
    """``uniform_nelbo(hidden @ weight.T + bias, x_0, z_t, alpha_t, dalpha_t)``, block by block.

    Args:
        hidden: (B, L, D) last hidden state (the input of the output projection).
        weight: (K, D) output projection; K is the vocabulary size.
        x_0, z_t: (B, L) clean and noisy token ids in [0, K).
        alpha_t, dalpha_t: as in ``uniform_nelbo`` (alpha_t a constant; dalpha_t may carry grad).
        bias: (K,) output bias, or None.
        mask: (B, L) bool, True at the tokens that count, or None (all count). The ignored rows
            are dropped before the projection: loss 0, no gradient, no work.
        reduction: "none" (B, L), "sum" or "mean" over the tokens that count (0-d; gradient
            formed in the forward pass; "mean" divides by their number, 0 when there is none).
        block_rows: rows of the (B·L, K) logits per block (default: 16 MiB of float32 logits on
            the CPU, 128 MiB on an accelerator).
        backend: the per-block loss, by ``discdiff.kernels.dispatch``'s rule: "auto" runs the
            Triton kernels on CUDA when Triton imports and the matmuls are not float64 (one read
            of a block forward, one read and one write backward), the PyTorch path otherwise;
            "torch" or "triton" force one ("triton" on the CPU needs the interpreter).

    Memory: one block of logits and one of their gradient at a time; nothing of size (B·L, K) is
    held. The per-row loss and gradient are ``discdiff.losses.uniform``'s closed forms.
    """
    rows = _Rows(hidden, weight, bias, mask, reduction, block_rows)
    k, acc, shape = rows.k, rows.acc, x_0.shape
    check_tokens(x_0, k, "x_0")
    check_tokens(z_t, k, "z_t")
    check_levels(alpha_t, dalpha_t, "alpha_t")
    if isinstance(alpha_t, Tensor) and alpha_t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "alpha_t requires grad, but the uniform NELBO treats it as a constant; pass "
            "alpha_t.detach() (gradients flow to hidden, weight, bias and dalpha_t)"
        )
    out_dtype = result_dtype(hidden, alpha_t, dalpha_t)
    alpha = rows.take(per_token(alpha_t, shape, hidden, acc)).contiguous()
    x_f, z_f = rows.take(x_0).view(-1, 1), rows.take(z_t).view(-1, 1)
    if checks_enabled() and bool(((alpha == 1) & (z_f != x_f).view(-1)).any()):
        raise ValueError(
            "z_t differs from x_0 where alpha_t = 1: impossible under q(z_t | x_0) "
            "(the uniform NELBO is +inf there)"
        )
    row_weight = -rows.take(per_token(dalpha_t, shape, hidden, acc)) / (k * alpha)
    inner = default_chunk_rows(k, hidden.device)
    kernel = _uniform_kernel(hidden, weight, backend)

    def raw(logits: Tensor, sl: slice) -> Tensor:
        r = logits.shape[0]
        if kernel is not None:  # the Triton kernels: d per row of a (r, K) block
            return kernel.apply(logits, x_f[sl].view(r), z_f[sl].view(r), alpha[sl])
        d = UniformNelboCore.apply(
            logits.unsqueeze(0), x_f[sl].view(1, r), z_f[sl].view(1, r), alpha[sl], inner
        )
        return d.view(r)

    return rows.run(hidden, weight, bias, row_weight, raw, out_dtype)


@typechecked
def fused_linear_masked_nelbo(
    hidden: Float[Tensor, "b l d"],
    weight: Float[Tensor, "k d"],
    x_0: Int[Tensor, "b l"],
    z_t: Int[Tensor, "b l"],
    alpha_t: Level,
    dalpha_t: Level,
    mask_id: int,
    *,
    bias: Float[Tensor, " k"] | None = None,
    mask: Bool[Tensor, "b l"] | None = None,
    reduction: Reduction = "none",
    block_rows: int | None = None,
) -> Float[Tensor, "b l"] | Float[Tensor, ""]:
    """``masked_nelbo(hidden @ weight.T + bias, x_0, z_t, alpha_t, dalpha_t, mask_id)``, block by
    block; arguments as in ``fused_linear_uniform_nelbo`` (``mask``: the tokens that count, not
    ``mask_id``). K (weight's rows) counts the mask token."""
    rows = _Rows(hidden, weight, bias, mask, reduction, block_rows)
    k, acc, shape = rows.k, rows.acc, x_0.shape
    check_tokens(x_0, k, "x_0")
    check_tokens(z_t, k, "z_t")
    check_mask_id(mask_id, k, x_0)
    check_levels(alpha_t, dalpha_t, "alpha_t")
    out_dtype = result_dtype(hidden, alpha_t, dalpha_t)
    alpha = rows.take(per_token(alpha_t, shape, hidden, acc))
    dalpha = rows.take(per_token(dalpha_t, shape, hidden, acc))
    masked = rows.take(z_t) == mask_id
    # As in masked_nelbo: 1 - α floored so that unmasked positions at α = 1 stay finite.
    row_weight = torch.where(masked, dalpha / (1 - alpha).clamp_min(torch.finfo(acc).tiny), 0.0)
    x_f = rows.take(x_0)

    def raw(logits: Tensor, sl: slice) -> Tensor:
        log_p = log_prob_without_mask(_compute(logits).unsqueeze(0), x_f[sl].unsqueeze(0), mask_id)
        return log_p.view(-1).to(acc)

    return rows.run(hidden, weight, bias, row_weight, raw, out_dtype)


@typechecked
def fused_linear_cross_entropy(
    hidden: Float[Tensor, "b l d"],
    weight: Float[Tensor, "k d"],
    targets: Int[Tensor, "b l"],
    *,
    bias: Float[Tensor, " k"] | None = None,
    mask: Bool[Tensor, "b l"] | None = None,
    reduction: Reduction = "none",
    block_rows: int | None = None,
) -> Float[Tensor, "b l"] | Float[Tensor, ""]:
    """``ar_loss(hidden @ weight.T + bias, targets)`` (next-token cross-entropy), block by block.

    ``targets`` are already shifted (``hidden[:, j]`` predicts ``targets[:, j]``); other
    arguments as in ``fused_linear_uniform_nelbo`` (``mask`` False where ``F.cross_entropy``
    would take ``ignore_index``).
    """
    rows = _Rows(hidden, weight, bias, mask, reduction, block_rows)
    check_tokens(targets, rows.k, "targets")
    out_dtype = result_dtype(hidden)
    acc = rows.acc
    t_f = rows.take(targets)
    row_weight = torch.ones(t_f.shape, dtype=acc, device=hidden.device)

    def raw(logits: Tensor, sl: slice) -> Tensor:
        return F.cross_entropy(_compute(logits), t_f[sl], reduction="none").to(acc)

    return rows.run(hidden, weight, bias, row_weight, raw, out_dtype)
