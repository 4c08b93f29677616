"""Sample a trained run and print the decoded text.

    python -m examples.sample runs/demo/duo                           # 4 samples, 64 steps
    python -m examples.sample runs/demo/duo --steps 8 --kappa 0.5     # the Psi sampler
    python -m examples.sample runs/demo/duo --prompt "ROMEO:" --num-samples 2
    python -m examples.sample runs/demo/dcd --steps 4 --tail greedy --top-p 0.9

RUN is loaded as ``examples.evaluate`` loads it (``examples.loading.load_run``: a run directory of
``examples.train``, EMA weights by default, or a converted model), in eval mode; the run's
objective samples it: ``UniformDiffusion.sample`` for Duo, ``MaskedDiffusion.sample`` for
MDLM, the log-linear schedule of ``DCDistiller.sample`` for a DCD student, the masked sampler
for an SDTT student, and KV-cached decoding after BOS for the AR model. Each sample has the
run's sequence length (``data.seq_len``).

A block model (a run trained with ``--model.block_size b``; Concepts, "Block diffusion") samples
block by block over a cache of the clean blocks, ``--steps`` per block, and takes two more
options: ``--length N`` (tokens per sample, the prompt included; default ``data.seq_len``, and
it may exceed it: past the training length the context window of ``data.seq_len`` tokens
slides) and ``--eos`` (each sample stops at the tokenizer's EOS id; nothing after it is
printed). Its prompt is the clean prefix ``prompt=`` (B, P): context the model reads, not a
clamped canvas. Both options are refused for every other run, which samples one canvas of
``data.seq_len`` tokens.

    python -m examples.sample runs/block --length 384 --eos --prompt "ROMEO:"

``--prompt TEXT`` is encoded with the run's tokenizer and held as a clean prefix
(``prompt=`` / ``prompt_mask=``: the first tokens of every sample are the prompt's); the AR
model continues it. A Duo run samples p(rest | prompt) because it trained with clean context
(``duo.clean_context``: the DiT sees the prompt at noise level 0); a Duo run trained without
it, and a DCD student (distilled without it), are refused, as is any model the library refuses,
with the message alone (exit status 2); a block Duo run trained without clean context reads
whole prompt blocks only (a prompt of a multiple of b tokens). ``--kappa`` (the Psi
sampler of uniform-state diffusion; 1 is ancestral) is refused for masked and AR runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from examples.backbone import TrainedRun
from examples.loading import add_run_arguments, load_run

__all__ = ["build_parser", "draw", "main", "prompt_tensors", "until_eos"]

UNIFORM = ("duo", "dcd")


def prompt_tensors(run: TrainedRun, text: str, batch_size: int) -> tuple[Tensor, Tensor]:
    """``text`` as the clean prefix of ``batch_size`` rows of the run's length: token ids
    (B, L) int64 (0 after the prompt) and the prompt mask (B, L) bool, True on the prompt."""
    ids = torch.as_tensor(run.tokenizer.encode_array(text), dtype=torch.long)
    length = run.config.data.seq_len
    if ids.numel() == 0:
        raise ValueError(f"--prompt {text!r} encodes to no token")
    if ids.numel() >= length:
        raise ValueError(f"--prompt {text!r} is {ids.numel()} tokens, but the run's samples are "
                         f"{length} long (data.seq_len): give a shorter prompt")  # fmt: skip
    prompt = torch.zeros(batch_size, length, dtype=torch.long)
    prompt[:, : ids.numel()] = ids
    mask = torch.zeros(batch_size, length, dtype=torch.bool)
    mask[:, : ids.numel()] = True
    return prompt, mask


def _autoregressive(run: TrainedRun, n: int, prompt: str | None, generator: torch.Generator,
                    top_p: float | None, device: torch.device) -> Tensor:  # fmt: skip
    """BOS (and the prompt's ids), then the rest of the run's length decoded with a KV cache."""
    from discdiff.models import generate_ar

    prefix = [run.objective.bos_id]  # type: ignore[attr-defined]
    if prompt:
        prefix += run.tokenizer.encode(prompt)
    length = run.config.data.seq_len
    if len(prefix) >= length:
        raise ValueError(f"--prompt is {len(prefix) - 1} tokens, but the run's samples are "
                         f"{length} long (data.seq_len): give a shorter prompt")  # fmt: skip
    start = torch.tensor([prefix] * n, dtype=torch.long, device=device)
    return generate_ar(run.model, start, length - len(prefix), top_p=top_p, generator=generator)


def _check_prompt_training(run: TrainedRun) -> None:
    """A uniform-state model samples p(rest | prompt) only if it learned to read clean context."""
    name = run.objective.name
    if name == "duo" and not (run.config.duo.clean_context or 0.0) > 0:
        raise ValueError("this Duo run was trained without clean context (duo.clean_context = "
                         "0): it never learned to read a prompt at noise level 0, so its "
                         "prompted samples would not follow p(rest | prompt). Train with "
                         "--duo.clean_context 0.1, or sample without --prompt")  # fmt: skip
    if name == "dcd":
        raise ValueError("a DCD student is distilled without clean context, so its prompted "
                         "samples would not follow p(rest | prompt): prompt its Duo teacher, "
                         "or sample without --prompt")  # fmt: skip


def _check_block_options(run: TrainedRun, length: int | None, eos: bool) -> None:
    """--length and --eos belong to block models: every other run samples one canvas."""
    if run.config.model.block_size is not None:
        if length is not None and length < 1:
            raise ValueError(f"--length must be >= 1, got {length}")
        return
    for flag, given in (("--length", length is not None), ("--eos", eos)):
        if given:
            raise ValueError(f"{flag} needs a block model (a run trained with "
                             f"--model.block_size); this {run.objective.name} run samples one "
                             f"canvas of data.seq_len = {run.config.data.seq_len} tokens with "
                             f"no end of text: leave out {flag}")  # fmt: skip


def _block_prompt(run: TrainedRun, text: str, batch_size: int, length: int) -> Tensor:
    """``text`` as the clean prefix (batch_size, P) of a block model's samples of ``length``
    tokens. A Duo block model trained without clean context has seen level-0 tokens only in
    whole clean blocks, so its prompt must fill whole blocks (P a multiple of b)."""
    ids = torch.as_tensor(run.tokenizer.encode_array(text), dtype=torch.long)
    b, p = run.config.model.block_size, ids.numel()
    if p == 0:
        raise ValueError(f"--prompt {text!r} encodes to no token")
    if p >= length:
        raise ValueError(f"--prompt {text!r} is {p} tokens, but the samples are {length} long "
                         "(--length): give a shorter prompt or a larger --length")  # fmt: skip
    clean = run.config.duo.clean_context or 0.0
    if run.objective.name == "duo" and b is not None and p % b and not clean > 0:
        raise ValueError(f"--prompt {text!r} is {p} tokens, not a multiple of the block size "
                         f"{b}: this Duo block run was trained without clean context "
                         "(duo.clean_context = 0), so it reads clean tokens only as whole "
                         f"blocks. Give a prompt of a multiple of {b} tokens, or train with "
                         "--duo.clean_context 0.1")  # fmt: skip
    return ids.expand(batch_size, p).clone()


def _block_options(run: TrainedRun, prompt: str | None, n: int, length: int, eos: bool,
                   device: torch.device) -> dict[str, Any]:  # fmt: skip
    """The block sampler's keywords: the context window (the DiT declares no training length,
    so the run's ``data.seq_len``), the EOS id with ``eos``, the prompt as the (B, P) prefix."""
    options: dict[str, Any] = {"window": run.config.data.seq_len}
    if eos:
        options["eos_id"] = run.tokenizer.eos_id
    if prompt:
        options["prompt"] = _block_prompt(run, prompt, n, length).to(device)
    return options


def until_eos(row: Tensor, eos_id: int, start: int = 0) -> tuple[Tensor, int | None]:
    """``row`` (L,) cut before its first ``eos_id`` at or after position ``start`` (the prompt is
    not searched), and that position (None when the row has no EOS there)."""
    hits = (row[start:] == eos_id).nonzero()
    if hits.numel() == 0:
        return row, None
    stop = start + int(hits[0, 0])
    return row[:stop], stop


@torch.no_grad()
def draw(
    run: TrainedRun, *, num_samples: int, steps: int, seed: int = 0, tail: str = "greedy",
    kappa: float | None = None, top_p: float | None = None, prompt: str | None = None,
    batch_size: int = 32, device: torch.device | str = "cpu", length: int | None = None,
    eos: bool = False,
) -> Tensor:  # fmt: skip
    """``num_samples`` samples (N, L) int64 of the run in ``steps`` steps, seeded by ``seed``
    (one generator for every batch: the same call gives the same samples). A block model
    samples ``steps`` per block, L = ``length`` tokens (default ``data.seq_len``) with the
    prompt first, and with ``eos`` every row is ``eos_id`` from its first EOS on."""
    name = run.objective.name
    if kappa is not None and name not in UNIFORM:
        raise ValueError(f"--kappa is the Psi sampler of uniform-state runs (duo, dcd); this is "
                         f"a {name} run: leave out --kappa")  # fmt: skip
    _check_block_options(run, length, eos)
    blocks = run.config.model.block_size is not None
    total = length if length is not None else run.config.data.seq_len
    device = torch.device(device)
    model = run.model.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for lo in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - lo)
        if name == "ar":
            out.append(_autoregressive(run, n, prompt, gen, top_p, device).cpu())
            continue
        options: dict[str, Any] = {"generator": gen, "tail": tail, "device": device}
        if top_p is not None:
            options["top_p"] = top_p
        if kappa is not None:
            options["kappa"] = kappa
        if blocks:
            options.update(_block_options(run, prompt, n, total, eos, device))
        elif prompt:
            _check_prompt_training(run)
            ids, mask = prompt_tensors(run, prompt, n)
            options.update(prompt=ids.to(device), prompt_mask=mask.to(device))
        out.append(run.objective.sample(model, n, total, steps, **options).cpu())
    return torch.cat(out)


