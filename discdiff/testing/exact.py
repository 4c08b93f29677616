"""The exact law of a sampler run on a ``Toy``, by enumeration through the steps, the tail and
the filters.

``Options`` is one combination of the samplers' options (process, tail, Ψ kappa, ReMDM
remasking, top-k / nucleus, guidance, prompt, steps); ``exact_law(toy, options)`` propagates the
law of z over every state of the free positions, one explicit transition matrix per step, then
maps the states through the tail: float64 (K^free,), in ``sequence_ids`` order. It calls the
toy's denoiser (or any denoiser) on every state, and builds each token's transition itself
from Bayes with explicit K x K matrices (not from the samplers' code), so it is an independent
reference for the samplers, as ``discdiff.testing.contracts.check_sampler`` uses it.

The per-token transitions (Concepts §5), with Q_a = a I + (1 - a) / K 11^T the uniform
corruption to level a and alpha_ts = alpha_t / alpha_s:

- uniform ancestral: q(z_s = j | z_t = i) ∝ Q_ts[j, i] (x_hat Q_s)[j];
- Ψ: kappa of that plus (1 - kappa) (alpha_s q0 + (1 - alpha_s) / K), q0[j] ∝ Q_t[j, i] x_hat[j];
- masked: a mask stays with probability 1 - p, p = (alpha_s - (1 - sigma) alpha_t) /
  (1 - alpha_t), or unmasks to j with p x_hat[j]; a kept token is remasked with probability
  sigma (ReMDM; sigma = 0 is plain MDLM);
- filters: x_hat after top-k then nucleus (ties at the boundary kept), renormalised;
- guidance: the renormalised q_c^gamma q_u^(1 - gamma) of the two transitions; where they share
  no class, the conditional one;
- tails: "greedy" argmax x_hat, "map" the mode of q0 (z_t wins ties), the masked tail fills
  only masks with argmax x_hat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from discdiff.samplers import CappedRemask, TimeGrid
from discdiff.schedules import LogLinearSchedule, Schedule
from discdiff.testing.laws import sequence_ids
from discdiff.testing.toys import Toy, all_sequences

__all__ = ["Options", "exact_law", "exact_tv", "filtered_law", "guided_law"]

F64 = torch.float64


@dataclass(frozen=True)
class Options:
    """One combination of sampler options, as ``exact_law`` and ``check_sampler`` read it.

    ``process``: "uniform" or "masked" (mask id K); ``tail``: "none", "greedy" or "map";
    ``steps``: reverse steps; ``kappa``: the Ψ weight (uniform only); ``remask``: the ReMDM
    cap eta of ``CappedRemask`` (masked only); ``top_k`` / ``top_p``: filters; ``label``: the
    class to condition on (a class-conditional ``Toy``); ``guidance_scale``: gamma of
    classifier-free guidance (needs ``label``); ``prompt``: one entry per position, a given
    token id or None (free). ``block_size`` is reserved for block diffusion (None: one block).
    """

    process: Literal["uniform", "masked"] = "uniform"
    tail: Literal["none", "greedy", "map"] = "none"
    steps: int = 4
    kappa: float | None = None
    remask: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    label: int | None = None
    guidance_scale: float | None = None
    prompt: tuple[int | None, ...] | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        if self.process not in ("uniform", "masked"):
            raise ValueError(f"process={self.process!r}: choose 'uniform' or 'masked'")
        if self.tail not in ("none", "greedy", "map"):
            raise ValueError(f"tail={self.tail!r}: choose 'none', 'greedy' or 'map'")
        if self.kappa is not None and self.process == "masked":
            raise ValueError("kappa is the uniform process's Ψ weight: use remask for 'masked'")
        if self.remask is not None and self.process == "uniform":
            raise ValueError("remask is the masked process's ReMDM cap: use kappa for 'uniform'")
        if self.guidance_scale is not None and self.label is None:
            raise ValueError("guidance_scale needs label: the class the guided prediction reads")
        if self.block_size is not None:
            raise ValueError("block_size: block diffusion is not enumerated here yet; pass None")

    def describe(self) -> str:
        """The options that differ from the defaults, as ``key=value`` pairs."""
        base = Options()
        shown = [
            name
            for name in self.__dataclass_fields__
            if getattr(self, name) != getattr(base, name) or name in ("process", "tail")
        ]
        parts = [f"{name}={getattr(self, name)!r}" for name in shown]
        return ", ".join(parts)

    def prompt_mask(self, length: int) -> tuple[Tensor, Tensor]:
        """(values (L,) int64, mask (L,) bool) of the prompt; zeros and no mask without one."""
        if self.prompt is None:
            return torch.zeros(length, dtype=torch.long), torch.zeros(length, dtype=torch.bool)
        if len(self.prompt) != length:
            raise ValueError(f"prompt has {len(self.prompt)} entries, the toy's length is {length}")
        mask = torch.tensor([v is not None for v in self.prompt])
        values = torch.tensor([0 if v is None else v for v in self.prompt])
        return values, mask

    def with_(self, **changes: Any) -> Options:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)


def filtered_law(probs: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """probs (..., K) after top-k then nucleus by a full sort (ties at the boundary kept),
    renormalised, float64. Zero-mass classes stay zero."""
    p = probs.to(F64)
    if top_k is not None and top_k < p.shape[-1]:
        kth = p.sort(-1, descending=True).values[..., top_k - 1 : top_k]
        p = torch.where(p >= kth, p, 0.0)
    if top_p is not None and top_p < 1:
        values = p.sort(-1, descending=True).values
        cum = values.cumsum(-1) / values.sum(-1, keepdim=True)
        first = (cum < top_p).sum(-1, keepdim=True).clamp(max=p.shape[-1] - 1)
        p = torch.where(p >= values.gather(-1, first), p, 0.0)
    return p / p.sum(-1, keepdim=True)


def guided_law(c: Tensor, u: Tensor, gamma: float | None) -> Tensor:
    """The renormalised c^gamma u^(1 - gamma) of two laws (..., K); the conditional law ``c``
    where they share no class, and ``c`` itself without guidance (gamma None)."""
    if gamma is None:
        return c
    g = torch.where((c > 0) & (u > 0), c.pow(gamma) * u.pow(1 - gamma), 0.0)
    total = g.sum(-1, keepdim=True)
    return torch.where(total > 0, g / torch.where(total > 0, total, 1.0), c)


@dataclass(frozen=True)
class _Run:
    """What the enumeration needs besides the states: the denoiser, its conditioning and the
    toy's sizes."""

    denoiser: Callable[..., Tensor]
    options: Options
    k: int
    clean: Tensor  # (L,) bool: the prompt's positions
    cond: Mapping[str, Any]
    uncond: Mapping[str, Any] | None

    def x_hats(self, z: Tensor, alpha_t: float) -> tuple[Tensor, Tensor | None]:
        """The filtered x_hat (S, L, K) of every state, conditional and unconditional."""
        s, length = z.shape
        if self.options.process == "masked":  # MDLM: no time conditioning
            sigma = torch.zeros(s)
        else:
            sigma = torch.full((s,), -math.log(alpha_t) if alpha_t > 0 else math.inf)
            if bool(self.clean.any()):  # per-token levels: 0 at clean context
                sigma = torch.where(self.clean, 0.0, sigma[:, None])
        laws: list[Tensor | None] = []
        for cond in (self.cond, self.uncond):
            if cond is None:
                laws.append(None)
                continue
            logits = self.denoiser(z, sigma.to(torch.float32), **cond).to(F64)[..., : self.k]
            laws.append(filtered_law(torch.softmax(logits, -1), self.options.top_k,
                                     self.options.top_p))  # fmt: skip
        assert laws[0] is not None
        return laws[0], laws[1]


