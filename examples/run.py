"""A training run's pieces: its config checked against the run it continues, the objects it
trains (data, model, objective, EMA, optimizer, scheduler, data order, noise) built once, and
their state restored from and saved to its checkpoint (``examples.checkpoint.Checkpointer``).
``examples.train`` drives them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from examples import distributed as D
from examples.backbone import backbone_kwargs, build_model, load_trained, model_meta
from examples.checkpoint import (
    CHECKPOINT_FILE,
    Checkpointer,
    atomic_write,
    capture_rng_state,
    check_compatible,
    restore_rng_state,
)
from examples.cli import load_teacher_config
from examples.config import Config
from examples.data import BatchIterator, PreparedData, prepare_data
from examples.ema import build_ema
from examples.objectives import Objective, build_objective
from examples.tokenizer import TextTokenizer, load_tokenizer
from examples.validation import validation_batch_size

__all__ = [
    "RESUMABLE",
    "Run",
    "build_run",
    "check_resume",
    "check_run_dir",
    "diffusion_config",
    "lr_multiplier",
    "resolve_config",
    "restore_run",
    "save_run",
    "total_steps",
    "write_json",
    "write_records",
]

RESUMABLE = frozenset({
    "train.steps", "train.resume", "train.overwrite", "train.out_dir", "train.max_time_s",
    "train.stop_after", "train.progress", "train.progress_every", "train.tensorboard",
    "train.device", "train.log_every", "train.eval_every", "train.ckpt_every", "train.compile",
    "train.max_bad_steps", "data.cache_dir",
})  # fmt: skip
"""Config fields a resumed run may change: how long and how it runs, where it logs, never what
it trains (``sample.*`` is free too: it is read by evaluation only)."""


def lr_multiplier(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def total_steps(cfg: Config) -> int:
    """The run's length: ``train.steps``, or rounds x steps_per_round for DCD and SDTT."""
    dc = getattr(cfg, cfg.train.objective) if cfg.train.objective in ("dcd", "sdtt") else None
    return dc.rounds * dc.steps_per_round if dc else cfg.train.steps


# --- the config of a run -----------------------------------------------------------------------


def resolve_config(cfg: Config, saved: Config | None = None) -> Config:
    """``cfg`` with the Duo curriculum's end fixed as a step: ``duo.curriculum_end``, or when it
    is none ``duo.curriculum_fraction`` of ``train.steps`` (rounded) — a resumed run keeps the
    end it started with (``saved``), so more steps do not move the phase boundary. Refuses a
    Duo run whose curriculum covers every step: its model would never train on the discrete
    process it is sampled with."""
    d = cfg.duo
    end = d.curriculum_end
    if end is None:
        end = saved.duo.curriculum_end if saved is not None else None
    if end is None:
        end = round(d.curriculum_fraction * cfg.train.steps)
    clean = d.clean_context
    if clean is None:
        clean = saved.duo.clean_context if saved is not None else None
    if clean is None:  # the DiT reads per-token levels; a factory backbone is not assumed to
        clean = 0.0 if cfg.model.factory else 0.1
    cfg = replace(cfg, duo=replace(d, curriculum_end=end, clean_context=clean))
    if cfg.train.objective == "duo" and end >= cfg.train.steps:
        how = (f"duo.curriculum_end = {d.curriculum_end}" if d.curriculum_end is not None else
               f"duo.curriculum_fraction = {d.curriculum_fraction} of the steps")  # fmt: skip
        raise ValueError(
            f"the Duo curriculum ends at step {end} ({how}) but the run has train.steps = "
            f"{cfg.train.steps}: the model would train only on the relaxed curriculum, never on "
            "the discrete process it is sampled with. Give --duo.curriculum_fraction < 1 (the "
            f"presets: 0.5), --duo.curriculum_end < {cfg.train.steps} (0: no curriculum), or "
            "more --train.steps"
        )
    return cfg


def _flat(cfg: Config) -> dict[str, Any]:
    out = {}
    for section, values in asdict(cfg).items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            out[section] = values
    return out


