"""Duo's uniform-state samplers behind diffusers' scheduler contract: ``DuoScheduler``.

diffusers keeps the loop in the pipeline and one step in the scheduler::

    scheduler = DuoScheduler()                      # log-linear schedule, ancestral, greedy tail
    scheduler.set_timesteps(num_inference_steps)    # the network calls (NFE) of a sample
    z = torch.randint(0, K, (B, L), generator=g)    # z_1 ~ Uniform
    for i in scheduler.timesteps:
        logits = model(z, scheduler.sigmas[i].expand(B))
        z = scheduler.step(logits, i, z, generator=g).prev_sample

Each ``step`` is the step ``discdiff.samplers.sample_uniform`` takes at that call (the
ancestral step, the Ψ step with ``kappa``, then the tail), drawn in the same order from the
same generator: the loop above gives ``sample_uniform``'s tokens for the same seed.

``num_inference_steps`` counts network calls, as diffusers' pipelines do: with a tail
("greedy" or "map") that is N reverse steps plus the tail call, N + 1 = ``nfe(N, tail)``, so
``set_timesteps(N + 1)`` matches ``sample_uniform(steps=N)``; with tail "none" it is N.

``parameterization="posterior"`` converts the logits of a model trained with cross-entropy
(transformers' DiffusionGemma) to x_hat before each step (``discdiff.parameterization``).
Needs ``diffusers >= 0.42`` (``pip install 'discdiff[hf]'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from discdiff import config as dd_config
from discdiff.denoise import noise_level
from discdiff.parameterization import PARAMETERIZATIONS, x_hat_from_posterior
from discdiff.samplers.grid import T_MIN, TAILS, TimeGrid
from discdiff.samplers.parts import Finish, Prediction
from discdiff.samplers.uniform import UniformStep
from discdiff.schedules import LogLinearSchedule

__all__ = ["DuoScheduler", "DuoSchedulerOutput"]


@dataclass
class DuoSchedulerOutput(BaseOutput):
    """``prev_sample`` (B, L) the tokens after the step; ``pred_logits`` (B, L, K) the model's
    logits as given (what DiffusionGemma's pipeline feeds back as self-conditioning)."""

    prev_sample: torch.LongTensor
    pred_logits: torch.Tensor


def _config_of(value: Any, name: str) -> dict[str, Any] | None:
    """A schedule as its JSON-safe config dict (objects via ``to_dict``)."""
    if value is None or isinstance(value, dict):
        return value
    if hasattr(value, "to_dict"):
        return dd_config.to_dict(value)
    raise ValueError(
        f"{name} must be a discdiff object with to_dict() (e.g. LogLinearSchedule()) or its "
        f"config dict, got {type(value).__name__}"
    )


class DuoScheduler(SchedulerMixin, ConfigMixin):
    """Duo's uniform-state sampler, one diffusers ``step`` per network call.

    Config (all JSON-safe, saved by ``save_config``): ``schedule`` a discdiff schedule or its
    config dict (default ``LogLinearSchedule()``); ``kappa`` None (ancestral) or a number in
    [0, 1] (the Ψ step, kappa constant over the grid); ``tail`` "greedy" (the paper's argmax
    x_hat), "map" (the mode of the denoising posterior) or "none" (exact ancestral to t = 0);
    ``t_min`` where a tail call is made; ``parameterization`` "x_hat" (a Duo / UDLM model) or
    "posterior" (a model trained with cross-entropy); ``num_inference_steps`` the default NFE.

    After ``set_timesteps(n)``: ``timesteps`` = arange(n), the indices ``step`` takes;
    ``sigmas`` (n,) float32, the noise level -log alpha_t the model is shown at each call (the
    one ``sample_uniform`` shows it); ``times`` (n,) float64, the time t of each call.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        schedule: dict[str, Any] | Any | None = None,
        kappa: float | None = None,
        tail: str = "greedy",
        t_min: float = T_MIN,
        parameterization: str = "x_hat",
        num_inference_steps: int = 64,
    ) -> None:
        schedule_config = _config_of(schedule, "schedule") or LogLinearSchedule().to_dict()
        if kappa is not None and (isinstance(kappa, bool) or not isinstance(kappa, (int, float))):
            raise ValueError(
                f"kappa must be None (ancestral) or a number in [0, 1] (the Psi step), "
                f"got {kappa!r}"
            )
        if tail not in TAILS:
            raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS} (what the model's logits "
                f"mean), got {parameterization!r}"
            )
        # the config holds dicts, not objects, so that save_config writes JSON
        self.register_to_config(schedule=schedule_config)
        self.schedule = dd_config.from_dict(schedule_config)
        self.uniform_step = UniformStep(kappa=kappa)  # checks 0 <= kappa <= 1
        self.finish = None if tail == "none" else Finish(tail)
        self.set_timesteps(num_inference_steps)

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        """Plan a sample of ``num_inference_steps`` network calls (the tail call included)."""
        tail = self.config.tail
        steps = int(num_inference_steps) - (tail != "none")
        if steps < 1:
            need = 1 if tail == "none" else 2
            raise ValueError(
                f"num_inference_steps counts network calls; tail={tail!r} needs at least {need}, "
                f"got {num_inference_steps}"
            )
        self.num_inference_steps = int(num_inference_steps)
        self.grid = TimeGrid.build(self.schedule, steps, tail=tail, t_min=self.config.t_min)
        # a call per step at its start time, and the tail's call at the grid's last time
        calls = range(steps + 1) if tail != "none" else range(steps)
        self.timesteps = torch.arange(self.num_inference_steps, device=device)
        self.times = torch.tensor([self.grid.t[j] for j in calls], dtype=torch.float64)
        cpu = torch.device("cpu")
        sigmas = [noise_level(self.grid.alpha[j], 1, cpu)[0] for j in calls]
        self.sigmas = torch.stack(sigmas).to(device)

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: torch.LongTensor,
        *,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DuoSchedulerOutput | tuple[Tensor, Tensor]:
        """One call's step: ``model_output`` (B, L, K) logits of the model at ``sample`` (B, L)
        and level ``sigmas[timestep]``; returns the tokens after the reverse step (or, at the
        tail call, the tail's tokens at t = 0) and the logits as given."""
        i = int(timestep)
        if not 0 <= i < self.num_inference_steps:
            raise ValueError(
                f"timestep must be an index in [0, {self.num_inference_steps}) of "
                f"scheduler.timesteps (set by set_timesteps), got {timestep!r}"
            )
        logits = model_output
        if self.config.parameterization == "posterior":
            sigma = self.sigmas[i].to(model_output.device).expand(sample.shape[0])
            logits = x_hat_from_posterior(logits, sample, sigma, logits.shape[-1])
        pred = Prediction(logits)
        if i < self.grid.steps:
            z = self.uniform_step(pred, sample, self.grid.interval(i), generator)
        else:
            assert self.finish is not None
            z = self.finish(pred, sample, self.grid.alpha[-1])
        if not return_dict:
            return z, model_output
        return DuoSchedulerOutput(prev_sample=z, pred_logits=model_output)

    def __len__(self) -> int:
        return self.num_inference_steps
