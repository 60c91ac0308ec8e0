"""Built-in plugin: the input formats amct-targets reads, through the `load_model` hook.

`trylast`, so a plugin's loader is asked first and may take over any source it recognises.
"""
from __future__ import annotations

from amct_targets.hooks import hookimpl


@hookimpl(trylast=True)
def load_model(source, options):
    from amct_targets.graph.load import load_builtin

    return load_builtin(source, options)
