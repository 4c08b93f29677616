"""Evaluate a trained run: validation and zero-shot perplexity bounds, generative perplexity.

    python -m examples.evaluate runs/demo/duo                         # validation bound
    python -m examples.evaluate runs/demo/duo --zero-shot milton      # + another corpus
    python -m examples.evaluate runs/demo/duo --gen-ppl --evaluator runs/demo/ar --steps 64,8
    python -m examples.evaluate runs/demo/duo --gen-ppl --evaluator hf:/path/to/gpt2-large
    python -m examples.evaluate models/duo --tokenizer-files vocab.json merges.txt  # converted
    python -m examples.evaluate runs/demo/duo --no-val --lm-eval TASKS --lm-eval-include DIR

Metrics (Concepts §7):
- validation perplexity: exp(sum NELBO / tokens) over the held-out split, an upper bound for
  diffusion models (terms: continuous-time diffusion loss over t in [eps, 1] + prior KL at t = 1
  + reconstruction at t = eps; one Monte Carlo time per sequence) and the exact perplexity for
  the AR model. Printed with its Monte Carlo standard error (``examples.validation``). By
  default it is the training log's own number: the same seed (``train.seed + 12345``, logged
  in val_log.csv), batch size and sequence count (``train.eval_sequences``) as the loop's
  validation; ``--seed``, ``--batch-size``, ``--max-sequences`` change them;
- zero-shot perplexity: the same on a corpus the model never saw (tokenised with the run's own
  tokenizer; characters outside its alphabet count as UNK, and their share is reported);
- generative perplexity: perplexity of the model's samples under an evaluator LM — by default
  one of our AR runs (same tokenizer: token ids are scored directly), or any local Hugging Face
  causal LM directory when ``transformers`` is installed (samples are decoded to text and
  re-tokenised). Always reported with the mean per-sample unigram entropy of the token ids (in
  nats), the sample count, the step count, the precision and the evaluator;
- lm-evaluation-harness tasks (``--lm-eval``, the ``[eval]`` extra): accuracies from the
  conditional NELBO of each continuation (``discdiff.harness``), exact for the AR model.

RUN is a directory written by ``examples.train`` or a released checkpoint converted by
``python -m discdiff.convert`` (``--tokenizer-files`` gives its tokenizer from local files).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from discdiff.metrics import sample_entropy
from discdiff.samplers import nfe
from examples.backbone import TrainedRun, load_trained
from examples.data import pack_documents, prepare_data, read_documents
from examples.loading import add_run_arguments, is_converted_model, load_converted, load_run
from examples.validation import evaluate_bound, validation_batch_size, validation_seed

__all__ = [
    "AREvaluator",
    "HFEvaluator",
    "generate",
    "generative_perplexity",
    "is_converted_model",
    "lm_eval_harness",
    "lm_eval_lines",
    "load_converted",
    "load_evaluator",
    "load_run",
    "add_run_arguments",
    "main",
    "parse_steps",
    "positive_int",
    "sample_entropy",
    "validation_perplexity",
    "zero_shot_perplexity",
]


def _precision(device: torch.device, precision: str) -> str:
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return "bf16 autocast"
    return "float32"


def validation_perplexity(
    run: TrainedRun, *, max_sequences: int | None = None, batch_size: int | None = None,
    seed: int | None = None, device: torch.device | str = "cpu", precision: str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """The run's validation split, rebuilt exactly as in training. ``seed`` and
    ``batch_size`` default to the training loop's (``validation_seed``,
    ``validation_batch_size``), so with ``max_sequences = train.eval_sequences`` this is the
    number in the run's val_log.csv."""
    cfg = run.config
    data = prepare_data(
        cfg.data.source, tokenizer=run.tokenizer, seq_len=cfg.data.seq_len,
        val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed,
        cache_dir=cfg.data.cache_dir, max_documents=cfg.data.max_documents,
    )  # fmt: skip
    device = torch.device(device)
    res = evaluate_bound(
        run.objective, run.model.to(device), data.val,
        batch_size=batch_size if batch_size is not None else validation_batch_size(cfg),
        max_sequences=max_sequences, seed=seed if seed is not None else validation_seed(cfg),
        device=device, precision=precision,
    )  # fmt: skip
    return {**res, "corpus": f"{cfg.data.source} (validation split)",
            "precision": _precision(device, precision)}  # fmt: skip


