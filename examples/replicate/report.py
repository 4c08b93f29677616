"""``docs/replication.md`` from a run's measurements: ``report_from_raw`` and its text.

``report_from_raw`` is a pure function of ``raw.json`` (up to the wall time it adds, its own),
so ``python -m examples.replicate --render-only`` rewrites the same report from a saved run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from examples.replicate.blocks import block_lines, block_section, has_blocks
from examples.replicate.plots import write_plots
from examples.replicate.prose import (
    ablation_line,
    entropy_line,
    guidance_lines,
    honest_line,
    map_line,
    samples_block,
)
from examples.replicate.scales import RUNS, Scale, say
from examples.replicate.sections import (
    ablation_section,
    curriculum_section,
    generation_section,
    guidance_section,
    perplexity_section,
    scale_from_raw,
    verdict_section,
)

__all__ = ["render_report", "report_from_raw"]



def report_from_raw(
    raw: dict[str, Any], *, out: Path, docs: Path, rendered_again: bool = False
) -> dict[str, Any]:
    """Every table (printed), the plots and ``docs/replication.md`` from the measurements of a
    run (``out/raw.json``): a pure function of them, so ``--render-only`` reproduces it.
    Returns the summary that ``out/results.json`` holds."""
    from examples.config import config_from_dict

    t_start = time.perf_counter()
    out, docs = Path(out), Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    scale = scale_from_raw(raw["scale"])
    configs = {n: config_from_dict(c) for n, c in raw["configs"].items()}
    jobs, results, machine = raw["jobs"], raw["results"], raw["machine"]
    zero_shot = raw["zero_shot"]
    t = curriculum_section(jobs, results, scale)
    t.update(perplexity_section(jobs, results, zero_shot))
    t.update(generation_section(results, scale))
    t.update(verdict_section(t["speedup"], results, t["gen_rows"], t["refs"], scale))
    t.update(ablation_section(results, scale))
    t.update(guidance_section(results, scale))
    if has_blocks(results, scale):
        t.update(block_section(results, scale))
    plots = write_plots(docs, jobs, scale, t["ppl_rows"], t["gen_rows"], t["refs"], zero_shot)
    wall = raw["measured_s"] + time.perf_counter() - t_start
    summary = {
        "rendered_again": rendered_again,
        "scale": asdict(scale), "machine": machine, "wall_s": wall, "measured_s": raw["measured_s"],
        "command": raw["command"], "config_duo": asdict(configs["duo"]),
        "curriculum": {"table": t["cur_rows"], "curves": {n: jobs[n]["val"] for n in jobs},
                       "gradient_variance": t["grad_rows"]},
        "perplexity": t["ppl_rows"], "generation": t["gen_rows"], "references": t["refs"],
        "verdicts": t["verdict_rows"], "ablation": t["ablation_rows"], "decay": t["decay_rows"],
        "bpe": results.get("bpe"), "guidance": t["guidance_rows"], "plots": plots,
        "blocks": {"table": t["block_rows"], "trend": t["block_trend"],
                   "long": t["block_long"]} if "block_md" in t else None,
        "vocab_size": results["bounds_duo"]["vocab_size"],
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    report = render_report(summary, scale=scale, configs=configs, tables=t,
                           zero_shot=zero_shot, data=raw["data"])  # fmt: skip
    (docs / "replication.md").write_text(report)
    workers, threads = machine["workers"], machine["threads_per_worker"]
    say(f"\nDone in {wall / 60:.1f} min ({machine['cpu']}, {workers} x {threads} thread(s)): "
        f"{docs / 'replication.md'}, plots {', '.join(plots)}; runs and results.json in {out}")
    return summary


def render_report(
    summary: dict[str, Any], *, scale: Scale, configs: dict[str, Any], tables: dict[str, Any],
    zero_shot: str, data: str,
) -> str:  # fmt: skip
    """The markdown of ``docs/replication.md``: ``summary`` (``results.json``), the resolved
    configs by run, and ``tables``: the sections' markdown tables by name (``sections``) and
    ``speedup``, the curriculum's step ratio."""
    t = tables
    lines = [
        *_intro(summary, scale, zero_shot, data),
        *_curriculum(summary, scale, configs["duo"], t),
        *_perplexity(summary, t),
        *_generation(summary, scale, configs, t),
        *_comparison(summary, t),
        *(guidance_lines(summary, scale, configs, t["guidance_md"]) if t["guidance_md"] else []),
        *(block_lines(t, scale) if "block_md" in t else []),
        *_configuration(summary, scale),
    ]
    return "\n".join(lines)


