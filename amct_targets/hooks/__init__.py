"""Hook specifications and the plugin manager. Plugins import `hookimpl` from here."""
from __future__ import annotations

from typing import Callable

import pluggy

hookimpl = pluggy.HookimplMarker("amct_targets")

__all__ = ["hookimpl", "Registry"]


class Registry:
    """Base of the objects handed to registration hooks: `current_plugin` names the plugin
    whose hook implementation is calling, for messages about duplicates and bad entries."""

    _who: Callable[[], str] = staticmethod(lambda: "<unknown>")

    @property
    def current_plugin(self) -> str:
        return self._who()

    def attribute_to(self, who: Callable[[], str] | None) -> None:
        """Set by the plugin manager around each registration hook call."""
        self._who = who or (lambda: "<unknown>")
