"""Hook specifications and the plugin manager. Plugins import `hookimpl` from here."""
import pluggy

hookimpl = pluggy.HookimplMarker("amct_targets")

__all__ = ["hookimpl"]