def check_resume(saved: Config, cfg: Config, where: Path, step: int) -> None:
    """Refuse to resume the run whose config is ``saved``, at checkpoint step ``step``, with
    ``cfg`` when they differ in a field outside ``RESUMABLE`` (``sample.*`` aside), naming each
    field and both values. One change of what is trained is allowed: ending the Duo
    curriculum early, at a step already reached (``duo.curriculum_end`` lowered to <= ``step``),
    which is what the run then did."""
    old, new = _flat(saved), _flat(cfg)
    end_old, end_new = saved.duo.curriculum_end, cfg.duo.curriculum_end
    if end_old is not None and end_new is not None and end_new <= min(end_old, step):
        old["duo.curriculum_end"] = end_new
    diffs = [f"--{k} {new[k]!r} (the run has {old.get(k)!r})" for k in new
             if new[k] != old.get(k) and k not in RESUMABLE
             and not k.startswith("sample.")]  # fmt: skip
    if diffs:
        raise ValueError(
            f"--train.resume true continues the run in {where} as it was started, but this "
            "command changes what it trains:\n  " + "\n  ".join(diffs) + "\nLeave these "
            "options out (its config.json holds them), or start a new run in another "
            "--train.out_dir"
        )


# --- building and restoring a run ----------------------------------------------------------------


@dataclass
class Run:
    """Everything a training invocation holds, built by ``build_run``."""

    cfg: Config
    info: D.DistInfo
    run_dir: Path
    data: PreparedData
    tokenizer: TextTokenizer
    objective: Objective
    model: nn.Module
    ema: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    iterator: BatchIterator
    noise: torch.Generator
    meta: dict[str, Any]
    checkpoints: Checkpointer
    micro: int
    accum: int
    total_steps: int
    num_parameters: int
    step: int = 0
    elapsed_before: float = 0.0
    last_saved: int | None = None


def check_run_dir(cfg: Config) -> tuple[Path, bool]:
    run_dir = Path(cfg.train.out_dir)
    ckpt = run_dir / CHECKPOINT_FILE
    if cfg.train.resume and not ckpt.is_file():
        raise FileNotFoundError(
            f"--train.resume true, but {run_dir} holds no checkpoint ({CHECKPOINT_FILE}): check "
            "--train.out_dir, or leave out --train.resume to start a new run there"
        )
    if ckpt.is_file() and not cfg.train.resume and not cfg.train.overwrite:
        raise FileExistsError(
            f"{run_dir} already holds a checkpoint: pass --train.resume true to continue it, "
            "--train.overwrite true to start afresh, or another --train.out_dir"
        )
    return run_dir, cfg.train.resume


def _teacher(cfg: Config, vocab_size: int, device: torch.device) -> nn.Module | None:
    """A DCD or SDTT run's teacher (its EMA weights) on ``device``, else None."""
    if cfg.train.objective not in ("dcd", "sdtt"):
        return None
    where = getattr(cfg, cfg.train.objective).teacher
    teacher_run = load_trained(where, build_objective_too=False)
    if teacher_run.tokenizer.vocab_size != vocab_size:
        raise ValueError(f"the teacher {where} has vocabulary size "
                         f"{teacher_run.tokenizer.vocab_size}, this run's data has {vocab_size}")
    return teacher_run.model.to(device)


def build_model_and_objective(
    cfg: Config, data: PreparedData, info: D.DistInfo
) -> tuple[Objective, nn.Module, dict[str, Any]]:
    """The objective, the model (DCD, SDTT: the teacher's copy) and its checkpoint meta."""
    torch.manual_seed(cfg.train.seed)
    tokenizer = data.tokenizer
    num_classes = len(data.label_names) or None  # a labelled run's model embeds the labels
    teacher = _teacher(cfg, tokenizer.vocab_size, info.device)
    objective = build_objective(cfg, tokenizer.vocab_size, bos_id=tokenizer.bos_id,
                                teacher=teacher, num_classes=num_classes)  # fmt: skip
    run = backbone_kwargs(objective, cfg.data.seq_len, num_classes)
    if teacher is not None:
        from discdiff.models import DiT

        model: nn.Module = DiT(teacher.config)
        model.load_state_dict(teacher.state_dict())
    else:
        model = build_model(cfg.model, objective.model_vocab_size, causal=objective.causal,
                            seq_len=cfg.data.seq_len, mask_id=run["mask_id"],
                            num_classes=num_classes)  # fmt: skip
    model = model.to(info.device)
    _check_clean_context(cfg, model)
    meta = model_meta(model, tokenizer.vocab_size, cfg.train.objective,
                      None if teacher is not None else cfg.model, causal=objective.causal,
                      model_vocab_size=objective.model_vocab_size, run=run)  # fmt: skip
    return objective, model, meta