def _duo_row(summary: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in summary["perplexity"] if r["method"] == RUNS["duo"])


def _intro(summary: dict[str, Any], scale: Scale, zero_shot: str, data: str) -> list[str]:
    """The title, how the run was made, the data and the models."""
    m, duo_row = summary["machine"], _duo_row(summary)
    return [
        "# Replication of the Duo paper at CPU scale",
        "",
        f"Produced by `{summary['command']}` in **{summary['wall_s'] / 60:.1f} minutes** "
        f"of wall time (training, evaluation, sampling, report) on {m['cpu']} "
        f"({m['cores']} cores; {m['workers']} worker process(es) x {m['threads_per_worker']} torch "
        f"thread(s); 1-min load average at start {m['load_average_1min']}), torch {m['torch']}, "
        f"Python {m['python']}, {m['platform']}. "
        + ("(This text was re-rendered from the run's saved measurements, `raw.json`, by "
           "`--render-only`; the numbers are that run's.) " if summary["rendered_again"] else "")
        + f"Scale `{scale.name}`; every number below was "
        "printed by that command, and all seeds are fixed (training seed 1, sampling seed 0, "
        "evaluation noise seeded), so a rerun on an idle machine reproduces them up to "
        "floating-point summation order; the timings depend on the machine and its load.",
        "",
        f"Data: `{data}` (character tokens, K = {summary['vocab_size']} ids with BOS/EOS/UNK), "
        f"sequences of {scale.seq_len} tokens packed across documents, validation = "
        f"held-out works (5 % of the documents, split by a hash of their names). Zero-shot: "
        f"`{zero_shot or 'none'}`, never trained on. Models: DiT with hidden {scale.hidden}, "
        f"{scale.blocks} blocks, {scale.heads} heads ({duo_row['params_M']:.2f}M parameters with "
        "the embeddings); the AR model is its causal twin (no time conditioning). Each model "
        f"trains on {scale.steps * scale.batch_size * scale.seq_len / 1e6:.1f}M tokens: "
        f"~{170 / duo_row['params_M']:.0f}x fewer parameters and "
        f"~{5.2e11 / (scale.steps * scale.batch_size * scale.seq_len):.0e}x fewer training "
        "tokens than the paper's OWT runs. The point is to exercise every claim end to end "
        "with the library and the example code, not to match the paper's numbers.",
        "",
        "![overview](replication_overview.png)",
        "",
    ]


def _curriculum(summary: dict[str, Any], scale: Scale, cfg: Any, t: dict[str, Any]) -> list[str]:
    """Section (a): the curves, the steps to a loss, the gradient variances."""
    speedup = t["speedup"]
    speed = (f"the step ratio (no curriculum / curriculum) is **{speedup:.2f}**"
             if speedup is not None else "the curriculum run **never reaches** it")
    grad = summary["curriculum"]["gradient_variance"]
    trained = [g for g in grad if g["model"].startswith("trained")]
    at_tau = next((g for g in trained if g["tau"] == cfg.duo.tau), trained[0] if trained else None)
    lines = [
        "## (a) Duo with and without the curriculum",
        "",
        f"Both runs start from the same initialisation and see the same batches; the first "
        f"{scale.curriculum_end} of {scale.steps} steps of the curriculum run feed the relaxed "
        f"Gaussian latent softmax(w_t / tau) (tau = {cfg.duo.tau:g}, gamma in "
        f"[{cfg.duo.gamma_min}, {cfg.duo.gamma_max}], the window the cpu-demo preset maps to "
        "the paper's alpha range at this vocabulary), then both train on the discrete process. "
        "Validation is always the discrete NELBO of the EMA weights on the same "
        f"{scale.eval_sequences} held-out sequences with the same noise.",
        "",
        "![curriculum](replication_curriculum.png)",
        "",
        t["curve_md"],
        "",
        "Steps (and training seconds, validation excluded) each run needs to reach a loss; "
        "ratio = no curriculum / curriculum, above 1 when the curriculum is faster:",
        "",
        t["cur_md"],
        "",
        f"At the loss both runs reach, {speed}; the paper reports about 2 (the curriculum "
        "needs about half the steps).",
        "",
        "Gradient variance (`discdiff.testing.gradient_variances`): at fixed times in "
        "the curriculum window, the mean per-coordinate variance over latent draws of the "
        "parameter gradient of the NELBO, feeding the relaxed latent vs the one-hot argmax:",
        "",
        t["grad_md"],
        "",
    ]
    if at_tau is not None and abs(at_tau["ratio"] - 1) < 0.05:
        lines += [
            f"At the curriculum's tau = {at_tau['tau']:g} the ratio is {at_tau['ratio']:.3f}: "
            "the relaxed input is then practically one-hot, so at a fixed noise level it does "
            "not lower the gradient variance (larger tau change it, but training used "
            f"{at_tau['tau']:g}). Whatever difference the curriculum makes here comes from "
            "training on the restricted noise window first.",
            "",
        ]
    elif at_tau is not None:
        lines += [
            f"At the curriculum's tau = {at_tau['tau']:g} the variance ratio is "
            f"{at_tau['ratio']:.3f} (above 1: the relaxed input lowers the variance).",
            "",
        ]
    return lines


