"""Settings for each role as one frozen dataclass, resolved as defaults < file < env < flags.

The file is TOML (a ``[server]`` or ``[client]`` table, or top-level keys); environment
variables are ``DOCKERCOMP_<ROLE>_<FIELD>``; flags are whatever the CLI parsed. Values from
the file and environment are converted to the field's type and checked by the class's
``validate`` so a bad value stops the program at start with a message naming it.

Each setting is declared once, as a field made by ``setting()``: its default, the help of
its flag and the flag's name (when the command line may set it). ``add_flags`` makes the
flags of a role from those fields and ``flag_values`` reads them back, so a new setting is
one line. A size ("64MiB") or a duration ("5m") is parsed as the settings are built: the
field holds bytes or seconds, never the text.
"""

import argparse
import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from dockercomp.protocol.errors import ProtocolError

T = TypeVar("T")


class SettingsError(Exception):
    """A setting has a bad value; the message names it. The CLI reports it as bad input (exit 2)."""


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    parse: Callable[[object, str], Any] | None = None,
    repeat: bool = False,
) -> Any:
    """A settings field: ``default``, and the ``help`` of its ``flag`` (None: no flag, set it in
    the file or the environment). ``parse`` turns what a person writes ("64MiB") into the
    field's value (bytes); ``repeat`` makes a flag given many times one comma-separated value."""
    metadata = {"help": help, "flag": flag, "metavar": metavar, "parse": parse, "repeat": repeat}
    return dataclasses.field(default=default, metadata=metadata)


class Settings:
    """Base of a role's frozen settings dataclass: the values of ``parse`` fields are parsed
    when it is built, by ``load_settings`` or in Python (``ClientSettings(memory="4GiB")``)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            parse = f.metadata.get("parse")
            value = getattr(self, f.name)
            if parse is None or value is None:
                continue
            if value == "" and f.default is None:  # empty: work it out (the field's default)
                parsed = None
            else:
                try:
                    parsed = parse(value, f.name)
                except ProtocolError as exc:  # its message names the setting
                    raise SettingsError(str(exc)) from None
            object.__setattr__(self, f.name, parsed)


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """A flag for each field of ``cls`` that names one, typed as the field is; left out, a flag
    is None, which hides nothing below it (file, environment, default)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag")
        if not flag:
            continue
        options: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata["help"]}
        if f.metadata.get("metavar"):
            options["metavar"] = f.metadata["metavar"]
        target = _target(hints[f.name])
        if target is bool:
            options["action"] = "store_true"
        elif f.metadata.get("repeat"):
            options["action"] = "append"
        elif f.metadata.get("parse") is None and target in (int, float):
            options["type"] = target
        parser.add_argument(flag, **options)


def flag_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings the flags made by ``add_flags`` gave, for ``load_settings``."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("flag"):
            value = getattr(args, f.name, None)
            values[f.name] = ",".join(value) if f.metadata.get("repeat") and value is not None else value
    return values


def load_settings(cls: type[T], role: str, path: str | None = None, flags: Mapping[str, Any] | None = None) -> T:
    values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read settings file {path}: {exc}") from None
        section = data.get(role, data)
        if not isinstance(section, dict):
            raise SettingsError(f"settings file {path}: {role} must be a table of settings")
        values.update(section)
    prefix = f"DOCKERCOMP_{role.upper()}_"
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        env = os.environ.get(prefix + field.name.upper())
        if env is not None:
            values[field.name] = env
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known.keys()
    if unknown:
        raise SettingsError(f"unknown {role} setting(s): {', '.join(sorted(unknown))}")
    converted = {  # a parsed field is parsed as the class is built
        name: value if known[name].metadata.get("parse") else _convert(name, value, hints[name])
        for name, value in values.items()
    }
    settings = cls(**converted)
    validate = getattr(settings, "validate", None)
    if validate:
        validate()
    return settings


def _target(hint: Any) -> Any:
    """The type of a field, ``int`` of ``int | None``."""
    return next((t for t in typing.get_args(hint) if t is not type(None)), hint)


def _convert(name: str, value: Any, hint: Any) -> Any:
    target = _target(hint)
    if value is None:
        return value
    try:
        # only scalars: a bool is no number, a float with a fraction no int, NaN or inf no
        # setting, and a table, array or date is nothing str() should flatten
        if not isinstance(value, str | int | float) or (isinstance(value, bool) and target is not bool):
            raise ValueError(value)
        if target is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if target is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        converted = target(value)
        if isinstance(converted, float) and not math.isfinite(converted):
            raise ValueError(value)
        return converted
    except (TypeError, ValueError, OverflowError):
        raise SettingsError(f"setting {name} must be {target.__name__}, got {value!r:.60}") from None
