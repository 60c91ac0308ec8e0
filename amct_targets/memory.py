"""Returning freed memory between the big steps of a build.

A model's weights pass through several copies on their way (Keras variables, the frozen
GraphDef, grappler's input and output, TF's imported graphs); each step drops what it no
longer needs, then `release()` collects reference cycles (TF functions and graphs sit in
them) and hands freed heap pages back to the system (glibc's `malloc_trim`), so the next
step's copies reuse the pages instead of adding to the peak.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release() -> None:
    """Collect garbage and return free heap pages to the system (glibc only)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
