"""The tails that end a few-step sample: one more denoiser call at t_min, then a mode per token.

Notation (Concepts §5): x_hat = softmax(logits), filtered by top-k / nucleus and renormalised
exactly as the steps filter it (``categorical.softmax_weights``); under classifier-free guidance
the law the tail reads is the guided x_hat ∝ x_c^gamma x_u^(1 - gamma) of the two filtered
predictions. ``greedy_tail`` returns argmax x_hat (the paper's tail), ``map_tail`` the mode of the
denoising posterior q(z_0 | z_t, x_hat), which keeps each token's own evidence.

Filters matter in the tails: a filter can remove z_t itself (the MAP tail must then move), and
under guidance the filtered guided law can have another mode than the unfiltered one. Where the
conditional and unconditional nuclei share no class, the guided law is empty; the tail then reads
the conditional prediction alone (gamma = 1 for that token), as the guided steps do.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from discdiff.checks import check_range, checks_enabled, reject_if, typechecked
from discdiff.samplers.categorical import check_filters, row_chunks, softmax_weights

__all__ = ["greedy_tail", "guided_log_weights", "map_tail"]


def guided_log_weights(log_c: Tensor, log_u: Tensor, gamma: float) -> Tensor:
    """gamma log_c + (1 - gamma) log_u per class (unnormalised), (n, K) float64.

    A class impossible under either side stays impossible. A row where no class survives (the
    two supports are disjoint: nuclei that do not overlap) falls back to ``log_c``: that token
    follows the conditional law. ``log_c`` / ``log_u`` are log-weights, -inf where filtered.
    """
    if gamma == 1.0:
        return log_c
    if gamma == 0.0:
        return log_u
    dead = torch.isinf(log_c) | torch.isinf(log_u)
    mixed = torch.where(dead, -torch.inf, gamma * log_c + (1 - gamma) * log_u)
    empty = dead.all(-1, keepdim=True)
    return torch.where(empty, log_c, mixed)


def _log_weights(
    logits: Tensor, exclude: int | None, top_k: int | None, top_p: float | None
) -> Tensor:
    w = softmax_weights(logits, exclude=exclude, top_k=top_k, top_p=top_p)
    return torch.log(w.to(torch.float64))


def _chunk_law(
    logits_c: Tensor,
    logits_u: Tensor | None,
    gamma: float | None,
    exclude: int | None,
    top_k: int | None,
    top_p: float | None,
) -> Tensor:
    """Unnormalised log x_hat (n, K) of a chunk of rows: filtered, guided when ``logits_u``."""
    log_c = _log_weights(logits_c, exclude, top_k, top_p)
    if logits_u is None:
        return log_c
    assert gamma is not None
    return guided_log_weights(log_c, _log_weights(logits_u, exclude, top_k, top_p), gamma)


def _modes(
    logits: Tensor,
    uncond: Tensor | None,
    gamma: float | None,
    z_t: Tensor | None,
    log_beta: float | None,
    exclude: int | None,
    top_k: int | None,
    top_p: float | None,
) -> Tensor:
    """argmax x_hat per token (flattened), or the MAP choice between z_t and it."""
    b, ln, k = logits.shape
    flat = logits.reshape(-1, k)
    flat_u = None if uncond is None else uncond.reshape(-1, k)
    plain = uncond is None and top_k is None and top_p is None
    best = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    values = torch.empty(flat.shape[0], dtype=torch.float64, device=flat.device)
    at_z = None if z_t is None else torch.empty_like(values)
    z_flat = None if z_t is None else z_t.reshape(-1)
    for sl in row_chunks(flat.shape[0], k, flat.device):
        if plain:  # argmax of the logits: no softmax, no float64 copy
            part = flat[sl]
            if exclude is not None:
                part = part.clone()  # a copy: editing it leaves the model's logits alone
                part[:, exclude] = -torch.inf
        else:
            part = _chunk_law(flat[sl], None if flat_u is None else flat_u[sl], gamma, exclude,
                              top_k, top_p)  # fmt: skip
        v, best[sl] = part.max(-1)
        values[sl] = v.to(torch.float64)
        if at_z is not None:
            at_z[sl] = part.gather(1, z_flat[sl].unsqueeze(-1)).squeeze(-1).to(torch.float64)
    if checks_enabled():
        reject_if(
            ~torch.isfinite(values),
            "logits have a row with NaN or +inf values, or with no finite class",
        )
    if at_z is None:
        return best.reshape(b, ln)
    # q0(z_t) / q0(j*) = (1 + beta) x_hat[z_t] / x_hat[j*]: z_t wins ties.
    keep = torch.isfinite(at_z) & (at_z - values >= -log_beta)
    return torch.where(keep, z_flat, best).reshape(b, ln)


@typechecked
def greedy_tail(
    logits: Float[Tensor, "b l k"],
    exclude: int | None = None,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    uncond: Float[Tensor, "b l k"] | None = None,
    guidance_scale: float | None = None,
) -> Int[Tensor, "b l"]:
    """argmax x_hat per token (B, L), class ``exclude`` (the mask) left out: the paper's tail.

    ``top_k`` / ``top_p`` filter x_hat as the steps do (the most probable class always
    survives, so alone they change nothing); with ``uncond`` (the unconditional logits) and
    ``guidance_scale`` gamma, the argmax of the filtered guided law x_c^gamma x_u^(1 - gamma)
    (module docstring). It ignores each token's own evidence (x_hat is the leave-one-out law):
    see ``map_tail``.
    """
    check_filters(top_k, top_p)
    gamma = _check_guided(logits, uncond, guidance_scale)
    return _modes(logits, uncond, gamma, None, None, exclude, top_k, top_p)


@typechecked
def map_tail(
    logits: Float[Tensor, "b l k"],
    z_t: Int[Tensor, "b l"],
    alpha_t: float,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    uncond: Float[Tensor, "b l k"] | None = None,
    guidance_scale: float | None = None,
) -> Int[Tensor, "b l"]:
    """The mode of the denoising posterior q(z_0 | z_t, x_hat) per token (B, L).

    q(z_0 = j) ∝ c_j x_hat_j with c_i = alpha_t + (1 - alpha_t) / K at j = i = z_t and
    c_j = (1 - alpha_t) / K elsewhere, so the mode is z_t or the best other class j*: z_t wins
    when log x_hat_i - log x_hat_j* >= -log1p(beta), beta = K alpha_t / (1 - alpha_t) (ties go
    to z_t). Unlike ``greedy_tail`` it keeps each token's own evidence. x_hat is filtered by
    ``top_k`` / ``top_p`` (a z_t the filter removes cannot be the mode) and guided as in
    ``greedy_tail``.
    """
    check_range(alpha_t, "alpha_t", 0.0, 1.0)
    check_filters(top_k, top_p)
    gamma = _check_guided(logits, uncond, guidance_scale)
    k = logits.shape[-1]
    log_beta = math.inf if alpha_t >= 1 else math.log1p(k * alpha_t / (1 - alpha_t))
    return _modes(logits, uncond, gamma, z_t, log_beta, None, top_k, top_p)


def _check_guided(logits: Tensor, uncond: Tensor | None, gamma: float | None) -> float | None:
    if (uncond is None) != (gamma is None):
        raise ValueError("uncond and guidance_scale go together: pass both, or neither")
    if uncond is None:
        return None
    if uncond.shape != logits.shape:
        raise ValueError(
            f"uncond must have the logits' shape {tuple(logits.shape)}, got {tuple(uncond.shape)}"
        )
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {gamma!r}")
    return float(gamma)
