"""The report's tables, section by section, from a run's measurements (``raw.json``).

Each function builds one section's rows and their markdown, prints them (stdout is the run's
log) and returns them by name; ``report.report_from_raw`` collects the names into the
``tables`` that ``report.render_report`` writes out.
"""

from __future__ import annotations

from typing import Any

from examples.replicate.scales import RUNS, Scale, say
from examples.replicate.tables import (
    GEN_HEADERS,
    ablation_table,
    curriculum_table,
    decay_table,
    markdown_table,
    paper_table,
)
from examples.replicate.verdicts import verdicts

__all__ = [
    "ablation_section",
    "curriculum_section",
    "generation_section",
    "guidance_section",
    "perplexity_section",
    "scale_from_raw",
    "verdict_section",
]

_TUPLES = ("gen_steps", "grad_taus", "bpe_steps", "guidance_scales", "block_sizes", "block_steps")


def scale_from_raw(values: dict[str, Any]) -> Scale:
    """The ``Scale`` saved in ``raw.json`` (JSON turned its tuples into lists)."""
    values = {k: tuple(v) if k in _TUPLES else v for k, v in values.items()}
    return Scale(**values)


def curriculum_section(
    jobs: dict[str, Any], results: dict[str, Any], scale: Scale
) -> dict[str, Any]:
    """(a): the validation curves side by side, the steps and seconds to reach a loss, the
    gradient variances; ``speedup`` is the step ratio at the loss both runs reach."""
    cur_rows = curriculum_table(jobs["duo"], jobs["duo_plain"])
    cur_md = markdown_table(cur_rows, [
        ("target", "target"), ("nelbo", "NELBO"), ("steps_curr", "steps, curriculum"),
        ("steps_plain", "steps, no curriculum"), ("step_ratio", "step ratio"),
        ("seconds_curr", "train s, curriculum"), ("seconds_plain", "train s, no curriculum"),
        ("time_ratio", "time ratio")])  # fmt: skip
    curve_rows = []
    plain_val = {v["step"]: v["nelbo"] for v in jobs["duo_plain"]["val"]}
    for v in jobs["duo"]["val"]:
        curve_rows.append({"step": v["step"], "curr": v["nelbo"],
                           "plain": plain_val.get(v["step"]),
                           "diff": v["nelbo"] - plain_val[v["step"]]
                           if v["step"] in plain_val else None})  # fmt: skip
    curve_md = markdown_table(curve_rows, [("step", "step"), ("curr", "Duo (curriculum)"),
                                           ("plain", "Duo (no curriculum)"),
                                           ("diff", "difference")], digits=4)  # fmt: skip
    grad_rows = results["gradvar"]
    grad_md = markdown_table(grad_rows, [("model", "model"), ("tau", "tau"),
                                         ("var_relaxed", "variance, relaxed input"),
                                         ("var_discrete", "variance, discrete input"),
                                         ("ratio", "discrete / relaxed")])  # fmt: skip
    say("\n(a) Duo with vs without the curriculum: validation NELBO (nats/char, EMA weights) "
        "during training")
    say(curve_md)
    say("\nSteps and training seconds to reach a validation NELBO (ratio = no curriculum / "
        "curriculum; > 1: the curriculum is faster)")
    say(cur_md)
    say(f"\nGradient variance at fixed t in the curriculum window, {scale.grad_draws} latent "
        f"draws, B={scale.grad_batch} validation sequences (benchmarks.bench_curriculum)")
    say(grad_md)
    return {"cur_rows": cur_rows, "cur_md": cur_md, "curve_md": curve_md, "grad_rows": grad_rows,
            "grad_md": grad_md, "speedup": cur_rows[-1]["step_ratio"]}  # fmt: skip


def perplexity_section(
    jobs: dict[str, Any], results: dict[str, Any], zero_shot: str
) -> dict[str, Any]:
    """(b): validation (and zero-shot) perplexity of every run: bounds, exact for AR."""
    ppl_rows = []
    for name in ("ar", "mdlm", "sdtt", "duo", "duo_plain", "dcd"):
        b = results[f"bounds_{name}"]
        row = {"method": RUNS[name], "val_nelbo": b["val"]["nelbo"], "val_ppl": b["val"]["ppl"],
               "kind": "exact" if name == "ar" else "upper bound",
               "steps": jobs[name]["steps"], "train_s": jobs[name]["train_s"],
               "params_M": jobs[name]["num_parameters"] / 1e6,
               "tokens": b["val"]["tokens"]}  # fmt: skip
        if "zero_shot" in b:
            row["zero_shot_ppl"] = b["zero_shot"]["ppl"]
            row["unk"] = b["zero_shot"]["unk_fraction"]
        ppl_rows.append(row)
    ppl_headers = [("method", "method"), ("val_ppl", "val. PPL"), ("kind", "kind"),
                   ("val_nelbo", "val. NELBO")]
    if zero_shot:
        ppl_headers += [("zero_shot_ppl", f"zero-shot PPL ({zero_shot})"),
                        ("unk", "zero-shot UNK share")]
    ppl_headers += [("steps", "train steps"), ("train_s", "train s"), ("params_M", "params (M)")]
    ppl_md = markdown_table(ppl_rows, ppl_headers)
    say(f"\n(b) Perplexity on the held-out split ({ppl_rows[0]['tokens']} tokens per model) and "
        f"zero-shot ({zero_shot or 'none'}); diffusion: NELBO bound = diffusion + prior + "
        "reconstruction terms, one Monte Carlo time per sequence; AR: exact")
    say(ppl_md)
    return {"ppl_rows": ppl_rows, "ppl_md": ppl_md}


