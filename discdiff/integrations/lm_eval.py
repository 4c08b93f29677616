"""discdiff models in EleutherAI's lm-evaluation-harness (``pip install discdiff[eval]``).

``DiscDiffLM(scorer, tokenizer)`` is an ``lm_eval.api.model.LM``: pass it to
``lm_eval.simple_evaluate(model=...)``. The scorer does the maths on token ids:

- ``DiffusionScorer(diffusion, denoiser)`` for a ``UniformDiffusion`` (Duo) or
  ``MaskedDiffusion`` (MDLM) model: log-likelihoods from the NELBO bound, generation by
  prompt-conditioned sampling;
- ``AutoregressiveScorer(model)`` for a causal model: exact log-likelihoods, greedy decoding.

The bound for a continuation (``conditional_nelbo``)
-----------------------------------------------------
Write x = (c, y): c the context, y the m continuation tokens. The conditional model that
prompt-conditioned sampling draws from is the reverse process on y alone, with c held clean; its
bound on -log p_θ(y | c) is the library's conditional NELBO, ``diffusion.nelbo(...,
clean_mask=c)`` (``discdiff.processes.base``): the unconditional NELBO's terms, with the context
never noised and never scored, and seen by the denoiser as the sampler shows it (a uniform-state
denoiser at level σ = 0 there, so it must read per-token levels). ``loglikelihood`` returns minus
this estimate (a stochastic lower bound on log p_θ(y | c)); for an AR model it is exact.

The diffusion term is estimated on a fixed antithetic grid of n times,
t_i = ε + (1 - ε)(u + i)/n, i = 0..n-1, with one noise draw each (``num_samples`` = n; u and
the noise come from ``seed``, the same for every request, so that the choices of a
multiple-choice question are compared under common random numbers). One draw per stratum
makes the plain sample variance overstate the error; the standard error pairs adjacent strata,
SE² = Σ_j (D_{2j} - D_{2j+1})² / n² (conservative; the plain s²/n for odd n). The prior term is
exact and the reconstruction term (at t = ε, nearly deterministic) uses one draw, outside SE.
The integrand is heavy-tailed for short continuations (a token noised at small t carries the
weight α'_t / (1 - α_t) ~ 1/t): with a few hundred samples the SE understates the error of a
one-token continuation, and an exact toy law needs ~10⁴ samples for 0.05 nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from jaxtyping import Bool
from torch import Tensor

from discdiff.diffusion import NELBO, Diffusion, MaskedDiffusion, UniformDiffusion
from discdiff.typing import Denoiser, Times, Tokens, check_tokens, typechecked

try:  # the optional [eval] extra
    from lm_eval.api.model import LM as _LMBase
except ImportError:  # pragma: no cover - exercised only without lm_eval
    _LMBase = object  # type: ignore[assignment,misc]

__all__ = [
    "AutoregressiveScorer",
    "DiffusionScorer",
    "DiscDiffLM",
    "Estimate",
    "FirstLogits",
    "Scorer",
    "conditional_nelbo",
    "stratified_stderr",
]


# --- the bound -----------------------------------------------------------------------------------


def _check_diffusion(diffusion: Any) -> None:
    if not isinstance(diffusion, Diffusion):
        raise TypeError(
            f"diffusion must be a UniformDiffusion or MaskedDiffusion, got {type(diffusion)}"
        )


@torch.no_grad()
@typechecked
def conditional_nelbo(
    diffusion: UniformDiffusion | MaskedDiffusion,
    denoiser: Denoiser,
    x_0: Tokens,
    clean: Bool[Tensor, "b l"],
    t: Times,
    *,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> NELBO:
    """The NELBO of the positions where ``clean`` is False given the others, per token (B, L):
    ``diffusion.nelbo(denoiser, x_0, t=t, generator=generator, cond=cond, clean_mask=clean)``.

    ``x_0`` (B, L) ids; ``clean`` (B, L) bool, the context: never noised, seen by the denoiser
    as the sampler shows it, and 0 in every term; ``t`` (B,) the times of the diffusion term.
    With ``clean`` all False, the unconditional bound ``diffusion.nelbo`` itself.
    """
    _check_diffusion(diffusion)
    mask = clean if bool(clean.any()) else None  # no context: the plain bound
    return diffusion.nelbo(denoiser, x_0, t=t, generator=generator, cond=cond, clean_mask=mask)


def stratified_stderr(values: Tensor) -> float:
    """Standard error of the mean of one draw per stratum (n strata, in order): adjacent strata
    paired, SE² = Σ_j (v_{2j} - v_{2j+1})² / n²; for odd n the plain s / sqrt(n)."""
    v = values.double().flatten()
    n = v.numel()
    if n < 2:
        return math.nan
    if n % 2:
        return float(v.std(unbiased=True) / math.sqrt(n))
    pairs = v.view(-1, 2)
    return float(((pairs[:, 0] - pairs[:, 1]) ** 2).sum().sqrt() / n)


# --- scorers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """-log p(continuation | context) in nats, its Monte Carlo standard error (0 when exact),
    whether the continuation is the model's greedy one, and its length in tokens."""

    nll: float
    stderr: float
    greedy: bool
    tokens: int


