"""The training loop shared by every objective (Duo, MDLM, AR, DCD).

    python -m examples.train --preset cpu-demo --train.objective duo --train.out_dir runs/duo
    torchrun --nproc_per_node 8 -m examples.train --preset owt --train.out_dir runs/owt
    python -m examples.train --train.out_dir runs/duo --train.resume true     # continue exactly

AdamW with linear warm-up then a constant or cosine learning rate; gradient clipping; an EMA of
the weights (used for validation and sampling); gradient accumulation; bf16 autocast on CUDA
only (on CPU it is much slower than float32, so it is refused there); DDP through torchrun
(gloo on CPU, NCCL on GPU) or FSDP2 (``--train.fsdp true``). The antithetic times of a step
are stratified over the *global* batch: every rank and accumulation step draws the same offset
u from a generator seeded by (seed, step) and takes its own strata. Logs go to CSV (and
TensorBoard), checkpoints are atomic and carry everything needed to continue bit-for-bit.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from examples import distributed as D
from examples.checkpoint import (
    CHECKPOINT_FILE,
    SHARDS_PREFIX,
    atomic_write,
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    load_sharded,
    remove_stale_shards,
    restore_rng_state,
    save_checkpoint,
    save_sharded,
)
from examples.config import Config, ModelConfig, load_config, load_teacher_config, parse_args
from examples.data import Batch, BatchIterator, Rows, masked_validation_batches, prepare_data
from examples.ema import build_ema, ema_state_dict, load_ema_state_dict, update_ema
from examples.metrics import MetricsLogger
from examples.objectives import Objective, build_objective
from examples.tokenizer import TextTokenizer, load_tokenizer

__all__ = [
    "TrainResult",
    "TrainedRun",
    "autocast",
    "build_model",
    "configure_threads",
    "diffusion_config",
    "evaluate_bound",
    "load_trained",
    "lr_multiplier",
    "main",
    "resolve_factory",
    "train",
]


# --- small pieces --------------------------------------------------------------------------------


def resolve_factory(path: str) -> Callable[..., nn.Module]:
    """The callable named by ``"package.module:function"`` (``--model.factory``)."""
    import importlib

    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"model.factory must be 'package.module:function', got {path!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model.factory {path!r}: cannot import {module_name!r} ({err})") from err
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"model.factory {path!r}: {module_name!r} has no {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"model.factory {path!r} is not callable")
    return fn


def factory_kwargs(mcfg: ModelConfig) -> dict[str, Any]:
    """The keywords a ``--model.factory`` callable gets besides (vocab_size, causal): the
    fields set in ``ModelConfig`` (preset, and the sizes that are not None) and the JSON
    object of ``--model.options``."""
    import json

    kwargs = {k: v for k, v in asdict(mcfg).items()
              if k not in ("factory", "options") and v is not None}  # fmt: skip
    if mcfg.options:
        extra = json.loads(mcfg.options)
        if not isinstance(extra, dict):
            raise ValueError(f"model.options must be a JSON object, got {mcfg.options!r}")
        kwargs.update(extra)
    return kwargs


def build_model(
    mcfg: ModelConfig, vocab_size: int, *, causal: bool = False, num_classes: int | None = None
) -> nn.Module:
    """A ``discdiff.models.DiT`` from the config's preset and overrides, or, with
    ``mcfg.factory = "package.module:function"``, ``function(vocab_size, causal,
    **factory_kwargs(mcfg))``: any ``nn.Module`` with the denoiser's call signature
    ``model(z_t, sigma, **cond) -> logits (B, L, vocab_size)`` (see examples/README.md).
    ``num_classes``: the DiT's label embedding (``--data.labels``)."""
    if mcfg.factory and num_classes is not None:
        raise ValueError("data.labels conditions the DiT on class labels; a --model.factory "
                         "backbone takes no num_classes: leave out one of them")  # fmt: skip
    if mcfg.factory:
        model = resolve_factory(mcfg.factory)(vocab_size, causal, **factory_kwargs(mcfg))
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model.factory {mcfg.factory!r} returned a {type(model).__name__}, not an "
                "nn.Module (the loop needs its parameters for the optimiser, EMA and checkpoints)"
            )
        return model
    from discdiff.models import DiT

    names = {"hidden": "hidden_size", "blocks": "n_blocks", "heads": "n_heads",
             "cond_dim": "cond_dim", "dropout": "dropout"}  # fmt: skip
    overrides = {names[k]: v for k, v in asdict(mcfg).items() if k in names and v is not None}
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return DiT.from_preset(mcfg.preset, vocab_size=vocab_size, causal=causal, **overrides)


