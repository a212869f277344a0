"""Reading settings from an environment mapping, once, in `main`.

Tests pass a plain dict instead of patching os.environ.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from pathlib import Path


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class BindError(Exception):
    """A server could not listen on its address (gRPC or metrics): one line for the operator,
    no traceback."""

    def __init__(self, address: str) -> None:
        super().__init__(f"cannot listen on {address}: it is in use or not an address of this machine")
        self.address = address


class EnvReader:
    """Looks a name up as PREFIX_NAME first, then as plain NAME (e.g. INVENTORY_DATABASE_URL, DATABASE_URL)."""

    def __init__(self, env: Mapping[str, str], prefix: str) -> None:
        self._env = env
        self._prefix = prefix

    def _lookup(self, name: str) -> tuple[str, str] | None:
        for key in (f"{self._prefix}_{name}", name):
            value = self._env.get(key, "").strip()
            if value:
                return key, value
        return None

    def secret(self, name: str) -> str:
        """A value given inline (NAME) or in a file (NAME_FILE); the prefixed names win."""
        for key in (f"{self._prefix}_{name}", name):
            inline = self._env.get(key, "").strip()
            if inline:
                return inline
            path = self._env.get(f"{key}_FILE", "").strip()
            if path:
                try:
                    return Path(path).read_text().strip()
                except OSError as error:
                    raise SettingsError(f"{key}_FILE {path!r} cannot be read: {error.strerror}") from None
        return ""

    def str(self, name: str, default: str) -> str:
        found = self._lookup(name)
        return found[1] if found else default

    def int(self, name: builtins.str, default: builtins.int, minimum: builtins.int = 0) -> builtins.int:
        found = self._lookup(name)
        if not found:
            return default
        key, raw = found
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{key} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{key} must be at least {minimum}, got {value}")
        return value

    def float(self, name: builtins.str, default: builtins.float, *, positive: bool = False) -> builtins.float:
        """`positive`: zero is refused too (an interval of zero would spin)."""
        found = self._lookup(name)
        if not found:
            return default
        key, raw = found
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{key} must be a number, got {raw!r}") from None
        if not value >= 0:
            raise SettingsError(f"{key} must be zero or more, got {raw!r}")
        if positive and not value > 0:
            raise SettingsError(f"{key} must be greater than zero, got {raw!r}")
        return value

    def subject_caps(self, name: builtins.str) -> dict[builtins.str, builtins.int]:
        """`subject=N,other=M`: a whole number per token subject."""
        found = self._lookup(name)
        if not found:
            return {}
        key, raw = found
        caps: dict[str, int] = {}
        for entry in raw.split(","):
            subject, _, number = entry.strip().partition("=")
            if not (subject and number.strip().isdigit() and int(number) > 0):
                raise SettingsError(f"{key} must read like 'crm=256,reports=4', got {raw!r}")
            caps[subject] = int(number)
        return caps

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        found = self._lookup(name)
        if not found:
            return default
        key, raw = found
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{key} must be true or false, got {raw!r}")