def _perplexity(summary: dict[str, Any], t: dict[str, Any]) -> list[str]:
    """Section (b): the perplexity table."""
    duo_row = _duo_row(summary)
    return [
        "## (b) Perplexity: Duo vs MDLM vs AR",
        "",
        f"Final EMA weights, {duo_row['tokens']} held-out tokens per model. Diffusion models: the "
        "NELBO bound (continuous-time diffusion term over t in [1e-3, 1] + prior KL at t = 1 + "
        "reconstruction at t = 1e-3, one Monte Carlo time per sequence), so their perplexities "
        "are upper bounds; AR: the exact next-token perplexity. Zero-shot uses each run's own "
        "character tokenizer; characters it never saw count as UNK (share shown).",
        "",
        "![perplexity](replication_perplexity.png)",
        "",
        t["ppl_md"],
        "",
    ]


def _generation(summary: dict[str, Any], scale: Scale, configs: dict[str, Any],
                t: dict[str, Any]) -> list[str]:  # fmt: skip
    """Section (c): the protocol, the frontier, the generation table, the paper's tables."""
    dcd, sdtt = configs["dcd"].dcd, configs["sdtt"].sdtt
    return [
        "## (c) Few-step generation",
        "",
        f"{scale.num_samples} samples of {scale.seq_len} characters per row, generative "
        "perplexity under the AR model above (the same tokenizer, so ids are scored directly), "
        "entropy = mean per-sample unigram entropy of the token ids in nats (the real-text row "
        "gives the scale), NFE = denoiser calls per sample. Tails (Concepts §5): **greedy** = N "
        "ancestral steps on linspace(1, 1e-5, N + 1), then one more call at t = 1e-5 whose "
        "argmax x_hat is the output (the paper's protocol, N + 1 calls); **map** = the same "
        "call, the mode of the denoising posterior q(z_0 | z_t, x_hat) (keeps each token's own "
        "evidence); **none** = N steps down to t = 0 (N calls, the exact ancestral law; the "
        "paper's \"ancestral\" rows). Greedy and MAP share one trajectory and one tail call "
        "(the sampling time is the pair's); for the masked models MAP is greedy. Duo and the "
        "students sample on the log-linear schedule (alpha_1 ~ 0, the uniform prior); Duo+DCD "
        f"after {dcd.rounds} rounds x {dcd.steps_per_round} steps (gamma in [{dcd.gamma_min}, "
        f"{dcd.gamma_max}], dt = 1/{dcd.T} doubling each round, lr {dcd.lr:g}, teacher refreshed "
        f"from the EMA); MDLM+SDTT after {sdtt.rounds} rounds x {sdtt.steps_per_round} steps "
        f"(m = {sdtt.teacher_steps} teacher steps per student step, T = {sdtt.T}: round n's "
        f"student takes steps of {sdtt.teacher_steps}^(n+1) / {sdtt.T}, so the last one "
        f"is distilled for {sdtt.T // sdtt.teacher_steps ** sdtt.rounds}-step sampling; lr "
        f"{sdtt.lr:g}, "
        f"{sdtt.divergence}, teacher refreshed from the {sdtt.refresh_from}). Float32 model, "
        "exact (float64-law) categorical draws.",
        "",
        "Generative perplexity against entropy across NFE (the frontier; each point is labelled "
        "with its NFE; lower right is better):",
        "",
        "![frontier](replication_frontier.png)",
        "",
        "![generation](replication_generation.png)",
        "",
        t["gen_md"],
        "",
        entropy_line(summary["generation"], summary["references"]),
        "",
        map_line(summary["generation"], summary["vocab_size"]),
        "",
        "The paper's Tables 5 and 7 (OWT, GPT-2 Large evaluator; gen. PPL / entropy) "
        f"beside ours at {max(scale.gen_steps)} and 8 steps, and the factor by which the "
        "perplexity grows when the steps shrink:",
        "",
        t["paper_md"],
        "",
        "First sample of some rows (newlines shown as ` / `):",
        "",
        samples_block(summary["generation"], summary["references"], scale.gen_steps),
        "",
    ]