def lr_multiplier(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA ("auto" or "bf16"); float32 elsewhere. bf16 on CPU is refused."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        raise ValueError(
            "bf16 autocast is only used on CUDA: on CPU it is far slower than float32; "
            "use --train.precision fp32 (or auto)"
        )
    return contextlib.nullcontext()


def _step_generator(seed: int, step: int) -> torch.Generator:
    """Identical on every rank: the generator whose first draw is the step's offset u."""
    from discdiff.timesteps import AntitheticTimes

    return AntitheticTimes(seed=seed).generator(step)


def _times(objective: Objective, micro: int, info: D.DistInfo, accum: int, index: int, seed: int,
           step: int, eps: float) -> Tensor | None:  # fmt: skip
    if not objective.uses_times:
        return None
    from discdiff.timesteps import AntitheticTimes

    return AntitheticTimes(eps=eps, seed=seed)(
        micro, step=step, accum_index=index, accum_steps=accum, world_size=info.world_size,
        rank=info.rank, device=info.device,
    )  # fmt: skip


def model_meta(
    model: nn.Module, vocab_size: int, objective: str, mcfg: ModelConfig | None = None,
    *, causal: bool = False, model_vocab_size: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What a checkpoint records of its model: a DiT's config, or for a ``--model.factory``
    backbone the factory and its arguments (``load_trained`` rebuilds it from them)."""
    if mcfg is not None and mcfg.factory:
        spec = {"factory": mcfg.factory, "vocab_size": model_vocab_size, "causal": causal,
                "kwargs": factory_kwargs(mcfg)}  # fmt: skip
        return {"vocab_size": vocab_size, "model": spec, "objective": objective}
    config = getattr(D.unwrap(model), "config", None)
    return {
        "vocab_size": vocab_size,
        "model": config.to_dict() if hasattr(config, "to_dict") else {},
        "objective": objective,
    }


def _batch_kw(batch: Batch) -> dict[str, Tensor]:
    """``mask=`` and ``label=`` for an objective only when the batch has padding or labels, so
    other runs call objectives (and backbones) exactly as before."""
    return {k: v for k, v in (("mask", batch.mask), ("label", batch.label)) if v is not None}


def _mean_loss(objective: Objective, per_token: Tensor, mask: Tensor | None) -> Tensor:
    """The mean per-token loss over the real tokens of a micro-batch (all of them when packed).

    Padded positions are selected away (not multiplied by 0), so whatever they hold is ignored.
    """
    if mask is None:
        return per_token.float().mean()
    keep = objective.token_mask(mask)
    return torch.where(keep, per_token.float(), 0.0).sum() / keep.sum().clamp_min(1)


@torch.no_grad()
def evaluate_bound(
    objective: Objective, model: nn.Module, rows: Rows, *, batch_size: int,
    max_sequences: int | None, seed: int, device: torch.device, precision: str = "auto",
    info: D.DistInfo | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Validation bound over the first ``max_sequences`` rows: per-token NELBO (the AR objective:
    exact NLL), its perplexity and the mean of each term. The noise is seeded, so repeated
    evaluations of the same model agree. Unpacked rows (``PaddedRows``) count real tokens only."""
    from discdiff.metrics import BoundMeter

    info = info or D.DistInfo(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    meter = BoundMeter()
    description, batches = "", 0
    try:
        for batch in masked_validation_batches(
            rows, batch_size, max_sequences, rank=info.rank, world_size=info.world_size
        ):
            batch = batch.to(device)
            with autocast(device, precision):
                bound = objective.bound(model, batch.x_0, generator=gen, **_batch_kw(batch))
            description = bound.description
            meter.update(bound.terms, mask=getattr(bound, "mask", None))  # padding left out
            batches += 1
    finally:
        model.train(was_training)
    if batches == 0:  # on every rank alike: the shards have equal numbers of batches
        raise ValueError("the validation split is empty")
    res = meter.compute()
    nelbo, tokens, ppl = res.pop("nll_per_token"), res.pop("tokens"), res.pop("ppl")
    return {"nelbo": nelbo, "ppl": ppl, "tokens": tokens, "terms": res, "bound": description}


# --- state dicts under DDP / FSDP ---------------------------------------------------------------
# A sharded run (FSDP2) saves with DCP (``save_sharded``); these read the full state dicts of a
# checkpoint written by ``torch.save`` into a DDP or an FSDP2 model.


def _load_model_state(model: nn.Module, state: dict[str, Tensor], fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        return
    D.unwrap(model).load_state_dict(state)


def _load_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                      fsdp: bool) -> None:  # fmt: skip
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, state, options=opts)
        return
    optimizer.load_state_dict(state)


# --- loading a finished run ---------------------------------------------------------------------


@dataclass
class TrainedRun:
    """A trained model (EMA weights by default) with its config, tokenizer and objective."""

    model: nn.Module
    config: Config
    tokenizer: TextTokenizer
    objective: Objective
    step: int
    run_dir: Path


def load_trained(
    run_dir: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu",
    build_objective_too: bool = True,
) -> TrainedRun:  # fmt: skip
    """Rebuild the model of a run directory from its checkpoint (``weights``: ema or raw)."""
    from discdiff.models import DiT, DiTConfig

    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir, map_location="cpu")
    cfg = load_config(run_dir / "config.json")
    tokenizer = load_tokenizer(run_dir)
    meta = state["meta"]
    if meta["vocab_size"] != tokenizer.vocab_size:
        raise ValueError(
            f"{run_dir}: the checkpoint's vocabulary ({meta['vocab_size']}) does not match the "
            f"saved tokenizer ({tokenizer.vocab_size})"
        )
    spec = meta["model"]
    if "factory" in spec:  # a --model.factory backbone: rebuilt by the same call
        model: nn.Module = resolve_factory(spec["factory"])(
            spec["vocab_size"], spec["causal"], **spec["kwargs"]
        )
    else:
        model = DiT(DiTConfig.from_dict(spec))
    model.load_state_dict(state["model"])
    if weights == "ema":
        ema_state = state["ema"]
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in ema_state:
                    p.copy_(ema_state[name])
    elif weights != "raw":
        raise ValueError(f"weights must be ema or raw, got {weights!r}")
    model = model.to(device).eval()
    objective: Any = None
    if build_objective_too:
        objective = build_objective(cfg, tokenizer.vocab_size, bos_id=tokenizer.bos_id)
    return TrainedRun(model, cfg, tokenizer, objective, int(state["step"]), run_dir)