class Scorer(Protocol):
    """The token-level model behind ``DiscDiffLM``."""

    vocab_size: int

    def score(self, context: Tensor, continuation: Tensor) -> Estimate:
        """``context`` (n_c,) and ``continuation`` (n_y,) int64 ids, n_c >= 1."""
        ...

    def generate(self, context: Tensor, length: int) -> Tensor:
        """``length`` new ids (length,) after ``context`` (n_c,)."""
        ...


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


class DiffusionScorer:
    """NELBO log-likelihoods and prompt-conditioned sampling for a diffusion model.

    Args:
        diffusion: a ``UniformDiffusion`` or ``MaskedDiffusion`` (its schedule and eps).
        denoiser: the model, ``denoiser(z_t, sigma) -> logits``; for a ``UniformDiffusion`` one
            that reads per-token levels (``reads_token_levels``), as prompts need.
        num_samples: n, the antithetic times per continuation (the module docstring).
        batch_size: sequences per denoiser call.
        seed: the grid offset u and the noise, the same for every request.
        steps: sampling steps for ``generate``; ``sample_options`` go to ``diffusion.sample``
            (e.g. ``{"tail": "greedy", "top_p": 0.9}``).
    """

    def __init__(
        self, diffusion: UniformDiffusion | MaskedDiffusion, denoiser: Denoiser, *,
        num_samples: int = 64, batch_size: int = 32, seed: int = 0, steps: int = 64,
        sample_options: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
    ) -> None:  # fmt: skip
        _check_diffusion(diffusion)
        if num_samples < 1 or batch_size < 1 or steps < 1:
            raise ValueError("num_samples, batch_size and steps must be >= 1")
        self.diffusion, self.denoiser = diffusion, denoiser
        self.vocab_size = diffusion.vocab_size
        self.num_samples, self.batch_size, self.seed, self.steps = (
            num_samples, batch_size, seed, steps)  # fmt: skip
        self.sample_options = dict(sample_options or {})
        self.device = torch.device(device) if device is not None else _model_device(denoiser)

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def times(self, generator: torch.Generator) -> Tensor:
        """The antithetic grid t_i = eps + (1 - eps)(u + i)/n, (n,) float64."""
        n, eps = self.num_samples, self.diffusion.eps
        u = torch.rand((), generator=generator, device=self.device, dtype=torch.float64)
        grid = (u + torch.arange(n, device=self.device, dtype=torch.float64)) / n
        return eps + (1 - eps) * grid

    @torch.no_grad()
    def score(self, context: Tensor, continuation: Tensor) -> Estimate:
        ctx, cont = context.to(self.device).long(), continuation.to(self.device).long()
        x = torch.cat([ctx, cont])[None]  # (1, L)
        check_tokens(x, self.vocab_size, "context and continuation")
        clean = torch.zeros_like(x, dtype=torch.bool)
        clean[:, : ctx.numel()] = True
        gen = self._generator()
        d, f = self.diffusion, self.denoiser
        d.checked_clean_mask(f, clean, x, "or score with a masked diffusion model")
        process, schedule, eps = d.process, d.schedule, d.eps
        values = torch.cat([
            process.diffusion_term(f, x.expand(tb.numel(), -1), tb, schedule, eps, generator=gen,
                                   clean=clean.expand(tb.numel(), -1)).double().sum(dim=1)
            for tb in self.times(gen).split(self.batch_size)
        ])  # fmt: skip
        # The prior term is exact; the reconstruction term (t = eps) is nearly deterministic.
        prior, reconstruction = process.endpoint_terms(f, x, schedule, eps, generator=gen,
                                                       clean=clean)  # fmt: skip
        nll = float(values.mean()) + float((prior + reconstruction).double().sum())
        return Estimate(nll, stratified_stderr(values), self._greedy(x, clean, gen),
                        cont.numel())  # fmt: skip

    def _greedy(self, x: Tensor, clean: Tensor, gen: torch.Generator) -> bool:
        """One denoiser call at t = 1 (the continuation pure noise): is its argmax the
        continuation? (lm_eval's is_greedy; a single-pass proxy for a diffusion model.)"""
        process = self.diffusion.process
        alpha_1 = self.diffusion.schedule.alpha(torch.ones(1, 1, device=self.device))
        z = process.draw_prior(tuple(x.shape), generator=gen, device=self.device)
        z = torch.where(clean, x, z)
        logits = process.logits(self.denoiser, z, alpha_1, None, clean)[..., : self.vocab_size]
        scored = ~clean
        return bool((logits.argmax(-1)[scored] == x[scored]).all())

    @torch.no_grad()
    def generate(self, context: Tensor, length: int) -> Tensor:
        ctx = context.to(self.device).long()
        n = ctx.numel()
        prompt = torch.zeros(1, n + length, dtype=torch.long, device=self.device)
        prompt[0, :n] = ctx
        mask = torch.zeros_like(prompt, dtype=torch.bool)
        mask[0, :n] = True
        out = self.diffusion.sample(
            self.denoiser, 1, n + length, self.steps, prompt=prompt, prompt_mask=mask,
            generator=self._generator(), device=self.device, **self.sample_options,
        )  # fmt: skip
        return out[0, n:]