def _corrupt(a: float, k: int) -> Tensor:
    """Q_a = a I + (1 - a) / K 11^T, (K, K): row x is q(z | x) at signal level a."""
    return a * torch.eye(k, dtype=F64) + (1 - a) / k


def _uniform_transition(x_hat: Tensor, z: Tensor, a_s: float, a_t: float,
                        kappa: float | None) -> Tensor:  # fmt: skip
    """q(z_s | z_t, x_hat) per token (S, L, K) by Bayes with explicit matrices; Ψ with kappa."""
    k = x_hat.shape[-1]
    a_ts = a_t / a_s if a_s > 0 else 1.0
    like = _corrupt(a_ts, k)[:, z].permute(1, 2, 0)  # q(z_t = i | z_s = j): (S, L, K over j)
    post = like * (x_hat @ _corrupt(a_s, k))
    post = post / post.sum(-1, keepdim=True)
    if kappa is None:
        return post
    q0 = _corrupt(a_t, k)[:, z].permute(1, 2, 0) * x_hat
    q0 = q0 / q0.sum(-1, keepdim=True)
    return kappa * post + (1 - kappa) * (a_s * q0 + (1 - a_s) / k)


def _masked_transition(x_hat: Tensor, z: Tensor, a_s: float, a_t: float, sigma: float) -> Tensor:
    """The masked step's law per token (S, L, K + 1), mask id K."""
    k = x_hat.shape[-1]
    p = 1.0 if a_t >= 1 else min(max((a_s - (1 - sigma) * a_t) / (1 - a_t), 0.0), 1.0)
    masked = (z == k).unsqueeze(-1)
    from_mask = torch.cat([p * x_hat, torch.full_like(x_hat[..., :1], 1 - p)], -1)
    kept = torch.nn.functional.one_hot(z.clamp(max=k - 1), k + 1).to(F64) * (1 - sigma)
    kept[..., k] = sigma
    return torch.where(masked, from_mask, kept)


