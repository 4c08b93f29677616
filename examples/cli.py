"""The training command line, built by tyro from the config dataclasses of ``examples.config``.

Every field is a flag ``--section.field VALUE`` described by its docstring (or ``--field VALUE``
where the name is unique); booleans take ``true``/``false``, optional fields ``none``, lists
comma-separated values. The starting point is ``--preset``, ``--config CONFIG_JSON``, or with
``--train.resume true`` the run directory's saved config.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from examples.config import PRESETS, Config, load_config, preset

__all__ = ["load_teacher_config", "parse_args"]


UNIFORM_OBJECTIVES = ("duo", "dcd")
"""Runs whose model is a uniform-state denoiser: what DCD can distil."""


def load_teacher_config(teacher: str | Path) -> Config:
    """The config of a DCD teacher's run directory; refuses a run that is not uniform-state."""
    folder = Path(teacher)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"--dcd.teacher {teacher}: no run there (expected the config.json and checkpoint "
            "that examples.train writes into its --train.out_dir)"
        )
    try:
        cfg = load_config(folder)
    except ValueError as err:
        raise ValueError(f"--dcd.teacher {teacher}: {err}") from None
    if cfg.train.objective not in UNIFORM_OBJECTIVES:
        raise ValueError(
            f"--dcd.teacher {teacher} holds a run of objective {cfg.train.objective!r}; DCD "
            "distils a uniform-state model: give a duo run (or a dcd student) as --dcd.teacher"
        )
    return cfg


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _registry() -> Any:
    """tyro's parsing of our values: booleans ``true``/``false``, optional fields ``none``,
    lists comma-separated (``--sample.steps 64,8``), as on the command lines of the docs."""
    from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec

    registry = ConstructorRegistry()

    def spec(metavar: str, parse: Any, kind: Any, show: Any) -> Any:
        return PrimitiveConstructorSpec(
            nargs=1, metavar=metavar, instance_from_str=lambda args: parse(args[0]),
            is_instance=lambda x: isinstance(x, kind), str_from_instance=lambda x: [show(x)],
        )  # fmt: skip

    def none(text: str) -> None:
        if text.lower() != "none":
            raise ValueError(f"expected none, got {text!r}")

    @registry.primitive_rule
    def rule(info: Any) -> Any:
        if info.type is bool:
            return spec("true|false", _parse_bool, bool, lambda x: str(x).lower())
        if info.type is type(None):
            return spec("none", none, type(None), lambda x: "none")
        if info.type_origin is list:
            (item,) = typing.get_args(info.type)
            return spec(f"{item.__name__.upper()},...",
                        lambda s: [item(p) for p in s.split(",") if p.strip()], list,
                        lambda x: ",".join(map(str, x)) or "''")  # fmt: skip
        return None

    return registry


def _dotted(argv: Sequence[str]) -> list[str]:
    """``--field`` -> ``--section.field`` for a field name unique across the sections."""
    owners: dict[str, list[str]] = {}
    for section in fields(Config):
        if dataclasses.is_dataclass(section.default_factory):  # type: ignore[arg-type]
            for f in fields(section.default_factory):  # type: ignore[arg-type]
                owners.setdefault(f.name, []).append(section.name)
    out = []
    for arg in argv:
        name, eq, value = arg[2:].partition("=")
        if arg.startswith("--") and name != "preset" and len(owners.get(name, ())) == 1:
            arg = f"--{owners[name][0]}.{name}{eq}{value}"
        out.append(arg)
    return out


def _starting_point(
    parser: argparse.ArgumentParser, argv: list[str], default_preset: str
) -> tuple[Config, list[str]]:
    """The config the command line starts from (its defaults, as ``--help`` shows them) and
    the arguments for tyro (without ``--config``)."""
    known, _ = parser.parse_known_args(argv)
    if known.preset is not None and known.config is not None:
        raise ValueError("give --preset or --config, not both")
    resume = known.resume is not None and known.resume.lower() in ("1", "true", "yes", "on")
    saved = Path(known.out_dir or "") / "config.json"
    if known.config is not None:
        cfg = load_config(known.config)
    elif known.preset is None and resume and saved.is_file():
        return load_config(saved), argv
    else:
        cfg = preset(known.preset or default_preset)
    objective = known.objective or cfg.train.objective
    teacher = known.teacher if known.teacher is not None else cfg.dcd.teacher
    if objective == "dcd" and teacher and known.config is None:
        # The teacher's data, without labels: a labelled teacher is distilled unconditionally.
        cfg = replace(cfg, data=replace(load_teacher_config(teacher).data, labels=""))
    rest = [a for i, a in enumerate(argv) if a != "--config" and not a.startswith("--config=")
            and not (i and argv[i - 1] == "--config")]  # fmt: skip
    return cfg, rest


def parse_args(
    argv: Sequence[str] | None = None, *, default_preset: str = "cpu-demo", prog: str | None = None,
    description: str | None = None,
) -> Config:  # fmt: skip
    """Parse ``argv`` into a validated ``Config`` with tyro: every field is a flag
    ``--section.field VALUE`` described by its docstring, its default the starting point's.

    The starting point is ``--preset NAME`` (default ``default_preset``) or ``--config
    CONFIG_JSON``. With ``--train.resume true`` and neither, the run directory's saved
    ``config.json`` is the starting point, so ``--train.out_dir DIR --train.resume true`` alone
    continues a run with the configuration it was started with.

    A DCD run (``--train.objective dcd --dcd.teacher RUN``) takes its data section (source,
    tokenizer, sequence length, split) from the teacher's saved config, unless ``--config`` is
    given; explicit ``--data.*`` flags still override it. A teacher that is not a uniform-state
    run is an error. An unknown preset, field or value exits with an error naming it.
    """
    import tyro

    argv = _dotted(sys.argv[1:] if argv is None else list(argv))
    # The few flags that choose the starting point, read before tyro sees the rest.
    pre = argparse.ArgumentParser(
        prog=prog, add_help=False, allow_abbrev=False,
        usage="%(prog)s [-h] [--preset NAME | --config CONFIG_JSON] [--section.field VALUE ...]",
    )  # fmt: skip
    for flag in ("--preset", "--config", "--train.out_dir", "--train.resume",
                 "--train.objective", "--dcd.teacher"):  # fmt: skip
        pre.add_argument(flag, dest=flag.rpartition(".")[2].lstrip("-"))
    try:
        start, rest = _starting_point(pre, argv, default_preset)
    except (ValueError, FileNotFoundError) as err:
        pre.error(str(err))
    import examples.config

    description = (description or (examples.config.__doc__ or "").split("\n\n")[0]) + (
        f" The starting point is --preset (one of {', '.join(sorted(PRESETS))}; default "
        f"{default_preset}; owt and lm1b are the paper's) or --config CONFIG_JSON (a saved "
        "config.json or its run directory); the defaults shown are its values. Booleans take "
        "true/false, optional fields none, lists comma-separated values; a field whose name is "
        "unique may also be given as --field VALUE."
    )
    cfg = tyro.cli(Config, default=start, args=rest, prog=prog, description=description,
                   use_underscores=True, config=(tyro.conf.FlagConversionOff,),
                   registry=_registry())  # fmt: skip
    try:
        return cfg.validate()
    except ValueError as err:
        pre.error(str(err))
        raise  # unreachable: parser.error exits
