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
prompt-conditioned sampling draws from is the reverse process on y alone, with c clamped clean:
y_1 from the prior (uniform, or all masks), then y_t -> y_s by the posterior
q(y_s | y_t, x̂_θ), x̂_θ the denoiser's output at the continuation positions for the input
(c, y_t) (c clean) at noise level t. Its forward process corrupts only y: q(y_t | y) with the
schedule's α_t on each continuation token. The usual variational argument goes through
unchanged, since it only uses that each reverse kernel is the posterior at *some* x̂, whatever
the denoiser saw:

    -log p_θ(y | c) <= (1 - ε) E_{t ~ U[ε, 1]} E_{q(y_t | y)} Σ_{ℓ ∈ y} loss_t(x̂^ℓ, y^ℓ, y_t^ℓ)
                       + Σ_{ℓ ∈ y} KL(q(y_1^ℓ | y^ℓ) ‖ prior)
                       + E_{q(y_ε | y)} -log p_θ(y | y_ε, c),     x̂ = x̂_θ(c, y_t, t)

with loss_t the per-token NELBO integrand of the process (Concepts §3): the unconditional NELBO's
terms, with the context positions never noised and never scored. The time conditioning is the
schedule's σ = -log α_t, as in the sampler. ``loglikelihood`` returns minus this estimate (a
stochastic lower bound on log p_θ(y | c)); for an AR model it is exact.

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

from discdiff import losses, processes
from discdiff.denoise import denoise, noise_level
from discdiff.diffusion import NELBO, MaskedDiffusion, UniformDiffusion
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


def _column(x: Tensor) -> Tensor:
    return x.reshape(-1, 1)


def _check_diffusion(diffusion: Any) -> None:
    if not isinstance(diffusion, (UniformDiffusion, MaskedDiffusion)):
        raise TypeError(
            f"diffusion must be a UniformDiffusion or MaskedDiffusion, got {type(diffusion)}"
        )


_Diffusion = UniformDiffusion | MaskedDiffusion
_Generator = torch.Generator | None
_Cond = Mapping[str, Any] | None