# --- the loop -----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    """The step reached (checkpointed)."""
    losses: list[float] = field(default_factory=list)
    """Mean training loss per optimizer step, for the steps run in this invocation."""
    val: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    num_parameters: int = 0
    model: nn.Module | None = None
    """The trained module (raw weights; unwrapped from DDP; still sharded under FSDP)."""


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


def _progress_line(step: int, total: int, loss: float, phase: str, lr: float, tok_s: float,
                   elapsed: float) -> str:  # fmt: skip
    return (f"step {step}/{total} ({100 * step / total:.0f} %): loss {loss:.4f} [{phase}], lr "
            f"{lr:.3g}, {tok_s:,.0f} tokens/s, {elapsed:.0f} s")  # fmt: skip


def train(
    cfg: Config, *, info: D.DistInfo | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:  # fmt: skip
    """Run (or resume) training as configured; returns the losses and validation results."""
    cfg.validate()
    tc = cfg.train
    info = info or D.init_distributed(tc.device)
    device = info.device
    autocast(device, tc.precision)  # refuse bf16 on CPU before any work
    run_dir = Path(tc.out_dir)
    ckpt_path = run_dir / CHECKPOINT_FILE
    resuming = tc.resume
    if resuming and not ckpt_path.is_file():
        raise FileNotFoundError(
            f"--train.resume true, but {run_dir} holds no checkpoint ({CHECKPOINT_FILE}): check "
            "--train.out_dir, or leave out --train.resume to start a new run there"
        )
    if ckpt_path.is_file() and not tc.resume and not tc.overwrite:
        raise FileExistsError(
            f"{run_dir} already holds a checkpoint: pass --train.resume true to continue it, "
            "--train.overwrite true to start afresh, or another --train.out_dir"
        )
    teacher_tokenizer = (_dcd_teacher_tokenizer(cfg) if tc.objective == "dcd" else
                         load_tokenizer(cfg.sdtt.teacher) if tc.objective == "sdtt" else None)
    state = load_checkpoint(ckpt_path) if resuming else None

    # Data and tokenizer (a resumed run reuses the tokenizer it saved; DCD its teacher's).
    tok_arg: Any = load_tokenizer(run_dir) if resuming else teacher_tokenizer or cfg.data.tokenizer
    data = prepare_data(
        cfg.data.source, tokenizer=tok_arg, tokenizer_files=cfg.data.tokenizer_files,
        seq_len=cfg.data.seq_len, val_fraction=cfg.data.val_fraction,
        split_seed=cfg.data.split_seed, cache_dir=cfg.data.cache_dir,
        max_documents=cfg.data.max_documents, packing=cfg.data.packing, labels=cfg.data.labels,
    )  # fmt: skip
    tokenizer = data.tokenizer
    num_classes = len(data.label_names) or None  # a labelled run's DiT embeds the labels

    # Model and objective. DCD: the student starts from the teacher's (EMA) weights.
    torch.manual_seed(tc.seed)
    teacher = None
    if tc.objective in ("dcd", "sdtt"):
        teacher_run = load_trained(getattr(cfg, tc.objective).teacher, build_objective_too=False)
        if teacher_run.tokenizer.vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"the teacher {getattr(cfg, tc.objective).teacher} has vocabulary size "
                f"{teacher_run.tokenizer.vocab_size}, this run's data has {tokenizer.vocab_size}"
            )
        teacher = teacher_run.model.to(device)
    objective = build_objective(cfg, tokenizer.vocab_size, bos_id=tokenizer.bos_id,
                                teacher=teacher, num_classes=num_classes)  # fmt: skip
    if teacher is not None:
        from discdiff.models import DiT

        model: nn.Module = DiT(teacher.config)
        model.load_state_dict(teacher.state_dict())
    else:
        model = build_model(cfg.model, objective.model_vocab_size, causal=objective.causal,
                            num_classes=num_classes)  # fmt: skip
    model = model.to(device)
    meta = model_meta(model, tokenizer.vocab_size, tc.objective,
                      None if teacher is not None else cfg.model, causal=objective.causal,
                      model_vocab_size=objective.model_vocab_size)  # fmt: skip
    counted = getattr(model, "num_parameters", None)  # a DiT leaves out its padding rows
    num_parameters = counted() if callable(counted) else sum(p.numel() for p in model.parameters())

    world = info.world_size
    micro = tc.micro_batch if tc.micro_batch is not None else tc.batch_size // world
    if tc.batch_size % (micro * world):
        raise ValueError(
            f"train.batch_size={tc.batch_size} is not a multiple of micro_batch x world_size = "
            f"{micro} x {world}"
        )
    accum = tc.batch_size // (micro * world)
    iterator = BatchIterator(data.train, micro, seed=tc.seed, rank=info.rank, world_size=world)
    noise = torch.Generator(device=device).manual_seed(tc.seed * 1009 + 7 * info.rank + 1)

    # DCD runs its own schedule: rounds x steps_per_round steps at its own lr and EMA decay.
    distilling = tc.objective in ("dcd", "sdtt")
    dc = getattr(cfg, tc.objective) if distilling else None
    lr = dc.lr if dc else tc.lr
    total_steps = dc.rounds * dc.steps_per_round if dc else tc.steps
    ema = build_ema(model, dc.ema if dc else tc.ema)  # a copy, sharded like model
    model = D.wrap_model(model, info, fsdp=tc.fsdp)
    if tc.fsdp:
        D.wrap_model(ema.module, info, fsdp=True)
    compile_model = tc.compile if tc.compile is not None else device.type == "cuda"
    if compile_model:
        # In place (nn.Module.compile): the module keeps its methods and parameter names, so a
        # fused loss's hidden_states call runs the compiled forward too, as DDP's forward does.
        D.unwrap(model).compile()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr,
        betas=(tc.beta1, tc.beta2), eps=tc.adam_eps, weight_decay=tc.weight_decay,
    )  # fmt: skip

    def lr_lambda(s: int) -> float:
        return lr_multiplier(s, warmup=tc.warmup, total=total_steps, schedule=tc.lr_schedule,
                             min_ratio=tc.min_lr_ratio)  # fmt: skip

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    step, elapsed_before = 0, 0.0
    if state is not None:
        check_compatible(state["meta"], meta, where=str(ckpt_path))
        if "shards" in state:  # each rank reads its own shards
            from torch.distributed.checkpoint.state_dict import (
                get_model_state_dict,
                get_state_dict,
                set_model_state_dict,
                set_state_dict,
            )

            model_state, optim_state = get_state_dict(model, optimizer)
            tensors = {"model": model_state, "optimizer": optim_state,
                       "ema": get_model_state_dict(ema.module)}  # fmt: skip
            load_sharded(run_dir, state["shards"], tensors)
            set_state_dict(model, optimizer, model_state_dict=tensors["model"],
                           optim_state_dict=tensors["optimizer"])  # fmt: skip
            set_model_state_dict(ema.module, tensors["ema"])
        else:
            _load_model_state(model, state["model"], tc.fsdp)
            load_ema_state_dict(ema, state["ema"])
            _load_optim_state(model, optimizer, state["optimizer"], tc.fsdp)
        scheduler.load_state_dict(state["scheduler"])
        iterator.load_state_dict(state["data"])
        objective.load_state_dict(state["objective"])
        ranks = state["rng"]
        mine = ranks[info.rank] if len(ranks) == world else ranks[0]
        restore_rng_state(mine["global"])
        noise.set_state(mine["noise"])
        step, elapsed_before = int(state["step"]), float(state.get("elapsed_s", 0.0))
        del state
    if info.is_main:  # the resolved config of this (possibly resumed) invocation
        from examples.config import save_config

        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json")
        _write_json(run_dir / "diffusion.json", diffusion_config(objective))
        if not resuming:
            tokenizer.save(run_dir)
            _write_json(run_dir / "data_info.json", data.info)
    D.barrier()

    logger = MetricsLogger(run_dir, enabled=info.is_main, tensorboard=tc.tensorboard,
                           resume_step=step if resuming else None)  # fmt: skip
    eps = cfg.duo.eps
    tokens_per_step = tc.batch_size * cfg.data.seq_len
    result = TrainResult(run_dir, step, num_parameters=num_parameters)

    def save(at_step: int, elapsed: float) -> None:
        rng = D.all_gather_objects({"global": capture_rng_state(), "noise": noise.get_state()})
        if tc.fsdp:  # every rank writes its shards; nothing is gathered
            from torch.distributed.checkpoint.state_dict import (
                get_model_state_dict,
                get_state_dict,
            )

            token = D.all_gather_objects(os.urandom(4).hex())[0]  # rank 0's, on every rank
            shards = f"{SHARDS_PREFIX}{at_step:08d}-{token}"
            model_state, optim_state = get_state_dict(model, optimizer)
            save_sharded(run_dir, shards, {"model": model_state, "optimizer": optim_state,
                                           "ema": get_model_state_dict(ema.module)})  # fmt: skip
            tensors: dict[str, Any] = {"shards": shards}
        else:
            tensors = {
                "model": {k: v.detach().cpu() for k, v in D.unwrap(model).state_dict().items()},
                "ema": ema_state_dict(ema),
                "optimizer": optimizer.state_dict(),
            }
        payload = {
            "step": at_step,
            "meta": meta,
            **tensors,
            "scheduler": scheduler.state_dict(),
            "data": iterator.state_dict(),
            "objective": objective.state_dict(),
            "rng": rng,
            "elapsed_s": elapsed,
        }
        if info.is_main:
            save_checkpoint(ckpt_path, payload)
            remove_stale_shards(run_dir, keep=tensors.get("shards"))
        D.barrier()

    def validate(at_step: int) -> dict[str, Any]:
        res = evaluate_bound(  # on the EMA weights
            objective, ema.module, data.val, batch_size=micro, max_sequences=tc.eval_sequences,
            seed=tc.seed + 12345, device=device, precision=tc.precision, info=info,
        )  # fmt: skip
        res["step"] = at_step
        logger.log("val", at_step, nelbo=res["nelbo"], ppl=res["ppl"], tokens=res["tokens"],
                   **res["terms"])  # fmt: skip
        result.val.append(res)
        return res

    # Progress: a bar on a terminal; in a log file or a pipe (no "\r"), a plain line every
    # progress_every steps and one per validation.
    bar, plain = None, info.is_main and tc.progress and not sys.stderr.isatty()
    progress_every = tc.progress_every if tc.progress_every is not None else tc.log_every
    if tc.progress and info.is_main and not plain:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, desc=f"train {tc.objective}",
                   unit="step", dynamic_ncols=True, file=sys.stderr)  # fmt: skip
    start = time.perf_counter()
    steps_this_run = 0
    model.train()
    try:
        while step < total_steps:
            t0 = time.perf_counter()
            total_loss = torch.zeros((), device=device)
            for index in range(accum):
                batch = iterator.next_batch().to(device, non_blocking=True)
                x_0, mask = batch.x_0, batch.mask  # mask: None when packed
                t = _times(objective, micro, info, accum, index, tc.seed, step, eps)
                sync = index == accum - 1 or not info.enabled or tc.fsdp
                ctx = contextlib.nullcontext() if sync else model.no_sync()  # type: ignore[operator]
                with ctx:
                    with autocast(device, tc.precision):
                        per_token = objective.loss(model, x_0, step=step, t=t, generator=noise,
                                                   **_batch_kw(batch))  # fmt: skip
                    loss = _mean_loss(objective, per_token, mask) / accum
                    loss.backward()
                total_loss += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
                grad_norm = grad_norm.full_tensor()
            step_lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            update_ema(ema, D.unwrap(model))
            step += 1
            steps_this_run += 1
            objective.after_step(step - 1, D.unwrap(model), ema)

            mean_loss = float(D.all_reduce_mean(total_loss))
            result.losses.append(mean_loss)
            if on_step is not None:
                on_step(step, mean_loss)
            dt = time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.4f}", phase=objective.phase(step - 1),
                                tok_s=f"{tokens_per_step / dt:,.0f}", refresh=False)  # fmt: skip
            elif plain and (step % progress_every == 0 or step == total_steps):
                print(_progress_line(step, total_steps, mean_loss, objective.phase(step - 1),
                                     step_lr, tokens_per_step / dt,
                                     elapsed_before + time.perf_counter() - start),
                      file=sys.stderr, flush=True)  # fmt: skip
            if step % tc.log_every == 0 or step == total_steps:
                logger.log(
                    "train", step, phase=objective.phase(step - 1), loss=mean_loss,
                    lr=step_lr, grad_norm=float(grad_norm),
                    tokens_per_s=tokens_per_step / dt,
                    elapsed_s=elapsed_before + time.perf_counter() - start,
                )  # fmt: skip
            if step % tc.eval_every == 0 or step == total_steps:
                res = validate(step)
                line = (f"step {step}: validation NELBO {res['nelbo']:.4f} nats/token, "
                        f"PPL <= {res['ppl']:.2f}")  # fmt: skip
                if bar is not None:
                    bar.write(line)
                elif plain:
                    print(line, file=sys.stderr, flush=True)
            elapsed = time.perf_counter() - start
            out_of_time = tc.max_time_s is not None and elapsed > tc.max_time_s
            stop = D.any_rank(out_of_time, device) or (
                tc.stop_after is not None and steps_this_run >= tc.stop_after
            )
            if step % tc.ckpt_every == 0 or step == total_steps or stop:
                save(step, elapsed_before + elapsed)
            if stop and step < total_steps:
                result.stopped_early = True
                if out_of_time and not any(v["step"] == step for v in result.val):
                    validate(step)
                break
    finally:
        if bar is not None:
            bar.close()
        logger.close()
    result.step = step
    result.model = model if tc.fsdp else D.unwrap(model)
    result.wall_s = time.perf_counter() - start
    result.tokens_per_s = steps_this_run * tokens_per_step / max(result.wall_s, 1e-9)
    if info.is_main:
        _write_json(run_dir / "result.json", {
            "step": step, "stopped_early": result.stopped_early, "wall_s": result.wall_s,
            "tokens_per_s": result.tokens_per_s, "num_parameters": num_parameters,
            "val": result.val[-1] if result.val else None,
        })  # fmt: skip
    return result


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