def _step(run: _Run, z: Tensor, grid: TimeGrid, i: int, schedule: Schedule) -> Tensor:
    """The per-token law (S, L, K or K + 1) of step i from every state z (S, L)."""
    t, s, a_t, a_s = grid.interval(i)
    opts = run.options
    c, u = run.x_hats(z, a_t)
    if opts.process == "uniform":
        trans = [None if x is None else _uniform_transition(x, z, a_s, a_t, opts.kappa)
                 for x in (c, u)]  # fmt: skip
    else:
        sigma = 0.0 if opts.remask is None else CappedRemask(schedule, opts.remask)(t, s)
        trans = [None if x is None else _masked_transition(x, z, a_s, a_t, sigma) for x in (c, u)]
    assert trans[0] is not None
    if trans[1] is None:
        return trans[0]
    return guided_law(trans[0], trans[1], opts.guidance_scale)


def _tail(run: _Run, z: Tensor, alpha: float) -> Tensor:
    """The tokens (S, L) each state z (S, L) ends on after the tail call at level ``alpha``."""
    c, u = run.x_hats(z, alpha)
    x_hat = c if u is None else guided_law(c, u, run.options.guidance_scale)
    best = x_hat.argmax(-1)
    if run.options.process == "masked":
        return torch.where(z == run.k, best, z)
    if run.options.tail == "greedy":
        return best
    q0 = _corrupt(alpha, run.k)[:, z].permute(1, 2, 0) * x_hat  # the denoising posterior
    at_z = q0.gather(-1, z.unsqueeze(-1)).squeeze(-1)
    return torch.where(at_z >= q0.amax(-1), z, q0.argmax(-1))  # z_t wins ties


def _setup(toy: Toy, options: Options, denoiser: Callable[..., Tensor] | None) -> _Run:
    if options.label is not None and not 0 <= options.label < toy.classes:
        raise ValueError(f"label={options.label} is outside the toy's {toy.classes} classes")
    if denoiser is None:
        denoiser = toy.denoiser(options.process)
    cond: dict[str, Any] = {}
    uncond = None
    if options.label is not None or toy.classes > 1:
        label = toy.null_label if options.label is None else options.label
        cond = {"label": label}
        if options.guidance_scale is not None:
            uncond = {"label": toy.null_label}
    _, mask = options.prompt_mask(toy.length)
    return _Run(denoiser, options, toy.vocab_size, mask, cond, uncond)


