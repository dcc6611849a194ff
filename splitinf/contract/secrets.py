"""Reading key material from files: certificates, keys and the bearer token, for both sides."""

from __future__ import annotations

from pathlib import Path

from splitinf.errors import ConfigError

__all__ = ["read_secret", "read_token"]


def read_secret(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def read_token(path: str | Path) -> str:
    """A bearer token from a file (surrounding whitespace removed); ConfigError when empty or unreadable."""
    token = read_secret(path, "token file").decode("utf-8", errors="strict").strip()
    if not token:
        raise ConfigError(f"the token file {path} is empty; put the bearer token in it")
    return token
