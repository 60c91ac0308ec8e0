"""Errors a user can cause. Each carries one message that names the file, field, node or
layer at fault and says what to do; the CLI prints it without a traceback and exits 1."""
from __future__ import annotations


class AmctError(Exception):
    """A user error: bad input, bad configuration, unknown target, failing plugin."""


class ProfileError(AmctError):
    """A device profile is missing, unreadable or does not match the schema."""


class ModelError(AmctError):
    """A model cannot be loaded or is not what a step needs (e.g. not frozen)."""


class ConfigError(AmctError):
    """A build configuration or data file is invalid."""


class PlanError(AmctError):
    """The requested passes cannot be planned (conflicts, unknown pass names)."""


class PluginError(AmctError):
    """A plugin failed to load, validate or run; the message names the plugin."""


class RetrainError(AmctError):
    """Retraining made the model worse than where it started; the message names the pass."""


class OutputError(AmctError):
    """The output folder cannot be used: it overlaps an input, or cannot be written."""


MAX_DETAIL = 300  # characters of a foreign exception's text shown in one message


def first_line(text: str, limit: int = MAX_DETAIL) -> str:
    """The first non-empty line of `text`, cut to `limit` characters."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """`Type: first line of the message` of a foreign exception, bounded for one-line errors."""
    detail = first_line(str(exc))
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