def _labelled(cond: Mapping[str, Any] | None, n: int) -> Mapping[str, Any] | None:
    """The conditioning of n rows: an int label becomes a (n,) tensor."""
    if cond is None:
        return None
    return {key: torch.full((n,), v) if isinstance(v, int) else v for key, v in cond.items()}


def exact_law(
    toy: Toy,
    options: Options,
    *,
    schedule: Schedule | None = None,
    denoiser: Callable[..., Tensor] | None = None,
) -> Tensor:
    """The exact law of the sampler run ``options`` on ``toy``: float64 (K^free,) over the free
    positions' tokens in ``sequence_ids`` order (every position when there is no prompt).

    z_1 is uniform (masked: all masks) on the free positions, the prompt holds its tokens; then
    one transition matrix over the (K or K + 1)^free states per step of the grid
    ``TimeGrid.build(schedule, options.steps, tail=options.tail)`` (default schedule: log-linear),
    then the tail's map. ``denoiser``: the toy's exact denoiser of the process by default (any
    denoiser with the toy's K works: the law is then that of the sampler with that denoiser).
    """
    schedule = LogLinearSchedule() if schedule is None else schedule
    run = _setup(toy, options, denoiser)
    k, length = toy.vocab_size, toy.length
    masked = options.process == "masked"
    base = k + 1 if masked else k
    values, mask = options.prompt_mask(length)
    free = (~mask).nonzero().squeeze(-1)
    states = all_sequences(base, len(free))  # (S, F)
    z = values.expand(len(states), length).clone()
    z[:, free] = states
    if masked:
        law = torch.zeros(len(states), dtype=F64)
        law[-1] = 1.0  # every free position masked
    else:
        law = torch.full((len(states),), 1.0 / len(states), dtype=F64)
    grid = TimeGrid.build(schedule, options.steps, tail=options.tail)
    run = replace(run, cond=_labelled(run.cond, len(states)) or {},
                  uncond=_labelled(run.uncond, len(states)))  # fmt: skip
    for i in range(grid.steps):
        post = _step(run, z, grid, i, schedule)
        step = torch.ones(len(states), len(states), dtype=F64)
        for j, pos in enumerate(free.tolist()):  # one draw per token, independent given z_t
            step = step * post[:, pos, :][:, states[:, j]]
        law = law @ step
    ends = states if options.tail == "none" else _tail(run, z, grid.alpha[-1])[:, free]
    if masked and bool((ends == k).any()):
        stuck = float(law[(ends == k).any(-1)].sum())
        if stuck > 1e-12:
            raise AssertionError(f"the masked run ends with masks left, mass {stuck:.3g}")
    out = torch.zeros(k ** len(free), dtype=F64)
    keep = ~(ends == k).any(-1) if masked else torch.ones(len(states), dtype=torch.bool)
    out.index_add_(0, sequence_ids(ends[keep], k), law[keep])
    if not bool(torch.isfinite(out).all()) or abs(float(out.sum()) - 1) > 1e-9:
        raise ValueError(f"the run's law sums to {float(out.sum())!r}: the denoiser returned "
                         "logits that are no law (NaN, +inf, or -inf at every class)")  # fmt: skip
    return out


def exact_tv(p: Tensor, q: Tensor) -> float:
    """The total variation 1/2 sum |p - q| of two exact laws of the same size (flattened),
    float64; raises ValueError if their sizes differ or either does not sum to one."""
    p, q = p.to(F64).flatten(), q.to(F64).flatten()
    if p.numel() != q.numel():
        raise ValueError(f"the laws have {p.numel()} and {q.numel()} cells: compare laws of one "
                         "state space")  # fmt: skip
    for name, law in (("p", p), ("q", q)):
        if abs(float(law.sum()) - 1) > 1e-9 or bool((law < 0).any()):
            raise ValueError(f"{name} is not a law: sum {float(law.sum())!r}, min "
                             f"{float(law.min())!r}")  # fmt: skip
    return 0.5 * float((p - q).abs().sum())
