"""The errors adaptext raises for a user's mistakes: the CLI prints them as one line, exit code 2."""

from __future__ import annotations

import importlib.util


class AdaptextError(Exception):
    """A user error: bad config, bad data or a bad path. The CLI prints it without a traceback."""


class ConfigError(AdaptextError):
    """The configuration file or an override is invalid."""


class DataError(AdaptextError):
    """A data file is missing, unreadable or inconsistent with the configuration."""


def require_extra(module: str, feature: str, extra: str = "scale") -> None:
    """Raise a one-line `AdaptextError` when `module`, which `feature` needs, is not installed (`adaptext[extra]`)."""
    if importlib.util.find_spec(module) is None:
        raise AdaptextError(f"{feature} needs {module}, which is not installed: pip install 'adaptext[{extra}]'")
