"""The replication's tables: rows computed from the measurements, and their markdown.

Each table is a list of row dicts (kept in ``results.json``) and ``markdown_table`` prints it;
the same string goes to stdout and into the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from examples.replicate.scales import PAPER_GEN, RUNS, Scale, bpe_seq_len

__all__ = [
    "GEN_HEADERS",
    "ablation_table",
    "curriculum_table",
    "decay_table",
    "markdown_table",
    "pair",
    "paper_table",
    "step_curve",
    "steps_to_reach",
    "wall_curve",
]

# --- the curriculum (section a) -----------------------------------------------------------------


def steps_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The first x at which a decreasing-ish curve [(x, loss), ...] reaches ``target``, linearly
    interpolated between evaluation points; None if it never does."""
    prev: tuple[float, float] | None = None
    for x, y in curve:
        if y <= target:
            if prev is None or prev[1] == y:
                return float(x)
            x0, y0 = prev
            return float(x0 + (x - x0) * (y0 - target) / (y0 - y))
        prev = (x, y)
    return None


def wall_curve(job: dict[str, Any]) -> list[tuple[float, float]]:
    cumulative = [0.0]
    for s in job["step_s"]:
        cumulative.append(cumulative[-1] + s)
    return [(cumulative[min(v["step"], len(cumulative) - 1)], v["nelbo"]) for v in job["val"]]


def step_curve(job: dict[str, Any]) -> list[tuple[float, float]]:
    return [(float(v["step"]), v["nelbo"]) for v in job["val"]]


def curriculum_table(duo: dict[str, Any], plain: dict[str, Any]) -> list[dict[str, Any]]:
    """Steps and training seconds each Duo run needs to reach the losses the run without the
    curriculum reaches at 25 / 50 / 75 / 100 % of training, and the loss both reach."""
    plain_curve = step_curve(plain)
    n = len(plain_curve)
    targets = []
    for i in sorted({max(0, math.ceil(frac * n) - 1) for frac in (0.25, 0.5, 0.75, 1.0)}):
        targets.append((f"no-curriculum loss at step {int(plain_curve[i][0])}", plain_curve[i][1]))
    both = max(duo["val"][-1]["nelbo"], plain["val"][-1]["nelbo"])
    if all(both != value for _, value in targets):
        targets.append(("final loss of the worse run (both reach it)", both))
    rows = []
    for what, target in targets:
        row: dict[str, Any] = {"target": what, "nelbo": target}
        for key, job in (("curr", duo), ("plain", plain)):
            row[f"steps_{key}"] = steps_to_reach(step_curve(job), target)
            row[f"seconds_{key}"] = steps_to_reach(wall_curve(job), target)
        sc, sp = row["steps_curr"], row["steps_plain"]
        row["step_ratio"] = sp / sc if sc and sp else None
        tc, tp = row["seconds_curr"], row["seconds_plain"]
        row["time_ratio"] = tp / tc if tc and tp else None
        rows.append(row)
    return rows


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "not reached"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], headers: Sequence[tuple[str, str]],
                   digits: int = 3) -> str:  # fmt: skip
    """A markdown table of ``rows`` with the columns ``headers`` [(key, title), ...]: floats to
    ``digits`` places (e notation when tiny or huge), None as "not reached"."""
    lines = ["| " + " | ".join(h for _, h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]  # fmt: skip
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k, ""), digits) for k, _ in headers) + " |")
    return "\n".join(lines)



# --- generation (section c) ----------------------------------------------------------------------


GEN_HEADERS = [("method", "method"), ("tail", "tail"), ("steps", "steps"), ("nfe", "NFE"),
               ("gen_ppl", "gen. PPL"), ("entropy", "entropy (nats)"),
               ("wall_s", "sampling s")]  # fmt: skip


def pair(ppl: float, entropy: float | None) -> str:
    """``"PPL / entropy"`` as the paper's tables print them (the PPL alone without entropy)."""
    return f"{ppl:.1f}" + (f" / {entropy:.2f}" if entropy is not None else "")


def paper_table(rows: Sequence[dict[str, Any]], many: int) -> list[dict[str, Any]]:
    """The paper's gen. PPL / entropy at 1024 and 8 steps beside ours at ``many`` and 8 steps,
    with the factor by which the perplexity grows from many steps to 8 (the paper's figures)."""
    ours = {(r["method"], r["tail"], r["steps"]): r for r in rows}
    table = []
    for (method, tail), paper in PAPER_GEN.items():
        row: dict[str, Any] = {"method": method, "tail": tail,
                               "paper_many": pair(*paper[1024]), "paper_8": pair(*paper[8]),
                               "paper_ratio": f"{paper[8][0] / paper[1024][0]:.2f}x"}  # fmt: skip
        a, b = ours.get((method, tail, many)), ours.get((method, tail, 8))
        row["ours_many"] = pair(a["gen_ppl"], a["entropy"]) if a else "-"
        row["ours_8"] = pair(b["gen_ppl"], b["entropy"]) if b else "-"
        row["ours_ratio"] = f"{b['gen_ppl'] / a['gen_ppl']:.2f}x" if a and b else "-"
        table.append(row)
    return table


