"""The training loop shared by every objective (Duo, MDLM, AR, DCD, SDTT).

    python -m examples.train --preset cpu-demo --train.objective duo --train.out_dir runs/duo
    torchrun --nproc_per_node 8 -m examples.train --preset owt --train.out_dir runs/owt
    python -m examples.train --train.out_dir runs/duo --train.resume true     # continue exactly

AdamW with linear warm-up then a constant or cosine learning rate; gradient clipping; an EMA of
the weights (used for validation and sampling); gradient accumulation; bf16 autocast on CUDA
only (on CPU it is much slower than float32, so it is refused there); DDP through torchrun
(gloo on CPU, NCCL on GPU) or FSDP2 (``--train.fsdp true``). The antithetic times of a step
are stratified over the *global* batch: every rank and accumulation step draws the same offset
u from a generator seeded by (seed, step) and takes its own strata. Logs go to CSV (and
TensorBoard), checkpoints are atomic, checksummed, and carry everything needed to continue
bit-for-bit.

A step whose loss or gradient norm is NaN or infinite is skipped (no update; its batch is
consumed) and counted (``skipped_steps`` in train_log.csv); ``--train.max_bad_steps`` of them
in a row stop the run with ``NonFiniteLossError``, naming the step and the last good
checkpoint. Resuming refuses options that would change what the run is (``check_resume``):
only the fields of ``RESUMABLE`` may differ from its ``config.json``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from discdiff.typing import unchecked
from examples import distributed as D
from examples.backbone import (
    TrainedRun,
    build_model,
    factory_kwargs,
    load_trained,
    resolve_factory,
)
from examples.checkpoint import load_checkpoint
from examples.config import Config, load_config, parse_args
from examples.ema import update_ema
from examples.metrics import MetricsLogger
from examples.objectives import Objective
from examples.run import (
    RESUMABLE,
    Run,
    build_run,
    check_resume,
    check_run_dir,
    diffusion_config,
    lr_multiplier,
    resolve_config,
    restore_run,
    save_run,
    total_steps,
    write_json,
    write_records,
)
from examples.validation import autocast, evaluate_bound, validation_seed
from examples.validation import batch_kwargs as _batch_kw

__all__ = [
    "RESUMABLE",
    "NonFiniteLossError",
    "TrainResult",
    "TrainedRun",
    "autocast",
    "build_model",
    "check_resume",
    "configure_threads",
    "diffusion_config",
    "evaluate_bound",
    "factory_kwargs",
    "format_loss",
    "load_trained",
    "lr_multiplier",
    "main",
    "resolve_config",
    "resolve_factory",
    "train",
]



class NonFiniteLossError(RuntimeError):
    """``train.max_bad_steps`` steps in a row had a NaN or infinite loss or gradient."""


# --- small pieces --------------------------------------------------------------------------------


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


def _mean_loss(objective: Objective, per_token: Tensor, mask: Tensor | None) -> Tensor:
    """The mean per-token loss over the real tokens of a micro-batch (all of them when packed).

    Padded positions are selected away (not multiplied by 0), so whatever they hold is ignored.
    """
    keep = None if mask is None else objective.token_mask(mask)
    held = getattr(objective, "held_clean", None)  # clean context: no loss there, not counted
    if held is not None:
        keep = ~held if keep is None else keep & ~held
    if keep is None:
        return per_token.float().mean()
    return torch.where(keep, per_token.float(), 0.0).sum() / keep.sum().clamp_min(1)


def format_loss(loss: float, objective: str) -> str:
    """A loss as printed: distillation losses (DCD, SDTT: KL divergences between a student and
    a teacher that starts as its copy, 1e-9 to 1e-6 nats per token on the demo) in scientific
    notation, where four decimals would print 0.0000; others with four decimals."""
    return f"{loss:.3e}" if objective in ("dcd", "sdtt") else f"{loss:.4f}"


def _progress_line(step: int, total: int, loss: str, phase: str, lr: float, tok_s: float,
                   elapsed: float) -> str:  # fmt: skip
    return (f"step {step}/{total} ({100 * step / total:.0f} %): loss {loss} [{phase}], lr "
            f"{lr:.3g}, {tok_s:,.0f} tokens/s, {elapsed:.0f} s")  # fmt: skip


# --- one optimizer step -----------------------------------------------------------------------


@dataclass(frozen=True)
class _StepOutcome:
    loss: float
    grad_norm: float
    lr: float
    finite: bool


def _step(run: Run) -> _StepOutcome:
    """Forward and backward over the accumulation steps of ``run.step``, then the update —
    unless the loss or the gradient norm is NaN or infinite: then no update (the gradients are
    dropped; the batch stays consumed) and ``finite`` is False."""
    cfg, info, model = run.cfg, run.info, run.model
    total_loss = torch.zeros((), device=info.device)
    for index in range(run.accum):
        batch = run.iterator.next_batch().to(info.device, non_blocking=True)
        t = _times(run.objective, run.micro, info, run.accum, index, cfg.train.seed, run.step,
                   cfg.duo.eps)  # fmt: skip
        sync = index == run.accum - 1 or not info.enabled or cfg.train.fsdp
        ctx = contextlib.nullcontext() if sync else model.no_sync()  # type: ignore[operator]
        # The loop checks the loss and gradient norm of every step itself (one host sync it
        # makes anyway) and skips a non-finite step; the library's NaN scans of the denoiser's
        # output would raise first (on a GPU: a device assertion that ends the process).
        with ctx, unchecked():
            with autocast(info.device, cfg.train.precision):
                per_token = run.objective.loss(model, batch.x_0, step=run.step, t=t,
                                               generator=run.noise, **_batch_kw(batch))  # fmt: skip
            loss = _mean_loss(run.objective, per_token, batch.mask) / run.accum
            loss.backward()
        total_loss += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    mean_loss, norm = float(D.all_reduce_mean(total_loss)), float(grad_norm)
    step_lr = run.scheduler.get_last_lr()[0]
    finite = math.isfinite(mean_loss) and math.isfinite(norm)  # the same on every rank
    if finite:
        run.optimizer.step()
        run.scheduler.step()
        update_ema(run.ema, D.unwrap(model))
    run.optimizer.zero_grad(set_to_none=True)
    if finite:
        run.step += 1
        run.objective.after_step(run.step - 1, D.unwrap(model), run.ema)
    return _StepOutcome(mean_loss, norm, step_lr, finite)


def _non_finite_message(run: Run, in_a_row: int, outcome: _StepOutcome) -> str:
    ckpt = (f"{run.checkpoints.path} (step {run.last_saved})" if run.last_saved is not None
            else "none yet (no checkpoint was written)")  # fmt: skip
    return (
        f"step {run.step + 1}: the loss ({outcome.loss}) or gradient norm ({outcome.grad_norm}) "
        f"was NaN or infinite in {in_a_row} steps in a row (train.max_bad_steps = "
        f"{run.cfg.train.max_bad_steps}); each was skipped, and the run stops here. Last good "
        f"checkpoint: {ckpt}. Likely causes: a learning rate too high or a warm-up too short "
        f"(lr {outcome.lr:.3g}, train.warmup {run.cfg.train.warmup}), bf16 overflow (try "
        "--train.precision fp32), a backbone returning inf or NaN logits, or bad input data"
    )


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
    complete: bool = False
    """A resumed run that had already reached its last step: nothing was run or written."""
    total_steps: int = 0
    skipped_steps: int = 0
    """Steps skipped in this invocation for a NaN or infinite loss or gradient."""
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    num_parameters: int = 0
    model: nn.Module | None = None
    """The trained module (raw weights; unwrapped from DDP; still sharded under FSDP)."""


class _Progress:
    """A bar on a terminal; in a log file or a pipe (no "\\r"), a plain line every
    ``progress_every`` steps and one per validation; nothing with ``--train.progress false``."""

    def __init__(self, run: Run) -> None:
        tc = run.cfg.train
        self.bar: Any = None
        self.plain = run.info.is_main and tc.progress and not sys.stderr.isatty()
        self.every = tc.progress_every if tc.progress_every is not None else tc.log_every
        if tc.progress and run.info.is_main and not self.plain:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.total_steps, initial=run.step, desc=f"train {tc.objective}",
                            unit="step", dynamic_ncols=True, file=sys.stderr)  # fmt: skip

    def step(self, run: Run, loss: str, lr: float, tok_s: float, elapsed: float) -> None:
        phase = run.objective.phase(run.step - 1)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=loss, phase=phase, tok_s=f"{tok_s:,.0f}", refresh=False)
        elif self.plain and (run.step % self.every == 0 or run.step == run.total_steps):
            print(_progress_line(run.step, run.total_steps, loss, phase, lr, tok_s, elapsed),
                  file=sys.stderr, flush=True)  # fmt: skip

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        elif self.plain:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _validate(run: Run, logger: MetricsLogger, result: TrainResult) -> dict[str, Any]:
    tc = run.cfg.train
    with unchecked():  # weights gone non-finite log a NaN bound; the training steps decide
        res = evaluate_bound(  # on the EMA weights
            run.objective, run.ema.module, run.data.val, batch_size=run.micro,
            max_sequences=tc.eval_sequences, seed=validation_seed(run.cfg),
            device=run.info.device, precision=tc.precision, info=run.info,
        )  # fmt: skip
    res["step"] = run.step
    logger.log("val", run.step, nelbo=res["nelbo"], nelbo_se=res["nelbo_se"], ppl=res["ppl"],
               tokens=res["tokens"], seed=res["seed"], **res["terms"])  # fmt: skip
    result.val.append(res)
    return res


def _loop(run: Run, logger: MetricsLogger, result: TrainResult,
          on_step: Callable[[int, float], None] | None) -> None:  # fmt: skip
    tc = run.cfg.train
    tokens_per_step = tc.batch_size * run.cfg.data.seq_len
    progress = _Progress(run)
    start, steps_this_run, bad_in_row = time.perf_counter(), 0, 0
    run.model.train()
    try:
        while run.step < run.total_steps:
            t0 = time.perf_counter()
            outcome = _step(run)
            if not outcome.finite:
                result.skipped_steps += 1
                bad_in_row += 1
                if bad_in_row >= tc.max_bad_steps:
                    raise NonFiniteLossError(_non_finite_message(run, bad_in_row, outcome))
                continue
            bad_in_row, steps_this_run = 0, steps_this_run + 1
            result.losses.append(outcome.loss)
            if on_step is not None:
                on_step(run.step, outcome.loss)
            tok_s = tokens_per_step / (time.perf_counter() - t0)
            elapsed = run.elapsed_before + time.perf_counter() - start
            progress.step(run, format_loss(outcome.loss, tc.objective), outcome.lr, tok_s, elapsed)
            step, last = run.step, run.step == run.total_steps
            if step % tc.log_every == 0 or last:
                logger.log("train", step, phase=run.objective.phase(step - 1), loss=outcome.loss,
                           lr=outcome.lr, grad_norm=outcome.grad_norm, tokens_per_s=tok_s,
                           elapsed_s=elapsed, skipped_steps=result.skipped_steps)  # fmt: skip
            if step % tc.eval_every == 0 or last:
                res = _validate(run, logger, result)
                progress.write(f"step {step}: validation NELBO {res['nelbo']:.4f} ± "
                               f"{res['nelbo_se']:.4f} nats/token, PPL <= {res['ppl']:.2f}")
            out_of_time = tc.max_time_s is not None and time.perf_counter() - start > tc.max_time_s
            stop = D.any_rank(out_of_time, run.info.device) or (
                tc.stop_after is not None and steps_this_run >= tc.stop_after)  # fmt: skip
            if step % tc.ckpt_every == 0 or last or stop:
                save_run(run, run.elapsed_before + time.perf_counter() - start)
            if stop and not last:
                result.stopped_early = True
                if out_of_time and not any(v["step"] == step for v in result.val):
                    _validate(run, logger, result)
                break
    finally:
        progress.close()
    result.wall_s = time.perf_counter() - start
    result.tokens_per_s = steps_this_run * tokens_per_step / max(result.wall_s, 1e-9)


def train(
    cfg: Config, *, info: D.DistInfo | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:  # fmt: skip
    """Run (or resume) training as configured; returns the losses and validation results.

    Resuming a run that has reached its last step returns at once with ``complete`` set
    (nothing is run or written). Raises ``NonFiniteLossError`` after ``train.max_bad_steps``
    steps in a row with a NaN or infinite loss or gradient."""
    cfg.validate()
    run_dir, resuming = check_run_dir(cfg)
    # A damaged checkpoint is named first (its checksum), then options that conflict with it.
    state = load_checkpoint(run_dir, full_tensors=False) if resuming else None
    saved = load_config(run_dir / "config.json") if resuming else None
    cfg = resolve_config(cfg, saved)
    if saved is not None:
        check_resume(saved, cfg, run_dir, int(state["step"]))
    info = info or D.init_distributed(cfg.train.device)
    autocast(info.device, cfg.train.precision)  # refuse bf16 on CPU before any work
    if state is not None and int(state["step"]) >= total_steps(cfg):
        return TrainResult(run_dir, int(state["step"]), complete=True,
                           total_steps=total_steps(cfg))  # fmt: skip
    run = build_run(cfg, info, run_dir, resuming)
    if state is not None:
        restore_run(run, state)
        del state
    write_records(run, resuming)
    logger = MetricsLogger(run_dir, enabled=info.is_main, tensorboard=cfg.train.tensorboard,
                           resume_step=run.step if resuming else None)  # fmt: skip
    result = TrainResult(run_dir, run.step, num_parameters=run.num_parameters,
                         total_steps=run.total_steps)  # fmt: skip
    try:
        _loop(run, logger, result, on_step)
    finally:
        logger.close()
    result.step = run.step
    result.model = run.model if cfg.train.fsdp else D.unwrap(run.model)
    if info.is_main:
        write_json(run_dir / "result.json", {
            "step": run.step, "stopped_early": result.stopped_early, "wall_s": result.wall_s,
            "tokens_per_s": result.tokens_per_s, "num_parameters": run.num_parameters,
            "skipped_steps": result.skipped_steps, "val": result.val[-1] if result.val else None,
        })  # fmt: skip
    return result


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
    except NonFiniteLossError as err:
        if info.is_main:
            print(f"examples.train: {err}", file=sys.stderr)
        raise SystemExit(3) from None
    finally:
        D.shutdown_distributed()
    if info.is_main:
        print(_summary(cfg, result))
    return result


def _summary(cfg: Config, result: TrainResult) -> str:
    """The last line of ``main``: what the run reached, or that it was already complete."""
    tc = cfg.train
    if result.complete:
        if tc.objective in ("dcd", "sdtt"):
            how = (f"A {tc.objective} run's length is {tc.objective}.rounds x "
                   f"{tc.objective}.steps_per_round, fixed at its start; to distil further, start "
                   f"a new run with this one as --{tc.objective}.teacher")  # fmt: skip
        else:
            how = (f"To train on, give more steps: python -m examples.train --train.out_dir "
                   f"{result.run_dir} --train.resume true --train.steps {2 * result.step}")
        return (f"{tc.objective}: the run in {result.run_dir} is complete (step {result.step} "
                f"of {result.total_steps}); nothing to do. {how}")  # fmt: skip
    msg = f"step {result.step}, {result.wall_s:.1f} s, {result.tokens_per_s:,.0f} tokens/s"
    if result.skipped_steps:
        msg += f", {result.skipped_steps} step(s) skipped for a NaN or infinite loss"
    last = result.val[-1] if result.val else None
    if last:
        msg += (f", validation NELBO {last['nelbo']:.4f} ± {last['nelbo_se']:.4f} (PPL <= "
                f"{last['ppl']:.2f}; seed {last['seed']})")  # fmt: skip
    if result.losses:
        msg += f", last loss {format_loss(result.losses[-1], tc.objective)}"
    return f"{tc.objective}: {msg}; outputs in {result.run_dir}"


if __name__ == "__main__":
    main()
