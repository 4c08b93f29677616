"""The replication's jobs, each run in a worker process (``examples.jobs.run_tasks``).

Every job is a module-level function of plain arguments (the workers are spawned and the
functions pickled by name) that returns plain data, which ``raw.json`` keeps: training a run,
its bounds, its samples, the references, the BPE tokenizer, the gradient variances, the guided
samples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from examples.replicate.sampling import generation_rows
from examples.replicate.scales import Scale

__all__ = [
    "bounds_job",
    "bpe_job",
    "generation_job",
    "gradvar_job",
    "guidance_job",
    "long_sample_job",
    "reference_job",
    "train_job",
]


def train_job(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """Train one run; returns its validation curve and the per-step training times."""
    from examples.config import config_from_dict
    from examples.metrics import read_csv
    from examples.train import train

    cfg = config_from_dict(cfg_dict)
    start = time.perf_counter()
    result = train(cfg)
    rows = read_csv(Path(cfg.train.out_dir) / "train_log.csv")
    tokens = cfg.train.batch_size * cfg.data.seq_len
    # Seconds of each optimizer step alone (validation and checkpoints excluded).
    step_s = [tokens / float(r["tokens_per_s"]) for r in rows]
    return {
        "steps": result.step,
        "wall_s": time.perf_counter() - start,
        "train_s": sum(step_s),
        "step_s": step_s,
        "val": [{"step": v["step"], "nelbo": v["nelbo"]} for v in result.val],
        "num_parameters": result.num_parameters,
        "final_train_loss": result.losses[-1] if result.losses else float("nan"),
    }


def bounds_job(run_dir: str, max_sequences: int, batch_size: int,
               zero_shot: bool = True) -> dict[str, Any]:  # fmt: skip
    """Validation and (with ``zero_shot``, when the run has a corpus for it) zero-shot bounds
    of a trained run (EMA weights)."""
    from examples.evaluate import validation_perplexity, zero_shot_perplexity
    from examples.train import load_trained

    start = time.perf_counter()
    run = load_trained(run_dir)
    val = validation_perplexity(run, max_sequences=max_sequences, batch_size=batch_size)
    out: dict[str, Any] = {"val": val, "vocab_size": run.tokenizer.vocab_size}
    if zero_shot and run.config.data.zero_shot:
        out["zero_shot"] = zero_shot_perplexity(
            run, run.config.data.zero_shot, max_sequences=max_sequences, batch_size=batch_size
        )
    out["wall_s"] = time.perf_counter() - start
    return out



def generation_job(
    run_dir: str, evaluator_dir: str, gen_steps: Sequence[int], num_samples: int,
    batch_size: int, seed: int, label: str, on_window: bool = False,
    tails: Sequence[str] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """``generation_rows`` of a trained run (EMA weights) under the AR run as evaluator, with
    ``tails`` (default: every tail of the run, ``sampling.tails_of``); a block run samples
    ``gen_steps`` per block.

    ``on_window``: sample a DCD student on its distillation window (the Gaussian gamma-window
    through T) instead of the log-linear schedule: the sampling path before the fix, whose
    alpha_1 need not be ~0 (a wrong prior for z_1 ~ uniform)."""
    from examples.evaluate import AREvaluator
    from examples.train import load_trained

    run = load_trained(run_dir)
    if on_window:
        from discdiff.diffusion import UniformDiffusion
        from discdiff.duality import DualSchedule, GaussianArgmaxTransform
        from discdiff.schedules import GammaSchedule

        k, d = run.objective.vocab_size, run.config.dcd
        window = DualSchedule(GammaSchedule(d.gamma_min, d.gamma_max), GaussianArgmaxTransform(k))
        run.objective.diffusion = UniformDiffusion(k, schedule=window)
    return generation_rows(run, AREvaluator(load_trained(evaluator_dir)), gen_steps,
                           num_samples=num_samples, batch_size=batch_size, seed=seed,
                           label=label, tails=tails)  # fmt: skip


def long_sample_job(run_dir: str, length: int, steps: int, num_samples: int, batch_size: int,
                    seed: int, label: str) -> dict[str, Any]:  # fmt: skip
    """``num_samples`` samples of a block run (EMA weights, no tail) of up to ``length``
    tokens, longer than it trained on (``examples.sample.draw``: the window slides), each
    stopped at EOS, and the text of the first that stopped (of the first sample when none did)
    with where it stopped (None: it ran to ``length`` tokens)."""
    from examples.sample import draw, until_eos
    from examples.train import load_trained

    run = load_trained(run_dir)
    start = time.perf_counter()
    rows = draw(run, num_samples=num_samples, steps=steps, seed=seed, tail="none",
                batch_size=batch_size, length=length, eos=True)  # fmt: skip
    cut = [until_eos(row, run.tokenizer.eos_id) for row in rows]
    stopped = [i for i, (_, stop) in enumerate(cut) if stop is not None]
    shown = stopped[0] if stopped else 0
    kept, stop = cut[shown]
    return {"method": label, "block_size": run.config.model.block_size, "length": length,
            "train_length": run.config.data.seq_len, "steps": steps,
            "num_samples": num_samples, "stopped": len(stopped), "sample": shown,
            "stop": stop, "text": run.tokenizer.decode(kept.tolist()),
            "wall_s": time.perf_counter() - start}  # fmt: skip


def guidance_job(run_dir: str, scales: Sequence[float], num_samples: int, steps: int,
                  batch_size: int) -> list[dict[str, Any]]:  # fmt: skip
    """``examples.guidance.guided_samples`` of the labelled run: per label and scale, the share
    of samples a per-label unigram classifier assigns to the label asked for."""
    from examples.guidance import guided_samples

    rows = guided_samples(run_dir, scales=scales, num_samples=num_samples, steps=steps,
                          batch_size=batch_size)  # fmt: skip
    return [asdict(r) for r in rows]


def bpe_job(
    data: str, path: str, vocab_size: int, val_fraction: float, split_seed: int
) -> dict[str, Any]:
    """Train a byte-level BPE tokenizer of ``vocab_size`` ids on the training split of ``data``
    (the validation works are held out as in every run), save it as ``path`` (a tokenizer.json
    that ``--data.tokenizer json`` reads) and return its size, its characters per token on the
    training text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from examples.data import read_documents, split_documents

    start = time.perf_counter()
    train_docs, _ = split_documents(read_documents(data), val_fraction, split_seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator((d.text for d in train_docs), trainer=trainer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(path)
    tokens = sum(len(e.ids) for e in tok.encode_batch([d.text for d in train_docs]))
    chars = sum(len(d.text) for d in train_docs)
    return {"vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "chars_per_token": chars / tokens, "train_tokens": tokens,
            "wall_s": time.perf_counter() - start}


def reference_job(
    evaluator_dir: str, num_samples: int, batch_size: int, seed: int
) -> list[dict[str, Any]]:
    """The AR model's own samples and real held-out text, scored by the same evaluator."""
    from examples.data import prepare_data
    from examples.evaluate import AREvaluator, generative_perplexity
    from examples.train import load_trained

    run = load_trained(evaluator_dir)
    evaluator = AREvaluator(run)
    gen = torch.Generator().manual_seed(seed)
    length = run.config.data.seq_len
    start = time.perf_counter()
    with torch.no_grad():
        parts = [run.objective.sample(run.model, min(batch_size, num_samples - lo), length, None,
                                      generator=gen)
                 for lo in range(0, num_samples, batch_size)]  # fmt: skip
    wall = time.perf_counter() - start
    samples = torch.cat(parts)
    cfg = run.config.data
    data = prepare_data(cfg.source, tokenizer=run.tokenizer, seq_len=cfg.seq_len,
                        val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)  # fmt: skip
    real = torch.as_tensor(data.val[:num_samples], dtype=torch.long)
    rows = []
    for label, x, w in (("AR (ancestral)", samples, wall), ("real text (validation)", real, 0.0)):
        res = generative_perplexity(x, run.tokenizer, evaluator)
        ar = label.startswith("AR")
        rows.append({"method": label, "steps": length - 1 if ar else "-", "tail": "-",
                     "nfe": length - 1 if ar else "-",
                     "gen_ppl": res["gen_ppl"], "entropy": res["entropy"],
                     "num_samples": res["num_samples"], "wall_s": w,
                     "evaluator": res["evaluator"],
                     "samples": [run.tokenizer.decode(r.tolist()) for r in x[:4]]})  # fmt: skip
    return rows


def gradvar_job(run_dir: str, scale: Scale, seed: int) -> list[dict[str, Any]]:
    """``discdiff.testing.gradient_variances`` on the trained Duo (EMA weights) and on the
    randomly initialised ``discdiff.testing.small_dit`` of benchmarks/bench_curriculum.py, at the
    curriculum's Gaussian window."""
    from discdiff.duality import DualSchedule, GaussianArgmaxTransform
    from discdiff.schedules import GammaSchedule
    from discdiff.testing import gradient_variances
    from discdiff.testing import small_dit as make_model
    from discdiff.timesteps import antithetic_times
    from examples.data import prepare_data
    from examples.train import load_trained

    run = load_trained(run_dir)
    cfg = run.config
    k = run.tokenizer.vocab_size
    schedule = DualSchedule(GammaSchedule(cfg.duo.gamma_min, cfg.duo.gamma_max),
                            GaussianArgmaxTransform(k))  # fmt: skip
    data = prepare_data(cfg.data.source, tokenizer=run.tokenizer, seq_len=cfg.data.seq_len,
                        val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed)
    x_0 = torch.as_tensor(data.val[: scale.grad_batch], dtype=torch.long)
    t = antithetic_times(x_0.shape[0], u=0.5)
    rows = []
    models = (("trained Duo (EMA weights)", run.model.train()), ("random DiT", make_model(k)))
    for label, model in models:
        for tau in scale.grad_taus:
            start = time.perf_counter()
            relaxed, discrete = gradient_variances(
                model, x_0, t, schedule, tau=tau, draws=scale.grad_draws, seed=seed
            )
            rows.append({"model": label, "tau": tau, "var_relaxed": relaxed,
                         "var_discrete": discrete, "ratio": discrete / relaxed,
                         "draws": scale.grad_draws, "wall_s": time.perf_counter() - start})
    return rows

