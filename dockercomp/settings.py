"""Settings for each role as one frozen dataclass, resolved as defaults < file < env < flags.

The file is TOML (a ``[server]`` or ``[client]`` table, or top-level keys); environment
variables are ``DOCKERCOMP_<ROLE>_<FIELD>``; flags are whatever the CLI parsed. Values from
the file and environment are converted to the field's type and checked by the class's
``validate`` so a bad value stops the program at start with a message naming it.
"""

import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from dockercomp.protocol.errors import ProtocolError

T = TypeVar("T")


class SettingsError(ProtocolError):
    """A setting has a bad value; the message names it."""


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
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known
    if unknown:
        raise SettingsError(f"unknown {role} setting(s): {', '.join(sorted(unknown))}")
    converted = {name: _convert(name, value, hints[name]) for name, value in values.items()}
    settings = cls(**converted)
    validate = getattr(settings, "validate", None)
    if validate:
        validate()
    return settings


def _convert(name: str, value: Any, hint: Any) -> Any:
    target = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
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
