"""Typed configs for the example, presets that mirror the paper, and their CLI (tyro).

``Config`` groups seven dataclasses (model, data, train, duo, dcd, sdtt, sample); every field is
a flag ``--section.field value`` of the command line (``examples.cli``, built by tyro from the
field docstrings), which starts from ``--preset`` or ``--config run/config.json``.

Paper settings (Sahoo et al. 2025, Duo): sequence length 128 (LM1B, bert-base-uncased) or 1024
(OWT, GPT-2 BPE); global batch 512; AdamW lr 3e-4 with 2500 linear warm-up steps then constant;
1M steps; EMA 0.9999; DiT "small" (12 blocks, hidden 768, 12 heads); curriculum on the Gaussian
window gamma in [-3.55, -1.85] with tau = 1e-3 for the first 500k steps; DCD: 5 rounds of 10k
steps, lr 6e-5, EMA 0.999, gamma in [-4, -1], T = 512.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "PRESETS",
    "Config",
    "DCDConfig",
    "DataConfig",
    "DuoConfig",
    "ModelConfig",
    "SDTTConfig",
    "SampleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_args",
    "preset",
    "save_config",
]

OBJECTIVES = ("duo", "mdlm", "ar", "dcd", "sdtt")


@dataclass
class ModelConfig:
    """The backbone: a preset of ``discdiff.models.DiT`` plus optional overrides, or any
    module built by ``factory``."""

    preset: str = "small"
    """DiT size: tiny, small or medium (``DiT.from_preset``); the fields below override it."""
    hidden: int | None = None
    """Hidden size (none: the preset's)."""
    blocks: int | None = None
    """Number of transformer blocks (none: the preset's)."""
    heads: int | None = None
    """Attention heads (none: the preset's)."""
    cond_dim: int | None = None
    """Width of the noise-level conditioning (none: the preset's)."""
    dropout: float | None = None
    """Dropout probability (none: the preset's)."""
    factory: str = ""
    """``package.module:function`` building your own backbone instead of the DiT:
    ``function(vocab_size: int, causal: bool, **model_config) -> nn.Module``, called with the
    fields above that are set (preset, and the sizes that are not none) and ``options``."""
    options: str = ""
    """A JSON object of extra keyword arguments for ``factory`` (e.g. '{"layers": 2}')."""
    block_size: int | None = None
    """Block diffusion (BD3-LM, duo and mdlm): blocks of b tokens, each a diffusion given the
    clean blocks before it; b divides data.seq_len. None: one diffusion over the sequence."""


@dataclass
class DataConfig:
    source: str = "shakespeare"
    """Training text: a built-in corpus, a file or directory, or hf:openwebtext / hf:lm1b."""
    zero_shot: str = "milton"
    """A corpus never trained on, for zero-shot perplexity (empty string: none)."""
    tokenizer: str = "char"
    """byte, char, gpt2-bpe, bert-wordpiece, json or hub:<name>."""
    tokenizer_files: list[str] = field(default_factory=list)
    """Local files the tokenizer is built from (gpt2-bpe: vocab.json,merges.txt; json: one
    tokenizer.json)."""
    seq_len: int = 128
    """Tokens per sequence, L."""
    val_fraction: float = 0.05
    """Share of the documents held out for validation (chosen by a hash of their names)."""
    split_seed: int = 0
    """Seed of the train/validation split."""
    max_documents: int | None = None
    """Read at most this many documents (none: all)."""
    cache_dir: str | None = None
    """Where corpora and tokenised data are cached (none: $DISCDIFF_CACHE, else .cache/corpus)."""
    packing: bool = True
    """true: documents packed into full rows ("wrap"); false: one document per row, padded to
    seq_len, with a padding mask that keeps padding out of attention, loss and bound (the
    backbone must accept a ``padding_mask`` keyword, as the DiT does)."""
    labels: str = ""
    """Class labels for classifier-free guidance: genre (each play of the shakespeare corpus
    its First Folio genre: comedy, history or tragedy), folder (each file of a directory source
    its top-level folder) or empty (none). The DiT gets a label embedding; duo and mdlm only."""


@dataclass
class TrainConfig:
    objective: str = "duo"
    """duo (curriculum, then discrete), mdlm, ar or dcd (distil a trained Duo run)."""
    steps: int = 1_000_000
    """Optimizer steps (DCD runs dcd.rounds x dcd.steps_per_round instead)."""
    batch_size: int = 512
    """Global batch (all ranks and accumulation steps together)."""
    micro_batch: int | None = None
    """Per-rank batch per forward pass; gradient accumulation makes up the rest."""
    lr: float = 3e-4
    """Peak learning rate of AdamW (DCD uses dcd.lr)."""
    warmup: int = 2500
    """Steps of linear learning-rate warm-up."""
    lr_schedule: str = "constant"
    """constant or cosine (after warm-up)."""
    min_lr_ratio: float = 0.1
    """The cosine schedule's final learning rate, as a fraction of the peak."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.999
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this value."""
    ema: float = 0.9999
    """Decay of the weights' EMA, used for validation and sampling (DCD uses dcd.ema)."""
    seed: int = 1
    """Seed of the initial weights, the data order and the noise."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, float32 on CPU), fp32 or bf16 (CUDA only)."""
    fsdp: bool = False
    """Shard the model with FSDP2 under torchrun (else DDP)."""
    compile: bool | None = None
    """torch.compile the model, in place (none: on CUDA, not on the CPU, where compiling takes
    longer than a short run saves)."""
    log_every: int = 50
    """Steps between rows of train_log.csv (and TensorBoard)."""
    eval_every: int = 10_000
    """Steps between validation bounds (one also runs at the end)."""
    eval_sequences: int = 2048
    """Validation sequences per evaluation."""
    ckpt_every: int = 5000
    """Steps between checkpoints (one is also written at the end)."""
    out_dir: str = "runs/train"
    """The run directory: config.json, tokenizer, checkpoint.pt and logs."""
    resume: bool = False
    """Continue the run in out_dir from its checkpoint (an error when out_dir holds none)."""
    overwrite: bool = False
    """Start afresh even if out_dir already holds a checkpoint (otherwise that is an error)."""
    max_time_s: float | None = None
    """Stop (with a checkpoint) once this much wall time has passed (none: no limit)."""
    stop_after: int | None = None
    """Stop (with a checkpoint) after this many steps in this invocation, e.g. to split a run."""
    progress: bool = True
    """Show progress: a bar when stderr is a terminal, otherwise (output to a file or a pipe) a
    plain line every progress_every steps; false: nothing until the end."""
    progress_every: int | None = None
    """Steps between the plain progress lines (none: log_every)."""
    tensorboard: bool = True
    """Also log to TensorBoard (needs the tensorboard package)."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda or cuda:N."""
    cond_dropout: float = 0.1
    """With data.labels: the probability that a row's label is replaced by the null label in
    training, so one model learns the conditional and the unconditional prediction."""
    max_bad_steps: int = 5
    """A step whose loss or gradient norm is NaN or infinite is skipped (no update) and
    counted; this many in a row stop the run with a message naming the step and the last
    good checkpoint."""


@dataclass
class DuoConfig:
    gamma_min: float = -3.55
    """Curriculum window: the smallest gamma (alpha_tilde^2 = sigmoid(-gamma); most signal)."""
    gamma_max: float = -1.85
    """Curriculum window: the largest gamma (least signal)."""
    tau: float = 1e-3
    """Softmax temperature of the relaxed latents softmax(w_t / tau)."""
    tau_end: float | None = None
    """Anneal log10(tau) linearly to log10(tau_end) by curriculum_end (none: constant tau)."""
    curriculum_end: int | None = None
    """Steps of the curriculum phase; 0 trains on the discrete process from the start (none:
    curriculum_fraction of train.steps, fixed as a step in the run's config.json when it
    starts). A Duo run whose curriculum covers every step is refused."""
    curriculum_fraction: float = 0.5
    """The curriculum phase as a fraction of train.steps, when curriculum_end is none (the
    paper: 500k of 1M steps); in [0, 1)."""
    top_k: int | None = None
    """Feed the denoiser only the top-k coordinates of each latent (Duo++; none: all K)."""
    eps: float = 1e-3
    """The smallest training time: t is drawn on [eps, 1]."""
    clean_context: float | None = None
    """Share of training steps whose rows keep clean context (a prefix, a middle span, or both
    ends around a gap; ``discdiff.context.random_clean_mask``), seen at noise level 0 and
    without loss there, so that prompts sample the conditional law (``examples.sample
    --prompt``). Needs a backbone that reads per-token noise levels (the DiT does); 0 turns it
    off. None: 0.1 for the DiT, 0 for a ``--model.factory`` backbone (fixed in the run's
    config.json)."""


@dataclass
class DCDConfig:
    teacher: str = ""
    """Run directory of the trained Duo teacher; the run takes its data and tokenizer from it
    unless --data.* flags say otherwise."""
    rounds: int = 5
    """Distillation rounds; round n uses dt = 2^n / T."""
    steps_per_round: int = 10_000
    """Optimizer steps per round."""
    lr: float = 6e-5
    """Learning rate of the student."""
    ema: float = 0.999
    """Decay of the student's EMA."""
    gamma_min: float = -4.0
    """Distillation window: the smallest gamma."""
    gamma_max: float = -1.0
    """Distillation window: the largest gamma."""
    T: int = 512
    """Steps of the first round's discretisation (dt = 1 / T)."""
    divergence: str = "kl_student_teacher"
    """kl_student_teacher: KL(p_student || p_teacher) (the paper's) or kl_teacher_student."""
    refresh_from: str = "ema"
    """Teacher update at each round boundary: ema or student."""


@dataclass
class SDTTConfig:
    """Self-distillation through time of an MDLM run (Concepts §6; the paper's comparator). The
    paper distils for 7 rounds of 10k steps with m = 2 from T = 1024 (1024 -> 8 steps), the
    reverse KL, the teacher refreshed from the student's raw weights."""

    teacher: str = ""
    """Run directory of the trained MDLM teacher."""
    rounds: int = 7
    """Distillation rounds; round n's student takes steps of teacher_steps^(n + 1) / T."""
    steps_per_round: int = 10_000
    """Optimizer steps per round."""
    lr: float = 6e-5
    """Learning rate of the student."""
    ema: float = 0.999
    """Decay of the student's EMA."""
    teacher_steps: int = 2
    """m: the teacher steps each student step learns (round n: dt = m^n / T)."""
    T: int = 1024
    """Sampling steps of the original teacher; after the rounds the student is distilled for
    T / teacher_steps^rounds steps."""
    divergence: str = "kl_student_teacher"
    """kl_student_teacher: KL(p_student || p_target) (the paper's best) or kl_teacher_student."""
    refresh_from: str = "student"
    """Teacher update at each round boundary: student (the paper's) or ema."""


@dataclass
class SampleConfig:
    steps: list[int] = field(default_factory=lambda: [1024, 256, 64, 16, 8])
    """Sampling step counts to evaluate."""
    num_samples: int = 64
    """Samples per step count."""
    batch_size: int = 32
    """Samples drawn at once."""
    tail: str = "greedy"
    """How a sample ends: greedy (the paper's: N + 1 calls), map or none (N calls)."""
    top_p: float | None = None
    """Nucleus sampling: keep the most probable tokens holding this much probability (none:
    off)."""
    seed: int = 0
    """Seed of the samples."""


@dataclass
class Config:
    preset: str = "owt"
    """The preset the config starts from: cpu-demo, lm1b or owt (the paper's two)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    duo: DuoConfig = field(default_factory=DuoConfig)
    dcd: DCDConfig = field(default_factory=DCDConfig)
    sdtt: SDTTConfig = field(default_factory=SDTTConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> Config:
        t = self.train
        if t.objective not in OBJECTIVES:
            raise ValueError(f"train.objective must be one of {OBJECTIVES}, got {t.objective!r}")
        if t.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"train.precision must be auto, fp32 or bf16, got {t.precision!r}")
        if t.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule must be constant or cosine, got {t.lr_schedule!r}")
        if t.steps < 1 or t.batch_size < 1:
            raise ValueError("train.steps and train.batch_size must be >= 1")
        if t.micro_batch is not None and (t.micro_batch < 1 or t.batch_size % t.micro_batch):
            raise ValueError(
                f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch "
                f"({t.micro_batch})"
            )
        if self.dcd.divergence not in ("kl_student_teacher", "kl_teacher_student"):
            raise ValueError(f"dcd.divergence: unknown value {self.dcd.divergence!r}")
        if self.dcd.refresh_from not in ("ema", "student"):
            raise ValueError(f"dcd.refresh_from: unknown value {self.dcd.refresh_from!r}")
        if t.objective == "dcd" and not self.dcd.teacher:
            raise ValueError("train.objective=dcd needs --dcd.teacher RUN_DIR (a trained Duo run)")
        if t.objective == "dcd" and t.fsdp:
            raise ValueError("DCD keeps a full copy of the teacher: use DDP, not FSDP, for it")
        sd = self.sdtt
        if sd.divergence not in ("kl_student_teacher", "kl_teacher_student"):
            raise ValueError(f"sdtt.divergence: unknown value {sd.divergence!r}")
        if sd.refresh_from not in ("ema", "student"):
            raise ValueError(f"sdtt.refresh_from: unknown value {sd.refresh_from!r}")
        if sd.teacher_steps < 2 or sd.rounds < 1 or sd.teacher_steps**sd.rounds > sd.T:
            raise ValueError(
                f"sdtt: teacher_steps ({sd.teacher_steps}) must be >= 2, rounds ({sd.rounds}) "
                f">= 1 and teacher_steps**rounds at most T ({sd.T})"
            )
        if t.objective == "sdtt" and not sd.teacher:
            raise ValueError("train.objective=sdtt needs --sdtt.teacher RUN_DIR (a trained MDLM)")
        if t.objective == "sdtt" and t.fsdp:
            raise ValueError("SDTT keeps a full copy of the teacher: use DDP, not FSDP, for it")
        if self.data.labels not in ("", "genre", "folder"):
            raise ValueError(f"data.labels: unknown value {self.data.labels!r} (genre, folder)")
        if self.data.labels and t.objective not in ("duo", "mdlm"):
            raise ValueError(f"data.labels trains a label-conditioned duo or mdlm model, not "
                             f"train.objective={t.objective}")  # fmt: skip
        if not 0.0 <= t.cond_dropout <= 1.0:
            raise ValueError(f"train.cond_dropout must lie in [0, 1], got {t.cond_dropout}")
        if self.data.seq_len < 2:
            raise ValueError(f"data.seq_len must be >= 2, got {self.data.seq_len}")
        b = self.model.block_size
        if b is not None and (t.objective not in ("duo", "mdlm") or b < 1 or self.data.seq_len % b):
            raise ValueError(f"model.block_size={b} needs train.objective duo or mdlm and must "
                             f"divide data.seq_len={self.data.seq_len}")  # fmt: skip
        if t.max_bad_steps < 1:
            raise ValueError(f"train.max_bad_steps must be >= 1, got {t.max_bad_steps}")
        d = self.duo
        if not 0.0 <= d.curriculum_fraction < 1.0:
            raise ValueError(f"duo.curriculum_fraction must lie in [0, 1), got "
                             f"{d.curriculum_fraction}")  # fmt: skip
        if d.curriculum_end is not None and d.curriculum_end < 0:
            raise ValueError(f"duo.curriculum_end must be >= 0 or none, got {d.curriculum_end}")
        if t.progress_every is not None and t.progress_every < 1:
            raise ValueError(f"train.progress_every must be >= 1 or none, got {t.progress_every}")
        sc = self.sample
        for name in ("num_samples", "batch_size"):
            if getattr(sc, name) < 1:
                raise ValueError(f"sample.{name} must be >= 1, got {getattr(sc, name)}")
        if not sc.steps or min(sc.steps) < 1:
            raise ValueError(f"sample.steps must be step counts >= 1, got {sc.steps}")
        return self


def _owt() -> Config:
    return Config(
        preset="owt",
        model=ModelConfig(preset="small"),
        data=DataConfig(
            source="hf:openwebtext", zero_shot="", tokenizer="hub:gpt2", seq_len=1024,
        ),  # fmt: skip
        train=TrainConfig(
            steps=1_000_000, batch_size=512, lr=3e-4, warmup=2500, ema=0.9999,
            eval_every=10_000, ckpt_every=5000, out_dir="runs/owt",
        ),  # fmt: skip
        duo=DuoConfig(gamma_min=-3.55, gamma_max=-1.85, tau=1e-3, curriculum_fraction=0.5),
        dcd=DCDConfig(rounds=5, steps_per_round=10_000, lr=6e-5, ema=0.999, gamma_min=-4.0,
                      gamma_max=-1.0, T=512),  # fmt: skip
        sample=SampleConfig(steps=[1024, 256, 64, 32, 16, 8], num_samples=1024),
    )


def _lm1b() -> Config:
    cfg = _owt()
    cfg.preset = "lm1b"
    cfg.data = DataConfig(source="hf:lm1b", zero_shot="", tokenizer="hub:bert-base-uncased",
                          seq_len=128)  # fmt: skip
    cfg.train.out_dir = "runs/lm1b"
    cfg.sample = SampleConfig(steps=[128, 64, 32, 16, 8], num_samples=1024)
    return cfg


def _cpu_demo() -> Config:
    # Sized for ~3 CPU minutes per model on 2 cores: character tokens (K = 87), L = 128, a
    # 4-block DiT of width 128. The Gaussian windows are moved so that alpha = T(alpha_tilde)
    # spans the same range at K = 87 as the paper's windows do at K = 50257: curriculum
    # [-3.55, -1.85] -> alpha in [0.049, 0.945] becomes [-2.88, 0.53]; DCD [-4, -1] -> alpha in
    # [0.006, 0.999] becomes [-3.5, 3.4]. DCD is compressed to 4 rounds of 50 steps starting from
    # T = 32 (dt = 1/32 ... 1/4) instead of 5 x 10k from T = 512, so that a few minutes of
    # distillation already reach the step sizes of few-step sampling. SDTT likewise: 4 rounds of
    # 50 steps from T = 128 (its last student is distilled for 128 / 2^4 = 8 steps) instead of
    # 7 x 10k from T = 1024.
    return Config(
        preset="cpu-demo",
        model=ModelConfig(preset="tiny", hidden=128, blocks=4, heads=4, cond_dim=64, dropout=0.0),
        data=DataConfig(source="shakespeare", zero_shot="milton", tokenizer="char", seq_len=128),
        train=TrainConfig(
            steps=600, batch_size=32, lr=1e-3, warmup=50, ema=0.99, log_every=20, eval_every=200,
            eval_sequences=256, ckpt_every=100, out_dir="runs/cpu-demo", grad_clip=1.0,
        ),  # fmt: skip
        duo=DuoConfig(gamma_min=-2.88, gamma_max=0.53, tau=1e-3, curriculum_fraction=0.5),
        dcd=DCDConfig(rounds=4, steps_per_round=50, lr=1e-4, ema=0.99, gamma_min=-3.5,
                      gamma_max=3.4, T=32),  # fmt: skip
        sdtt=SDTTConfig(rounds=4, steps_per_round=50, lr=1e-4, ema=0.99, T=128),
        sample=SampleConfig(steps=[64, 16, 8, 4], num_samples=32, batch_size=32),
    )


PRESETS = {"cpu-demo": _cpu_demo, "lm1b": _lm1b, "owt": _owt}


def preset(name: str) -> Config:
    """A fresh config for a named preset (``cpu-demo``, ``lm1b``, ``owt``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


# --- serialisation -----------------------------------------------------------------------------


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown config keys in {where or 'the config'}: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    return _from_dict(Config, data, "").validate()


def save_config(cfg: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return path


def load_config(path: str | Path) -> Config:
    """The config saved at ``path`` (a ``config.json`` or a run directory holding one); errors
    name the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config at {path}")
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return config_from_dict(data)
    except (ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError included
        raise ValueError(f"{path} is not a valid config: {err}") from None


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with ``{"section.field": value}`` overrides applied."""
    sections = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    changed: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in sections or not hasattr(sections[section], name):
            raise ValueError(f"unknown config field {key!r}")
        changed.setdefault(section, {})[name] = value
    return replace(
        cfg, **{s: replace(sections[s], **vals) for s, vals in changed.items()}
    ).validate()


# --- command line ------------------------------------------------------------------------------


def parse_args(
    argv: Sequence[str] | None = None, *, default_preset: str = "cpu-demo", prog: str | None = None,
    description: str | None = None,
) -> Config:  # fmt: skip
    """Parse ``argv`` into a validated ``Config``: ``examples.cli.parse_args``."""
    from examples.cli import parse_args as parse

    return parse(argv, default_preset=default_preset, prog=prog, description=description)