def _comparison(summary: dict[str, Any], t: dict[str, Any]) -> list[str]:
    """Sections (d) and (e): the verdicts, and the 8-step comparison one factor at a time."""
    speedup = t["speedup"]
    return [
        "## (d) The paper beside this run",
        "",
        "Paper figures (OWT, GPT-2 tokenizer, L = 1024, ~170M-parameter DiT, "
        "1M steps of 512 x 1024 tokens; taken from secondary summaries, orientation only). "
        "Verdicts are computed by the command from the numbers above.",
        "",
        t["verdict_md"],
        "",
        honest_line(summary, speedup),
        "",
        "## (e) The 8-step comparison, one factor at a time",
        "",
        "The paper's sharpest few-step claim is Duo+DCD far below MDLM+SDTT at 8 steps (69.6 "
        "vs 193.1, 2.8x, at entropies 5.30 and 5.58). Each row below changes one factor of the "
        "comparison of section (c) and measures both again (gen. PPL / entropy at 8 steps, "
        "greedy tail unless the row changes the tail; ratio above 1: Duo+DCD lower):",
        "",
        t["ablation_md"],
        "",
        "Where the paper's gap comes from: how much each model's gen. PPL grows when the steps "
        "shrink (greedy tail):",
        "",
        t["decay_md"],
        "",
        *(["The BPE arm in full (its own AR model is the evaluator, so its perplexities are "
           "per BPE token and not comparable with the character rows):", "", t["bpe_md"], ""]
          if t["bpe_md"] else []),
        ablation_line(summary),
        "",
    ]


def _configuration(summary: dict[str, Any], scale: Scale) -> list[str]:
    """The scale and the Duo run's resolved config, and how to reproduce the run."""
    return [
        "## Configuration",
        "",
        "Scale (`examples/replicate/scales.py`, `SCALES[" + repr(scale.name) + "]`):",
        "",
        "```json",
        json.dumps(asdict(scale), indent=1),
        "```",
        "",
        "Resolved `examples.config.Config` of the Duo run (the others differ only in "
        "`train.objective`, `train.out_dir`, `duo.curriculum_end` = 0 for the run without "
        "curriculum, `dcd.teacher` / `sdtt.teacher` for the distillations, `steps_per_round` "
        "for the longer rounds, `data.labels` and `train.cond_dropout` for the run with labels, "
        "`model.block_size` for the block runs, "
        "and for the BPE runs `data.tokenizer json` with the trained "
        "`tokenizer.json`, `data.seq_len` and the Gaussian windows carried to its vocabulary; "
        "`raw.json` holds every run's config):",
        "",
        "<details><summary>config.json</summary>",
        "",
        "```json",
        json.dumps(summary["config_duo"], indent=1),
        "```",
        "",
        "</details>",
        "",
        "Reproduce: `make replicate` (or `python -m examples.replicate`; `--quick` for a smaller "
        "run, `--workers 1 --threads 2` to train one model at a time). Model runs, logs and "
        "`results.json` go to `runs/replicate/`.",
        "",
    ]
