"""The replication's plots (matplotlib, Agg backend): written next to the report.

``plot_frontier`` (generative perplexity against entropy across NFE) is shared with the demo.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.replicate.scales import RUNS, Scale
from examples.replicate.tables import step_curve, wall_curve

__all__ = ["plot_frontier", "pyplot", "write_plots"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only: no display is needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_curriculum(ax_step: Any, ax_wall: Any, jobs: dict[str, Any], curriculum_end: int) -> None:
    for name, style in (("duo", "-"), ("duo_plain", "--")):
        step, wall = step_curve(jobs[name]), wall_curve(jobs[name])
        label = "Duo (curriculum, then discrete)" if name == "duo" else RUNS[name]
        ax_step.plot(*zip(*step, strict=True), style, marker=".", label=label)
        if ax_wall is not None:
            ax_wall.plot(*zip(*wall, strict=True), style, marker=".", label=label)
    ax_step.axvline(curriculum_end, color="gray", linestyle=":", label="curriculum ends")
    ax_step.set_xlabel("training step")
    ax_step.set_ylabel("validation NELBO (nats/char)")
    ax_step.legend(fontsize=8)
    ax_step.grid(alpha=0.3)
    if ax_wall is not None:
        ax_wall.set_xlabel("training wall time (s, validation excluded)")
        ax_wall.set_ylabel("validation NELBO (nats/char)")
        ax_wall.legend(fontsize=8)
        ax_wall.grid(alpha=0.3)


def _plot_perplexity(ax: Any, table: Sequence[dict[str, Any]], zero_shot: str) -> None:
    names = [r["method"] for r in table]
    x = range(len(names))
    width = 0.38
    ax.bar([i - width / 2 for i in x], [r["val_ppl"] for r in table], width, label="validation")
    if zero_shot:
        ax.bar([i + width / 2 for i in x], [r.get("zero_shot_ppl", 0) for r in table], width,
               label=f"zero-shot ({Path(zero_shot).name})")  # fmt: skip
    ax.set_xticks(list(x), names, rotation=20, fontsize=8)
    ax.set_ylabel("perplexity (diffusion: upper bound)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")


TAIL_STYLE = {"greedy": ("-", "o"), "map": ("--", "s"), "none": (":", "^")}
# NFE labels of the tails that often coincide (MAP and none; a masked model's greedy and none)
# go to different sides of their points.
LABEL_OFFSET = {"greedy": (3, 2), "map": (3, 2), "none": (3, -9)}


def _log_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:g}"))


def plot_frontier(ax: Any, rows: Sequence[dict[str, Any]], refs: Sequence[dict[str, Any]]) -> None:
    """Generative perplexity against entropy: one line per (method, tail) through its step
    counts, each point labelled with its NFE; the references (AR samples, real text) as stars.
    Lower-right is better: low perplexity at the entropy of real text."""
    colors: dict[str, str] = {}
    for method, tail in dict.fromkeys((r["method"], r["tail"]) for r in rows):
        pts = sorted((r for r in rows if (r["method"], r["tail"]) == (method, tail)),
                     key=lambda r: r["nfe"])  # fmt: skip
        color = colors.setdefault(method, f"C{len(colors)}")
        style, marker = TAIL_STYLE.get(tail, ("-", "o"))
        hollow = {"markerfacecolor": "none", "markersize": 7} if tail == "none" else {}
        ax.plot([r["entropy"] for r in pts], [r["gen_ppl"] for r in pts], linestyle=style,
                marker=marker, color=color, label=f"{method}, {tail} tail",
                **({"markersize": 4} | hollow))  # fmt: skip
        for r in pts:
            ax.annotate(str(r["nfe"]), (r["entropy"], r["gen_ppl"]), fontsize=6, color=color,
                        xytext=LABEL_OFFSET.get(tail, (3, 2)), textcoords="offset points")
    for i, r in enumerate(refs):
        ax.plot(r["entropy"], r["gen_ppl"], marker="*", markersize=11, linestyle="none",
                color="black" if i == 0 else "gray", label=r["method"])  # fmt: skip
    _log_axis(ax)
    ax.set_xlabel("sample entropy (nats)")
    ax.set_ylabel("generative perplexity (AR evaluator)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, framealpha=0.6)


def _plot_generation(ax_ppl: Any, ax_ent: Any, rows: Sequence[dict[str, Any]],
                     refs: Sequence[dict[str, Any]]) -> None:  # fmt: skip
    colors: dict[str, str] = {}
    for method, tail in dict.fromkeys((r["method"], r["tail"]) for r in rows):
        pts = sorted((r["nfe"], r["gen_ppl"], r["entropy"]) for r in rows
                     if (r["method"], r["tail"]) == (method, tail))  # fmt: skip
        nfe, ppl, ent = zip(*pts, strict=True)
        color = colors.setdefault(method, f"C{len(colors)}")
        style, marker = TAIL_STYLE.get(tail, ("-", "o"))
        label = f"{method}, {tail} tail"
        ax_ppl.plot(nfe, ppl, style, color=color, marker=marker, markersize=4, label=label)
        ax_ent.plot(nfe, ent, style, color=color, marker=marker, markersize=4, label=label)
    for r, style in zip(refs, (":", "-."), strict=False):
        for ax, key in ((ax_ppl, "gen_ppl"), (ax_ent, "entropy")):
            ax.axhline(r[key], color="gray", linestyle=style, label=r["method"])
    from matplotlib.ticker import NullFormatter

    ticks = sorted({r["nfe"] for r in rows})
    for ax in (ax_ppl, ax_ent):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(s) for s in ticks], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("network calls (NFE)")
        ax.grid(alpha=0.3)
    _log_axis(ax_ppl)
    ax_ppl.set_ylabel("generative perplexity (AR evaluator)")
    ax_ppl.legend(fontsize=6, framealpha=0.6)
    ax_ent.set_ylabel("sample entropy (nats)")


def write_plots(
    docs: Path, jobs: dict[str, Any], scale: Scale, ppl_table: Sequence[dict],
    gen_rows: Sequence[dict], refs: Sequence[dict], zero_shot: str,
) -> list[str]:  # fmt: skip
    """The five figures of the report into ``docs``; returns their file names."""
    plt = pyplot()
    names = []

    def save(fig: Any, title: str, name: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(docs / name, dpi=110)
        plt.close(fig)
        names.append(name)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _plot_curriculum(axes[0], axes[1], jobs, scale.curriculum_end)
    save(fig, "(a) Duo with vs without the Gaussian curriculum", "replication_curriculum.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    _plot_perplexity(ax, ppl_table, zero_shot)
    save(fig, "(b) Validation and zero-shot perplexity", "replication_perplexity.png")

    fig, ax = plt.subplots(figsize=(8, 5.5))
    plot_frontier(ax, gen_rows, refs)
    save(fig, "(c) Few-step generation: gen. PPL vs entropy across NFE (labels = NFE)",
         "replication_frontier.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    _plot_generation(axes[0], axes[1], gen_rows, refs)
    save(fig, "(c) Few-step generation against the network calls (NFE)",
         "replication_generation.png")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    _plot_curriculum(axes[0], None, jobs, scale.curriculum_end)
    axes[0].set_title("(a) curriculum: validation NELBO", fontsize=10)
    _plot_perplexity(axes[1], ppl_table, zero_shot)
    axes[1].set_title("(b) perplexity", fontsize=10)
    plot_frontier(axes[2], gen_rows, refs)
    axes[2].set_title("(c) gen. PPL vs entropy (labels = NFE)", fontsize=10)
    save(fig, "discdiff: CPU-scale replication of Duo on Shakespeare (characters)",
         "replication_overview.png")
    return names

