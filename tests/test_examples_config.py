"""examples.config: presets that mirror the paper, CLI overrides, errors, JSON round trip."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from examples.config import (
    config_from_dict,
    load_config,
    parse_args,
    preset,
    save_config,
)
from examples.run import resolve_config


def test_presets_mirror_the_paper():
    owt, lm1b, demo = preset("owt"), preset("lm1b"), preset("cpu-demo")
    assert (owt.data.seq_len, lm1b.data.seq_len) == (1024, 128)
    for cfg in (owt, lm1b):
        t = cfg.train
        assert (t.batch_size, t.lr, t.warmup, t.steps) == (512, 3e-4, 2500, 1_000_000)
        assert (cfg.duo.tau, resolve_config(cfg).duo.curriculum_end) == (1e-3, 500_000)
        assert cfg.model.preset == "small"
        d = cfg.dcd
        assert (d.rounds, d.steps_per_round, d.lr, d.ema, d.gamma_min, d.gamma_max, d.T) == (
            5, 10_000, 6e-5, 0.999, -4.0, -1.0, 512,
        )  # fmt: skip
    assert (owt.duo.gamma_min, owt.duo.gamma_max) == (-3.55, -1.85)
    assert demo.data.tokenizer == "char" and demo.train.steps < 10_000


def test_cli_overrides_dotted_and_flat():
    cfg = parse_args([
        "--preset", "owt", "--train.lr", "1e-4", "--seq_len", "64", "--sample.steps", "8,4",
        "--duo.top_k", "none", "--train.fsdp", "true", "--model.hidden", "256",
    ])  # fmt: skip
    assert cfg.preset == "owt"
    assert cfg.train.lr == 1e-4 and cfg.data.seq_len == 64 and cfg.sample.steps == [8, 4]
    assert cfg.duo.top_k is None and cfg.train.fsdp is True and cfg.model.hidden == 256
    assert cfg.train.batch_size == 512  # untouched fields keep the preset's values


def test_unknown_preset_field_or_value_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--preset", "gpt5"])
    assert "unknown preset 'gpt5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--train.nonsense", "1"])
    with pytest.raises(SystemExit):
        parse_args(["--train.fsdp", "maybe"])
    with pytest.raises(SystemExit):
        parse_args(["--train.objective", "gan"])
    assert "train.objective must be one of" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


def test_json_round_trip_and_resume_from_saved(tmp_path):
    cfg = parse_args(["--preset", "cpu-demo", "--train.lr", "5e-4",
                      "--train.out_dir", str(tmp_path)])  # fmt: skip
    save_config(cfg, tmp_path / "config.json")
    assert load_config(tmp_path) == cfg
    assert config_from_dict(asdict(cfg)) == cfg
    resumed = parse_args(["--train.out_dir", str(tmp_path), "--train.resume", "true"])
    assert resumed.train.lr == 5e-4 and resumed.train.resume
    with pytest.raises(ValueError, match="unknown config keys"):
        config_from_dict({**asdict(cfg), "extra": 1})
