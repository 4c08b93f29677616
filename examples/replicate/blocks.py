"""The replication's block diffusion section (BD3-LM; Concepts, "Block diffusion").

Duo and MDLM trained again at each block size b of ``Scale.block_sizes`` (``scales.block_runs``;
b = seq_len is the ordinary run), with the same size, steps and data: their validation bounds
beside AR's, their generative perplexity and entropy at ``Scale.block_steps`` steps per block,
and one sample of up to ``Scale.block_long`` x seq_len tokens stopped at EOS. ``block_tasks``
are the pipeline's jobs for it, ``block_section`` its table and computed sentence, and
``block_lines`` its text in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from examples.jobs import Task
from examples.replicate.jobs import bounds_job, generation_job, long_sample_job
from examples.replicate.scales import RUNS, Scale, block_of, block_runs, run_label, say
from examples.replicate.tables import markdown_table

__all__ = ["block_lines", "block_section", "block_tasks", "has_blocks", "long_run"]

METHODS = ("duo", "mdlm")
TAIL = "none"
"""The tail of the section's samples: none, the exact law of each block's N steps (the greedy
tail's argmax would make b = 1 greedy decoding), comparable with AR's ancestral samples."""


def long_run(scale: Scale, base: str) -> str:
    """The block run of ``base`` (duo or mdlm) whose long sample the report shows: b = 4 when
    the scale has it, else its smallest b above 1, else its first."""
    names = [n for n in block_runs(scale) if n.startswith(f"{base}_b")]
    sizes = {block_of(n): n for n in names}
    if 4 in sizes:
        return sizes[4]
    above = sorted(b for b in sizes if b is not None and b > 1)
    return sizes[above[0]] if above else names[0]


def block_tasks(scale: Scale, out: Any, evaluator: str) -> list[Task]:
    """The section's jobs after its training runs (``train_<name>`` of every block run, of
    Duo and MDLM, and ``train_ar`` for the evaluator): bounds (validation only), samples
    without a tail at each step count per block (of Duo and MDLM too, as ``gen_<name>_whole``:
    b = L), and the long samples."""
    gen = (scale.num_samples, scale.sample_batch, 0)
    tasks = []
    for name in block_runs(scale):
        tasks.append(Task(f"bounds_{name}", bounds_job, (
            str(out / name), scale.final_sequences, scale.sample_batch, False),
            (f"train_{name}",)))  # fmt: skip
    for name in [*block_runs(scale), *(METHODS if block_runs(scale) else ())]:
        key = f"gen_{name}" if block_of(name) else f"gen_{name}_whole"
        tasks.append(Task(key, generation_job, (
            str(out / name), evaluator, scale.block_steps, *gen, run_label(name), False,
            (TAIL,)), (f"train_{name}", "train_ar")))  # fmt: skip
    for base in METHODS if block_runs(scale) else ():
        name = long_run(scale, base)
        tasks.append(Task(f"long_{base}", long_sample_job, (
            str(out / name), scale.block_long * scale.seq_len, max(scale.block_steps),
            scale.sample_batch, scale.sample_batch, 0, run_label(name)),
            (f"train_{name}",)))  # fmt: skip
    return tasks


def has_blocks(results: dict[str, Any], scale: Scale) -> bool:
    """Whether a run measured the block section (a ``raw.json`` from before it did not)."""
    names = block_runs(scale)
    return bool(names) and all(f"bounds_{n}" in results for n in names)


def _gen_cell(row: dict[str, Any] | None) -> str:
    """``gen. PPL / entropy (NFE)`` of a generation row, "-" when there is none."""
    if row is None:
        return "-"
    return f"{row['gen_ppl']:.1f} / {row['entropy']:.2f} ({row['nfe']})"


def block_rows(results: dict[str, Any], scale: Scale) -> list[dict[str, Any]]:
    """One row per method and b (b = L: the ordinary run), then AR (exact; its ancestral
    samples in every column)."""
    rows = []
    steps = scale.block_steps
    sizes = [scale.seq_len, *sorted({block_of(n) for n in block_runs(scale)}, reverse=True)]
    for base in METHODS:
        for b in sizes:
            name = base if b == scale.seq_len else f"{base}_b{b}"
            key = f"gen_{name}" if b != scale.seq_len else f"gen_{name}_whole"
            drawn = {r["steps"]: r for r in results.get(key, []) if r["tail"] == TAIL}
            row: dict[str, Any] = {"method": RUNS[base], "b": f"{b} (L)" if b == scale.seq_len
                                   else str(b), "ppl": results[f"bounds_{name}"]["val"]["ppl"],
                                   "kind": "upper bound"}  # fmt: skip
            row.update({f"gen_{k}": _gen_cell(drawn.get(k)) for k in steps})
            row.update({f"gen_ppl_{k}": drawn[k]["gen_ppl"] for k in steps if k in drawn})
            rows.append(row)
    ar = next(r for r in results["refs"] if r["method"].startswith("AR"))
    rows.append({"method": RUNS["ar"], "b": "1 (causal)", "kind": "exact",
                 "ppl": results["bounds_ar"]["val"]["ppl"],
                 **{f"gen_{k}": _gen_cell(ar) for k in steps},
                 **{f"gen_ppl_{k}": ar["gen_ppl"] for k in steps}})  # fmt: skip
    return rows


def trend_line(rows: Sequence[dict[str, Any]]) -> str:
    """Whether the validation perplexity moves from diffusion's toward AR's as b shrinks (the
    paper's trend), per method, with the share of the gap to AR closed at the smallest b."""
    ar = next(r["ppl"] for r in rows if r["method"] == RUNS["ar"])
    parts, toward = [], []
    for base in METHODS:
        ppl = [r["ppl"] for r in rows if r["method"] == RUNS[base]]
        path = " → ".join(f"{p:.3f}" for p in ppl)
        moves = abs(ppl[-1] - ar) < abs(ppl[0] - ar)
        toward.append(moves)
        monotone = all(b <= a for a, b in zip(ppl, ppl[1:], strict=False))
        gap = ppl[0] - ar
        closed = (ppl[0] - ppl[-1]) / gap if gap > 0 else None
        how = ("toward AR's" + (", step by step" if monotone else ", not monotonically")
               if moves else "not toward AR's")  # fmt: skip
        share = f", closing {100 * closed:.0f} % of its gap to AR" if closed is not None else ""
        parts.append(f"{RUNS[base]} {path} ({how}{share})")
    if all(toward):
        verdict = "toward AR's for both, as in the paper (BD3-LM: b = 1 near AR)"
    elif any(toward):
        verdict = "toward AR's for one method only; in the paper it does for both"
    else:
        verdict = "toward AR's for neither method, unlike the paper"
    return ("Validation perplexity from b = L down to the smallest b: " + "; ".join(parts)
            + f"; AR {ar:.3f}. Ours moves {verdict}.")


def gen_line(rows: Sequence[dict[str, Any]], steps: int) -> str:
    """The generative perplexity at ``steps`` steps per block from b = L down, per method."""
    parts = []
    for base in METHODS:
        got = [r.get(f"gen_ppl_{steps}") for r in rows if r["method"] == RUNS[base]]
        parts.append(f"{RUNS[base]} " + " → ".join("-" if g is None else f"{g:.1f}" for g in got))
    ar = next(r[f"gen_ppl_{steps}"] for r in rows if r["method"] == RUNS["ar"])
    return (f"Generative perplexity at {steps} steps per block, from b = L down: "
            + "; ".join(parts) + f"; AR's own samples {ar:.1f}.")


def long_text(long: dict[str, Any]) -> str:
    """The long sample as a line of text (newlines shown as ` / `) with where it stopped."""
    text = long["text"].replace("\n", " / ")
    end = (f" ⟨EOS after {long['stop']} tokens⟩" if long["stop"] is not None
           else f" ⟨no EOS: all {long['length']} tokens⟩")  # fmt: skip
    return f"{long['method']}: {text}{end}"


def block_section(results: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """The section's table, computed sentence and long samples (printed), by name."""
    rows = block_rows(results, scale)
    headers = [("method", "method"), ("b", "b"), ("ppl", "val. PPL"), ("kind", "kind"),
               *[(f"gen_{k}", f"{k} steps per block: gen. PPL / entropy (NFE)")
                 for k in scale.block_steps]]  # fmt: skip
    md = markdown_table(rows, headers)
    longs = [results[f"long_{base}"] for base in METHODS if f"long_{base}" in results]
    say(f"\nBlock diffusion: validation perplexity (bounds; AR exact) and samples (tail {TAIL}) at "
        f"{', '.join(map(str, scale.block_steps))} steps per block, {scale.num_samples} samples "
        f"of {scale.seq_len} tokens, gen. PPL under the AR model")
    say(md)
    trend = trend_line(rows) + " " + gen_line(rows, max(scale.block_steps))
    say(trend)
    for long in longs:
        say(f"Long sample, up to {long['length']} tokens ({long['stopped']} of "
            f"{long['num_samples']} stopped at EOS): " + long_text(long))
    return {"block_rows": rows, "block_md": md, "block_trend": trend, "block_long": longs}


def block_lines(tables: dict[str, Any], scale: Scale) -> list[str]:
    """The report's "Block diffusion" section."""
    longs = tables["block_long"]
    lines = [
        "## Block diffusion",
        "",
        f"Duo and MDLM trained again as block models (BD3-LM; Concepts, \"Block diffusion\"; "
        f"`--model.block_size b`) at b ∈ {{{', '.join(map(str, scale.block_sizes))}}}, with "
        f"the same size, steps and data as the ordinary runs (b = L = {scale.seq_len}). Each "
        "block is a diffusion given the clean blocks before it; the bound is the block NELBO "
        f"(one time per block) on the same {scale.final_sequences} held-out sequences. "
        f"Samples: {scale.num_samples} per cell, block by block over a KV cache of the clean "
        f"blocks, {' and '.join(map(str, scale.block_steps))} steps per block without a tail "
        "(the exact law of the steps, comparable with AR's ancestral samples in the AR row; "
        "the greedy tail's argmax would turn b = 1 into greedy decoding), NFE = L / b x steps "
        "(fewer where the masked sampler reuses a prediction).",
        "",
        tables["block_md"],
        "",
        tables["block_trend"],
        "",
    ]
    if longs:
        first = longs[0]
        lines += [
            f"Samples longer than the training length: up to {first['length']} tokens "
            f"({first['length'] // first['train_length']} x L; the context window of L tokens "
            f"slides), {first['steps']} steps per block, each stopped at the first EOS "
            "(`examples.sample --length --eos`). "
            + " ".join(f"{g['method']}: {g['stopped']} of {g['num_samples']} stopped at EOS."
                       for g in longs)
            + ("" if all(g["stopped"] for g in longs) else " EOS ends each training "
               "document (for the Shakespeare corpus, a whole work), so a model that learned "
               "its statistics rarely writes one within this many tokens.")
            + " Shown: the first that stopped (else the first), newlines as ` / `:",
            "",
            "```",
            *[long_text(g) for g in longs],
            "```",
            "",
        ]  # fmt: skip
    return lines
