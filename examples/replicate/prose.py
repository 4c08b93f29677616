"""The report's computed sentences: what the tables show, in words derived from their rows.

Every number in these sentences comes from the measurements (nothing is typed in by hand), so
a rerun that measures otherwise says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from examples.replicate.scales import GUIDED_RUN, Scale

__all__ = [
    "ablation_line",
    "entropy_line",
    "guidance_lines",
    "honest_line",
    "map_line",
    "samples_block",
]


def samples_block(rows: Sequence[dict[str, Any]], refs: Sequence[dict[str, Any]],
                  steps: Sequence[int]) -> str:  # fmt: skip
    """A code block with the first sample of the greedy rows at the most and fewest steps and
    of the references (newlines shown as ``/``, 100 characters)."""
    lines = []
    picks = [r for r in rows if r["tail"] == "greedy" and r["steps"] in (max(steps), min(steps))]
    for r in [*picks, *refs]:
        text = r["samples"][0].replace("\n", " / ")[:100]
        where = f" @ {r['steps']} steps, {r['tail']} tail" if r["tail"] != "-" else ""
        lines.append(f"{r['method']}{where}: {text}")
    return "```\n" + "\n".join(lines) + "\n```"


def entropy_line(rows: Sequence[dict[str, Any]], refs: Sequence[dict[str, Any]]) -> str:
    """How much entropy the greedy tail costs beside the other tails, per method (computed)."""
    parts = []
    for method in dict.fromkeys(r["method"] for r in rows):
        ent = {(r["steps"], r["tail"]): r["entropy"] for r in rows if r["method"] == method}
        gains = []
        for tail in ("map", "none"):
            d = [ent[(s, tail)] - e for (s, t), e in ent.items()
                 if t == "greedy" and (s, tail) in ent]  # fmt: skip
            if d:
                gains.append(f"{tail} {sum(d) / len(d):+.2f}")
        if gains:
            parts.append(f"{method}: " + ", ".join(gains))
    real = next((r["entropy"] for r in refs if r["method"].startswith("real")), None)
    scale = f" (real text: {real:.2f} nats)" if real is not None else ""
    return ("Entropy of the other tails minus that of the greedy tail, averaged over the step "
            "counts, in nats: " + "; ".join(parts) + scale + ". The greedy tail replaces every "
            "token by argmax x_hat, the most likely token given the others (x_hat is the "
            "leave-one-out law: it ignores the token itself), so a lower gen. PPL with a lower "
            "entropy partly reflects less diverse text.")  # fmt: skip


def map_line(rows: Sequence[dict[str, Any]], vocab_size: int) -> str:
    """How far the MAP tail lands from no tail (computed): at t_min the mode keeps z_t almost
    everywhere, so MAP is nearly the ancestral sample, one call dearer."""
    by = {(r["method"], r["steps"], r["tail"]): r for r in rows}
    diffs = [abs(r["gen_ppl"] / by[(m, s, "none")]["gen_ppl"] - 1)
             for (m, s, t), r in by.items() if t == "map" and (m, s, "none") in by]  # fmt: skip
    if not diffs:
        return ""
    from discdiff.samplers import T_MIN
    from discdiff.schedules import LogLinearSchedule

    alpha = float(LogLinearSchedule().alpha(torch.tensor(T_MIN, dtype=torch.float64)))
    beta = vocab_size * alpha / (1 - alpha)
    return (f"The MAP and no-tail rows differ by at most {100 * max(diffs):.1f} % in gen. PPL: "
            f"at t = {T_MIN:g} the mode of q(z_0 | z_t, x_hat) is z_t unless x_hat prefers "
            f"another class by a factor of K alpha_t / (1 - alpha_t) = {beta:.1e}, so the MAP tail "
            "returns (nearly) the last ancestral state, for one more call.")


def ablation_line(summary: dict[str, Any]) -> str:
    """What the ablation measured, in words computed from its rows."""
    rows = summary["ablation"]
    if not rows:
        return ""
    base = rows[0]
    text = (f"**What it shows.** With the paper's protocol (greedy tail) Duo+DCD's 8-step gen. "
            f"PPL is {base['ratio']:.2f}x below MDLM+SDTT's (paper: 2.77x) at "
            f"{-base['gap']:.2f} nats less entropy (paper: 0.28).")
    ranked = sorted(rows, key=lambda r: -r["ratio"])
    text += " Ranked by the ratio: " + "; ".join(
        f"{r['factor']} — {r['variant'].split(' (')[0]}: {r['ratio']:.2f}x at {r['gap']:+.2f} nats"
        for r in ranked) + "."  # fmt: skip
    similar = [r for r in rows if abs(r["gap"]) <= 0.15]
    if similar:
        text += (" Where both sample at similar entropy (within 0.15 nats: "
                 + ", ".join(f"{r['factor']} — {r['variant'].split(' (')[0]}" for r in similar)
                 + ") the ratio is " + ", ".join(f"{r['ratio']:.2f}x" for r in similar) + ".")
    close = [r["ratio"] for r in rows if r["gap"] >= -0.3]
    above = [r for r in rows if close and r["ratio"] > max(close)]
    if above and all(r["gap"] < -0.3 for r in above):
        text += (f" Every ratio above {max(close):.2f}x comes with Duo+DCD samples more than 0.3 "
                 "nats less diverse than MDLM+SDTT's: the greedy tail of a sharper student "
                 "trades entropy for perplexity.")
    decay = {r["method"]: r for r in summary["decay"]}
    mdlm = decay.get("MDLM")
    if mdlm and mdlm.get("characters", "-") != "-":
        text += (" The paper's gap rests on MDLM's collapse at few steps (its gen. PPL grows "
                 f"{mdlm['paper']}; SDTT repairs part of it). Here MDLM's grows "
                 f"{mdlm['characters']} on characters")
        text += f" and {mdlm['BPE']} on BPE" if mdlm.get("BPE", "-") != "-" else ""
        text += ": few-step sampling costs little at this scale, so SDTT has little to repair."
    gen = {(r["method"], r["steps"], r["tail"]): r["gen_ppl"] for r in summary["generation"]}
    many = max(r["steps"] for r in summary["generation"])
    pairs = [gen.get((m, s_, "greedy")) for m in ("Duo", "Duo+DCD") for s_ in (many, 8)]
    if all(pairs):
        duo_many, duo_8, dcd_many, dcd_8 = pairs
        gain_many, gain_8 = duo_many / dcd_many, duo_8 / dcd_8
        similar = abs(math.log(gain_8 / gain_many)) < math.log(1.2)
        text += (f" DCD lowers Duo's gen. PPL {gain_many:.2f}x at {many} steps ({duo_many:.1f} "
                 f"-> {dcd_many:.1f}) and {gain_8:.2f}x at 8 ({duo_8:.1f} -> {dcd_8:.1f})"
                 + (": about as much, a sharper, lower-entropy student more than a better "
                    "few-step sampler." if similar else "."))  # fmt: skip
    text += (" Not tried: a larger model (the CPU budget) and the paper's 1024-token sequences.")
    return text


def guidance_lines(summary: dict[str, Any], scale: Scale, configs: dict[str, Any],
                   guidance_md: str) -> list[str]:  # fmt: skip
    """Section (f): the guided samples' table, what it shows (computed) and a sample per cell."""
    rows = summary["guidance"]
    cfg = configs[GUIDED_RUN]
    kind, dropout = cfg.data.labels, cfg.train.cond_dropout
    labels = list(dict.fromkeys(r["label"] for r in rows))
    what = ("the First Folio genre of its play" if kind == "genre"
            else "the top-level folder of its file")  # fmt: skip
    mean = {}
    for r in rows:
        mean.setdefault(r["scale"], []).append(r["hit_rate"])
    shares = ", ".join(f"gamma {g:g}: {sum(v) / len(v):.2f}" for g, v in mean.items())
    lines = [
        "## (f) Classifier-free guidance",
        "",
        f"Duo trained as in section (c) (no distillation), each training row carrying one "
        f"label, {what} ({', '.join(labels)}), replaced by the null label with probability "
        f"{dropout:g} (`--data.labels {kind} --train.cond_dropout {dropout:g}`). Sampled with "
        f"`cond={{\"label\": y}}`, `uncond={{\"label\": null}}` and `guidance_scale` gamma "
        f"(0: the unconditional model, 1: the conditional one, above 1: sharpened towards y; "
        f"Concepts §5), {scale.guidance_steps} steps, greedy tail, the same seed in every "
        f"cell, {scale.num_samples} samples per row (`examples.guidance.guided_samples`). "
        "Scored by a transparent classifier: one add-one smoothed unigram model per label, "
        "fitted on that label's training rows; a sample is assigned to the label under whose "
        f"model it is most likely (chance: {1 / len(labels):.2f}); the NLL is per token under "
        "the asked label's model (lower: closer to its word choice).",
        "",
        guidance_md,
        "",
        f"Share of samples assigned to the label asked for, averaged over the labels: {shares}. "
        + _guidance_change(rows),
        "",
        "First sample of each cell (newlines shown as ` / `):",
        "",
        "```",
        *[f"{r['label']} @ gamma {r['scale']:g}: " + r["example"].replace("\n", " / ")[:100]
          for r in rows],
        "```",
        "",
    ]  # fmt: skip
    return lines


