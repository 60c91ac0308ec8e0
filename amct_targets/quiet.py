"""TensorFlow's C++ start-up lines (oneDNN, CPU feature guard) bypass TF_CPP_MIN_LOG_LEVEL:
file descriptor 2 is silenced while TensorFlow loads, so the CLI and the Python API print
only their own messages. Called once, before the first TensorFlow import of a run."""
from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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