# --- the ablation (section e) -------------------------------------------------------------------


def _at(rows: Sequence[dict[str, Any]], steps: int, tail: str = "greedy") -> dict[str, Any] | None:
    return next((r for r in rows if r["steps"] == steps and r["tail"] == tail), None)


def ablation_table(results: dict[str, Any], scale: Scale) -> list[dict[str, Any]]:
    """The 8-step comparison Duo+DCD vs MDLM+SDTT, one factor changed per row (the tail, the
    student's sampling schedule, the length of the distillation rounds, the vocabulary)."""
    few = 8 if 8 in scale.gen_steps else min(scale.gen_steps)
    dcd, sdtt = results["gen_dcd"], results["gen_sdtt"]
    arms: list[tuple[str, str, Any, Any]] = [
        ("none (section c)", "characters, greedy tail, log-linear student, "
         f"{scale.dcd_steps_per_round} steps per round", _at(dcd, few), _at(sdtt, few)),
        ("tail", "MAP tail (MDLM+SDTT: greedy, which is its MAP)", _at(dcd, few, "map"),
         _at(sdtt, few)),
        ("tail", f"no tail ({few} calls; the paper's \"ancestral\")", _at(dcd, few, "none"),
         _at(sdtt, few, "none")),
        ("student schedule", "Duo+DCD sampled on its gamma-window (the path before the fix)",
         _at(results["gen_dcd_window"], few), _at(sdtt, few)),
    ]  # fmt: skip
    if "gen_dcd_long" in results:
        arms.append(("distillation length", f"{scale.long_steps_per_round} steps per round "
                     f"instead of {scale.dcd_steps_per_round}", _at(results["gen_dcd_long"], few),
                     _at(results["gen_sdtt_long"], few)))  # fmt: skip
    if "gen_bpe_dcd" in results:
        b = results["bpe"]
        arms.append(("vocabulary", f"BPE, K = {b['vocab_size']} ({b['chars_per_token']:.2f} "
                     f"characters per token, L = {bpe_seq_len(scale, b)} tokens of the same "
                     "text; its own AR evaluator)",
                     _at(results["gen_bpe_dcd"], few), _at(results["gen_bpe_sdtt"], few)))
    rows = []
    for factor, variant, a, b in arms:
        if a is None or b is None:
            continue
        rows.append({"factor": factor, "variant": variant, "nfe": f"{a['nfe']} / {b['nfe']}",
                     "dcd": pair(a["gen_ppl"], a["entropy"]),
                     "sdtt": pair(b["gen_ppl"], b["entropy"]),
                     "ratio": b["gen_ppl"] / a["gen_ppl"],
                     "gap": a["entropy"] - b["entropy"]})  # fmt: skip
    return rows


def _growth(many: float, few: float, steps_many: int, steps_few: int) -> str:
    """The factor from ``many`` to ``few`` steps and its geometric mean per halving."""
    ratio = few / many
    halvings = math.log2(steps_many / steps_few)
    per = f", {ratio ** (1 / halvings):.2f}x per halving" if halvings > 0 else ""
    return f"{ratio:.2f}x ({steps_many} -> {steps_few}{per})"


def decay_table(results: dict[str, Any], scale: Scale) -> list[dict[str, Any]]:
    """How much each model's gen. PPL grows from many steps to 8 (greedy tail), in all and per
    halving of the steps: the paper's (1024 -> 8), ours on characters and on BPE."""
    few = 8 if 8 in scale.gen_steps else min(scale.gen_steps)
    arms = [("characters", "", max(scale.gen_steps))]
    if "gen_bpe_dcd" in results:
        arms.append(("BPE", "bpe_", max(scale.bpe_steps)))
    rows = []
    for name in ("duo", "mdlm", "dcd", "sdtt"):
        method = RUNS[name]
        paper = PAPER_GEN[(method, "greedy")]
        row: dict[str, Any] = {"method": method,
                               "paper": _growth(paper[1024][0], paper[8][0], 1024, 8)}
        for label, prefix, many in arms:
            gen = results.get(f"gen_{prefix}{name}", [])
            a, b = _at(gen, many), _at(gen, few)
            row[label] = _growth(a["gen_ppl"], b["gen_ppl"], many, few) if a and b else "-"
        rows.append(row)
    return rows