def _positive_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.sample",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                allow_abbrev=False)  # fmt: skip
    add_run_arguments(p)
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="sampling steps (default: the run's smallest sample.steps; the AR "
                   "model decodes token by token and ignores it)")
    p.add_argument("--tail", choices=("greedy", "map", "none"), default=None,
                   help="how a sample ends (default: the run's sample.tail)")
    p.add_argument("--kappa", type=float, default=None,
                   help="the Psi sampler's kappa in [0, 1] (uniform-state runs; 1: ancestral; "
                   "default: ancestral)")
    p.add_argument("--prompt", default=None, help="text held as the clean prefix of every sample")
    p.add_argument("--length", type=_positive_int, default=None,
                   help="block models: tokens per sample, the prompt included (default: the "
                   "run's data.seq_len; longer samples slide the context window)")
    p.add_argument("--eos", action="store_true",
                   help="block models: stop each sample at the tokenizer's EOS id")
    p.add_argument("--num-samples", type=_positive_int, default=4)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--seed", type=int, default=None, help="default: the run's sample.seed")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling (default: the run's sample.top_p)")
    return p


def main(argv: Sequence[str] | None = None) -> list[str]:
    args = build_parser().parse_args(argv)
    run = load_run(args)
    sc = run.config.sample
    steps = args.steps if args.steps is not None else min(sc.steps)
    seed = args.seed if args.seed is not None else sc.seed
    tail = args.tail or sc.tail
    top_p = args.top_p if args.top_p is not None else sc.top_p
    try:
        samples = draw(run, num_samples=args.num_samples, steps=steps, seed=seed, tail=tail,
                       kappa=args.kappa, top_p=top_p, prompt=args.prompt,
                       batch_size=args.batch_size, device=args.device, length=args.length,
                       eos=args.eos)  # fmt: skip
    except ValueError as err:  # a refused option: the message, not a traceback
        print(f"python -m examples.sample: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    how = _how(run, steps, tail, args.kappa, samples.shape[1])
    start = len(run.tokenizer.encode(args.prompt)) if args.prompt else 0
    texts = []
    for i, row in enumerate(samples):
        where = ""
        if args.eos:
            row, stop = until_eos(row, run.tokenizer.eos_id, start)
            where = (f"; stopped at EOS after {stop} tokens" if stop is not None
                     else "; no EOS")  # fmt: skip
        texts.append(run.tokenizer.decode(row.tolist()))
        print(f"--- sample {i + 1}/{len(samples)} ({run.objective.name} step {run.step}; {how}; "
              f"seed {seed}{where}) ---")  # fmt: skip
        print(texts[-1])
    return texts


def _how(run: TrainedRun, steps: int, tail: str, kappa: float | None, length: int) -> str:
    """How the samples were drawn, for their headers."""
    if run.objective.name == "ar":
        return "AR, token by token"
    b = run.config.model.block_size
    how = f"{steps} steps, tail {tail}" if b is None else (
        f"blocks of {b}, {steps} steps per block, tail {tail}, {length} tokens")
    return how + (f", kappa {kappa}" if kappa is not None else "")


if __name__ == "__main__":
    main()
