"""TOML configuration files checked against a schema: one way for the server and the device.

A side describes its file as ``msgspec.Struct`` classes (one per table, ``forbid_unknown_fields``,
every field optional with the type the key must have), reads it with ``load_toml(path, Schema)``
and takes the keys the file sets with ``given(file)`` (tables flattened, unset keys left out).
msgspec checks every value strictly (``"10"`` is not an int, ``"CPU"`` is not a list of strings,
``true`` is not a number) and ``ConfigError`` names the file, the key and the expected type::

    server.toml: [onnxruntime] intra_op_threads: expected int, got str

Range checks that need more than a type (a port in 0..65535) stay with the settings they guard.
msgspec rather than hand-written checks: it is a small maintained library (one C extension, no
dependencies, so it runs on the device too) whose errors already carry the key path.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from splitinf.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["convert", "given", "load_toml", "read_toml"]

T = TypeVar("T")

_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]*)`")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The file's TOML as a dict; ConfigError when it cannot be read or parsed."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _key_name(path: str) -> str:
    """msgspec's ``.onnxruntime.intra_op_threads`` as the TOML file shows it: ``[onnxruntime] intra_op_threads``."""
    parts = [p for p in path.split(".") if p]
    if len(parts) > 1:
        return f"[{'.'.join(parts[:-1])}] {parts[-1]}"
    return parts[0] if parts else "the file"


def _known_keys(schema: type, path: str) -> list[str]:
    table: Any = schema
    for part in (p for p in path.split(".") if p):
        field = next((f for f in msgspec.structs.fields(table) if f.encode_name == part), None)
        if field is None:
            return []
        table = next((t for t in getattr(field.type, "__args__", (field.type,)) if isinstance(t, type)), None)
        if table is None or not issubclass(table, msgspec.Struct):
            return []
    return [f.encode_name for f in msgspec.structs.fields(table)]


def _explain(error: msgspec.ValidationError, schema: type) -> str:
    match = _AT.match(str(error))
    reason, path = (match.group("reason"), match.group("path") or "") if match else (str(error), "")
    unknown = _UNKNOWN.match(reason)
    if unknown:
        where = f" in [{path.lstrip('.')}]" if path else ""
        return f"unknown key {unknown.group('key')!r}{where}; known: {', '.join(_known_keys(schema, path))}"
    reason = reason.replace(" | null", "").replace("`", "").replace("Expected", "expected")
    return f"{_key_name(path)}: {reason}"


def convert(data: Mapping[str, Any], schema: type[T], source: str) -> T:
    """``data`` as ``schema``, each value's type checked strictly; ConfigError naming ``source`` and the key."""
    try:
        return msgspec.convert(data, schema, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_explain(exc, schema)}") from None


def load_toml(path: str | Path, schema: type[T]) -> T:
    """Read a TOML file and check it against ``schema`` (see the module docstring)."""
    return convert(read_toml(path), schema, str(path))


def given(file: msgspec.Struct, renamed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keys ``file`` sets, its tables flattened into one dict; ``renamed`` maps a key to its setting's name."""
    values: dict[str, Any] = {}
    for key, value in msgspec.structs.asdict(file).items():
        if isinstance(value, msgspec.Struct):
            values.update(given(value, renamed))
        elif value is not None:
            values[(renamed or {}).get(key, key)] = value
    return values