def _noised_logits(
    diffusion: _Diffusion, denoiser: Denoiser, x_0: Tensor, clean: Tensor, alpha: Tensor,
    generator: _Generator, cond: _Cond,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """z_t ~ q(z_t | x_0) off the clean positions (x_0 on them), and the denoiser's logits."""
    b, device = x_0.shape[0], x_0.device
    if isinstance(diffusion, UniformDiffusion):
        k = diffusion.vocab_size
        z = processes.uniform_corrupt(x_0, alpha, k, generator=generator)
        level: Tensor | float = alpha
    else:
        k = diffusion.model_vocab_size
        z = processes.masked_corrupt(x_0, alpha, diffusion.mask_id, generator=generator)
        level = alpha if diffusion.time_conditioned else 1.0
    z = torch.where(clean, x_0, z)
    return z, denoise(denoiser, z, noise_level(level, b, device), vocab_size=k, cond=cond)


def _diffusion_term(
    diffusion: _Diffusion, denoiser: Denoiser, x_0: Tensor, clean: Tensor, t: Tensor,
    generator: _Generator, cond: _Cond,
) -> Tensor:  # fmt: skip
    """(1 - eps) times the NELBO integrand at times t (B,), 0 on the clean positions."""
    t = t.to(device=x_0.device, dtype=torch.promote_types(t.dtype, torch.float32))
    alpha_t = _column(diffusion.schedule.alpha(t))
    dalpha_dt = _column(diffusion.schedule.dalpha_dt(t))
    z_t, logits = _noised_logits(diffusion, denoiser, x_0, clean, alpha_t, generator, cond)
    if isinstance(diffusion, UniformDiffusion):
        loss = losses.uniform_nelbo(logits, x_0, z_t, alpha_t, dalpha_dt)
    else:
        loss = losses.masked_nelbo(logits, x_0, z_t, alpha_t, dalpha_dt, diffusion.mask_id)
    # t ~ U[eps, 1]: the integral over [eps, 1] is (1 - eps) times the mean integrand.
    return ((1 - diffusion.eps) * loss).float() * ~clean


def _prior_term(diffusion: _Diffusion, x_0: Tensor, clean: Tensor) -> Tensor:
    alpha_1 = diffusion.schedule.alpha(torch.ones(x_0.shape[0], 1, device=x_0.device))
    if isinstance(diffusion, UniformDiffusion):
        prior = losses.uniform_prior_kl(x_0, alpha_1, diffusion.vocab_size)
    else:
        prior = losses.masked_prior_kl(x_0, alpha_1, diffusion.model_vocab_size)
    return prior.float() * ~clean


def _reconstruction_term(
    diffusion: _Diffusion, denoiser: Denoiser, x_0: Tensor, clean: Tensor,
    generator: _Generator, cond: _Cond,
) -> Tensor:  # fmt: skip
    one = torch.ones(x_0.shape[0], 1, device=x_0.device)
    alpha_eps = diffusion.schedule.alpha(one * diffusion.eps)
    z_eps, logits = _noised_logits(diffusion, denoiser, x_0, clean, alpha_eps, generator, cond)
    if isinstance(diffusion, UniformDiffusion):
        recon = losses.uniform_reconstruction(logits, x_0, z_eps, alpha_eps)
    else:
        recon = losses.masked_reconstruction(logits, x_0, z_eps, diffusion.mask_id)
    return recon.float() * ~clean


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
    """The NELBO of the positions where ``clean`` is False given the others, per token (B, L).

    ``x_0`` (B, L) ids; ``clean`` (B, L) bool, the context: never noised, seen by the denoiser
    as it is, and 0 in every term; ``t`` (B,) the times of the diffusion term. The terms are
    those of ``diffusion.nelbo`` (see the module docstring for the bound they make), drawn in
    the same order: with ``clean`` all False and the same generator, the same numbers.
    """
    _check_diffusion(diffusion)
    check_tokens(x_0, diffusion.vocab_size, "x_0")
    return NELBO(
        _diffusion_term(diffusion, denoiser, x_0, clean, t, generator, cond),
        _prior_term(diffusion, x_0, clean),
        _reconstruction_term(diffusion, denoiser, x_0, clean, generator, cond),
    )


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
        denoiser: the model, ``denoiser(z_t, sigma) -> logits``.
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
        values = torch.cat([
            _diffusion_term(d, f, x.expand(tb.numel(), -1), clean.expand(tb.numel(), -1), tb,
                            gen, None).double().sum(dim=1)
            for tb in self.times(gen).split(self.batch_size)
        ])  # fmt: skip
        # The prior term is exact; the reconstruction term (t = eps) is nearly deterministic.
        rest = _prior_term(d, x, clean) + _reconstruction_term(d, f, x, clean, gen, None)
        nll = float(values.mean()) + float(rest.double().sum())
        return Estimate(nll, stratified_stderr(values), self._greedy(x, clean, gen),
                        cont.numel())  # fmt: skip

    def _greedy(self, x: Tensor, clean: Tensor, gen: torch.Generator) -> bool:
        """One denoiser call at t = 1 (the continuation pure noise): is its argmax the
        continuation? (lm_eval's is_greedy; a single-pass proxy for a diffusion model.)"""
        d = self.diffusion
        one = torch.ones(1, 1, device=self.device)
        alpha_1 = d.schedule.alpha(one)
        if isinstance(d, UniformDiffusion):
            z = torch.randint(0, d.vocab_size, x.shape, generator=gen, device=self.device)
            k, sigma = d.vocab_size, noise_level(alpha_1, 1, self.device)
        else:
            z = torch.full_like(x, d.mask_id)
            k = d.model_vocab_size
            sigma = noise_level(alpha_1 if d.time_conditioned else 1.0, 1, self.device)
        z = torch.where(clean, x, z)
        logits = denoise(self.denoiser, z, sigma, vocab_size=k)[..., : d.vocab_size]
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
                "discdiff.harness needs lm-evaluation-harness: pip install 'discdiff[eval]' "
                "(or pip install lm_eval)"
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
