"""The bundled demo: a small CNN with BatchNorm trained on scikit-learn's handwritten digits
(8x8 grey images, 10 classes), frozen, plus 64 calibration samples. `make_demo.py` rebuilds
both files from scratch with fixed seeds."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_PB = "digits_cnn.pb"
DEMO_CALIB = "digits_calib.npz"


def demo_paths() -> tuple[Path, Path]:
    """(frozen .pb, calibration .npz) of the bundled demo model."""
    folder = Path(str(resources.files("amct_targets.demo")))
    return folder / DEMO_PB, folder / DEMO_CALIB