def zero_shot_perplexity(
    run: TrainedRun, source: str, *, max_sequences: int | None = None,
    batch_size: int | None = None, seed: int | None = None, device: torch.device | str = "cpu",
    precision: str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """The bound on a corpus the model was not trained on, with the run's tokenizer (seed and
    batch size: the training loop's validation ones unless given)."""
    cfg = run.config
    docs = read_documents(source, split="validation", cache_dir=cfg.data.cache_dir)
    rows = pack_documents(docs, run.tokenizer, cfg.data.seq_len, what=f"corpus {source!r}")
    device = torch.device(device)
    res = evaluate_bound(
        run.objective, run.model.to(device), rows,
        batch_size=batch_size if batch_size is not None else validation_batch_size(cfg),
        max_sequences=max_sequences, seed=seed if seed is not None else validation_seed(cfg),
        device=device, precision=precision,
    )  # fmt: skip
    unk = getattr(run.tokenizer, "unk_id", None)
    used = rows if max_sequences is None else rows[:max_sequences]
    unk_share = float(np.mean(np.asarray(used) == unk)) if unk is not None else 0.0
    return {**res, "corpus": source, "unk_fraction": unk_share,
            "precision": _precision(device, precision)}  # fmt: skip


# --- generative perplexity -----------------------------------------------------------------------


class Evaluator(Protocol):
    name: str

    def nll(self, samples: Tensor, tokenizer: Any) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of the samples and the number of scored
        tokens."""
        ...


@dataclass
class AREvaluator:
    """One of our AR runs as the evaluator. Samples in the same vocabulary are scored directly
    (every token after the first, given its prefix); others are decoded and re-tokenised."""

    run: TrainedRun
    batch_size: int = 32

    @property
    def name(self) -> str:
        return f"AR run {self.run.run_dir} (step {self.run.step})"

    @torch.no_grad()
    def nll(self, samples: Tensor, tokenizer: Any) -> tuple[float, int]:
        model = self.run.model
        device = next(model.parameters()).device
        if tokenizer.to_dict() != self.run.tokenizer.to_dict():
            texts = [tokenizer.decode(row.tolist()) for row in samples]
            ids = [self.run.tokenizer.encode_array(t) for t in texts]
            length = max(2, min(len(i) for i in ids))
            samples = torch.as_tensor(np.stack([i[:length] for i in ids]))
        total, count = 0.0, 0
        for batch in samples.split(self.batch_size):
            x = batch.to(device)
            logits = model(x[:, :-1]).double()
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), x[:, 1:], reduction="sum"
            )
            total += float(nll)
            count += x[:, 1:].numel()
        return total, count


@dataclass
class HFEvaluator:
    """A local Hugging Face causal LM (e.g. a gpt2-large directory); needs ``transformers``."""

    directory: str
    device: str = "cpu"

    def __post_init__(self) -> None:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            raise ImportError(
                "a Hugging Face evaluator needs the `transformers` package (pip install "
                "transformers); or pass one of our AR runs as --evaluator"
            ) from err
        if not Path(self.directory).is_dir():
            raise FileNotFoundError(f"no model directory at {self.directory}")
        self.tok = AutoTokenizer.from_pretrained(self.directory, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.directory, local_files_only=True
        ).to(self.device).eval()  # fmt: skip

    @property
    def name(self) -> str:
        return f"HF causal LM {self.directory}"

    @torch.no_grad()
    def nll(self, samples: Tensor, tokenizer: Any) -> tuple[float, int]:
        max_len = getattr(self.model.config, "max_position_embeddings", 1024)
        total, count = 0.0, 0
        for row in samples:
            ids = self.tok(tokenizer.decode(row.tolist()), return_tensors="pt").input_ids
            ids = ids[:, :max_len].to(self.device)
            if ids.shape[1] < 2:
                continue
            logits = self.model(ids).logits[:, :-1].double()
            total += float(torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), ids[:, 1:], reduction="sum"))  # fmt: skip
            count += ids.shape[1] - 1
        return total, count


def load_evaluator(spec: str, device: str = "cpu") -> Evaluator:
    """``hf:<dir>`` for a Hugging Face causal LM, else the directory of one of our AR runs."""
    if spec.startswith("hf:"):
        return HFEvaluator(spec[3:], device)
    run = load_trained(spec, device=device)
    if run.config.train.objective != "ar":
        raise ValueError(
            f"the evaluator {spec} was trained with objective {run.config.train.objective!r}; "
            "generative perplexity needs an autoregressive model (objective ar)"
        )
    return AREvaluator(run)


def generate(
    run: TrainedRun, steps: int, num_samples: int, *, batch_size: int = 32, seed: int = 0,
    tail: str = "greedy", top_p: float | None = None, device: torch.device | str = "cpu",
) -> tuple[Tensor, float]:  # fmt: skip
    """``num_samples`` samples of the run's sequence length in ``steps`` steps, and the wall
    time (s) it took. Seeded: the same call gives the same samples."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    model = run.model.to(device).eval()
    length = run.config.data.seq_len
    out = []
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - lo)
            kwargs: dict[str, Any] = {"generator": gen, "tail": tail}
            if top_p is not None:
                kwargs["top_p"] = top_p
            out.append(run.objective.sample(model, n, length, steps, **kwargs).cpu())
    return torch.cat(out), time.perf_counter() - start


