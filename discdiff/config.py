"""Plain-data configs of the library's objects: ``to_dict`` / ``from_dict`` and a type registry.

Every configurable object (the schedules, ``DualSchedule``, ``GammaSchedule``, ``AlphaWindow``,
``GaussianArgmaxTransform``, ``GaussianCurriculum``, ``UniformDiffusion``, ``MaskedDiffusion``,
``DCDistiller``, ``SDTTDistiller``) describes itself as a JSON-safe dict whose ``"type"`` names
its class, with nested objects as nested dicts::

    {"type": "UniformDiffusion", "vocab_size": 50257, "eps": 0.001,
     "schedule": {"type": "LogLinearSchedule", "eps": 0.001},
     "curriculum": {"type": "GaussianCurriculum", "window": {"type": "AlphaWindow", ...}, ...}}

``from_dict(data)`` rebuilds the object from such a dict, whatever its type; an unknown type is
an error that names it. The distillers describe their settings only, not the teacher's weights:
rebuild them with the teacher, ``from_dict(data, teacher=model)``. Your own classes (a schedule,
say) join with ``register(MySchedule)``: a dataclass needs nothing more, another class its own
``to_dict()`` and ``from_dict(data)``.

Nothing here reads a file: ``json.dumps(obj.to_dict())`` and ``from_dict(json.loads(text))`` are
the caller's, as is where the text lives (the example writes ``diffusion.json`` beside each
checkpoint).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, TypeVar

import torch

__all__ = [
    "check_keys",
    "dataclass_from_dict",
    "dataclass_to_dict",
    "decode",
    "decode_dtype",
    "distiller_from_dict",
    "encode",
    "from_dict",
    "known_types",
    "lookup",
    "register",
    "settings_to_dict",
    "to_dict",
]

_T = TypeVar("_T")

# The library's own types, imported on first use (this module imports none of them).
_BUILTIN = {
    "LogLinearSchedule": "discdiff.schedules",
    "CosineSchedule": "discdiff.schedules",
    "LinearSchedule": "discdiff.schedules",
    "GeometricSchedule": "discdiff.schedules",
    "GammaSchedule": "discdiff.schedules",
    "DualSchedule": "discdiff.duality",
    "AlphaWindow": "discdiff.duality",
    "GaussianArgmaxTransform": "discdiff.duality",
    "GaussianCurriculum": "discdiff.curriculum",
    "UniformDiffusion": "discdiff.diffusion",
    "MaskedDiffusion": "discdiff.diffusion",
    "DCDistiller": "discdiff.distill",
    "SDTTDistiller": "discdiff.distill",
}
_registered: dict[str, type] = {}

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}  # fmt: skip


def register(cls: type[_T]) -> type[_T]:
    """Make ``cls`` known to ``from_dict`` under its class name; usable as a decorator."""
    if not isinstance(cls, type):
        raise TypeError(f"register takes a class, got {type(cls).__name__}")
    name = cls.__name__
    if name in _BUILTIN and lookup(name) is not cls:
        raise ValueError(f"{name!r} is a discdiff type; give your class another name")
    _registered[name] = cls
    return cls


def known_types() -> list[str]:
    """The type names ``from_dict`` accepts."""
    return sorted(set(_BUILTIN) | set(_registered))


def lookup(name: str) -> type:
    """The class registered under ``name``; ValueError naming it if there is none."""
    if name in _registered:
        return _registered[name]
    if name in _BUILTIN:
        return getattr(importlib.import_module(_BUILTIN[name]), name)
    raise ValueError(
        f"unknown type {name!r} in a config dict; known types: {', '.join(known_types())} "
        "(register your own class with discdiff.config.register)"
    )


def to_dict(obj: Any) -> dict[str, Any]:
    """``obj.to_dict()``: its JSON-safe config."""
    encoded = encode(obj)
    if not isinstance(encoded, dict):
        raise TypeError(f"a {type(obj).__name__} is a plain value, not a configurable object")
    return encoded


def from_dict(data: Mapping[str, Any], **context: Any) -> Any:
    """Rebuild the object a ``to_dict()`` dict describes; ``context`` goes to its class's
    ``from_dict`` (e.g. ``teacher=`` for a distiller), not to nested objects."""
    if not isinstance(data, Mapping):
        raise TypeError(f"a config must be a dict, got {type(data).__name__}")
    if "type" not in data:
        raise ValueError(f"a config dict needs a 'type' key naming its class, got keys "
                         f"{sorted(data)}")  # fmt: skip
    cls = lookup(data["type"])
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data, **context)
    if dataclasses.is_dataclass(cls):
        if context:
            raise TypeError(f"{cls.__name__} takes no arguments besides its config: "
                            f"{sorted(context)}")  # fmt: skip
        return dataclass_from_dict(cls, data)
    raise TypeError(f"{cls.__name__} has no from_dict and is not a dataclass")


def encode(value: Any) -> Any:
    """A JSON-safe form of a config value: numbers, strings, None and booleans as they are,
    lists and tuples as lists, torch dtypes by name, objects as their ``to_dict()``, other
    dataclasses field by field."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclass_to_dict(value)  # reading it back needs register(its class)
    raise TypeError(
        f"cannot describe a {type(value).__name__} as a config: give it to_dict() / "
        "from_dict(), or make it a dataclass and discdiff.config.register it"
    )


