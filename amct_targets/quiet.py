"""TensorFlow's C++ start-up lines (oneDNN, CPU feature guard) bypass TF_CPP_MIN_LOG_LEVEL:
file descriptor 2 is silenced while TensorFlow loads, so the CLI and the Python API print
only their own messages. Called once, before the first TensorFlow import of a run.

When this import is the process's first, TensorFlow's CPU tensors come from its BFC pool
allocator (TF_CPU_ALLOCATOR_USE_BFC) unless the user set that variable. The default
allocator hands every large activation to malloc, which maps fresh pages for it and unmaps
them on free, so each forward pass page-faults and zeroes all of its activation memory
again: ~15% of a ResNet50 224x32 batch (docs/speed.md). The pool reuses its pages.
The variable is read once, when the allocator is created; it is removed again afterwards,
so processes the user starts do not inherit it.

The objects TensorFlow's import leaves (400k, modules and their tables, alive for the whole
process) are then moved out of the garbage collector's sight (`gc.freeze`): each full
collection (the build's `memory.release` after every big step, and Python's own) walked
them all again, 0.25 s a time."""
from __future__ import annotations

import gc
import os
import sys


POOL_ALLOCATOR = "TF_CPU_ALLOCATOR_USE_BFC"


def import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    ours = POOL_ALLOCATOR not in os.environ
    if ours:
        os.environ[POOL_ALLOCATOR] = "true"
    try:
        _import()
        # The first allocation creates the allocator, which reads the variable then.
        sys.modules["tensorflow"].zeros([64])
    finally:
        if ours:
            os.environ.pop(POOL_ALLOCATOR, None)
    gc.freeze()


def _import() -> None:
    """Import TensorFlow with fd 2 silenced."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): import plainly
        import tensorflow  # noqa: F401
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
        from tensorflow.python.grappler import tf_optimizer  # noqa: F401  (loads more C++)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