def generative_perplexity(
    samples: Tensor, tokenizer: Any, evaluator: Evaluator
) -> dict[str, Any]:
    total, count = evaluator.nll(samples, tokenizer)
    return {
        "gen_ppl": math.exp(total / max(count, 1)),
        "entropy": sample_entropy(samples),
        "num_samples": int(samples.shape[0]),
        "scored_tokens": count,
        "evaluator": evaluator.name,
    }


def evaluate_generation(
    run: TrainedRun, evaluator: Evaluator, steps_list: Sequence[int], *, num_samples: int,
    batch_size: int = 32, seed: int = 0, tail: str = "greedy", top_p: float | None = None,
    device: torch.device | str = "cpu", label: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for steps in steps_list:
        samples, wall = generate(run, steps, num_samples, batch_size=batch_size, seed=seed,
                                 tail=tail, top_p=top_p, device=device)  # fmt: skip
        res = generative_perplexity(samples, run.tokenizer, evaluator)
        res.update({
            "method": label or run.config.train.objective,
            "steps": steps if run.objective.name != "ar" else run.config.data.seq_len - 1,
            "nfe": nfe(steps, tail) if run.objective.name != "ar" else run.config.data.seq_len - 1,
            "wall_s": wall,
            "precision": f"model {_precision(torch.device(device), 'auto')}; categorical "
                         "draws exact (float64 law)",
            "tail": tail if run.objective.name != "ar" else None,
            "top_p": top_p,
            "samples": [run.tokenizer.decode(r.tolist()) for r in samples[:4]],
        })  # fmt: skip
        rows.append(res)
    return rows


# --- lm-evaluation-harness -----------------------------------------------------------------------


def lm_eval_harness(
    run: TrainedRun, tasks: Sequence[str], *, include: Sequence[str] = (), num_samples: int = 64,
    batch_size: int = 32, steps: int = 64, tail: str = "greedy", limit: float | None = None,
    num_fewshot: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """Run lm-evaluation-harness tasks on the run (``lm_eval.simple_evaluate``).

    Diffusion models score continuations by the conditional NELBO (``num_samples`` antithetic
    times each; ``discdiff.harness``) and generate by prompt-conditioned sampling in ``steps``
    steps; AR models are exact. ``include``: local task directories (lm_eval's include_path);
    the built-in task index (slow to build) is only read when a task is not found there.
    """
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError("--lm-eval needs lm-evaluation-harness: pip install "
                          "'discdiff[eval]' (or pip install lm_eval)") from err  # fmt: skip
    from discdiff.harness import AutoregressiveScorer, DiffusionScorer, DiscDiffLM

    device = torch.device(device)
    model = run.model.to(device).eval()
    scorer: Any
    if run.objective.name == "ar":
        scorer = AutoregressiveScorer(model, run.objective.vocab_size, device=device)
    else:
        scorer = DiffusionScorer(
            run.objective.diffusion, model, num_samples=num_samples, batch_size=batch_size,
            seed=seed, steps=steps, sample_options={"tail": tail}, device=device,
        )  # fmt: skip
    lm = DiscDiffLM(scorer, run.tokenizer, max_length=run.config.data.seq_len)
    manager = None
    if include:
        manager = TaskManager(include_path=list(include), include_defaults=False)
        if not all(t in manager.all_tasks for t in tasks):
            manager = TaskManager(include_path=list(include))
    return lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
        bootstrap_iters=1000, log_samples=False, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )  # fmt: skip


def lm_eval_lines(results: dict[str, Any]) -> list[str]:
    """One line per task: ``lm-eval TASK: METRIC VALUE ± STDERR, ...``."""
    lines = []
    for task, metrics in results.get("results", {}).items():
        parts = []
        for key, value in metrics.items():
            name, comma, filt = key.partition(",")  # "metric,filter"; also alias, sample_len
            if not comma or name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            se = metrics.get(f"{name}_stderr,{filt}")
            err = f" ± {se:.4f}" if isinstance(se, (int, float)) else ""
            parts.append(f"{name} {value:.4f}{err}" + (f" [{filt}]" if filt != "none" else ""))
        lines.append(f"lm-eval {task}: " + ", ".join(parts))
    return lines


# --- command line --------------------------------------------------------------------------------


def parse_steps(text: str) -> list[int]:
    """``--steps 64,16,8``: the step counts, each an integer >= 1 (argparse's ``type``)."""
    return [positive_int(s) for s in text.split(",") if s.strip()]


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse's ``type``), else an argparse error naming the text."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.evaluate", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False)  # fmt: skip
    add_run_arguments(p)
    p.add_argument("--no-val", action="store_true",
                   help="skip the validation bound, and the run's zero-shot corpus unless "
                   "--zero-shot names one (nothing is read or downloaded for them)")
    p.add_argument("--zero-shot", default=None,
                   help="a corpus for zero-shot perplexity (default: the run's data.zero_shot)")
    p.add_argument("--max-sequences", type=int, default=None,
                   help="sequences for the bounds (default: the run's train.eval_sequences, as "
                   "its training validated)")
    p.add_argument("--gen-ppl", action="store_true", help="sample and score the samples")
    p.add_argument("--evaluator", default=None,
                   help="an AR run directory or hf:<local HF causal LM dir>")
    p.add_argument("--steps", type=parse_steps, default=None, help="e.g. 64,16,8,4")
    p.add_argument("--num-samples", type=positive_int, default=None,
                   help="samples per step count (default: the run's sample.num_samples)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="batch size (default: the bounds the training loop's validation batch, "
                   "which fixes the noise each sequence gets; sampling 32)")
    p.add_argument("--tail", choices=("greedy", "map", "none"), default=None,
                   help="how a sample ends (default: the run's sample.tail, 'greedy')")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the bounds' noise and of the samples (default: the bounds "
                   "train.seed + 12345, as the training log's; the samples sample.seed)")
    p.add_argument("--out", default=None, help="JSON file (default: RUN/eval.json)")
    h = p.add_argument_group("lm-evaluation-harness")
    h.add_argument("--lm-eval", default=None, help="comma-separated lm_eval task names")
    h.add_argument("--lm-eval-include", action="append", default=[],
                   help="a local task directory (repeatable)")
    h.add_argument("--lm-eval-samples", type=int, default=64,
                   help="Monte Carlo times per continuation (diffusion models)")
    h.add_argument("--lm-eval-steps", type=int, default=64, help="sampling steps for generation")
    h.add_argument("--lm-eval-limit", type=float, default=None, help="examples per task")
    h.add_argument("--lm-eval-fewshot", type=int, default=None)
    h.add_argument("--lm-eval-out", default=None, help="default: RUN/lm_eval.json")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    run = load_run(args)
    results: dict[str, Any] = {"run": str(args.run), "step": run.step, "weights": args.weights}
    cfg = run.config
    kw = {"max_sequences": args.max_sequences if args.max_sequences is not None
          else cfg.train.eval_sequences, "batch_size": args.batch_size, "seed": args.seed,
          "device": args.device}  # fmt: skip
    converted = is_converted_model(args.run)
    if not args.no_val and (args.data or not converted):
        results["validation"] = validation_perplexity(run, **kw)
    zero_shot = args.zero_shot
    if zero_shot is None:  # the run's own zero-shot corpus, unless --no-val skips the bounds
        zero_shot = "" if args.no_val else run.config.data.zero_shot
    if zero_shot:
        results["zero_shot"] = zero_shot_perplexity(run, zero_shot, **kw)
    if args.gen_ppl:
        if args.evaluator is None and run.config.train.objective != "ar":
            raise SystemExit("--gen-ppl needs --evaluator (an AR run directory or hf:<dir>)")
        evaluator = load_evaluator(args.evaluator or args.run, args.device)
        results["generation"] = evaluate_generation(
            run, evaluator, args.steps or run.config.sample.steps,
            num_samples=args.num_samples if args.num_samples is not None
            else run.config.sample.num_samples,
            batch_size=args.batch_size or 32,
            seed=args.seed if args.seed is not None else cfg.sample.seed,
            tail=args.tail or run.config.sample.tail,
            top_p=args.top_p, device=args.device,
        )  # fmt: skip
    harness: dict[str, Any] | None = None
    if args.lm_eval:
        from lm_eval.utils import handle_non_serializable

        harness = lm_eval_harness(
            run, [t for t in args.lm_eval.split(",") if t.strip()], include=args.lm_eval_include,
            num_samples=args.lm_eval_samples, batch_size=args.batch_size or 32,
            steps=args.lm_eval_steps, tail=args.tail or run.config.sample.tail,
            limit=args.lm_eval_limit, num_fewshot=args.lm_eval_fewshot, seed=args.seed or 0,
            device=args.device,
        )  # fmt: skip
        harness_out = Path(args.lm_eval_out or Path(args.run) / "lm_eval.json")
        harness_out.write_text(json.dumps(harness, indent=2, default=handle_non_serializable))
        results["lm_eval"] = {"results": harness["results"], "file": str(harness_out)}
    out = Path(args.out) if args.out else Path(args.run) / "eval.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    for key in ("validation", "zero_shot"):
        if key in results:
            r = results[key]
            rel = "=" if r["bound"].startswith("exact") else "<="
            print(f"{key:10s} {r['corpus']}: NELBO {r['nelbo']:.4f} ± {r['nelbo_se']:.4f} "
                  f"nats/token (Monte Carlo standard error; seed {r['seed']}), PPL {rel} "
                  f"{r['ppl']:.3f} over {r['tokens']} tokens in {r['sequences']} sequences "
                  f"[{r['bound']}]")  # fmt: skip
    for r in results.get("generation", []):
        print(f"generation {r['method']} steps={r['steps']}: gen PPL {r['gen_ppl']:.3f}, entropy "
              f"{r['entropy']:.3f} nats, {r['num_samples']} samples, {r['precision']}, "
              f"evaluator {r['evaluator']}")  # fmt: skip
    for line in lm_eval_lines(harness or {}):
        print(line)
    if harness is not None:
        print(f"lm-eval results written to {results['lm_eval']['file']}")
    print(f"results written to {out}")
    return results


if __name__ == "__main__":
    main()