def decode(value: Any) -> Any:
    """The inverse of ``encode`` for nested values: a dict with a ``"type"`` becomes its object;
    lists are decoded element-wise."""
    if isinstance(value, Mapping) and "type" in value:
        return from_dict(value)
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def decode_dtype(value: Any, name: str) -> torch.dtype:
    """A torch dtype from its name ("float32"), as ``encode`` writes it."""
    if isinstance(value, torch.dtype):
        return value
    if value not in _DTYPES:
        raise ValueError(f"{name} must name a float dtype {sorted(_DTYPES)}, got {value!r}")
    return _DTYPES[value]


def check_keys(cls: type, data: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    """``data`` without its ``"type"``, after checking the type is ``cls``'s and every key is
    one of ``known``."""
    kind = data.get("type", cls.__name__)
    if kind != cls.__name__:
        raise ValueError(f"{cls.__name__}.from_dict got a config of type {kind!r}")
    fields = {k: v for k, v in data.items() if k != "type"}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(
            f"unknown keys for {cls.__name__}: {sorted(unknown)}; expected {sorted(known)}"
        )
    return fields


def settings_to_dict(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """``{"type": ..., name: encode(obj.name), ...}`` for an object described by ``names``."""
    return {"type": type(obj).__name__, **{name: encode(getattr(obj, name)) for name in names}}


def distiller_from_dict(
    cls: type[_T], data: Mapping[str, Any], names: tuple[str, ...], teacher: Any
) -> _T:
    """``cls(teacher, vocab_size, **settings)`` from ``settings_to_dict``'s dict (a distiller
    describes its settings, not its teacher's weights)."""
    kwargs = {k: decode(v) for k, v in check_keys(cls, data, set(names)).items()}
    if "kl_dtype" in kwargs:
        kwargs["kl_dtype"] = decode_dtype(kwargs["kl_dtype"], "kl_dtype")
    vocab_size = kwargs.pop("vocab_size", None)
    if vocab_size is None:
        raise ValueError(f"a {cls.__name__} config needs its vocab_size")
    return cls(teacher, vocab_size, **kwargs)  # type: ignore[call-arg]


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """``{"type": class name, field: encoded value, ...}`` of a dataclass instance."""
    values = {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    return {"type": type(obj).__name__, **values}


def dataclass_from_dict(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """A dataclass from ``dataclass_to_dict``'s dict; missing fields take their defaults."""
    known = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    fields = check_keys(cls, data, known)
    return cls(**{k: decode(v) for k, v in fields.items()})