def _guidance_change(rows: Sequence[dict[str, Any]]) -> str:
    """How the largest guidance scale moves each label's share and NLL from gamma 0 (computed)."""
    lo, hi = min(r["scale"] for r in rows), max(r["scale"] for r in rows)
    at = {(r["label"], r["scale"]): r for r in rows}
    labels = list(dict.fromkeys(r["label"] for r in rows))
    share = ", ".join(f"{y} {at[(y, hi)]['hit_rate'] - at[(y, lo)]['hit_rate']:+.2f}"
                      for y in labels)  # fmt: skip
    nll = sum(at[(y, hi)]["nll"] - at[(y, lo)]["nll"] for y in labels) / len(labels)
    samples = at[(labels[0], lo)]["samples"]
    return (f"From gamma {lo:g} to {hi:g} the share changes by {share} (one share of {samples} "
            f"samples has a standard error of up to {0.5 / math.sqrt(samples):.2f}), and the NLL "
            f"under the asked label's unigram model by {nll:+.3f} nats/token on average"
            + (": at this scale guidance barely moves the samples towards the label's "
               "character statistics." if nll > -0.01 else "."))  # fmt: skip


def honest_line(summary: dict[str, Any], speedup: float | None) -> str:
    """The verdicts in one paragraph: the claims this run agrees with, and the others."""
    rows = summary["verdicts"]
    agree = [r["claim"] for r in rows if r["verdict"] == "agrees"]
    other = [f"{r['claim']} — {r['verdict']}" for r in rows if r["verdict"] != "agrees"]
    text = "**In short.** At this scale the run agrees with the paper on: " + (
        "; ".join(agree) if agree else "none of the claims") + "."
    if other:
        text += " It does not (or only partly) on: " + "; ".join(other) + "."
    text += (" A ~1M-parameter character model trained for minutes is far from the paper's "
             "regime: likelihood gaps between objectives, and the benefit of a curriculum that "
             "the paper runs for 500k steps, need not carry over, and few-step sample quality is "
             "limited by how little the models have learned.")  # fmt: skip
    del speedup
    return text

