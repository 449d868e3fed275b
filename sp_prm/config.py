"""YAML recipes plus ``--key value`` overrides into (nested) config dataclasses.

Every ``sp-prm`` subcommand reads ``--config recipe.yaml`` and then applies
overrides from the command line, TRL / alignment-handbook style::

    sp-prm prepare --config recipes/hh-rlhf/prepare_sst_minilm.yaml --sst_k 3 --prefix.max_prompt_tokens 256

Values are parsed as YAML (``--limit 50``, ``--weight_cap null``,
``--columns '{prompt: q}'``). Nested dataclass fields take dotted keys. Unknown
keys are an error that lists the known ones, so a typo in a recipe never passes
silently.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _nested_type(cls: type, name: str) -> type | None:
    hints = typing.get_type_hints(cls)
    hint = hints.get(name)
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate  # type: ignore[return-value]
    return None


def build(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Instantiate a dataclass from a dict, recursing into nested dataclass fields."""
    if not isinstance(values, dict):
        raise TypeError(f"{where or cls.__name__}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    aliases: dict[str, str] = getattr(cls, "key_aliases", lambda: {})()
    moved: dict[str, str] = getattr(cls, "moved_keys", lambda: {})()  # retired keys -> their new place
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        key = aliases.get(key, key)
        if key not in fields and key in moved:
            raise KeyError(f"config key {where + key!r} has moved: use {moved[key]}")
        if key not in fields:
            raise KeyError(
                f"unknown config key {where + key!r} for {cls.__name__}; known keys: {sorted(fields)}"
            )
        nested = _nested_type(cls, key)
        if nested is not None and isinstance(value, dict):
            value = build(nested, value, where=f"{where}{key}.")
        kwargs[key] = value
    return cls(**kwargs)


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ValueError(f"--{key}: {part} is not a mapping")
    target[parts[-1]] = value


def parse_overrides(argv: Sequence[str]) -> tuple[str | None, dict[str, Any]]:
    """``['--config', 'a.yaml', '--x.y', '3']`` -> ``('a.yaml', {'x': {'y': 3}})``."""
    config_path, overrides = None, {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"expected --key value, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                value = "true"  # a bare flag
            else:
                i += 1
                value = args[i]
        i += 1
        key = key.replace("-", "_")
        if key == "config":
            config_path = value
        else:
            _set_dotted(overrides, key, yaml.safe_load(value))
    return config_path, overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(cls: type[T], argv: Sequence[str] | None = None) -> T:
    """Parse ``--config`` + overrides for ``cls``; ``--help`` prints every field with its help text."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(describe(cls))
        raise SystemExit(0)
    config_path, overrides = parse_overrides(argv)
    values: dict[str, Any] = {}
    if config_path:
        path = Path(config_path)
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {config_path}")
        values = yaml.safe_load(path.read_text()) or {}
    return build(cls, _merge(values, overrides))


def describe(cls: type, prefix: str = "") -> str:
    lines = [] if prefix else [f"{cls.__name__}: {(cls.__doc__ or '').strip().splitlines()[0]}", ""]
    for f in dataclasses.fields(cls):
        nested = _nested_type(cls, f.name)
        if nested is not None:
            lines.append(describe(nested, prefix=f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required"
        )
        lines.append(f"  --{prefix}{f.name} (default: {default!r})\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