def _check_clean_context(cfg: Config, model: nn.Module) -> None:
    """Duo's clean-context rows need a backbone that reads per-token noise levels."""
    from discdiff.context import reads_token_levels

    share = cfg.duo.clean_context or 0.0
    if cfg.train.objective == "duo" and share > 0 and not reads_token_levels(model):
        raise ValueError(
            f"--duo.clean_context {cfg.duo.clean_context} trains rows with clean context, which "
            f"the backbone must see at noise level 0: {type(model).__name__} does not declare "
            "reads_token_levels = True (a forward that accepts sigma of shape (B, L)). Give it "
            "one, or pass --duo.clean_context 0 (its prompts are then refused at sampling)"
        )


def build_run(cfg: Config, info: D.DistInfo, run_dir: Path, resuming: bool) -> Run:
    """Data, model, objective, EMA, optimizer, scheduler, data iterator and noise of a run."""
    tc = cfg.train
    teacher_tok = (_dcd_teacher_tokenizer(cfg) if tc.objective == "dcd" else
                   load_tokenizer(cfg.sdtt.teacher) if tc.objective == "sdtt" else None)
    # A resumed run reuses the tokenizer it saved; DCD its teacher's.
    tok_arg: Any = load_tokenizer(run_dir) if resuming else teacher_tok or cfg.data.tokenizer
    data = prepare_data(
        cfg.data.source, tokenizer=tok_arg, tokenizer_files=cfg.data.tokenizer_files,
        seq_len=cfg.data.seq_len, val_fraction=cfg.data.val_fraction,
        split_seed=cfg.data.split_seed, cache_dir=cfg.data.cache_dir,
        max_documents=cfg.data.max_documents, packing=cfg.data.packing, labels=cfg.data.labels,
    )  # fmt: skip
    objective, model, meta = build_model_and_objective(cfg, data, info)
    counted = getattr(model, "num_parameters", None)  # a DiT leaves out its padding rows
    num_parameters = counted() if callable(counted) else sum(p.numel() for p in model.parameters())
    world = info.world_size
    micro = validation_batch_size(cfg, world)
    if tc.batch_size % (micro * world):
        raise ValueError(f"train.batch_size={tc.batch_size} is not a multiple of micro_batch x "
                         f"world_size = {micro} x {world}")  # fmt: skip
    iterator = BatchIterator(data.train, micro, seed=tc.seed, rank=info.rank, world_size=world)
    noise = torch.Generator(device=info.device).manual_seed(tc.seed * 1009 + 7 * info.rank + 1)
    # DCD and SDTT run their own schedule: rounds x steps_per_round at their own lr and EMA.
    dc = getattr(cfg, tc.objective) if tc.objective in ("dcd", "sdtt") else None
    lr, steps = (dc.lr if dc else tc.lr), total_steps(cfg)
    ema = build_ema(model, dc.ema if dc else tc.ema)  # a copy, sharded like model
    model = D.wrap_model(model, info, fsdp=tc.fsdp)
    if tc.fsdp:
        D.wrap_model(ema.module, info, fsdp=True)
    if tc.compile if tc.compile is not None else info.device.type == "cuda":
        # In place (nn.Module.compile): the module keeps its methods and parameter names, so a
        # fused loss's hidden_states call runs the compiled forward too, as DDP's forward does.
        D.unwrap(model).compile()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr,
        betas=(tc.beta1, tc.beta2), eps=tc.adam_eps, weight_decay=tc.weight_decay,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, warmup=tc.warmup, total=steps, schedule=tc.lr_schedule, min_ratio=tc.min_lr_ratio))
    checkpoints = Checkpointer(run_dir, sharded=tc.fsdp, is_main=info.is_main)
    return Run(cfg, info, run_dir, data, data.tokenizer, objective, model, ema, optimizer,
                scheduler, iterator, noise, meta, checkpoints, micro, tc.batch_size // (micro *
                world), steps, num_parameters)  # fmt: skip