def generation_section(results: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """(c): gen. PPL and entropy of every model, step count and tail, the references, and the
    paper's Tables 5 and 7 beside ours."""
    gen_rows = [r for n in ("duo", "dcd", "mdlm", "sdtt") for r in results[f"gen_{n}"]]
    refs = results["refs"]
    gen_md = markdown_table([*gen_rows, *refs], GEN_HEADERS)
    evaluator = refs[0]["evaluator"]
    say(f"\n(c) Few-step generation: {scale.num_samples} samples of {scale.seq_len} characters "
        f"per row, gen. PPL under {evaluator}; entropy = mean per-sample unigram entropy of the "
        "token ids; NFE = denoiser calls per sample; float32 model, exact (float64-law) "
        "categorical draws; greedy and MAP share one trajectory (sampling s is for the pair)")
    say(gen_md)
    paper_rows = paper_table(gen_rows, max(scale.gen_steps))
    paper_md = markdown_table(paper_rows, [
        ("method", "method"), ("tail", "tail"), ("paper_many", "paper, 1024 steps"),
        ("paper_8", "paper, 8 steps"), ("paper_ratio", "paper, 8 / 1024"),
        ("ours_many", f"ours, {max(scale.gen_steps)} steps"), ("ours_8", "ours, 8 steps"),
        ("ours_ratio", f"ours, 8 / {max(scale.gen_steps)}")])  # fmt: skip
    say("\nThe paper's Tables 5 and 7 (the paper's figures; gen. PPL / entropy) beside ours")
    say(paper_md)
    return {"gen_rows": gen_rows, "refs": refs, "gen_md": gen_md, "paper_md": paper_md}


def verdict_section(
    speedup: float | None, results: dict[str, Any], gen_rows: list[dict[str, Any]],
    refs: list[dict[str, Any]], scale: Scale,
) -> dict[str, Any]:  # fmt: skip
    """(d): the paper's figures beside ours, one verdict per claim."""
    ppl_by = {RUNS[n]: results[f"bounds_{n}"]["val"]["ppl"] for n in ("ar", "mdlm", "duo")}
    gen_by = {(r["method"], r["steps"], r["tail"]): r for r in gen_rows}
    verdict_rows = verdicts(speedup, ppl_by, gen_by, refs, scale.gen_steps)
    verdict_md = markdown_table(verdict_rows, [("claim", "claim"), ("paper", "paper"),
                                               ("ours", "ours"), ("verdict", "verdict")])
    say("\n(d) The paper's figures (OWT, GPT-2 tokens, L=1024, ~170M parameters; orientation "
        "only) beside ours")
    say(verdict_md)
    return {"verdict_rows": verdict_rows, "verdict_md": verdict_md}


def ablation_section(results: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """(e): the 8-step comparison with one factor changed per row, the growth of the gen. PPL
    from many steps to 8, and the BPE arm in full ("" when it was skipped)."""
    ablation_rows = ablation_table(results, scale)
    ablation_md = markdown_table(ablation_rows, [
        ("factor", "factor changed"), ("variant", "variant"), ("nfe", "NFE (DCD / SDTT)"),
        ("dcd", "Duo+DCD"), ("sdtt", "MDLM+SDTT"), ("ratio", "MDLM+SDTT / Duo+DCD"),
        ("gap", "entropy gap (nats)")], digits=2)  # fmt: skip
    decay_rows = decay_table(results, scale)
    decay_md = markdown_table(decay_rows, [("method", "method"), ("paper", "paper"),
                                           *[(k, f"ours, {k}") for k in ("characters", "BPE")
                                             if any(k in r for r in decay_rows)]])  # fmt: skip
    say("\n(e) Ablation of the 8-step comparison: gen. PPL / entropy, one factor changed per "
        "row (entropy gap = Duo+DCD minus MDLM+SDTT)")
    say(ablation_md)
    say("\nGrowth of the gen. PPL from many steps to 8 (greedy tail)")
    say(decay_md)
    bpe_md = ""
    if "gen_bpe_dcd" in results:
        bpe_rows = [r for n in ("bpe_duo", "bpe_dcd", "bpe_mdlm", "bpe_sdtt")
                    for r in results[f"gen_{n}"]]  # fmt: skip
        bpe_md = markdown_table([*bpe_rows, *results["refs_bpe"]], GEN_HEADERS)
        say(f"\nThe BPE arm (K = {results['bpe']['vocab_size']}): gen. PPL under its own AR "
            "model")
        say(bpe_md)
    return {"ablation_rows": ablation_rows, "ablation_md": ablation_md,
            "decay_rows": decay_rows, "decay_md": decay_md, "bpe_md": bpe_md}  # fmt: skip


def guidance_section(results: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """(f): the guided samples' hit rates and NLLs per label and scale ("" when skipped)."""
    guidance_rows = results.get("guidance") or []
    guidance_md = ""
    if guidance_rows:
        guidance_md = markdown_table(
            [{**r, "gamma": f"{r['scale']:g}"} for r in guidance_rows],
            [("label", "label asked for"), ("gamma", "gamma"), ("samples", "samples"),
             ("hit_rate", "assigned to the label"), ("nll", "unigram NLL (nats/token)")],
        )  # fmt: skip
        say(f"\n(f) Classifier-free guidance: Duo with labels, {scale.guidance_steps} steps, "
            f"{scale.num_samples} samples per row, scored by a per-label unigram classifier "
            "fitted on the training rows")  # fmt: skip
        say(guidance_md)
    return {"guidance_rows": guidance_rows, "guidance_md": guidance_md}