def _write_json(path: Path, obj: Any) -> None:
    import json

    text = json.dumps(obj, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def configure_threads() -> str | None:
    """Without OMP_NUM_THREADS, keep torch to the cores this process may use: its share of the
    CPUs available to it (``os.sched_getaffinity``) among the processes torchrun starts on this
    machine. Oversubscribed OpenMP threads busy-wait, which made training on shared cores
    several times slower. Returns the one line of advice to print when it lowered the count."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = max(1, cores // processes)
    if torch.get_num_threads() <= share:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(share)
    return (f"OMP_NUM_THREADS is not set: using {share} torch threads per process instead of "
            f"{before} ({cores} cores available, {processes} process(es)); set OMP_NUM_THREADS, "
            "and OMP_WAIT_POLICY=PASSIVE on shared cores, to choose")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> TrainResult:
    description = __doc__.split("\n\n")[0] if __doc__ else None
    cfg = parse_args(argv, default_preset="cpu-demo", prog="python -m examples.train",
                     description=description)  # fmt: skip
    advice = configure_threads()
    if advice and int(os.environ.get("RANK", "0")) == 0:
        print(f"examples.train: {advice}", file=sys.stderr)
    info = D.init_distributed(cfg.train.device)
    try:
        result = train(cfg, info=info)
    finally:
        D.shutdown_distributed()
    if info.is_main:
        last = result.val[-1] if result.val else None
        msg = f"step {result.step}, {result.wall_s:.1f} s, {result.tokens_per_s:,.0f} tokens/s"
        if last:
            msg += f", validation NELBO {last['nelbo']:.4f} (PPL <= {last['ppl']:.2f})"
        print(f"{cfg.train.objective}: {msg}; outputs in {result.run_dir}")
    return result


if __name__ == "__main__":
    main()
