"""Wire encoding: msgpack for daemons, JSON for people and browsers, one decode path each."""

import base64
import json
import re
from typing import Any, cast

import msgpack

from .errors import ProtocolError

MSGPACK = "application/msgpack"
JSON = "application/json"


def pack(obj: Any) -> bytes:
    return cast(bytes, msgpack.packb(obj, use_bin_type=True))  # msgpack has no type hints


def unpack(data: bytes) -> Any:
    """Decode one msgpack object; anything malformed becomes a ProtocolError."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except msgpack.StackError:  # these two say nothing themselves
        raise ProtocolError("body is not valid msgpack: nested too deeply") from None
    except msgpack.FormatError:
        raise ProtocolError("body is not valid msgpack: it holds 0xc1, a byte that begins no msgpack value") from None
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise ProtocolError(f"body is not valid msgpack: {exc or type(exc).__name__}") from None


def dump_json(obj: Any) -> bytes:
    """JSON, with bytes (msgpack's bin: a sweep's params.json in a grant) as ``{"base64":
    TEXT}``, which messages.py reads back into a bytes field; a plain string never is bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_base64).encode()


def _base64(obj: Any) -> dict[str, str]:
    if isinstance(obj, bytes):
        return {"base64": base64.b64encode(obj).decode("ascii")}
    raise TypeError(f"{type(obj).__name__} has no JSON form")


def load_json(data: bytes) -> Any:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from None
    except RecursionError:  # deeply nested arrays or objects
        raise ProtocolError("body is not valid JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(data):
        refuse_lone_surrogates(obj)
    return obj


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def refuse_lone_surrogates(obj: Any, what: str = "body is not valid JSON") -> None:
    """JSON can escape half of a UTF-16 pair (\\ud800) on its own, and Python strings can hold
    one; that is not text: it could be neither stored nor sent on as UTF-8. (Whole pairs decode
    to one character.)"""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise ProtocolError(f"{what}: a string holds an unpaired surrogate (\\ud800-\\udfff)")
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def decode(data: bytes, content_type: str | None) -> Any:
    """Decode a request body by its content type: msgpack when it says so, else JSON."""
    if content_type and content_type.split(";")[0].strip().lower() == MSGPACK:
        return unpack(data)
    return load_json(data)


def encode(obj: Any, content_type: str) -> bytes:
    return pack(obj) if content_type == MSGPACK else dump_json(obj)