def restore_run(run: Run, state: dict[str, Any]) -> None:
    """Continue ``run`` from a checkpoint's ``state`` exactly where it stopped."""
    check_compatible(state["meta"], run.meta, where=str(run.checkpoints.path))
    run.checkpoints.restore(state, run.model, run.ema, run.optimizer)
    run.scheduler.load_state_dict(state["scheduler"])
    run.iterator.load_state_dict(state["data"])
    run.objective.load_state_dict(state["objective"])
    ranks = state["rng"]
    mine = ranks[run.info.rank] if len(ranks) == run.info.world_size else ranks[0]
    restore_rng_state(mine["global"])
    run.noise.set_state(mine["noise"])
    run.step, run.elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
    run.last_saved = run.step


def write_records(run: Run, resuming: bool) -> None:
    """config.json (the config of this invocation: on resume it differs from the run's only
    in ``RESUMABLE`` fields), diffusion.json, and for a new run its tokenizer and data info."""
    if run.info.is_main:
        from examples.config import save_config

        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run.cfg, run.run_dir / "config.json")
        write_json(run.run_dir / "diffusion.json", diffusion_config(run.objective))
        if not resuming:
            run.tokenizer.save(run.run_dir)
            write_json(run.run_dir / "data_info.json", run.data.info)
    D.barrier()


def save_run(run: Run, elapsed: float) -> None:
    rng = D.all_gather_objects({"global": capture_rng_state(), "noise": run.noise.get_state()})
    rest = {"meta": run.meta, "scheduler": run.scheduler.state_dict(),
            "data": run.iterator.state_dict(), "objective": run.objective.state_dict(),
            "rng": rng, "elapsed_s": elapsed}  # fmt: skip
    run.checkpoints.save(run.step, run.model, run.ema, run.optimizer, rest)
    run.last_saved = run.step


def _dcd_teacher_tokenizer(cfg: Config) -> TextTokenizer:
    """The DCD teacher's saved tokenizer: a student must read and write its teacher's token ids.

    Refuses a teacher that is not a uniform-state run, and a config naming another tokenizer
    than the teacher's (same vocabulary size or not: the ids would mean other things)."""
    teacher_cfg = load_teacher_config(cfg.dcd.teacher)
    ours, theirs = cfg.data, teacher_cfg.data
    if (ours.tokenizer, list(ours.tokenizer_files)) != (theirs.tokenizer,
                                                        list(theirs.tokenizer_files)):  # fmt: skip
        raise ValueError(
            f"--data.tokenizer {ours.tokenizer} {' '.join(ours.tokenizer_files)} is not the "
            f"tokenizer of the DCD teacher {cfg.dcd.teacher} ({theirs.tokenizer} "
            f"{' '.join(theirs.tokenizer_files)}): a student uses its teacher's token ids; "
            "leave out --data.tokenizer (DCD takes the teacher's saved tokenizer)"
        )
    return load_tokenizer(cfg.dcd.teacher)


def diffusion_config(objective: Objective) -> dict[str, Any]:
    """The run's library objects as ``discdiff.config`` dicts (``diffusion.json``): the
    diffusion (``"diffusion"``) and, for DCD, the distiller's settings (``"distiller"``); the AR
    objective has neither. Rebuild one with ``discdiff.config.from_dict``."""
    out: dict[str, Any] = {"objective": objective.name}
    for key, attr in (("diffusion", "diffusion"), ("distiller", "distiller")):
        obj = getattr(objective, attr, None)
        if obj is not None and hasattr(obj, "to_dict"):
            out[key] = obj.to_dict()
    return out


def write_json(path: Path, obj: Any) -> None:
    import json

    text = json.dumps(obj, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