class FirstLogits(torch.nn.Module):
    """A causal model restricted to its first ``k`` logits (ids beyond the data vocabulary, such
    as the reference's mask id, are never predicted); keeps its KV cache."""

    def __init__(self, model: Callable[..., Tensor], k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.model(*args, **kwargs)[..., : self.k]

    def new_kv_cache(self, max_len: int | None = None) -> Any:
        return self.model.new_kv_cache(max_len)


class AutoregressiveScorer:
    """Exact log-likelihoods and greedy decoding for a causal model (logits at i predict
    token i + 1), e.g. ``DiT(..., causal=True)``; scored over the first ``vocab_size`` logits
    (default: all of them)."""

    def __init__(self, model: Callable[..., Tensor], vocab_size: int | None = None, *,
                 device: torch.device | str | None = None) -> None:  # fmt: skip
        self.model = model
        self.device = torch.device(device) if device is not None else _model_device(model)
        config = getattr(model, "config", None)
        self.vocab_size = int(vocab_size or getattr(config, "vocab_size", 0))
        if self.vocab_size < 1:
            raise ValueError("give vocab_size for a model without config.vocab_size")

    @torch.no_grad()
    def score(self, context: Tensor, continuation: Tensor) -> Estimate:
        ctx, cont = context.to(self.device).long(), continuation.to(self.device).long()
        x = torch.cat([ctx, cont])[None, :-1]
        logits = self.model(x)[0, ctx.numel() - 1 :, : self.vocab_size].double()
        logp = torch.log_softmax(logits, dim=-1)
        nll = -float(logp.gather(-1, cont[:, None]).sum())
        greedy = bool((logp.argmax(-1) == cont).all())
        return Estimate(nll, 0.0, greedy, cont.numel())

    @torch.no_grad()
    def generate(self, context: Tensor, length: int) -> Tensor:
        from discdiff.models.decode import generate_ar

        ctx = context.to(self.device).long()[None]
        out = generate_ar(FirstLogits(self.model, self.vocab_size), ctx, length, top_k=1)
        return out[0, ctx.shape[1] :]


# --- the lm_eval model ---------------------------------------------------------------------------


class _Tokenizer(Protocol):
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class DiscDiffLM(_LMBase):  # type: ignore[misc,valid-type]
    """An ``lm_eval`` language model over a ``Scorer`` and a tokenizer (``encode``/``decode``,
    ``bos_id``, ``eos_id``).

    Contexts start with BOS. A context ending in whitespace gives that whitespace to the
    continuation (as lm_eval's own models do). Sequences longer than ``max_length`` lose the
    start of their context. ``estimates`` holds the ``Estimate`` of every ``loglikelihood``
    request of the last call, in request order (with the standard errors).
    """

    def __init__(self, scorer: Scorer, tokenizer: _Tokenizer, *, max_length: int = 1024,
                 max_gen_toks: int = 256, progress: bool = False) -> None:  # fmt: skip
        if _LMBase is object:
            raise ImportError(
                "discdiff.integrations.lm_eval needs lm-evaluation-harness: "
                "pip install 'discdiff[eval]' (or pip install lm_eval)"
            )
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.scorer, self.text_tokenizer = scorer, tokenizer
        self.max_length, self.max_gen_toks, self.progress = max_length, max_gen_toks, progress
        self.estimates: list[Estimate] = []

    # token plumbing
    def _ids(self, ids: Sequence[int]) -> Tensor:
        return torch.as_tensor(list(ids), dtype=torch.long)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        tok = self.text_tokenizer
        ctx = list(tok.encode(context)) if context else []
        whole = list(tok.encode(context + continuation))
        if whole[: len(ctx)] != ctx:  # the tokenizer merged across the boundary
            return [tok.bos_id, *ctx], list(tok.encode(continuation))
        return [tok.bos_id, *ctx], whole[len(ctx) :]

    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        if len(cont) >= self.max_length:
            raise ValueError(
                f"a continuation of {len(cont)} tokens does not fit max_length={self.max_length}"
            )
        return ctx[-(self.max_length - len(cont)) :], cont

    def _iter(self, items: list[Any], desc: str) -> Any:
        if not self.progress:
            return items
        from tqdm import tqdm

        return tqdm(items, desc=desc)

    # the three request types
    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        self.estimates = []
        out = []
        for req in self._iter(list(requests), "loglikelihood"):
            context, continuation = req.args
            ctx, cont = self._fit(*self._encode_pair(context, continuation))
            if not cont:
                est = Estimate(0.0, 0.0, True, 0)
            else:
                est = self.scorer.score(self._ids(ctx), self._ids(cont))
            self.estimates.append(est)
            out.append((-est.nll, est.greedy))
        return out

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        from lm_eval import utils

        out = []
        for req in self._iter(list(requests), "loglikelihood_rolling"):
            (text,) = req.args
            windows = utils.get_rolling_token_windows(
                token_list=list(self.text_tokenizer.encode(text)),
                prefix_token=self.text_tokenizer.bos_id,
                max_seq_len=self.max_length - 1,
                context_len=1,
            )
            total = 0.0
            for window in windows:
                ctx, cont = utils.make_disjoint_window(window)
                total -= self.scorer.score(self._ids(ctx), self._ids(cont)).nll
            out.append(total)
        return out

    def generate_until(self, requests: list[Any]) -> list[str]:
        out = []
        tok = self.text_tokenizer
        for req in self._iter(list(requests), "generate_until"):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            n_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            n_new = max(1, min(n_new, self.max_length - 1))
            ctx = [tok.bos_id, *tok.encode(context)][-(self.max_length - n_new) :]
            ids = self.scorer.generate(self._ids(ctx), n_new).tolist()
            if tok.eos_id in ids:
                ids = ids[: ids.index(tok.eos_id)]
            text = tok.decode(ids)
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        return out
