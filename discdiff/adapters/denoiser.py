"""``as_denoiser``: any callable, ``nn.Module`` or transformers model as a discdiff denoiser.

discdiff calls a denoiser as ``denoiser(z_t, sigma, **cond) -> logits (B, L, K)`` (SPEC §9).
A language model is called otherwise: ``model(input_ids=...)`` or ``model(idx)``, it returns a
``ModelOutput`` or a tuple ``(logits, loss)``, it has no time input, and it takes embeddings
through ``inputs_embeds=`` or not at all. ``as_denoiser`` wraps it once:

- **Inputs.** Token ids (B, L) go in as ids (``input_ids=`` when the forward takes that keyword,
  else the first positional argument). The curriculum's soft inputs (B, L, K) and top-k ``Bag``
  inputs go in as embeddings through the model's own input-embedding matrix (its
  ``get_input_embeddings()``, or the one ``nn.Embedding`` of K rows, or ``embedding=``), cast
  to the matrix's dtype, so a bfloat16 model takes the float32 relaxed input: ``soft @ E`` (times
  the embedding's ``embed_scale`` where it has one, as Gemma's), or the weighted sum of the bag's
  rows. They reach the model as ``inputs_embeds=``, or, for a forward without that keyword
  (nanoGPT's), as the output of its embedding module (a forward hook for the duration of the
  call: the module must embed the ids once).
- **The noise level.** sigma is never handed over positionally (an HF forward would read it as
  its ``attention_mask``). ``level=None``: passed as ``sigma=`` to a forward that names such a
  parameter, else not at all (a time-blind model). ``level=NoiseLevelEmbedding(D)``: its
  embedding of sigma is added to the input embeddings (the model is then fed embeddings).
  ``"ignore"``: never passed.
- **Conditioning.** ``cond={"padding_mask": m}`` (B, L), True at real tokens, becomes the
  model's ``attention_mask=``; any other key goes to the model by name.
- **Outputs.** Logits from a tensor, a ``ModelOutput`` (``.logits``), a mapping with
  ``"logits"`` or a tuple whose first (B, L, K) tensor is them; anything else is an error
  naming what came back.
- **What the logits mean.** ``parameterization`` ("x_hat" or "posterior", SPEC §11): the
  samplers, the uniform NELBO and DCD convert exactly where they need the other one.
  ``mask_id``: the model's own [MASK] id, whose logit is set to -inf (SUBS: the mask is never
  predicted); train with ``MaskedDiffusion(K, mask_id=denoiser.mask_id)``.

``reads_token_levels`` (``discdiff.context``) is True only where the model sees per-token levels:
through a ``NoiseLevelEmbedding``, or a ``sigma=`` forward of a model that declares it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from discdiff.adapters.level import NoiseLevelEmbedding
from discdiff.checks import check_count
from discdiff.parameterization import Parameterization, check_parameterization
from discdiff.typing import Bag, DenoiserInput

__all__ = ["ModelDenoiser", "as_denoiser"]

InputMode = Literal["ids", "embeds", "auto"]
LevelOption = NoiseLevelEmbedding | Literal["ignore"] | None


def as_denoiser(
    model: Callable[..., Any],
    *,
    vocab_size: int | None = None,
    parameterization: Parameterization = "x_hat",
    input: InputMode = "auto",
    level: LevelOption = None,
    mask_id: int | None = None,
    embedding: nn.Embedding | str | None = None,
) -> ModelDenoiser:
    """Wrap ``model`` as a discdiff denoiser ``denoiser(z_t, sigma, **cond) -> logits (B, L, K)``.

    Args:
        model: a callable, an ``nn.Module`` or a transformers ``PreTrainedModel`` returning logits
            (B, L, K) as a tensor, a ``ModelOutput``, a mapping or a tuple.
        vocab_size: K, the number of logits; default the model's ``config.vocab_size``, else its
            embedding's rows, else whatever the model returns (the diffusion checks it).
        parameterization: what the logits mean: "x_hat" (trained with the uniform NELBO, Duo) or
            "posterior" (trained with cross-entropy on x_0 from z_t). Masked models: either.
        input: "ids" (ids only; a soft input is an error), "embeds" (always through the input
            embeddings) or "auto" (ids as ids, soft and bag inputs as embeddings).
        level: None (sigma as ``sigma=`` if the forward names it, else unused), a
            ``NoiseLevelEmbedding`` added to the input embeddings, or "ignore".
        mask_id: the model's own mask token id in [0, K), for a masked process with the mask
            inside the vocabulary; its logit becomes -inf.
        embedding: the input-embedding module (or its attribute path, "transformer.wte") when
            the model has no ``get_input_embeddings()`` and more than one ``nn.Embedding`` of K
            rows.

    Returns a ``ModelDenoiser`` (an ``nn.Module``: its ``parameters()`` are the model's and the
    level embedding's, what an optimizer should train).
    """
    if isinstance(model, ModelDenoiser):
        raise TypeError("model is already a discdiff denoiser (as_denoiser's output); pass the "
                        "model it wraps to change its settings")  # fmt: skip
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module, a transformers model or a "
                        f"function), got {type(model).__name__}")  # fmt: skip
    return ModelDenoiser(
        model, vocab_size=vocab_size, parameterization=parameterization, input=input,
        level=level, mask_id=mask_id, embedding=embedding,
    )  # fmt: skip


class ModelDenoiser(nn.Module):
    """A model behind the denoiser seam (``as_denoiser`` builds it; see the module docstring).

    Attributes: ``model``, ``level`` (a ``NoiseLevelEmbedding`` or None), ``vocab_size`` (K or
    None), ``parameterization``, ``mask_id``, ``reads_token_levels``.
    """

    def __init__(
        self, model: Callable[..., Any], *, vocab_size: int | None, parameterization: str,
        input: str, level: Any, mask_id: int | None, embedding: nn.Embedding | str | None,
    ) -> None:  # fmt: skip
        super().__init__()
        if input not in ("ids", "embeds", "auto"):
            raise ValueError(f"input must be 'ids', 'embeds' or 'auto', got {input!r}")
        if not (level is None or level == "ignore" or isinstance(level, NoiseLevelEmbedding)):
            raise ValueError(
                "level must be None (sigma as sigma= where the forward names it), "
                "'ignore', or a NoiseLevelEmbedding(hidden_size) added to the input "
                f"embeddings of a time-blind model, got {type(level).__name__}"
            )
        self.model = model  # an nn.Module registers as a submodule; a function is kept as is
        self.level = level if isinstance(level, NoiseLevelEmbedding) else None
        self.parameterization = check_parameterization(parameterization)
        self.input = input
        self.vocab_size = _vocab_size(model, vocab_size)
        self.mask_id = _check_mask_id(mask_id, self.vocab_size)
        self._params = _forward_parameters(model)
        # Kept out of the registered submodules: it is the model's own (no duplicate entries in
        # state_dict), and a deepcopy maps it to the copy's.
        object.__setattr__(self, "_embedding", _find_embedding(model, embedding, self.vocab_size))
        self.passes_sigma = level is None and "sigma" in self._params
        self.reads_token_levels = self.level is not None or (
            self.passes_sigma and getattr(model, "reads_token_levels", False) is True
        )
        if self.level is not None or input == "embeds":
            self._require_embedding("level=NoiseLevelEmbedding" if self.level is not None
                                    else "input='embeds'")  # fmt: skip

    def forward(self, z_t: DenoiserInput, sigma: Tensor, **cond: Any) -> Tensor:
        """Logits (B, L, K) of the model at ``z_t`` (ids, soft (B, L, K) or a ``Bag``) and the
        noise level ``sigma`` (B,) or (B, L); ``cond`` as in the module docstring."""
        kwargs = self._model_kwargs(cond)
        if self.passes_sigma:
            kwargs["sigma"] = sigma
        soft = isinstance(z_t, Bag) or z_t.is_floating_point()
        if soft and self.input == "ids":
            raise ValueError(
                "this denoiser was built with input='ids' and got the curriculum's relaxed input "
                f"({_describe(z_t)}); build it with input='auto' or 'embeds' (through the model's "
                "input embeddings) to train with GaussianCurriculum"
            )
        if soft or self.level is not None or self.input == "embeds":
            out = self._call_with_embeddings(self._embed(z_t, sigma), z_t, kwargs)
        elif "input_ids" in self._params:
            out = self.model(input_ids=z_t, **kwargs)
        else:
            out = self.model(z_t, **kwargs)
        return self._finish(_logits_of(out, type(self.model).__name__), z_t)

    # -- inputs ------------------------------------------------------------------------------

    def _model_kwargs(self, cond: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = dict(cond)
        padding = kwargs.pop("padding_mask", None)
        if padding is None:
            return kwargs
        if "attention_mask" in self._params:
            kwargs["attention_mask"] = padding.long()  # 1 at real tokens, as transformers reads
        elif "padding_mask" in self._params:
            kwargs["padding_mask"] = padding
        else:
            raise TypeError(
                f"cond has a padding_mask but {type(self.model).__name__}'s forward takes "
                "neither attention_mask= nor padding_mask=: mask the padding inside the model, "
                "or leave it out of cond and pass it to the loss only (loss(..., mask=))"
            )
        return kwargs

    def _require_embedding(self, what: str) -> nn.Embedding:
        if self._embedding is None:
            raise ValueError(
                f"{what} feeds {type(self.model).__name__} embeddings, but its input-embedding "
                "matrix was not found: give the model get_input_embeddings(), or pass "
                "embedding= (the nn.Embedding module or its attribute path, e.g. "
                "'transformer.wte')"
            )
        return self._embedding

    def _embed(self, z_t: DenoiserInput, sigma: Tensor) -> Tensor:
        """(B, L, D) input embeddings of ids, soft inputs or a bag, plus the level's."""
        module = self._require_embedding("the curriculum's relaxed input")
        weight = module.weight
        if isinstance(z_t, Bag):  # the module's own forward embeds (any scale included)
            rows = module(z_t.ids)  # (B, L, n, D)
            emb = (z_t.weights.to(rows.dtype).unsqueeze(-1) * rows).sum(-2)
        elif z_t.is_floating_point():
            k = z_t.shape[-1]
            if k > weight.shape[0]:
                raise ValueError(f"soft input over {k} classes, but the input embedding has "
                                 f"{weight.shape[0]} rows")  # fmt: skip
            emb = z_t.to(weight.dtype) @ weight[:k]  # the model's dtype: bf16 takes fp32 inputs
            scale = getattr(module, "embed_scale", None)  # Gemma scales inside its forward
            if scale is not None:
                emb = emb * torch.as_tensor(scale, dtype=emb.dtype, device=emb.device)
        else:
            emb = module(z_t)
        if self.level is not None:
            emb = emb + self.level(sigma).to(emb.dtype)
        return emb

    def _call_with_embeddings(self, emb: Tensor, z_t: DenoiserInput, kwargs: dict) -> Any:
        """The model on embeddings: ``inputs_embeds=``, or its embedding module's output
        replaced by ``emb`` for the duration of the call."""
        if "inputs_embeds" in self._params:
            return self.model(inputs_embeds=emb, **kwargs)
        ids = (
            z_t
            if isinstance(z_t, Tensor) and not z_t.is_floating_point()
            else (torch.zeros(emb.shape[:2], dtype=torch.long, device=emb.device))
        )  # only the shape matters: the hook replaces what they embed to
        calls = []

        def replace(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            calls.append(tuple(output.shape))
            return emb

        handle = self._require_embedding("embeddings").register_forward_hook(replace)
        try:
            out = (
                self.model(ids, **kwargs)
                if "input_ids" not in self._params
                else (self.model(input_ids=ids, **kwargs))
            )
        finally:
            handle.remove()
        if calls != [tuple(emb.shape)]:
            raise RuntimeError(
                f"{type(self.model).__name__} called its input embedding {len(calls)} times "
                f"(shapes {calls}), expected once on the ids (B, L): the embeddings cannot be "
                "substituted; give its forward an inputs_embeds= keyword"
            )
        return out

    # -- outputs -----------------------------------------------------------------------------

    def _finish(self, logits: Tensor, z_t: DenoiserInput) -> Tensor:
        b, length = z_t.shape[0], z_t.shape[1]
        if logits.ndim != 3 or tuple(logits.shape[:2]) != (b, length):
            raise ValueError(f"{type(self.model).__name__} returned logits of shape "
                             f"{tuple(logits.shape)}, expected (B, L, K) with (B, L) = "
                             f"{(b, length)}")  # fmt: skip
        if self.vocab_size is not None and logits.shape[-1] != self.vocab_size:
            raise ValueError(
                f"{type(self.model).__name__} returned {logits.shape[-1]} logits per token, but "
                f"vocab_size={self.vocab_size}: pass as_denoiser(..., vocab_size=) the number "
                "of classes the model's output layer has"
            )
        if self.mask_id is None:
            return logits
        index = torch.tensor([self.mask_id], device=logits.device)
        return logits.index_fill(-1, index, -torch.inf)  # a new tensor: the output is not edited


def _describe(z_t: DenoiserInput) -> str:
    if isinstance(z_t, Bag):
        return f"a Bag of top-{z_t.ids.shape[-1]} ids"
    return f"soft {z_t.dtype} {tuple(z_t.shape)}"


def _logits_of(out: Any, name: str) -> Tensor:
    """The logits tensor inside a model's output."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, Tensor) and item.ndim == 3:
                return item
    keys = f" (fields {list(out.keys())})" if hasattr(out, "keys") else ""
    raise TypeError(
        f"{name} returned a {type(out).__name__}{keys} without logits: as_denoiser takes a "
        "tensor (B, L, K), an output with .logits (a transformers ModelOutput) or a tuple "
        "(logits, ...). A base model returns hidden states: wrap the model with its LM head "
        "(e.g. BertForMaskedLM, not BertModel)"
    )


# -- what the model is ---------------------------------------------------------------------------


def _forward_parameters(model: Callable[..., Any]) -> set[str]:
    """The named parameters of the model's forward (not ``**kwargs``): the keywords it reads."""
    target = model.forward if isinstance(model, nn.Module) else model
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: ids positionally
        return set()
    return {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _vocab_size(model: Any, vocab_size: int | None) -> int | None:
    if vocab_size is not None:
        return check_count(vocab_size, "vocab_size", minimum=2)
    found = getattr(getattr(model, "config", None), "vocab_size", None)
    return found if isinstance(found, int) else None


def _check_mask_id(mask_id: Any, vocab_size: int | None) -> int | None:
    if mask_id is None:
        return None
    mask_id = check_count(mask_id, "mask_id", minimum=0)
    if vocab_size is None:
        raise ValueError("mask_id needs vocab_size: pass as_denoiser(..., vocab_size=K)")
    if mask_id >= vocab_size:
        raise ValueError(
            f"mask_id={mask_id} is not an id of the model's vocabulary [0, {vocab_size}); with "
            f"the mask at the extra id K use MaskedDiffusion(K) and a model of K + 1 logits"
        )
    return mask_id


def _find_embedding(
    model: Any, embedding: nn.Embedding | str | None, vocab_size: int | None
) -> nn.Embedding | None:
    """The input-embedding module: ``embedding``, ``get_input_embeddings()``, or the one
    ``nn.Embedding`` with K rows; None when there is none to find (ids only)."""
    if isinstance(embedding, str):
        found = model
        for part in embedding.split("."):
            found = getattr(found, part, None)
        if not isinstance(found, nn.Embedding):
            raise ValueError(f"embedding={embedding!r} is not an nn.Embedding of the model "
                             f"(got {type(found).__name__})")  # fmt: skip
        return found
    if embedding is not None:
        if not isinstance(embedding, nn.Embedding):
            raise ValueError(f"embedding must be an nn.Embedding or an attribute path, got "
                             f"{type(embedding).__name__}")  # fmt: skip
        return embedding
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        found = getter()
        if isinstance(found, nn.Embedding):
            return found
    if not isinstance(model, nn.Module):
        return None
    candidates = [m for m in model.modules() if isinstance(m, nn.Embedding)
                  and (vocab_size is None or m.num_embeddings == vocab_size)]  # fmt: skip
    return candidates[0] if len(candidates) == 1 else None
