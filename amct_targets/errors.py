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


class OutputError(AmctError):
    """The output folder cannot be used: it overlaps an input, or cannot be written."""
